"""An adversarial drift corpus for the `closed_stream_data` fix, written without reading its
matcher (nor its own table of rewrite cases).

Every variant is a small anchored edit of the real Hypercorn 0.17.3 protocol/h2.py
(downloaded at test time, never committed), with a verdict for the `closed_stream_data` fix:

- "fix": it must rewrite the variant, and the served variant must hold up;
- "leave": it must change nothing (the repair is already there);
- "refuse": it must raise UnrecognisedStructureError (an H2FixError) and change nothing;
- "a|b": either is right; a rewrite must then hold up when served.

The one rule checked: never a silent wrong patch. So whatever the verdict, every variant the
fix rewrites, or says is already repaired against the verdict, is also served with
h2fix.apply(fixes=["closed_stream_data"]) by a real Hypercorn (trio worker: an exception in
`_handle_events` ends the whole server; asyncio only leaves the connection hanging, which
costs a timeout to see) and driven by a real h2 client on one connection: a request waits
for its body while another is answered (413) before its body is read; the client then sends
the answered stream three connection windows of DATA and END_STREAM (a server that does not
acknowledge DATA it discards leaves the shared window shut), then the waiting request's body,
then a new upload of two windows; both are echoed and must come back whole, and the server
must still answer a new connection.

Controls: the unrepaired release fails the check, and so does a release that skips such DATA
without acknowledging it (a bare `continue`); a release repaired by hand passes it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import h2fix
from h2fix import H2FixError, Outcome
from h2fix._probe import H2Client, free_port
from h2fix._probe import serving as serving_command
from support.edits import (
    Edit,
    handle_events_decorated,
    in_method,
    match_case_dispatch,
    method_text,
    protocol_rebound_to_subclass,
    replace_once,
    replacing,
)
from support.isolated import copy_package
from support.late_data import WINDOW, answered_early, send_body
from support.releases import h2_source
from support.servers import TESTS, WITH_FIX
from support.verdicts import check_verdict
from support.versions import needs_match_statement, served_on_default_python

CSD = "closed_stream_data"

# --- anchors in 0.17.3 ------------------------------------------------------------------

DATA_TEST = "            elif isinstance(event, h2.events.DataReceived):\n"
HANDLE_BODY = (
    "                await self.streams[event.stream_id].handle(\n"
    "                    Body(stream_id=event.stream_id, data=event.data)\n"
    "                )\n"
)
ACK = (
    "                self.connection.acknowledge_received_data(\n"
    "                    event.flow_controlled_length, event.stream_id\n"
    "                )\n"
)
DATA_ARM = DATA_TEST + HANDLE_BODY + ACK
ENDED_TEST = "            elif isinstance(event, h2.events.StreamEnded):\n"
ENDED_LOOKUP = (
    "                    await self.streams[event.stream_id]"
    ".handle(EndBody(stream_id=event.stream_id))\n"
)
ENDED_ARM = (
    ENDED_TEST + "                try:\n" + ENDED_LOOKUP + "                except KeyError:\n"
    "                    # Response sent before full request received,\n"
    "                    # nothing to do already closed.\n"
    "                    pass\n"
)
#: Hypercorn <= 0.16's StreamEnded arm: no guard at all.
ENDED_UNGUARDED = ENDED_TEST + ENDED_LOOKUP[4:]
LOOP_HEAD = (
    "        for event in events:\n            if isinstance(event, h2.events.RequestReceived):\n"
)
REQUEST_TEST = "            if isinstance(event, h2.events.RequestReceived):\n"
HANDLE_EVENTS_DEF = "    async def _handle_events(self, events: List[h2.events.Event]) -> None:\n"
INIT_STREAMS = "        self.streams: Dict[int, Union[HTTPStream, WSStream]] = {}\n"
INIT_TAIL = "        self.stream_buffers: Dict[int, StreamBuffer] = {}\n"
FLUSH_DEF = "    async def _flush(self) -> None:\n"
CLASS_HEAD = "class H2Protocol:\n"
TYPING_IMPORT = "from typing import Awaitable,"
H2_IMPORTS = "import h2\nimport h2.connection\nimport h2.events\nimport h2.exceptions\n"


def data_arm(*body: str) -> str:
    """The DataReceived arm with `body` (lines at the arm's indentation, newline included)."""
    return DATA_TEST + "".join(body)


def with_data_arm(*body: str) -> Edit:
    return replacing((DATA_ARM, data_arm(*body)))


# --- benign drift: the fix must still apply, and the result must serve ----------------

comments = with_data_arm(
    "                # The stream may have answered already; its body still counts.\n",
    HANDLE_BODY.replace("handle(\n", "handle(  # the app reads it\n"),
    "                # Give the window back: h2 does not do it on its own.\n",
    ACK,
)
event_variable_renamed = in_method("_handle_events", lambda m: re.sub(r"\bevent\b", "h2_event", m))
data_received_by_name = replacing(
    ("import h2.exceptions\n", "import h2.exceptions\nfrom h2.events import DataReceived\n"),
    (DATA_TEST, "            elif isinstance(event, DataReceived):\n"),
)
logging_statements = replacing(
    (TYPING_IMPORT, "import logging\n" + TYPING_IMPORT),
    ("BUFFER_HIGH_WATER = ", "log = logging.getLogger(__name__)\n\nBUFFER_HIGH_WATER = "),
    (
        DATA_ARM,
        data_arm(
            '                log.debug("%d bytes, stream %d", len(event.data), event.stream_id)\n',
            HANDLE_BODY,
            ACK,
            '                log.debug("acknowledged %d", event.flow_controlled_length)\n',
        ),
    ),
)
arms_reordered = replacing((DATA_ARM + ENDED_ARM, ENDED_ARM + DATA_ARM))


def streams_renamed_everywhere(text: str) -> str:
    return text.replace("self.streams", "self.open_streams")


# Hypercorn <= 0.16: END_STREAM for a finished stream raises KeyError as well.
stream_ended_unguarded = replacing((ENDED_ARM, ENDED_UNGUARDED))
ack_before_handle = with_data_arm(ACK, HANDLE_BODY)
ack_by_keyword = with_data_arm(
    HANDLE_BODY,
    "                self.connection.acknowledge_received_data(\n"
    "                    acknowledged_size=event.flow_controlled_length,\n"
    "                    stream_id=event.stream_id,\n"
    "                )\n",
)
stream_id_in_a_local = with_data_arm(
    "                stream_id = event.stream_id\n",
    HANDLE_BODY.replace("self.streams[event.stream_id]", "self.streams[stream_id]"),
    ACK.replace(", event.stream_id", ", stream_id"),
)
isinstance_tuple = replacing(
    (DATA_TEST, "            elif isinstance(event, (h2.events.DataReceived,)):\n")
)


# --- a repair that is already there ----------------------------------------------------------

GUARDED_HANDLE = "                if event.stream_id in self.streams:\n" + HANDLE_BODY.replace(
    "\n    ", "\n        "
).replace("                await", "                    await", 1)
guarded_with_in = with_data_arm(GUARDED_HANDLE, ACK)
# anycorn 0.20's shape (its text is not copied: the same two steps, in other words).
guarded_with_get = with_data_arm(
    "                receiver = self.streams.get(event.stream_id)\n",
    "                if receiver is not None:\n",
    "                    await receiver.handle(Body(stream_id=event.stream_id, data=event.data))\n",
    ACK,
)
try_except_around_handle = with_data_arm(
    "                try:\n",
    HANDLE_BODY.replace("\n    ", "\n        ").replace(
        "                await", "                    await", 1
    ),
    "                except KeyError:\n",
    "                    pass  # answered already: the body has no reader\n",
    ACK,
)
suppress_around_handle = replacing(
    (TYPING_IMPORT, "import contextlib\n" + TYPING_IMPORT),
    (
        DATA_ARM,
        data_arm(
            "                with contextlib.suppress(KeyError):\n",
            HANDLE_BODY.replace("\n    ", "\n        ").replace(
                "                await", "                    await", 1
            ),
            ACK,
        ),
    ),
)
# DATA repaired, END_STREAM as in Hypercorn <= 0.16: the END_STREAM still ends the server.
data_guarded_ended_unguarded = replacing(
    (DATA_ARM, data_arm(GUARDED_HANDLE, ACK)), (ENDED_ARM, ENDED_UNGUARDED)
)

# --- a guard that is there but skips the acknowledgement (not a repair: it stalls) ------------

guard_continue_skips_ack = with_data_arm(
    "                if event.stream_id not in self.streams:\n",
    "                    continue  # answered already\n",
    HANDLE_BODY,
    ACK,
)
guard_covers_ack = with_data_arm(GUARDED_HANDLE, "    " + ACK.replace("\n    ", "\n        "))
try_around_handle_and_ack = with_data_arm(
    "                try:\n",
    HANDLE_BODY.replace("\n    ", "\n        ").replace(
        "                await", "                    await", 1
    ),
    ACK.replace("\n    ", "\n        ").replace(
        "                self", "                    self", 1
    ),
    "                except KeyError:\n",
    "                    pass\n",
)
except_key_error_continue = with_data_arm(
    "                try:\n",
    HANDLE_BODY.replace("\n    ", "\n        ").replace(
        "                await", "                    await", 1
    ),
    "                except KeyError:\n",
    "                    continue  # answered already\n",
    ACK,
)

# --- the objects the inserted code acts on -----------------------------------------------

LATE_DATA_SINK = '''class LateData:
    """Stands in for a finished stream: counts the request data that comes after the
    response (for the worker's metrics) and drops it."""

    idle = True
    frames = 0

    async def handle(self, event: StreamEvent) -> None:
        LateData.frames += 1


class H2Protocol:
'''
# No KeyError can happen: a finished stream's id gives a fresh sink, which counts the DATA.
# The fault is not there; a guard would change what the sink sees.
streams_defaultdict_sink = replacing(
    (H2_IMPORTS, "import collections\n\n" + H2_IMPORTS),
    (CLASS_HEAD, LATE_DATA_SINK),
    (
        INIT_STREAMS,
        "        self.streams: Dict[int, Any] = collections.defaultdict(LateData)\n",
    ),
    (TYPING_IMPORT, "from typing import Any, Awaitable,"),
)
STREAM_TABLE = '''class StreamTable(Dict[int, Any]):
    """The open streams; a finished one's id gives the sink that counts its late data."""

    def __missing__(self, stream_id: int) -> Any:
        return LateData()


class H2Protocol:
'''
# A plain dict in __init__, the counting sink once the connection came by an h2c upgrade.
streams_rebound_on_upgrade = replacing(
    (CLASS_HEAD, LATE_DATA_SINK.replace(CLASS_HEAD, STREAM_TABLE)),
    (TYPING_IMPORT, "from typing import Any, Awaitable,"),
    (
        "            self.connection.initiate_upgrade_connection(settings)\n",
        "            self.connection.initiate_upgrade_connection(settings)\n"
        "            self.streams = StreamTable(self.streams)\n",
    ),
)
streams_alias_local = replacing(
    (HANDLE_EVENTS_DEF, HANDLE_EVENTS_DEF + "        streams = self.streams\n"),
    (DATA_ARM, data_arm(HANDLE_BODY.replace("self.streams[", "streams["), ACK)),
)
COUNT_DATA = (
    "    def _count_data(self, event: h2.events.DataReceived) -> int:\n"
    "        self.data_frames += 1\n"
    "        return event.stream_id\n\n"
)
key_with_side_effect = replacing(
    (
        DATA_ARM,
        data_arm(HANDLE_BODY.replace("[event.stream_id]", "[self._count_data(event)]"), ACK),
    ),
    (FLUSH_DEF, COUNT_DATA + FLUSH_DEF),
    (INIT_TAIL, INIT_TAIL + "        self.data_frames = 0\n"),
)
# The body goes to the stream created last, whatever stream the DATA came on (a bug of the
# variant's own): the lookup's key is not the event's stream id.
key_from_elsewhere = replacing(
    (INIT_TAIL, INIT_TAIL + "        self.current_stream_id = 0\n"),
    (
        "                    await self._create_stream(event)\n",
        "                    await self._create_stream(event)\n"
        "                    self.current_stream_id = event.stream_id\n",
    ),
    (DATA_ARM, data_arm(HANDLE_BODY.replace("[event.stream_id]", "[self.current_stream_id]"), ACK)),
)
lookup_in_a_local = with_data_arm(
    "                stream = self.streams[event.stream_id]\n",
    "                await stream.handle(Body(stream_id=event.stream_id, data=event.data))\n",
    ACK,
)
# .get() instead of []: no KeyError, an AttributeError on None instead; the same fault.
get_then_handle_unguarded = with_data_arm(
    "                stream = self.streams.get(event.stream_id)\n",
    "                await stream.handle(Body(stream_id=event.stream_id, data=event.data))\n",
    ACK,
)
# logging evaluates its arguments whatever the level: this lookup raises first.
lookup_in_logging_call = replacing(
    (TYPING_IMPORT, "import logging\n" + TYPING_IMPORT),
    ("BUFFER_HIGH_WATER = ", "log = logging.getLogger(__name__)\n\nBUFFER_HIGH_WATER = "),
    (
        DATA_ARM,
        data_arm(
            '                log.debug("DATA for %r", self.streams[event.stream_id])\n',
            HANDLE_BODY,
            ACK,
        ),
    ),
)

# --- the acknowledgement --------------------------------------------------------------------

FLOW = '''class ReceiveWindow:
    """Gives the connection's receive window back in batches (fewer WINDOW_UPDATE frames)."""

    def __init__(self, connection: h2.connection.H2Connection) -> None:
        self.connection = connection
        self.owed: Dict[int, int] = {}

    def acknowledge_received_data(self, size: int, stream_id: int) -> None:
        self.owed[stream_id] = self.owed.get(stream_id, 0) + size
        if self.owed[stream_id] >= 16_384:
            self.connection.acknowledge_received_data(self.owed.pop(stream_id), stream_id)


class H2Protocol:
'''
ack_through_a_batching_object = replacing(
    (CLASS_HEAD, FLOW),
    (INIT_TAIL, INIT_TAIL + "        self.receive_window = ReceiveWindow(self.connection)\n"),
    (DATA_ARM, data_arm(HANDLE_BODY, ACK.replace("self.connection.", "self.receive_window."))),
)
# Without padding the same number; with it, the padding is never given back.
ack_with_data_length = with_data_arm(
    HANDLE_BODY, ACK.replace("event.flow_controlled_length", "len(event.data)")
)
ack_in_the_same_statement = with_data_arm(
    "                await self.streams[event.stream_id].handle(Body(stream_id=event.stream_id, "
    "data=event.data)); self.connection.acknowledge_received_data(event.flow_controlled_length, "
    "event.stream_id)  # noqa: E702\n"
)
ACKNOWLEDGED = (
    "    def _acknowledged(self, event: h2.events.DataReceived) -> int:\n"
    "        self.connection.acknowledge_received_data(\n"
    "            event.flow_controlled_length, event.stream_id\n"
    "        )\n"
    "        return event.stream_id\n\n"
)
ack_inside_the_key = replacing(
    (DATA_ARM, data_arm(HANDLE_BODY.replace("[event.stream_id]", "[self._acknowledged(event)]"))),
    (FLUSH_DEF, ACKNOWLEDGED + FLUSH_DEF),
)

# --- which code the server runs ---------------------------------------------------------------

RECEIVE_DATA = (
    "    async def _receive_data(self, event: h2.events.DataReceived) -> None:\n"
    + HANDLE_BODY[8:].replace("\n        ", "\n")
    + ACK[8:].replace("\n        ", "\n")
    + "\n"
)
handle_in_a_helper = replacing(
    (DATA_ARM, data_arm("                await self._receive_data(event)\n")),
    (FLUSH_DEF, RECEIVE_DATA + FLUSH_DEF),
)
# The old inline code is left after `continue`: dead. The helper, which runs, looks up unguarded.
helper_then_dead_inline_code = replacing(
    (
        DATA_ARM,
        data_arm(
            "                await self._receive_data(event)\n",
            "                continue\n",
            HANDLE_BODY,
            ACK,
        ),
    ),
    (FLUSH_DEF, RECEIVE_DATA + FLUSH_DEF),
)
RUNS = "        # The definition that runs.\n"


def defined_twice(text: str) -> str:
    method = method_text(text, "_handle_events")
    body = method.index("\n") + 1
    return replace_once(text, FLUSH_DEF, method[:body] + RUNS + method[body:] + FLUSH_DEF)


def overridden_in_subclass(text: str) -> str:
    override = method_text(text, "_handle_events")
    text = replace_once(text, CLASS_HEAD, "class _BaseH2Protocol:\n")
    return text + "\n\nclass H2Protocol(_BaseH2Protocol):\n" + override.rstrip("\n") + "\n"


def handle_events_aliased(text: str) -> str:
    text = replace_once(
        text, HANDLE_EVENTS_DEF, HANDLE_EVENTS_DEF.replace("_handle_events", "_handle_h2_events")
    )
    return replace_once(text, FLUSH_DEF, "    _handle_events = _handle_h2_events\n\n" + FLUSH_DEF)


# DATA is handled before the chain and never reaches the chain's (now dead) DataReceived arm.
earlier_arm_takes_data = replacing(
    (
        LOOP_HEAD,
        "        for event in events:\n"
        "            if isinstance(event, h2.events.DataReceived):\n"
        + HANDLE_BODY
        + ACK
        + "                continue\n"
        + REQUEST_TEST,
    )
)


# --- more wrong guards and keys -----------------------------------------------------------

# `stream_id` is left over from the last RequestReceived: the newest stream, not the DATA's.
stale_local_key = replacing(
    (
        "                    await self._create_stream(event)\n",
        "                    stream_id = event.stream_id\n"
        "                    await self._create_stream(event)\n",
    ),
    (DATA_ARM, data_arm(HANDLE_BODY.replace("[event.stream_id]", "[stream_id]"), ACK)),
)
# A guard that tests the wrong way round: the lookup runs exactly when it fails.
guard_inverted = with_data_arm(
    GUARDED_HANDLE.replace(" in self.streams", " not in self.streams"), ACK
)
# A guard on another dict: the send buffer goes once END_STREAM is sent, the stream only once
# the app's StreamClosed arrives, so the two disagree for a while.
guard_on_other_dict = with_data_arm(
    GUARDED_HANDLE.replace(" in self.streams", " in self.stream_buffers"), ACK
)
second_lookup_after_ack = with_data_arm(
    HANDLE_BODY,
    ACK,
    "                self.streams[event.stream_id].data_frames = 1  # seen at least one\n",
)
# END_STREAM through .get(): None for a finished stream, and AttributeError ends the server.
ended_get_unguarded = replacing(
    (
        ENDED_ARM,
        ENDED_TEST + "                await self.streams.get(event.stream_id).handle(\n"
        "                    EndBody(stream_id=event.stream_id)\n"
        "                )\n",
    )
)
ended_except_reraises = replacing(
    (ENDED_ARM, ENDED_ARM.replace("                    pass\n", "                    raise\n"))
)
ended_except_other_error = replacing(
    (ENDED_ARM, ENDED_ARM.replace("except KeyError:", "except LookupError:"))
)


# Late DATA dropped before the dispatch, unacknowledged: no KeyError, a stalled connection
# instead. A guard in the DataReceived arm changes nothing, and "still acknowledging the
# DATA" would be untrue: the bytes never reach the arm.
LIVE_EVENTS = (
    "[\n"
    "            e\n"
    "            for e in events\n"
    "            if not isinstance(e, h2.events.DataReceived) or e.stream_id in self.streams\n"
    "        ]\n"
)
late_data_filtered_before_loop = replacing(
    (
        LOOP_HEAD,
        "        # DATA for a stream already answered has no reader: drop it here.\n"
        "        events = " + LIVE_EVENTS + LOOP_HEAD,
    )
)
late_data_filtered_by_caller = replacing(
    (
        "                await self._handle_events(events)\n",
        "                # DATA for a stream already answered has no reader: drop it here.\n"
        "                live = "
        + LIVE_EVENTS.replace("\n    ", "\n            ").replace(
            "\n        ]", "\n                ]"
        )
        + "                await self._handle_events(live)\n",
    )
)

# --- the corpus --------------------------------------------------------------------------------


def changed_in(method: str, *, last: bool = False) -> Callable[[str, str], bool]:
    """The rewrite changed `method` (the definition that runs)."""
    return lambda before, after: (
        method_text(before, method, last=last) != method_text(after, method, last=last)
    )


def occurs(needle: str, count: int, method: str = "_handle_events") -> Callable[[str, str], bool]:
    return lambda before, after: method_text(after, method).count(needle) == count


@dataclass(frozen=True)
class Variant:
    make: Edit
    #: "fix", "leave", "refuse" or alternatives joined by "|".
    verdict: str
    #: (holds of (variant, rewrite), what it means) for a rewrite of the variant.
    after: tuple[tuple[Callable[[str, str], bool], str], ...] = ()
    #: Functions the fix must change when it rewrites (the definitions that run).
    changes: tuple[str, ...] = ()
    match_statement: bool = False


VARIANTS: dict[str, Variant] = {
    # benign drift
    "comments": Variant(comments, "fix"),
    "event-variable-renamed": Variant(event_variable_renamed, "fix"),
    "data-received-imported-by-name": Variant(data_received_by_name, "fix"),
    "logging-statements": Variant(logging_statements, "fix"),
    "arms-reordered": Variant(arms_reordered, "fix"),
    "streams-renamed-everywhere": Variant(streams_renamed_everywhere, "fix"),
    "stream-ended-unguarded": Variant(stream_ended_unguarded, "fix"),
    "ack-before-handle": Variant(ack_before_handle, "fix|refuse"),
    "ack-by-keyword": Variant(ack_by_keyword, "fix|refuse"),
    "stream-id-in-a-local": Variant(stream_id_in_a_local, "fix|refuse"),
    "isinstance-tuple": Variant(isinstance_tuple, "fix|refuse"),
    "match-case-dispatch": Variant(match_case_dispatch, "fix|refuse", match_statement=True),
    # the repair already there
    "guarded-with-in": Variant(guarded_with_in, "leave"),
    "guarded-with-get": Variant(guarded_with_get, "leave"),
    "try-except-around-handle": Variant(try_except_around_handle, "leave"),
    "suppress-around-handle": Variant(suppress_around_handle, "leave"),
    "data-guarded-ended-unguarded": Variant(data_guarded_ended_unguarded, "fix"),
    # a guard that skips the acknowledgement: not a repair
    "guard-continue-skips-ack": Variant(guard_continue_skips_ack, "fix|refuse"),
    "guard-covers-ack": Variant(guard_covers_ack, "fix|refuse"),
    "try-around-handle-and-ack": Variant(try_around_handle_and_ack, "fix|refuse"),
    "except-key-error-continue": Variant(except_key_error_continue, "fix|refuse"),
    # the objects the inserted code acts on
    "streams-defaultdict-sink": Variant(streams_defaultdict_sink, "leave|refuse"),
    "streams-rebound-on-upgrade": Variant(streams_rebound_on_upgrade, "refuse"),
    "streams-alias-local": Variant(streams_alias_local, "fix|refuse"),
    "key-with-side-effect": Variant(
        key_with_side_effect,
        "fix|refuse",
        after=((occurs("_count_data(", 1), "the key's side effect is repeated"),),
    ),
    "key-from-elsewhere": Variant(key_from_elsewhere, "refuse"),
    "lookup-in-a-local": Variant(lookup_in_a_local, "fix|refuse"),
    "get-then-handle-unguarded": Variant(get_then_handle_unguarded, "fix|refuse"),
    "lookup-in-logging-call": Variant(lookup_in_logging_call, "fix|refuse"),
    # the acknowledgement
    "ack-through-a-batching-object": Variant(ack_through_a_batching_object, "fix|refuse"),
    "ack-with-data-length": Variant(ack_with_data_length, "fix|refuse"),
    "ack-in-the-same-statement": Variant(ack_in_the_same_statement, "fix|refuse"),
    "ack-inside-the-key": Variant(
        ack_inside_the_key,
        "refuse",
        after=((occurs("_acknowledged(", 1), "the acknowledgement is repeated"),),
    ),
    # which code the server runs
    "handle-in-a-helper": Variant(handle_in_a_helper, "fix|refuse"),
    "helper-then-dead-inline-code": Variant(
        helper_then_dead_inline_code,
        "fix|refuse",
        after=((changed_in("_receive_data"), "only the dead inline code was changed"),),
    ),
    "handle-events-defined-twice": Variant(
        defined_twice,
        "fix|refuse",
        after=((changed_in("_handle_events", last=True), "the later definition is unchanged"),),
    ),
    "handle-events-overridden-in-subclass": Variant(
        overridden_in_subclass, "fix|refuse", changes=("H2Protocol._handle_events",)
    ),
    "protocol-rebound-to-subclass": Variant(
        protocol_rebound_to_subclass, "fix|refuse", changes=("_TracedH2Protocol._handle_events",)
    ),
    "handle-events-decorated": Variant(handle_events_decorated, "fix|refuse"),
    "handle-events-aliased": Variant(handle_events_aliased, "fix|refuse"),
    "earlier-arm-takes-data": Variant(earlier_arm_takes_data, "fix|refuse"),
    # more wrong guards and keys
    "stale-local-key": Variant(stale_local_key, "refuse"),
    "guard-inverted": Variant(guard_inverted, "fix|refuse"),
    "guard-on-other-dict": Variant(guard_on_other_dict, "fix|refuse"),
    "second-lookup-after-ack": Variant(second_lookup_after_ack, "fix|refuse"),
    "ended-get-unguarded": Variant(ended_get_unguarded, "fix|refuse"),
    "ended-except-reraises": Variant(ended_except_reraises, "fix|refuse"),
    "ended-except-lookup-error": Variant(ended_except_other_error, "fix"),
    "late-data-filtered-before-loop": Variant(late_data_filtered_before_loop, "refuse"),
    "late-data-filtered-by-caller": Variant(late_data_filtered_by_caller, "refuse"),
}


def cases() -> list[Any]:
    return [
        pytest.param(name, id=name, marks=needs_match_statement if v.match_statement else ())
        for name, v in VARIANTS.items()
    ]


@pytest.fixture(scope="module")
def original() -> str:
    return h2_source("hypercorn", "0.17.3")


@functools.cache
def lenient_rewrite(text: str) -> h2fix.Rewrite:
    """The rewrite with refusals recorded, not raised (LibCST work: once per variant)."""
    return h2fix.rewrite(text, [CSD], strict=False)


def outcome_of(result: h2fix.Rewrite) -> h2fix.FixOutcome:
    return next(o for o in result.outcomes if o.fix == CSD)


@pytest.mark.parametrize("name", [n for n, v in VARIANTS.items() if not v.match_statement])
def test_variant_compiles(original: str, name: str) -> None:
    """Every variant is code a maintainer could ship: it compiles, so a refusal is about its
    structure, never about broken input."""
    compile(VARIANTS[name].make(original), "h2.py", "exec", dont_inherit=True)


@pytest.mark.parametrize("name", cases())
def test_verdict(original: str, name: str) -> None:
    variant = VARIANTS[name]
    text = variant.make(original)
    assert text != original
    rewritten = check_verdict(text, CSD, variant.verdict)
    if rewritten is None:
        return
    result, outcome = rewritten
    for holds, meaning in variant.after:
        assert holds(text, result.source), f"{meaning}:\n{result.diff()}"
    for function in variant.changes:
        assert function in outcome.functions, f"{function} unchanged: {outcome}"


def test_own_output_is_stable(original: str) -> None:
    """The fix, run again on its own output, has nothing left to do and refuses nothing."""
    once = h2fix.rewrite(original, [CSD])
    assert outcome_of(once).outcome is Outcome.REWRITTEN
    again = h2fix.rewrite(once.source, [CSD])
    assert not again.changed
    assert not outcome_of(again).outcome.changes_code


def test_the_corpus_is_large_enough() -> None:
    assert 35 <= len(VARIANTS) <= 50
    verdicts = {part for v in VARIANTS.values() for part in v.verdict.split("|")}
    assert {"fix", "refuse", "leave"} <= verdicts


# --- serving every variant the fix rewrites, or says is already repaired -------------------

REFUSED_EXIT = 3
TIMEOUT = 10
#: Three connection windows to the finished stream: unacknowledged, the window stays shut.
DISCARDED = 3 * WINDOW
#: The upload after it needs the window back: two windows, framed as one gRPC message.
UPLOADED = b"u" * 2 * WINDOW
ECHO = "/echo"
#: How long the client waits for a window before it calls the connection stalled: sending
#: the whole test takes milliseconds on 127.0.0.1.
STALLED = 4
#: Seconds the server gives open connections when the test stops it (Hypercorn: 3).
GRACE = 0.5

# Serves the test app like support.serve, but applies h2fix itself (a refusal is exit 3, not
# a crash) with only the fixes named by --only-fix (none: the variant as it is), and answers
# /echo with the request body as a plain HTTP response: gRPC's trailers would need the
# trailers fix too, and this corpus serves one fix alone.
LAUNCHER = f"""
import sys

import h2fix
import support.serve as serve


async def echo_app(scope, receive, send):
    if scope["type"] != "http" or scope["path"] != "{ECHO}":
        await serve.app(scope, receive, send)
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    await send({{"type": "http.response.start", "status": 200, "headers": []}})
    await send({{"type": "http.response.body", "body": body}})


serve.debug_app = echo_app

only = [sys.argv[i + 1] for i, arg in enumerate(sys.argv) if arg == "--only-fix"]
try:
    if only:
        print(h2fix.apply("hypercorn", fixes=only), file=sys.stderr, flush=True)
except h2fix.H2FixError as error:
    print(f"REFUSED {{type(error).__name__}}: {{error}}", file=sys.stderr, flush=True)
    raise SystemExit({REFUSED_EXIT})
serve.main()
"""


@dataclass
class Served:
    port: int
    process: subprocess.Popen[bytes]
    log: Path


@pytest.fixture
def serve_variant(tmp_path: Path) -> Iterator[Callable[[str, bool], Served | str]]:
    stack: list[Any] = []

    def start(text: str, fix: bool) -> Served | str:
        """The variant served by the trio worker, with the fix applied or not (when apply()
        refuses, the server's log)."""
        copy_package("hypercorn", tmp_path / "site").write_text(text)
        port = free_port()
        log = tmp_path / "server.log"
        command = [
            sys.executable, "-c", LAUNCHER, "--no-fix", *(["--only-fix", CSD] if fix else []),
            "--port", str(port), "--worker-class", "trio", "--graceful-timeout", str(GRACE),
        ]  # fmt: skip
        path = [str(tmp_path / "site"), str(TESTS)]
        output = log.open("wb")
        stack.append(output)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
        context = serving_command(command, port, log=output, env=env, timeout=60)
        try:
            process = context.__enter__()
        except H2FixError:  # it exited before listening
            if "REFUSED" in log.read_text():
                return log.read_text()
            raise
        stack.append(context)
        return Served(port, process, log)

    yield start
    for item in reversed(stack):
        if hasattr(item, "__exit__"):
            item.__exit__(None, None, None)
        else:
            item.close()


def late_data_problems(served: Served) -> list[str]:
    """What goes wrong when a client keeps sending after the server has answered (nothing: []).

    One connection: a request waits for its body while another is answered (413) before its
    body is read; that one then gets three connection windows of DATA and END_STREAM; then
    the waiting request's body, then a new upload of two windows. Both are echoed: each
    must get its own body back, whole."""
    deadline = time.monotonic() + STALLED
    problems = []
    client = H2Client(served.port, window=WINDOW, timeout=TIMEOUT)
    try:
        waiting = client.start_open(ECHO)
        early = answered_early(client)
        send_body(client, early, b"d" * DISCARDED, deadline)
        send_body(client, waiting, b"waiting", deadline)
        upload = client.start_open(ECHO)
        send_body(client, upload, UPLOADED, deadline)
        expected = {"waiting": b"waiting", "upload": UPLOADED}
        for (name, body), response in zip(expected.items(), client.wait(waiting, upload)):
            if response.body != body:
                shown = f"{response.body[:20]!r}.. ({len(response.body)} bytes), {response.events}"
                problems.append(f"the {name} request after the late DATA got {shown}")
    except OSError as error:  # the connection dropped, a read timed out, or a window stayed shut
        problems.append(f"the connection failed after the late DATA: {error!r}")
    finally:
        client.close()
    if problems:  # a server that is exiting: let it finish writing its traceback to the log
        with contextlib.suppress(subprocess.TimeoutExpired):
            served.process.wait(2)
    if served.process.poll() is not None:
        return [*problems, f"the server exited: {served.log.read_text()[-2000:]}"]
    try:
        fresh = H2Client(served.port, timeout=TIMEOUT)
        try:
            if fresh.call("/hello", b"", grpc=False).body != b"hello":
                problems.append("a new connection was not answered")
        finally:
            fresh.close()
    except OSError as error:
        problems.append(f"a new connection failed: {error!r}")
    return problems


@pytest.mark.server
def test_the_check_catches_the_fault(
    original: str, serve_variant: Callable[[str, bool], Served | str]
) -> None:
    """The unmodified release, unrepaired, fails the check: the KeyError ends the server."""
    served = serve_variant(original, False)
    assert isinstance(served, Served), served
    assert late_data_problems(served)


@pytest.mark.server
def test_the_check_catches_a_skip_without_acknowledging(
    original: str, serve_variant: Callable[[str, bool], Served | str]
) -> None:
    """A release that skips a finished stream's DATA without acknowledging it survives the
    KeyError but leaves the connection window shut: the check sees the stalled upload."""
    served = serve_variant(VARIANTS["guard-continue-skips-ack"].make(original), False)
    assert isinstance(served, Served), served
    problems = late_data_problems(served)
    assert problems
    assert served.process.poll() is None, "the server died: this control is about the stall"


@pytest.mark.server
def test_the_check_passes_a_repaired_release(
    original: str, serve_variant: Callable[[str, bool], Served | str]
) -> None:
    """A release repaired by hand (no fix applied) passes the check: it asks for what a
    correct server does, nothing more."""
    served = serve_variant(VARIANTS["guarded-with-in"].make(original), False)
    assert isinstance(served, Served), served
    problems = late_data_problems(served)
    assert not problems, "\n".join(problems)


@served_on_default_python
@pytest.mark.server
@pytest.mark.parametrize("name", cases())
def test_variant_serves(
    original: str, name: str, serve_variant: Callable[[str, bool], Served | str]
) -> None:
    """Whatever the verdict: if the fix changes this variant, or says it is already
    repaired where the verdict says it is not, the served result holds up."""
    variant = VARIANTS[name]
    text = variant.make(original)
    result = lenient_rewrite(text)
    if result.refusals:
        pytest.skip(f"h2fix refuses this variant: {[str(o) for o in result.outcomes]}")
    if not result.changed and variant.verdict == "leave":
        pytest.skip("left alone, as it should be (test_the_check_passes_a_repaired_release)")
    served = serve_variant(text, WITH_FIX)
    if isinstance(served, str):  # apply() refused: nothing was patched
        assert "refuse" in variant.verdict, f"rewrite() accepts it, apply() refuses: {served}"
        return
    if WITH_FIX and result.changed:
        assert f"{CSD}: applied" in served.log.read_text()
    problems = late_data_problems(served)
    assert not problems, "\n".join([*problems, "server log:", served.log.read_text()[-3000:]])
