"""Facts about the running environment that decide which fixes are needed.

Kept apart from the rewrite so that the rewrite stays a pure function of
(source, fixes, environment), and so the facts can be part of a cache key.
"""

from __future__ import annotations

from ._results import Record, initialise


class Environment(Record):
    """The installed h2, as the fixes read it. Its repr is part of the cache key."""

    __slots__ = ("h2_version", "request_received_parameters", "request_received_required")

    #: Version of the installed h2 package, or None when h2 is not installed.
    h2_version: str | None
    #: Parameters of h2.events.RequestReceived: () for h2 <= 4.2's no-argument
    #: constructor; for h2 >= 4.3 keyword-only fields (the required ones first
    #: listed in `request_received_required`). None when h2 is not installed.
    request_received_parameters: tuple[str, ...] | None
    request_received_required: tuple[str, ...]

    def __init__(
        self,
        h2_version: str | None = None,
        request_received_parameters: tuple[str, ...] | None = None,
        request_received_required: tuple[str, ...] = (),
    ) -> None:
        initialise(self, h2_version, request_received_parameters, request_received_required)

    @classmethod
    def detect(cls) -> Environment:
        try:
            import h2.events
        except ImportError:
            return cls()
        # Read off the constructor's code object: `inspect` and `importlib.metadata`
        # would cost more at start-up than everything else apply() does when warm.
        init = h2.events.RequestReceived.__init__
        code = init.__code__
        names = code.co_varnames[1 : code.co_argcount + code.co_kwonlyargcount]
        positional_defaults = len(init.__defaults__ or ())
        with_defaults = set(init.__kwdefaults__ or ()) | set(
            code.co_varnames[code.co_argcount - positional_defaults : code.co_argcount]
        )
        return cls(
            h2_version=getattr(h2, "__version__", "unknown"),
            request_received_parameters=names,
            request_received_required=tuple(n for n in names if n not in with_defaults),
        )


#: h2 4.4's shape and h2 4.2's, for tests and for rewriting for another environment.
H2_KEYWORD_EVENTS = Environment(
    h2_version="4.4.1",
    request_received_parameters=("stream_id", "headers", "stream_ended", "priority_updated"),
    request_received_required=("stream_id",),
)
H2_NO_ARGUMENT_EVENTS = Environment(h2_version="4.2.0", request_received_parameters=())
