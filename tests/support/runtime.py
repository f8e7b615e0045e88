"""What the runtime tests (test_runtime, test_runtime_live) share."""

from __future__ import annotations

from typing import Any

from h2fix import Outcome

#: Every fix, in the order apply() and status() report them.
FIXES = (
    "trailers",
    "request_received",
    "send_state",
    "closed_stream_data",
    "graceful_shutdown",
    "max_requests",
)


def every_fix(outcome: Outcome) -> list[tuple[str, Outcome]]:
    """(fix, outcome) for every fix: what a report says when all of them fare alike."""
    return [(fix, outcome) for fix in FIXES]


def on_top_of_trailers() -> list[tuple[str, Outcome]]:
    """What applying every fix reports after the trailers fix alone was applied."""
    return [("trailers", Outcome.ALREADY_APPLIED), *every_fix(Outcome.APPLIED)[1:]]


def stream_send() -> Any:
    """The installed Hypercorn's H2Protocol.stream_send, as the class holds it now."""
    from hypercorn.protocol.h2 import H2Protocol

    return H2Protocol.__dict__["stream_send"]
