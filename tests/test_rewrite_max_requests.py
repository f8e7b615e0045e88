"""The `max_requests` fix as tables of (before, after), no-op and refusal cases; and every
subset of the registered fixes composed on real releases."""

from __future__ import annotations

import itertools
import textwrap

import libcst as cst
import pytest

import h2fix
from h2fix import Outcome
from support.refusals import assert_refusal_recorded, assert_refused
from support.tables import RELEASES, assert_rewritten, release_ids
from support.versions import composed_on_default_python, rows

IMPORTS = """\
import h2.connection
import h2.events

from ..events import Closed, RawData, Updated
from .events import Response, StreamClosed
"""
INIT = """\
self.connection = h2.connection.H2Connection(config=None)
self.config = config
self.keep_alive_requests = 0
self.send = send
"""
REQUEST = """\
if isinstance(event, h2.events.RequestReceived):
    await self._create_stream(event)
    if self.keep_alive_requests > self.config.keep_alive_max_requests:
        self.connection.close_connection()
"""
CLOSED = """\
elif isinstance(event, StreamClosed):
    await self._close_stream(event.stream_id)
    idle = len(self.streams) == 0
    if idle and self.context.terminated.is_set():
        self.connection.close_connection()
        await self._flush()
    await self.send(Updated(idle=idle))
"""
FLUSH = """\
async def _flush(self):
    data = self.connection.data_to_send()
    if data != b"":
        await self.send(RawData(data=data))
"""
CREATE = """\
async def _create_stream(self, request):
    self.streams[request.stream_id] = request
    self.keep_alive_requests += 1
"""

# What the fix writes, indented for the body of `if <limit>:` in REQUEST.
GOAWAY = """\
# RFC 9113 §6.8, the first of two GOAWAYs: last stream id 2**31-1
# and NO_ERROR ask the client to open no new streams, while every
# response in flight (this request's too) still goes out. h2 is not
# told, so it stays open; once the connection is idle and no stream
# is open in h2, stream_send's close_connection() sends the final
# GOAWAY. Not after that one (it may come first): a GOAWAY must
# never raise the last stream id of an earlier one.
if (
    self.connection.state_machine.state
    is not h2.connection.ConnectionState.CLOSED
):
    await self.send(
        RawData(
            data=self.connection.data_to_send()  # h2's pending frames first
            + (8).to_bytes(3, "big")  # payload length
            + bytes((7, 0))  # frame type GOAWAY, no flags
            + (0).to_bytes(4, "big")  # stream 0: the connection
            + (2**31 - 1).to_bytes(4, "big")  # last stream id
            + (0).to_bytes(4, "big")  # error code NO_ERROR
        )
    )
"""
LIMIT = "self.keep_alive_requests > self.config.keep_alive_max_requests"
CLOSE = "        self.connection.close_connection()\n"
REQUEST_FIXED = REQUEST.replace(CLOSE, textwrap.indent(GOAWAY, " " * 8))
IDLE = "    if idle and self.context.terminated.is_set():\n"
#: Closing only once nothing is open in h2: no END_STREAM still to send.
SETTLED = (
    "            and self.connection.open_inbound_streams == 0\n"
    "            and self.connection.open_outbound_streams == 0\n"
)
IDLE_FIXED = (
    "    if idle and (\n        self.context.terminated.is_set()\n"
    f"        or (\n            {LIMIT}\n{SETTLED}        )\n    ):\n"
)
CLOSED_FIXED = CLOSED.replace(IDLE, IDLE_FIXED)


def module(
    request: str = REQUEST,
    closed: str = CLOSED,
    *,
    init: str = INIT,
    imports: str = IMPORTS,
    after: str = "",
    receiver: str = "self",
    methods: str = FLUSH + "\n" + CREATE,
) -> str:
    """A protocol class in Hypercorn's shape: `handle` passing h2's events to
    `_handle_events`, which starts with `request`,
    `stream_send` dispatching `closed`, and the methods that flush and count."""
    events = textwrap.dedent(request)
    events += "elif isinstance(event, h2.events.DataReceived):\n    await self._data(event)\n"
    sends = "if isinstance(event, Response):\n    await self._respond(event)\n"
    sends += textwrap.dedent(closed)
    body = (
        f"def __init__(self, config, send) -> None:\n{textwrap.indent(init, '    ')}\n"
        # As every release: the caller hands the dispatch what h2 received, whole.
        "async def handle(self, data):\n"
        "    events = self.connection.receive_data(data)\n"
        "    await self._handle_events(events)\n\n"
        f"async def _handle_events(self, events):\n    for event in events:\n"
        f"{textwrap.indent(events, ' ' * 8)}    await self._flush()\n\n"
        f"async def stream_send(self, event):\n{textwrap.indent(sends, '    ')}\n"
        f"{methods}\n{textwrap.dedent(after)}"
    )
    if receiver != "self":
        body = body.replace("self", receiver)
    return f"{imports}\n\nclass H2Protocol:\n{textwrap.indent(body, '    ')}"


def rewrite(source: str) -> h2fix.Rewrite:
    return h2fix.rewrite(source, ["max_requests"])


def _request(limit: str) -> str:
    return REQUEST.replace(LIMIT, limit)


def _limit_fixed(limit: str, request: str = REQUEST) -> tuple[str, str]:
    """(RequestReceived, StreamClosed) branches fixed, with another limit test."""
    return (
        request.replace(LIMIT, limit).replace(CLOSE, textwrap.indent(GOAWAY, " " * 8)),
        CLOSED_FIXED.replace(LIMIT, limit),
    )


def _in_method(source: str, method: str, old: str, new: str) -> str:
    """`source` with `old` replaced by `new` in one method only (up to the next def)."""
    start = source.index(f"def {method}(")
    ends = [source.find(f"\n    {d}def ", start) for d in ("", "async ")]
    end = min((e for e in ends if e != -1), default=len(source))
    return source[:start] + source[start:end].replace(old, new) + source[end:]


ANYCORN_IMPORTS = IMPORTS.replace("from ..events", "from anycorn.events")
DIRECT_FLUSH = (
    "async def _flush(self):\n    await self.send(RawData(data=self.connection.data_to_send()))\n"
)
FULLWIDTH_SELF = ("stream_send(self", "stream_send(\uff53elf")

# (before, after): one source each, as full modules
REWRITES = {
    "hypercorn-0.17": (module(), module(REQUEST_FIXED, CLOSED_FIXED)),
    "greater-or-equal": (
        module(_request(LIMIT.replace(">", ">="))),
        module(*_limit_fixed(LIMIT.replace(">", ">="))),
    ),
    "mirrored-comparison": (
        module(_request("self.config.keep_alive_max_requests < self.keep_alive_requests")),
        module(*_limit_fixed("self.config.keep_alive_max_requests < self.keep_alive_requests")),
    ),
    "limit-a-literal": (
        module(_request("self.keep_alive_requests > 1000")),
        module(*_limit_fixed("self.keep_alive_requests > 1000")),
    ),
    "anycorn-0.20-absolute-events-import": (
        module(imports=ANYCORN_IMPORTS),
        module(REQUEST_FIXED, CLOSED_FIXED, imports=ANYCORN_IMPORTS),
    ),
    "flush-without-a-local": (
        module(methods=DIRECT_FLUSH + CREATE),
        module(REQUEST_FIXED, CLOSED_FIXED, methods=DIRECT_FLUSH + CREATE),
    ),
    "counted-in-two-places": (
        module(after="async def _push(self):\n    self.keep_alive_requests += 1\n"),
        module(
            REQUEST_FIXED,
            CLOSED_FIXED,
            after="async def _push(self):\n    self.keep_alive_requests += 1\n",
        ),
    ),
    "other-receiver-name": (
        module(receiver="proto"),
        module(REQUEST_FIXED, CLOSED_FIXED, receiver="proto"),
    ),
    # The limit test is written again with stream_send's own receiver.
    "stream-send-with-another-receiver": (
        _in_method(module(), "stream_send", "self", "me"),
        _in_method(module(REQUEST_FIXED, CLOSED_FIXED), "stream_send", "self", "me"),
    ),
    "statements-beside-the-close": (
        module(REQUEST.replace(CLOSE, '        log.info("limit")\n' + CLOSE)),
        module(
            REQUEST_FIXED.replace("        # RFC", '        log.info("limit")\n        # RFC', 1),
            CLOSED_FIXED,
        ),
    ),
    # Python reads identifiers NFKC-normalised: a fullwidth letter names the same thing.
    "fullwidth-receiver": (
        module().replace(*FULLWIDTH_SELF),
        module(REQUEST_FIXED, CLOSED_FIXED).replace(*FULLWIDTH_SELF),
    ),
}


@pytest.mark.parametrize(("before", "after"), REWRITES.values(), ids=REWRITES.keys())
def test_rewrites(before: str, after: str) -> None:
    functions = ("H2Protocol._handle_events", "H2Protocol.stream_send")
    assert_rewritten("max_requests", before, after, functions)


def test_the_frame_is_a_goaway_that_lets_every_stream_finish() -> None:
    """The 17 bytes the rewrite sends, read back by h2's own frame parser."""
    import hyperframe.frame

    pieces = [
        line.strip().split("  #")[0]
        for line in GOAWAY.splitlines()
        if line.strip().startswith("+ ")
    ]
    data = eval("b''" + " ".join(pieces))  # the literal pieces of the frame
    assert len(data) == 17
    frame, length = hyperframe.frame.Frame.parse_frame_header(memoryview(data[:9]))
    frame.parse_body(memoryview(data[9 : 9 + length]))
    assert isinstance(frame, hyperframe.frame.GoAwayFrame)
    assert (frame.stream_id, frame.last_stream_id, frame.error_code) == (0, 2**31 - 1, 0)
    assert not frame.flags


def test_served_through_a_subclass_rewrites_the_base() -> None:
    served = "\n\nclass H2Protocol(Base):\n    pass\n"
    before = module().replace("class H2Protocol:", "class Base:") + served
    after = module(REQUEST_FIXED, CLOSED_FIXED).replace("class H2Protocol:", "class Base:")
    result = rewrite(before)
    assert result.source == after + served
    assert result.outcomes[0].functions == ("Base._handle_events", "Base.stream_send")


def test_already_fixed_is_left_alone() -> None:
    """No close as a request arrives: nothing loses responses (here: rewritten already)."""
    source = module(REQUEST_FIXED, CLOSED_FIXED)
    result = rewrite(source)
    assert [o.outcome for o in result.outcomes] == [Outcome.FIXED_UPSTREAM]
    assert result.source == source


NOT_APPLICABLE = {
    "no-request-branch": (
        "class H2Protocol:\n    async def _handle_events(self, events):\n        pass\n"
    ),
    # Hypercorn <= 0.15: no request limit, the connection is never closed as one arrives.
    "no-request-limit": module(
        "if isinstance(event, h2.events.RequestReceived):\n    await self._create_stream(event)\n"
    ),
}


@pytest.mark.parametrize("source", NOT_APPLICABLE.values(), ids=NOT_APPLICABLE.keys())
def test_not_applicable(source: str) -> None:
    result = rewrite(source)
    assert [o.outcome for o in result.outcomes] == [Outcome.NOT_APPLICABLE]
    assert result.source == source


def _another_method(test: str) -> str:
    return f"async def _more(self, event):\n    if {test}:\n        pass\n"


def _count(statement: str) -> str:
    return f"def reset(self):\n    {statement}\n"


# Drifted shapes the fix cannot prove safe: (source, words the refusal must expect)
REFUSED = {
    # The idle close's own condition must be the shutdown test alone: with another one
    # (a limit test already) it closes while h2 still has streams open.
    "conditional-shutdown-test": (
        module(closed=CLOSED.replace("self.context.terminated.is_set()", "(a if b else c)")),
        "the shutdown test alone",
    ),
    "idle-close-already-over-the-limit": (
        module(
            closed=CLOSED.replace(
                "self.context.terminated.is_set()", f"(self.context.terminated.is_set() or {LIMIT})"
            )
        ),
        "the shutdown test alone",
    ),
    # "Applied" while broken: the limit's arm still ends the connection another way.
    "limit-arm-closes-the-transport-too": (
        module(REQUEST.replace(CLOSE, CLOSE + "        await self.send(Closed())\n")),
        "the close alone under the limit test",
    ),
    "limit-arm-stops-the-sender": (
        module(REQUEST.replace(CLOSE, CLOSE + "        self.closed = True\n")),
        "the close alone under the limit test",
    ),
    "limit-read-through-a-property": (
        module(
            _request("self.keep_alive_requests > self.request_limit"),
            after="@property\ndef request_limit(self):\n"
            "    return self.config.keep_alive_max_requests\n",
        ),
        "not properties",
    ),
    # "Not applicable" while the fault stays: the close is in a method the branch calls.
    "close-in-a-helper": (
        module(
            REQUEST.replace(CLOSE, "        await self._goodbye()\n"),
            after="async def _goodbye(self):\n    self.connection.close_connection()\n",
        ),
        "directly in the RequestReceived branch",
    ),
    # The dispatch sees every event h2 reports, or the counter and the limit are not
    # what the fix assumes they are.
    "requests-filtered-by-the-caller": (
        module().replace(
            "    await self._handle_events(events)\n",
            "    await self._handle_events([e for e in events if keep(e)])\n",
        ),
        "every use of _handle_events a call",
    ),
    # Once over the limit, always over it: the counter only grows.
    "counter-decremented": (
        module(after=_count("self.keep_alive_requests -= 1")),
        "assigned 0 in __init__ and otherwise only `+=` a positive int",
    ),
    "counter-reset-outside-init": (
        module(after=_count("self.keep_alive_requests = 0")),
        "assigned 0 in __init__",
    ),
    "counter-grows-by-a-variable": (
        module(after=_count("self.keep_alive_requests += step")),
        "only `+=` a positive int",
    ),
    "counter-grows-by-minus-one": (
        module(after=_count("self.keep_alive_requests += -1")),
        "only `+=` a positive int",
    ),
    "counter-in-a-tuple-assignment": (
        module(after=_count("self.keep_alive_requests, self.x = 5, 0")),
        "assigned 0 in __init__",
    ),
    "counter-lowered-in-a-subclass": (
        module() + "\n\nclass Sub(H2Protocol):\n    def undo(self):\n"
        "        self.keep_alive_requests -= 1\n",
        "only `+=` a positive int",
    ),
    "limit-object-replaced": (
        module(after=_count("self.config = other")),
        "`self.config` (the limit is read through it) assigned once, in __init__",
    ),
    # The limit test is evaluated again: attribute reads and one comparison only.
    "limit-test-calls": (
        module(_request("self.count() > self.config.keep_alive_max_requests")),
        "only attribute reads and one comparison",
    ),
    "limit-read-through-a-call": (
        module(_request("self.keep_alive_requests > self.limit()")),
        "only attribute reads and one comparison",
    ),
    "limit-test-shrinks": (
        module(_request("self.keep_alive_requests < self.config.keep_alive_max_requests")),
        "only attribute reads and one comparison",
    ),
    "chained-comparison": (
        module(_request("0 < self.keep_alive_requests > self.config.max")),
        "only attribute reads and one comparison",
    ),
    "limit-a-module-name": (
        module(_request("self.keep_alive_requests > LIMIT")),
        "only attribute reads and one comparison",
    ),
    # The close it replaces.
    "close-with-arguments": (
        module(REQUEST.replace("close_connection()", "close_connection(error_code=0)")),
        "close_connection()` without arguments",
    ),
    "close-not-under-a-test": (
        module(
            "if isinstance(event, h2.events.RequestReceived):\n"
            "    await self._create_stream(event)\n"
            "    self.connection.close_connection()\n"
        ),
        "`if <limit>:` directly in the RequestReceived branch",
    ),
    "limit-test-with-else": (
        module(REQUEST + "    else:\n        pass\n"),
        "without elif/else",
    ),
    "two-closes": (
        module(REQUEST + CLOSE.replace("        ", "    ")),
        "one close_connection() in the RequestReceived branch",
    ),
    "close-on-another-object": (
        module(init=INIT.replace("h2.connection.H2Connection", "Proxy")),
        "an h2 H2Connection",
    ),
    # The send the GOAWAY takes.
    "raw-data-from-elsewhere": (
        module(
            imports=IMPORTS.replace("RawData, ", "")
            + "from somewhere.transport.frames import RawData\n"
        ),
        "RawData bound once, imported from the package's events module",
    ),
    "raw-data-from-the-protocol-events": (
        module(
            imports=IMPORTS.replace("RawData, ", "").replace(
                "import Response,", "import RawData, Response,"
            )
        ),
        "RawData bound once",
    ),
    "raw-data-bound-twice": (
        module() + "\n\nRawData = bytes\n",
        "RawData bound once",
    ),
    "raw-data-imported-twice": (
        module(imports=IMPORTS + "from ..events import RawData\n"),
        "RawData bound once",
    ),
    "raw-data-under-another-name": (
        module(imports=IMPORTS.replace("RawData,", "RawData as Raw,")),
        "RawData bound once",
    ),
    "raw-data-rebound-in-the-method": (
        module(
            REQUEST.replace(
                "    await self._create", "    RawData = Wrapped\n    await self._create"
            )
        ),
        "RawData never rebound in _handle_events",
    ),
    "pending-bytes-sent-otherwise": (
        module(
            methods="async def _flush(self):\n"
            "    self.transport.write(self.connection.data_to_send())\n" + CREATE
        ),
        "one way the class sends h2's bytes",
    ),
    "two-ways-of-sending": (
        module(
            after="async def _flush_other(self):\n"
            "    await self.writer(RawData(data=self.connection.data_to_send()))\n"
        ),
        "one way the class sends h2's bytes",
    ),
    "pending-local-rebound": (
        module(methods=FLUSH.replace("    if data", "    data = self.extra\n    if data") + CREATE),
        "one way the class sends h2's bytes",
    ),
    "synchronous-dispatch": (
        _in_method(
            module().replace("async def _handle_events", "def _handle_events"),
            "_handle_events",
            "await ",
            "",
        ),
        "an async method",
    ),
    # The second half: both or nothing.
    "no-stream-closed-branch": (
        module(closed="elif isinstance(event, Other):\n    pass\n"),
        "one StreamClosed branch",
    ),
    "no-close-once-idle": (
        module(closed="elif isinstance(event, StreamClosed):\n    await self._close(event)\n"),
        "one `if <idle> and <terminated>",
    ),
    "close-once-idle-without-and": (
        module(closed=CLOSED.replace("idle and self.context", "self.context")),
        "guarded by `<idle> and <terminated>`",
    ),
    "idle-test-a-call": (
        module(closed=CLOSED.replace("if idle and", "if self.idle() and")),
        "guarded by `<idle> and <terminated>`",
    ),
    "close-once-idle-with-else": (
        module(
            closed=CLOSED.replace(
                "    await self.send", "    else:\n        pass\n    await self.send"
            )
        ),
        "without elif/else",
    ),
    "idle-close-on-another-connection": (
        module(closed=CLOSED.replace("self.connection.close", "self.other.close")),
        "`self.connection.close_connection()` (the same h2 connection",
    ),
    "two-stream-closed-branches": (
        module(after=_another_method("isinstance(event, StreamClosed)")),
        "one StreamClosed branch",
    ),
    "stream-send-overridden": (
        module()
        + "\n\nclass Sub(H2Protocol):\n    async def stream_send(self, event):\n        pass\n",
        "stream_send defined in one class of the module",
    ),
    "stream-send-defined-twice": (
        module(after="async def stream_send(self, event):\n    pass\n"),
        "one definition of stream_send",
    ),
    "stream-send-decorated": (
        module().replace("    async def stream_send", "    @traced\n    async def stream_send"),
        "an undecorated method",
    ),
    "stream-send-rebinds-self": (
        module(closed=CLOSED.replace("    idle =", "    self = self.parent\n    idle =")),
        "`self` never rebound in stream_send",
    ),
    "earlier-arm-takes-stream-events": (
        module(
            closed=CLOSED.replace(
                "elif isinstance(event, StreamClosed)",
                "elif isinstance(event, StreamEvent):\n    pass\n"
                "elif isinstance(event, StreamClosed)",
            )
        ),
        "no test before the StreamClosed branch",
    ),
    "handle-events-overridden": (
        module()
        + "\n\nclass Sub(H2Protocol):\n    async def _handle_events(self, events):\n        pass\n",
        "_handle_events defined in one class of the module",
    ),
    "served-class-is-another": (
        module().replace("class H2Protocol:", "class Legacy:")
        + "\n\nclass H2Protocol:\n    pass\n",
        "H2Protocol (the class the server imports) to be Legacy",
    ),
    "two-request-branches": (
        module(after=_another_method("isinstance(event, h2.events.RequestReceived)")),
        "one RequestReceived branch",
    ),
    # A needless refusal: the StreamClosed arm written as `case StreamClosed():`.
    "stream-closed-in-a-match": (
        module(
            after="async def _other(self, event):\n"
            "    match event:\n"
            "        case StreamClosed():\n"
            "            pass\n"
        ),
        "not match/case",
    ),
    # "Applied" while broken: a second close at the limit, where the stream is created,
    # still cuts every response in flight.
    "another-close-over-the-limit": (
        module(
            methods=FLUSH
            + "\n"
            + CREATE
            + "    if self.keep_alive_requests > self.config.keep_alive_max_requests:\n"
            "        self.connection.close_connection()\n"
        ),
        "no close_connection() but the one at the limit",
    ),
    "close-after-a-return": (
        module(REQUEST.replace("    if self.keep", "    return\n    if self.keep")),
        "reachable",
    ),
}


@pytest.mark.parametrize(
    ("source", "expected"), rows(REFUSED, match_statement={"stream-closed-in-a-match"})
)
def test_refused(source: str, expected: str) -> None:
    assert_refused(source, "max_requests", expected)  # every case is valid Python


def test_never_half() -> None:
    """A refused second half leaves the first unchanged too (recorded when not strict)."""
    source, _ = REFUSED["no-close-once-idle"]
    assert_refusal_recorded(source, "max_requests")


# --- the real releases ---------------------------------------------------------------


@pytest.mark.network
def test_release_without_a_request_limit_is_not_applicable() -> None:
    from support.releases import h2_source

    source = h2_source("hypercorn", "0.15.0")
    result = rewrite(source)
    assert [o.outcome for o in result.outcomes] == [Outcome.NOT_APPLICABLE]
    assert result.source == source


@pytest.mark.network
@pytest.mark.parametrize("release", RELEASES, ids=release_ids(RELEASES))
def test_release_is_rewritten(release: tuple[str, str]) -> None:
    """Every release closes at once; only the close and the idle test change."""
    from support.releases import h2_source

    result = rewrite(h2_source(*release))
    [found] = result.outcomes
    assert found.outcome is Outcome.REWRITTEN
    assert result.changed_functions == ("H2Protocol._handle_events", "H2Protocol.stream_send")
    compile(result.source, "h2.py", "exec", dont_inherit=True)
    diff = result.diff().splitlines()
    removed = [line[1:].strip() for line in diff if line.startswith("-") and line[1:2] != "-"]
    added = [line[1:].strip() for line in diff if line.startswith("+") and line[1:2] != "+"]
    assert sorted(removed) == [
        "if idle and self.context.terminated.is_set():",
        "self.connection.close_connection()",
    ]
    expected = [line.strip() for line in (IDLE_FIXED + GOAWAY).splitlines()]
    assert sorted(added) == sorted(expected)


# --- every subset of the fixes, on the releases the issue names ----------------------

SUBSET_RELEASES = [
    ("hypercorn", "0.16.0"),
    ("hypercorn", "0.17.3"),
    ("hypercorn", "0.18.0"),
    ("anycorn", "0.20.1"),
]


def _changed_lines(before: str, after: str) -> tuple[set[str], set[str]]:
    import difflib

    diff = list(difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm=""))
    removed = {line[1:].strip() for line in diff if line.startswith("-") and line[1:2] != "-"}
    added = {line[1:].strip() for line in diff if line.startswith("+") and line[1:2] != "+"}
    return removed, added


@pytest.mark.network
@composed_on_default_python
@pytest.mark.parametrize("release", SUBSET_RELEASES, ids=release_ids(SUBSET_RELEASES))
def test_every_subset_of_the_fixes_composes(release: tuple[str, str]) -> None:
    """The runtime applies fixes in table order on one tree: for every subset, each fix does
    what it does alone (same outcome, same lines changed), and the result compiles.

    Built as a tree of subsets, each from the subset without its last fix, so each fix
    runs once per subset instead of once per fix in it."""
    from h2fix._environment import Environment
    from h2fix.fixes import FIXES
    from support.releases import h2_source

    source = h2_source(*release)
    environment = Environment.detect()
    alone = {}
    for fix in FIXES:
        tree, outcome = fix.load()(cst.parse_module(source), environment)
        alone[fix.name] = (outcome.outcome, _changed_lines(source, tree.code))
    built: dict[tuple[str, ...], cst.Module] = {(): cst.parse_module(source)}
    for size in range(1, len(FIXES) + 1):
        for subset in itertools.combinations(FIXES, size):
            names = tuple(fix.name for fix in subset)
            tree, outcome = subset[-1].load()(built[names[:-1]], environment)
            built[names] = tree
            assert outcome.outcome is alone[names[-1]][0], (names, outcome)
            code = tree.code
            compile(code, "h2.py", "exec", dont_inherit=True)
            removed, added = _changed_lines(source, code)
            expected_removed = set().union(*(alone[name][1][0] for name in names))
            expected_added = set().union(*(alone[name][1][1] for name in names))
            assert (removed, added) == (expected_removed, expected_added), names
