"""The table of known faults, one module per fix (in `h2fix.fixes`).

The table is plain data, outside the `fixes` package, so that the start-up path
(a warm `apply()`) neither imports libcst nor looks into that package's
directory; a fix's module is imported only when a rewrite runs.
"""

from __future__ import annotations

import contextlib

from ._results import Record, initialise

TYPE_CHECKING = False  # typing is slow to import; only mypy needs it here
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Callable

    import libcst as cst

    from ._environment import Environment
    from ._errors import H2FixError
    from ._results import FixOutcome

    #: A fix takes a parsed module and returns it (changed or not) with its outcome.
    FixFunction = Callable[[cst.Module, Environment], "tuple[cst.Module, FixOutcome]"]


class Fix(Record):
    """One known fault: its name, what it repairs, and where its code lives."""

    __slots__ = ("description", "module", "name", "upstream")

    name: str
    description: str
    upstream: str
    #: Module that defines `fix(tree, environment)`; imported on first use.
    module: str

    def __init__(self, name: str, description: str, upstream: str, module: str) -> None:
        initialise(self, name, description, upstream, module)

    def load(self) -> FixFunction:
        import importlib  # deferred: only a rewrite loads a fix

        function: FixFunction = importlib.import_module(self.module).fix
        return function


FIXES: tuple[Fix, ...] = (
    Fix(
        name="trailers",
        description=(
            "send response trailers after the buffered DATA, with END_STREAM "
            "(gRPC status never arrives otherwise)"
        ),
        upstream="https://github.com/pgjones/hypercorn/issues/254",
        module="h2fix.fixes.trailers",
    ),
    Fix(
        name="request_received",
        description=(
            "build h2's RequestReceived events the way the installed h2 accepts "
            "(h2c Upgrade and server push raise TypeError with h2 >= 4.3 otherwise)"
        ),
        upstream="https://github.com/pgjones/hypercorn/issues/318",
        module="h2fix.fixes.request_received",
    ),
    Fix(
        name="send_state",
        description=(
            "release a stream's send buffer and priority node when it ends with trailers or "
            "is reset (at 1001 the connection dies, under trio the server)"
        ),
        upstream="https://github.com/pgjones/hypercorn/issues",
        module="h2fix.fixes.send_state",
    ),
    Fix(
        name="closed_stream_data",
        description=(
            "skip the client's DATA and END_STREAM for a stream the server already "
            "finished, still acknowledging the DATA (a KeyError killed the connection)"
        ),
        upstream="https://github.com/pgjones/hypercorn/issues/329",
        module="h2fix.fixes.closed_stream_data",
    ),
    Fix(
        name="graceful_shutdown",
        description=(
            "refuse a request that arrives during graceful shutdown with "
            "RST_STREAM(REFUSED_STREAM), safe to retry (NO_ERROR: gRPC fails it as INTERNAL)"
        ),
        upstream="https://github.com/pgjones/hypercorn/issues",
        module="h2fix.fixes.graceful_shutdown",
    ),
    Fix(
        name="max_requests",
        description=(
            "at keep_alive_max_requests, send GOAWAY and close once the responses in "
            "flight are sent (closing at once lost them)"
        ),
        upstream="https://github.com/pgjones/hypercorn/issues/241",
        module="h2fix.fixes.max_requests",
    ),
)


def select(names: Iterable[str] | None) -> tuple[Fix, ...]:
    """The fixes named (in table order), or all of them for None.

    Every public function taking `fixes` goes through here, so they all accept
    and refuse the same things.
    """
    if names is None:
        return FIXES
    given: list[object] | None = None
    if not isinstance(names, (str, bytes)):  # a string would be read as 't', 'r', ...
        with contextlib.suppress(TypeError):
            given = list(names)
    known = [fix.name for fix in FIXES]
    if given and all(isinstance(name, str) and name in known for name in given):
        return tuple(fix for fix in FIXES if fix.name in given)
    raise _selection_error(names, given, known)


def _selection_error(names: object, given: list[object] | None, known: list[str]) -> H2FixError:
    """Why `names` selects no fix. The errors are imported only now: a warm apply()
    raises none of them, and loading them costs (see _targets)."""
    from ._errors import ArgumentTypeError, NoFixSelectedError, UnknownFixError

    expected = "None or a list of fix names such as ['trailers']"
    if isinstance(names, (str, bytes)):
        return ArgumentTypeError("fixes", expected, names, f"write [{names!r}]")
    if given is None:
        return ArgumentTypeError("fixes", expected, names)
    for name in given:
        if not isinstance(name, str):
            return ArgumentTypeError("each of fixes", "a fix name (str)", name)
        if name not in known:
            return UnknownFixError(name, known)
    return NoFixSelectedError(known)
