"""Facts about the running environment that decide which fixes are needed.

Kept apart from the rewrite so that the rewrite stays a pure function of
(source, fixes, environment), and so the facts can be part of a cache key.
"""

from __future__ import annotations

import importlib.metadata
import inspect
from dataclasses import dataclass


@dataclass(frozen=True)
class Environment:
    #: Version of the installed h2 package, or None when h2 is not installed.
    h2_version: str | None = None
    #: Parameters of h2.events.RequestReceived: () for h2 <= 4.2's no-argument
    #: constructor; for h2 >= 4.3 keyword-only fields (the required ones first
    #: listed in `request_received_required`). None when h2 is not installed.
    request_received_parameters: tuple[str, ...] | None = None
    request_received_required: tuple[str, ...] = ()

    @classmethod
    def detect(cls) -> Environment:
        try:
            import h2.events
        except ImportError:
            return cls()
        # h2 states its version; asking importlib.metadata costs milliseconds at start-up.
        h2_version = getattr(h2, "__version__", None) or importlib.metadata.version("h2")
        parameters = inspect.signature(h2.events.RequestReceived).parameters.values()
        return cls(
            h2_version=h2_version,
            request_received_parameters=tuple(p.name for p in parameters),
            request_received_required=tuple(p.name for p in parameters if p.default is p.empty),
        )


#: h2 4.4's shape and h2 4.2's, for tests and for rewriting for another environment.
H2_KEYWORD_EVENTS = Environment(
    h2_version="4.4.1",
    request_received_parameters=("stream_id", "headers", "stream_ended", "priority_updated"),
    request_received_required=("stream_id",),
)
H2_NO_ARGUMENT_EVENTS = Environment(h2_version="4.2.0", request_received_parameters=())
