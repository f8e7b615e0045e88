"""The `send_state` fix as tables of (before, after), no-op and refusal cases, and on every
release in the version table."""

from __future__ import annotations

import ast
import textwrap

import libcst as cst
import pytest

import h2fix
from h2fix import Outcome, UnrecognisedStructureError
from h2fix._environment import H2_KEYWORD_EVENTS
from support.releases import h2_source
from support.tables import assert_rewritten, release_ids
from support.versions import rows

BUFFER_CLASS = """\
class StreamBuffer:
    async def close(self) -> None:
        self.buffer = bytearray()
"""
INIT = """\
self.priority = priority.PriorityTree()
self.stream_buffers: Dict[int, StreamBuffer] = {}
"""
STORE = """\
self.stream_buffers[request.stream_id] = StreamBuffer()
self.priority.insert_stream(request.stream_id)
"""
SEND_RELEASE = """\
# Stream or connection has closed whilst waiting to send
await self.stream_buffers[stream_id].close()
del self.stream_buffers[stream_id]
self.priority.remove_stream(stream_id)
"""
SEND_RELEASE_FIXED = """\
# Stream or connection has closed whilst waiting to send
if stream_id in self.stream_buffers:
    self.priority.remove_stream(stream_id)
    await self.stream_buffers.pop(stream_id).close()
"""
TRAILERS = """\
elif isinstance(event, Trailers):
    await self.stream_buffers[event.stream_id].drain()
    self.connection.send_headers(event.stream_id, event.headers, end_stream=True)
    await self._flush()
"""
TRAILERS_FIXED = """\
elif isinstance(event, Trailers):
    await self.stream_buffers[event.stream_id].drain()
    self.connection.send_headers(event.stream_id, event.headers, end_stream=True)
    if event.stream_id in self.stream_buffers:
        self.priority.remove_stream(event.stream_id)
        await self.stream_buffers.pop(event.stream_id).close()
    await self._flush()
"""
CATCH = "except (BufferCompleteError, KeyError, priority.MissingStreamError):"
RESET = """\
await self._close_stream(event.stream_id)
await self._window_updated(event.stream_id)
"""
RESET_FIXED = """\
await self._close_stream(event.stream_id)
await self._window_updated(event.stream_id)
if event.stream_id in self.stream_buffers:
    self.priority.remove_stream(event.stream_id)
    await self.stream_buffers.pop(event.stream_id).close()
"""
# anycorn 0.20.1's own release, called from _send_data and the StreamReset branch
HELPER = """\
async def _discard_send_state(self, stream_id: int) -> None:
    buffer = self.stream_buffers.pop(stream_id, None)
    if buffer is not None:
        await buffer.close()
    with contextlib.suppress(priority.MissingStreamError):
        self.priority.remove_stream(stream_id)
"""

# A release written out in the branch, as anycorn's helper does it.
INLINE_RELEASE = """\
buffer = self.stream_buffers.pop(event.stream_id, None)
if buffer is not None:
    self.priority.remove_stream(event.stream_id)
    await buffer.close()
"""

DEFAULTS = {
    "buffer_class": BUFFER_CLASS,
    "init": INIT,
    "send_release": SEND_RELEASE,
    "trailers": TRAILERS,
    "catch": CATCH,
    "reset": RESET,
    "store": STORE,
    "extra": "",
    "events": "async def _handle_events(self, events):",
    "ev": "event",
    "reset_kind": "h2.events.StreamReset",
    "imports": "import priority\n",
    "end_body": "self.stream_buffers[event.stream_id].set_complete()\n",
    "window": "await self._window_updated(event.stream_id)\n",
    "send_before": "",
    "send_catch": "except (h2.exceptions.StreamClosedError, KeyError):",
    "after": "",
    "send_try": "data = await self.stream_buffers[stream_id].pop(10)\n",
}


def block(text: str, depth: int) -> str:
    return textwrap.indent(textwrap.dedent(text), " " * 4 * depth)


def module(**parts: str) -> str:
    """A protocol module in Hypercorn's shape, with some of its parts replaced."""
    p = {**DEFAULTS, **parts}
    return (
        f"import h2.connection\n{p['imports']}\n\n"
        f"{p['buffer_class']}\n\n"
        "class H2Protocol:\n"
        "    def __init__(self) -> None:\n"
        "        self.connection = h2.connection.H2Connection()\n"
        f"{block(p['init'], 2)}\n"
        # As every release: the caller hands the dispatch what h2 received, whole.
        "    async def handle(self, data):\n"
        "        events = self.connection.receive_data(data)\n"
        "        await self._handle_events(events)\n\n"
        "    async def _send_data(self, stream_id: int) -> None:\n"
        f"{block(p['send_before'], 2)}"
        "        try:\n"
        f"{block(p['send_try'], 3)}"
        f"        {p['send_catch']}\n"
        f"{block(p['send_release'], 3)}\n"
        "    async def stream_send(self, event):\n"
        "        try:\n"
        "            if isinstance(event, EndBody):\n"
        f"{block(p['end_body'], 4)}"
        f"{block(p['trailers'], 3)}"
        f"        {p['catch']}\n"
        "            return\n\n"
        f"    {p['events']}\n"
        f"        for {p['ev']} in events:\n"
        f"            if isinstance({p['ev']}, {p['reset_kind']}):\n"
        f"{block(p['reset'], 4)}"
        "            elif isinstance(event, h2.events.WindowUpdated):\n"
        f"{block(p['window'], 4)}\n"
        "    async def _create_stream(self, request):\n"
        f"{block(p['store'], 2)}"
        f"{block(p['extra'], 1)}"
        f"{p['after']}"
    )


def rewrite(source: str) -> h2fix.Rewrite:
    return h2fix.rewrite(source, ["send_state"], environment=H2_KEYWORD_EVENTS)


SEND_DATA, STREAM_SEND, HANDLE_EVENTS = (
    "H2Protocol._send_data",
    "H2Protocol.stream_send",
    "H2Protocol._handle_events",
)
ALL = (SEND_DATA, STREAM_SEND, HANDLE_EVENTS)
FIXED = {"send_release": SEND_RELEASE_FIXED, "trailers": TRAILERS_FIXED, "reset": RESET_FIXED}

MATCH = """\
elif True:
    match event:
        case Trailers():
            self.connection.send_headers(event.stream_id, [], end_stream=True)
"""
MATCH_FIXED = """\
elif True:
    match event:
        case Trailers():
            self.connection.send_headers(event.stream_id, [], end_stream=True)
            if event.stream_id in self.stream_buffers:
                self.priority.remove_stream(event.stream_id)
                await self.stream_buffers.pop(event.stream_id).close()
"""

# id: (parts before, parts after, functions changed)
# Rows written with `match`, which Python < 3.10 cannot compile.
MATCH_ROWS = {"match-case", "guarded-case", "case-shared-with-others", "reset-match-case"}

REWRITES = {
    "hypercorn-0.18": ({}, FIXED, ALL),
    "no-trailers-support": (
        {"trailers": ""},
        {**FIXED, "trailers": ""},
        (SEND_DATA, HANDLE_EVENTS),
    ),
    "trailers-not-ending-the-stream": (
        {"trailers": TRAILERS.replace(", end_stream=True", "")},
        {**FIXED, "trailers": TRAILERS.replace(", end_stream=True", "")},
        (SEND_DATA, HANDLE_EVENTS),
    ),
    "end-stream-positional": (
        {"trailers": TRAILERS.replace("end_stream=True", "True")},
        {**FIXED, "trailers": TRAILERS_FIXED.replace("end_stream=True", "True")},
        ALL,
    ),
    "stream-id-keyword": (
        {
            "trailers": TRAILERS.replace(
                "(event.stream_id, event.headers",
                "(stream_id=event.stream_id, headers=event.headers",
            )
        },
        {
            **FIXED,
            "trailers": TRAILERS_FIXED.replace(
                "(event.stream_id, event.headers",
                "(stream_id=event.stream_id, headers=event.headers",
            ),
        },
        ALL,
    ),
    "attributes-renamed": (
        {
            k: v.replace("stream_buffers", "buffers").replace("self.priority", "self.tree")
            for k, v in {**DEFAULTS, "send_release": SEND_RELEASE}.items()
        },
        {
            k: v.replace("stream_buffers", "buffers").replace("self.priority", "self.tree")
            for k, v in {**DEFAULTS, **FIXED}.items()
        },
        ALL,
    ),
    "event-renamed": (
        {
            "trailers": TRAILERS.replace("event", "ev"),
            "reset": RESET.replace("event", "ev"),
            "ev": "ev",
        },
        {
            **FIXED,
            "trailers": TRAILERS_FIXED.replace("event", "ev"),
            "reset": RESET_FIXED.replace("event", "ev"),
            "ev": "ev",
        },
        ALL,
    ),
    "match-case": ({"trailers": MATCH}, {**FIXED, "trailers": MATCH_FIXED}, ALL),
    "priority-tree-imported": (
        {
            "imports": "from priority import PriorityTree\n",
            "init": INIT.replace("priority.PriorityTree()", "PriorityTree()"),
        },
        {
            **FIXED,
            "imports": "from priority import PriorityTree\n",
            "init": INIT.replace("priority.PriorityTree()", "PriorityTree()"),
        },
        ALL,
    ),
    "priority-module-aliased": (
        {
            "imports": "import priority as prio\n",
            "init": INIT.replace("priority.PriorityTree()", "prio.PriorityTree()"),
        },
        {
            **FIXED,
            "imports": "import priority as prio\n",
            "init": INIT.replace("priority.PriorityTree()", "prio.PriorityTree()"),
        },
        ALL,
    ),
    "reset-ends-with-continue": (
        {"reset": RESET + "continue\n"},
        {**FIXED, "reset": RESET_FIXED + "continue\n"},
        ALL,
    ),
    "reset-already-releases-inline": (
        {"reset": RESET + INLINE_RELEASE},
        {**FIXED, "reset": RESET + INLINE_RELEASE},
        (SEND_DATA, STREAM_SEND),
    ),
    "send-data-already-tolerant": (
        {"send_release": SEND_RELEASE_FIXED},
        FIXED,
        (STREAM_SEND, HANDLE_EVENTS),
    ),
    "anycorn-0.20.1-helper": (
        {
            "send_release": "await self._discard_send_state(stream_id)\n",
            "reset": RESET + "await self._discard_send_state(event.stream_id)\n",
            "extra": HELPER,
        },
        {
            "send_release": "await self._discard_send_state(stream_id)\n",
            "trailers": TRAILERS_FIXED,
            "reset": RESET + "await self._discard_send_state(event.stream_id)\n",
            "extra": HELPER,
        },
        (STREAM_SEND,),
    ),
}


@pytest.mark.parametrize(
    ("before", "after", "functions"), rows(REWRITES, match_statement=MATCH_ROWS)
)
def test_rewrites(before: dict[str, str], after: dict[str, str], functions: tuple[str]) -> None:
    after_module = module(**after)
    assert_rewritten("send_state", module(**before), after_module, functions, H2_KEYWORD_EVENTS)


NOOPS = {
    "already-fixed": (FIXED, Outcome.FIXED_UPSTREAM),
    # Python reads identifiers NFKC-normalised: fullwidth letters are the same names.
    "already-fixed-fullwidth-names": (
        {
            **FIXED,
            "reset": RESET_FIXED.replace(
                "self.stream_buffers", "self.\uff53\uff54\uff52\uff45\uff41\uff4d_buffers"
            ),
        },
        Outcome.FIXED_UPSTREAM,
    ),
    "anycorn-helper-everywhere": (
        {
            "send_release": "await self._discard_send_state(stream_id)\n",
            "trailers": TRAILERS.replace(
                "    await self._flush()", "    await self._discard_send_state(event.stream_id)"
            ),
            "reset": RESET + "await self._discard_send_state(event.stream_id)\n",
            "extra": HELPER,
        },
        Outcome.FIXED_UPSTREAM,
    ),
}


@pytest.mark.parametrize(("parts", "outcome"), NOOPS.values(), ids=NOOPS.keys())
def test_noops(parts: dict[str, str], outcome: Outcome) -> None:
    source = module(**parts)
    result = rewrite(source)
    assert result.source == source
    assert [o.outcome for o in result.outcomes] == [outcome]


def test_not_applicable_without_send_buffers() -> None:
    source = "class H2Protocol:\n    async def stream_send(self, event):\n        pass\n"
    result = rewrite(source)
    assert (result.changed, result.outcomes[0].outcome) == (False, Outcome.NOT_APPLICABLE)


TWO_CLASSES = module() + "\n\n" + module().split("\n\n\n", 1)[1].replace("H2Protocol", "Other")

# id: (parts, expected in the refusal's `expected`)
REFUSALS = {
    # "Applied" while broken: a reset dropped before the dispatch never reaches the branch,
    # so its stream's state would leak whatever the branch releases.
    "resets-filtered-before-the-loop": (
        {
            "events": "async def _handle_events(self, events):\n"
            "        events = [e for e in events if not isinstance(e, h2.events.StreamReset)]"
        },
        "only looped over in _handle_events",
    ),
    "send-data-releases-otherwise": (
        {"send_release": "self.priority.remove_stream(stream_id)\n"},
        "releases the stream's send state",
    ),
    "release-of-another-stream": (
        {"send_release": SEND_RELEASE.replace("del self.stream_buffers[stream_id]", "del x[1]")},
        "releases the stream's send state",
    ),
    "tree-of-another-class": (
        {"init": INIT.replace("priority.PriorityTree()", "MyTree()")},
        "priority.PriorityTree() in __init__ only",
    ),
    "priority-not-imported": (
        {"imports": "import h2\n"},
        "priority.PriorityTree() in __init__ only",
    ),
    "priority-tree-not-from-priority": (
        {
            "imports": "from mytrees import PriorityTree\n",
            "init": INIT.replace("priority.PriorityTree()", "PriorityTree()"),
        },
        "priority.PriorityTree() in __init__ only",
    ),
    "buffers-rebound-later": (
        {"store": STORE + "self.stream_buffers = {}\n"},
        "= {} in __init__ only",
    ),
    "buffers-not-a-dict": (
        {"init": INIT.replace("= {}", "= BufferMap()")},
        "= {} in __init__ only",
    ),
    "buffer-class-without-async-close": (
        {"buffer_class": BUFFER_CLASS.replace("async def close", "def close")},
        "a class defined in this module with an async close()",
    ),
    "buffer-class-from-elsewhere": (
        {"store": STORE.replace("StreamBuffer()", "buffers.StreamBuffer()")},
        "a class defined in this module with an async close()",
    ),
    "buffers-never-stored": ({"store": "pass\n"}, "a method to store buffers in it"),
    "send-headers-nested": (
        {
            "trailers": TRAILERS.replace(
                "    self.connection.send_headers",
                "    if event.headers:\n        self.connection.send_headers",
            )
        },
        "exactly one `<connection>.send_headers(...)` statement, directly",
    ),
    "end-stream-expression": (
        {"trailers": TRAILERS.replace("end_stream=True", "end_stream=done")},
        "end_stream given as the literal True or False",
    ),
    "stream-id-computed": (
        {"trailers": TRAILERS.replace("(event.stream_id, event", "(self.sid(event), event")},
        "as a name or attribute (it is repeated)",
    ),
    "dispatch-misses-missing-node": (
        {"catch": "except (BufferCompleteError, KeyError):"},
        "catches KeyError and MissingStreamError",
    ),
    "guarded-case": (
        {"trailers": MATCH.replace("case Trailers():", "case Trailers() if event.headers:")},
        "`case Trailers():` alone, with no guard",
    ),
    "case-shared-with-others": (
        {"trailers": MATCH.replace("case Trailers():", "case Trailers() | Data():")},
        "`case Trailers():` alone, with no guard",
    ),
    "second-priority-tree": (
        {
            "send_release": SEND_RELEASE.replace("self.priority", "self.send_order"),
            "init": INIT + "self.send_order = priority.PriorityTree()\n",
        },
        "one priority tree: every insert_stream() on self.send_order",
    ),
    "buffers-used-from-another-dict": (
        {"end_body": "self.other_buffers[event.stream_id].set_complete()\n"},
        "one dict of stream buffers",
    ),
    "streams-never-inserted": (
        {"store": "self.stream_buffers[request.stream_id] = StreamBuffer()\n"},
        "streams inserted into self.priority",
    ),
    "send-data-misses-key-error": (
        {"send_catch": "except (h2.exceptions.StreamClosedError, BufferCompleteError):"},
        "the except clause that releases the send state to catch KeyError",
    ),
    "send-data-uses-state-outside-try": (
        {"send_before": "await self._flush()\nself.priority.block(stream_id)\n"},
        "every use of the send state in _send_data inside the try",
    ),
    "reset-pops-buffer-only": (
        {"reset": RESET + "self.stream_buffers.pop(event.stream_id, None)\n"},
        "the StreamReset branch to leave the stream's send buffer and priority node alone",
    ),
    "reset-calls-partial-release": (
        {
            "reset": RESET + "await self._forget(event.stream_id)\n",
            "extra": "async def _forget(self, stream_id):\n"
            "    del self.stream_buffers[stream_id]\n",
        },
        "the StreamReset branch to leave the stream's send buffer and priority node alone",
    ),
    "trailers-pop-buffer-after-send": (
        {
            "trailers": TRAILERS.replace(
                "    await self._flush()", "    self.stream_buffers.pop(event.stream_id)"
            )
        },
        "nothing after the trailers that uses the stream's send buffer",
    ),
    "reset-returns-early": (
        {"reset": "if event.stream_id == 1:\n    return\n" + RESET},
        "no return, raise, break or continue in the StreamReset branch",
    ),
    "handle-events-overridden-in-subclass": (
        {
            "after": "\n\nclass Sub(H2Protocol):\n"
            "    async def _handle_events(self, events):\n"
            "        pass\n"
        },
        "H2Protocol._handle_events not overridden in a subclass",
    ),
    "handle-events-defined-twice": (
        {"extra": "async def _handle_events(self, events):\n    pass\n"},
        "_handle_events is defined again later in the class body",
    ),
    "receiver-reassigned": (
        {"reset": "self = self.parent\n" + RESET},
        "`self` never reassigned in the method",
    ),
    "no-reset-branch": (
        {"reset_kind": "h2.events.Other"},
        "one `if isinstance(<event>, StreamReset):` branch",
    ),
    "reset-in-sync-method": (
        {
            "events": "def _handle_events(self, events):",
            "reset": "self._close_stream(event.stream_id)\n",
            "window": "self._window_updated(event.stream_id)\n",
        },
        "in an `async def` method",
    ),
}


@pytest.mark.parametrize(("parts", "expected"), rows(REFUSALS, match_statement=MATCH_ROWS))
def test_refusals(parts: dict[str, str], expected: str) -> None:
    source = module(**parts)
    cst.parse_module(source)
    with pytest.raises(UnrecognisedStructureError) as caught:
        rewrite(source)
    assert expected in caught.value.expected
    assert caught.value.found


def test_refuses_two_classes_that_release_send_state() -> None:
    with pytest.raises(UnrecognisedStructureError) as caught:
        rewrite(TWO_CLASSES)
    assert caught.value.expected == "one method that releases send state"
    assert "H2Protocol._send_data" in caught.value.found
    assert "Other._send_data" in caught.value.found


# release: (outcome with every fix before it, functions changed)
RELEASES = {
    ("hypercorn", "0.16.0"): (SEND_DATA, HANDLE_EVENTS),
    ("hypercorn", "0.17.0"): ALL,
    ("hypercorn", "0.17.3"): ALL,
    ("hypercorn", "0.18.0"): ALL,
    ("anycorn", "0.18.1"): ALL,
    ("anycorn", "0.18.7"): ALL,
    ("anycorn", "0.19.0"): ALL,
    ("anycorn", "0.20.1"): (STREAM_SEND,),
}


@pytest.mark.network
@pytest.mark.parametrize(("release", "functions"), RELEASES.items(), ids=release_ids(RELEASES))
def test_releases(release: tuple[str, str], functions: tuple[str, ...]) -> None:
    source = h2_source(*release)
    result = h2fix.rewrite(source, strict=True)
    [outcome] = [o for o in result.outcomes if o.fix == "send_state"]
    assert (outcome.outcome, outcome.functions) == (Outcome.REWRITTEN, functions)
    ast.parse(result.source)
    again = h2fix.rewrite(result.source)
    assert not again.changed, again.diff()
