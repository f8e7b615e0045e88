"""A second adversarial drift corpus for the `graceful_shutdown` and `max_requests` fixes,
written without reading their matchers (nor their tables of rewrite cases), to find what
the first corpus (tests/test_drift_shutdown.py) missed.

Every variant is a small anchored edit of a real release's protocol/h2.py (Hypercorn 0.17.3,
Hypercorn 0.18.0 or anycorn 0.20.1, downloaded at test time, never committed), with a
verdict for each fix it concerns:

- "fix": it must rewrite the variant, and a served variant must hold up;
- "leave": it must change nothing (the repair is already there);
- "refuse": it must raise UnrecognisedStructureError (an H2FixError) and change nothing;
- "a|b": either is right; a rewrite must then hold up (and meet the variant's `after`).

The one rule checked: never a silent wrong patch. The variants whose rewrite is not obviously
benign are also served (0.17.3 only, the installed release) with h2fix.apply(fixes=[fix]) by
a real Hypercorn and driven by the first corpus's real h2 clients: a request after SIGTERM
must be reset with REFUSED_STREAM; past keep_alive_max_requests every in-flight response
must complete after a first GOAWAY whose last stream id covers them (2**31-1).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

import h2fix
from support.edits import Edit, method_text, replace_once, replacing
from support.releases import h2_source
from support.servers import WITH_FIX
from support.verdicts import check_verdict
from support.versions import served_on_default_python

# The first corpus's served checks and its server launcher: the same behaviour, asked the
# same way (a second copy of them would drift from the first). serve_variant is a fixture,
# found by its name (the test asks for it through `request`).
from test_drift_shutdown import (  # isort: skip
    Served,
    max_requests_problems,
    serve_variant,  # noqa: F401
    shutdown_problems,
)

GS = "graceful_shutdown"
MR = "max_requests"

H173 = ("hypercorn", "0.17.3")
H180 = ("hypercorn", "0.18.0")
A201 = ("anycorn", "0.20.1")

# --- anchors (the same text in the three releases unless said) -------------------------------

SHUTDOWN_TEST = "                if self.context.terminated.is_set():\n"
RESET = "                    self.connection.reset_stream(event.stream_id)\n"
SETTINGS = (
    "                    self.connection.update_settings(\n"
    "                        {h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 0}\n"
    "                    )\n"
)
CREATE = (
    "                else:\n"
    "                    await self._create_stream(event)\n"
    "                    await self.send(Updated(idle=False))\n"
)
SHUTDOWN_IF = SHUTDOWN_TEST + RESET + SETTINGS + CREATE
LIMIT_TEST = "                if self.keep_alive_requests > self.config.keep_alive_max_requests:\n"
LIMIT_CLOSE = "                    self.connection.close_connection()\n"
LIMIT = LIMIT_TEST + LIMIT_CLOSE
IDLE_TEST = "                if idle and self.context.terminated.is_set():\n"
IDLE_CLOSE = IDLE_TEST + LIMIT_CLOSE + "                    await self._flush()\n"
IDLE_COMPUTED = (
    "                idle = len(self.streams) == 0 or all(\n"
    "                    stream.idle for stream in self.streams.values()\n"
    "                )\n"
)
CLOSE_IN_STREAM_SEND = "                await self._close_stream(event.stream_id)\n" + IDLE_COMPUTED
LOOP_HEAD = "        for event in events:\n"
#: 0.17.3 only (later releases spell it `list[...]`).
HANDLE_EVENTS_DEF = "    async def _handle_events(self, events: List[h2.events.Event]) -> None:\n"
STREAM_SEND_DEF = "    async def stream_send(self, event: StreamEvent) -> None:\n"
INIT_TAIL = "        self.stream_buffers: Dict[int, StreamBuffer] = {}\n"
INIT_COUNTER = "        self.keep_alive_requests = 0\n"
COUNTED = "        self.keep_alive_requests += 1\n        await self.context.mark_request()\n"
PUSH_COUNTED = "            self.keep_alive_requests += 1\n"
FLUSH_DEF = "    async def _flush(self) -> None:\n"
FLUSH_SEND = "            await self.send(RawData(data=data))\n"
IDLE_PROPERTY = "    @property\n    def idle(self) -> bool:\n"
CLASS_HEAD = "class H2Protocol:\n"
EVENTS_IMPORT = "from ..events import Closed, Event, RawData, Updated\n"
HANDLE_RAW = "        if isinstance(event, RawData):\n"
TO_DISPATCH = "            else:\n                await self._handle_events(events)\n"
NEW_CONNECTION = "        self.connection = h2.connection.H2Connection(\n"

UNCHANGED_RESET = "reset_stream(event.stream_id)\n"


def in_function(source: str, name: str) -> str:
    """A module-level function's text (up to the next top-level statement)."""
    start = source.index(f"\nasync def {name}(")
    end = re.compile(r"^\S", re.MULTILINE).search(source, start + 2)
    return source[start : end.start() if end else len(source)]


# --- benign drift: the fixes must still apply -----------------------------------------------

reset_by_keyword = replacing(
    (RESET, RESET.replace("(event.stream_id)", "(stream_id=event.stream_id)"))
)
settings_before_reset = replacing((RESET + SETTINGS, SETTINGS + RESET))
limit_test_multiline = replacing(
    (
        LIMIT_TEST,
        "                if (\n"
        "                    self.keep_alive_requests\n"
        "                    > self.config.keep_alive_max_requests\n"
        "                ):\n",
    )
)
terminated_in_a_local = replacing(
    (LOOP_HEAD, "        shutting_down = self.context.terminated.is_set()\n" + LOOP_HEAD),
    (SHUTDOWN_TEST, "                if shutting_down:\n"),
)
idle_from_all = replacing(
    (IDLE_COMPUTED, "                idle = all(stream.idle for stream in self.streams.values())\n")
)
limit_arm_flushes = replacing((LIMIT, LIMIT + "                    await self._flush()\n"))
reset_in_try = replacing(
    (
        RESET,
        "                    try:\n"
        "                        self.connection.reset_stream(event.stream_id)\n"
        "                    except h2.exceptions.StreamClosedError:\n"
        "                        pass  # the client reset it first\n",
    )
)
# Still only grows: two per request, so the limit comes after half as many requests.
counter_incremented_twice = replacing(
    (CREATE, CREATE + "                    self.keep_alive_requests += 1  # weighs double\n")
)
counter_is_a_property = replacing(
    (INIT_COUNTER, "        self.request_ids: List[int] = []\n"),
    (
        COUNTED,
        "        self.request_ids.append(request.stream_id)\n"
        "        await self.context.mark_request()\n",
    ),
    (PUSH_COUNTED, "            self.request_ids.append(push_stream_id)\n"),
    (
        IDLE_PROPERTY,
        "    @property\n    def keep_alive_requests(self) -> int:\n"
        "        return len(self.request_ids)\n\n" + IDLE_PROPERTY,
    ),
)

# --- the objects the inserted code acts on -----------------------------------------------------

# `self.send` drops raw bytes (they go out through _flush alone, by `self._send`): a GOAWAY
# sent with `self.send(RawData(...))` never reaches the client.
send_filters_raw_data = replacing(
    (
        "        self.send = send\n",
        "        self._send = send\n"
        "        # The streams' events go through here; raw bytes only through _flush.\n"
        "        self.send = self._send_event\n",
    ),
    (FLUSH_SEND, FLUSH_SEND.replace("self.send(", "self._send(")),
    (
        FLUSH_DEF,
        "    async def _send_event(self, event: Event) -> None:\n"
        "        if not isinstance(event, RawData):\n"
        "            await self._send(event)\n\n" + FLUSH_DEF,
    ),
)
# `RawData` is a local of _handle_events: a GOAWAY built with `RawData(data=...)` there
# calls a list.
rawdata_local_list = replacing(
    (
        HANDLE_EVENTS_DEF,
        HANDLE_EVENTS_DEF + "        # What the peer uploaded in this batch, for the access log.\n"
        "        RawData = [  # noqa: N806\n"
        "            e for e in events if isinstance(e, h2.events.DataReceived)\n"
        "        ]\n"
        "        self.uploads += len(RawData)\n",
    ),
    (INIT_TAIL, INIT_TAIL + "        self.uploads = 0\n"),
)
# `RawData` is the module's own subclass of the server's event: still a RawData to the server.
rawdata_subclass = replacing(
    (EVENTS_IMPORT, "from ..events import Closed, Event, RawData as WireData, Updated\n"),
    (HANDLE_RAW, "        if isinstance(event, WireData):\n"),
    (
        "BUFFER_HIGH_WATER = ",
        "class RawData(WireData):\n"
        '    """Bytes for the wire from this protocol (told apart in the traces)."""\n\n\n'
        "BUFFER_HIGH_WATER = ",
    ),
)


def _connection_class(signature: str, forward: str) -> Edit:
    return replacing(
        (
            CLASS_HEAD,
            "class CountingH2Connection(h2.connection.H2Connection):\n"
            '    """Counts the streams this server resets (for the worker\'s metrics)."""\n\n'
            "    resets = 0\n\n"
            f"    def reset_stream({signature}) -> None:  # type: ignore[override]\n"
            "        CountingH2Connection.resets += 1\n"
            f"        super().reset_stream({forward})\n\n\n" + CLASS_HEAD,
        ),
        (NEW_CONNECTION, "        self.connection = CountingH2Connection(\n"),
    )


# Its reset_stream takes no error code: `error_code=` raises TypeError in the served class.
connection_reset_without_code = _connection_class("self, stream_id: int", "stream_id")
connection_reset_forwards_code = _connection_class(
    "self, stream_id: int, error_code: int = 0", "stream_id, error_code"
)
context_aliased = replacing(
    (
        "        self.context = context\n",
        "        self.context = context\n        self.worker = context\n",
    ),
    (SHUTDOWN_TEST, "                if self.worker.terminated.is_set():\n"),
    (IDLE_TEST, "                if idle and self.worker.terminated.is_set():\n"),
)

# --- the values max_requests repeats ----------------------------------------------------------

limit_property_with_side_effect = replacing(
    (LIMIT_TEST, "                if self.keep_alive_requests > self.request_limit:\n"),
    (
        IDLE_PROPERTY,
        "    @property\n    def request_limit(self) -> int:\n"
        "        self.limit_checks += 1  # how often the limit was consulted, for the metrics\n"
        "        return self.config.keep_alive_max_requests\n\n" + IDLE_PROPERTY,
    ),
    (INIT_TAIL, INIT_TAIL + "        self.limit_checks = 0\n"),
)
limit_compared_with_ge = replacing((LIMIT_TEST, LIMIT_TEST.replace(" > ", " >= ")))
limit_none_guarded = replacing(
    (
        LIMIT_TEST,
        "                if (\n"
        "                    self.config.keep_alive_max_requests is not None\n"
        "                    and self.keep_alive_requests > self.config.keep_alive_max_requests\n"
        "                ):\n",
    )
)
limit_zero_is_unlimited = replacing(
    (
        LIMIT_TEST,
        "                if 0 < self.config.keep_alive_max_requests < self.keep_alive_requests:\n",
    )
)
config_reloaded = replacing(
    (
        FLUSH_DEF,
        "    def reload(self, config: Config) -> None:\n"
        "        # A configuration the worker reloads applies to open connections too.\n"
        "        self.config = config\n\n" + FLUSH_DEF,
    )
)

# --- the calls the fixes change ----------------------------------------------------------------

close_with_last_stream_id = replacing(
    (
        LIMIT,
        LIMIT_TEST
        + "                    self.connection.close_connection(last_stream_id=event.stream_id)\n",
    )
)
close_through_a_helper = replacing(
    (LIMIT, LIMIT_TEST + "                    await self._goodbye()\n"),
    (IDLE_CLOSE, IDLE_TEST + "                    await self._goodbye()\n"),
    (
        FLUSH_DEF,
        "    async def _goodbye(self) -> None:\n"
        "        self.connection.close_connection()\n"
        "        await self._flush()\n\n" + FLUSH_DEF,
    ),
)
reset_through_a_helper_method = replacing(
    (RESET, "                    self._refuse(event.stream_id)\n"),
    (
        FLUSH_DEF,
        "    def _refuse(self, stream_id: int) -> None:\n"
        "        self.connection.reset_stream(stream_id)\n\n" + FLUSH_DEF,
    ),
)
# Resets the stream created last (one in flight, maybe answered), not the new one.
reset_of_the_last_created_stream = replacing(
    (INIT_TAIL, INIT_TAIL + "        self.last_stream_id = 0\n"),
    (CREATE, CREATE + "                    self.last_stream_id = event.stream_id\n"),
    (RESET, "                    self.connection.reset_stream(self.last_stream_id)\n"),
)
# The stream is answered (503) before the reset: REFUSED_STREAM would tell the client it was
# never processed, after a response.
answered_then_reset = replacing(
    (
        RESET,
        "                    self.connection.send_headers(\n"
        '                        event.stream_id, [(b":status", b"503")]\n'
        "                    )\n" + RESET,
    )
)
reset_positional_zero = replacing(
    (RESET, RESET.replace("(event.stream_id)", "(event.stream_id, 0)"))
)
reset_refused_as_int = replacing(
    (RESET, RESET.replace("(event.stream_id)", "(event.stream_id, error_code=7)"))
)
reset_refused_imported_enum = replacing(
    ("import h2.exceptions\n", "import h2.exceptions\nfrom h2.errors import ErrorCodes\n"),
    (
        RESET,
        RESET.replace(
            "(event.stream_id)", "(event.stream_id, error_code=ErrorCodes.REFUSED_STREAM)"
        ),
    ),
)
# No `else`: the reset stream is handed to the app all the same (its side effects happen).
reset_then_stream_created_anyway = replacing(
    (
        CREATE,
        "                await self._create_stream(event)\n"
        "                await self.send(Updated(idle=False))\n",
    )
)
# The limit's arm closes the transport as well: whatever frame comes first, the in-flight
# responses are lost.
limit_arm_then_closed_event = replacing(
    (
        LIMIT,
        LIMIT + "                    await self._flush()\n"
        "                    await self.send(Closed())\n",
    )
)
idle_arm_other_condition = replacing(
    (
        IDLE_TEST,
        "                if idle and (self.context.terminated.is_set() or self.draining):\n",
    ),
    (INIT_TAIL, INIT_TAIL + "        self.draining = False\n"),
)
idle_before_close_stream = replacing(
    (
        CLOSE_IN_STREAM_SEND,
        IDLE_COMPUTED + "                await self._close_stream(event.stream_id)\n",
    )
)
# stream_send already closes over the limit once idle (the race the first corpus measured),
# and the limit's arm still closes at once.
idle_arm_closes_over_limit = replacing(
    (
        IDLE_TEST,
        "                over_limit = (\n"
        "                    self.keep_alive_requests > self.config.keep_alive_max_requests\n"
        "                )\n"
        "                if idle and (self.context.terminated.is_set() or over_limit):\n",
    )
)

# The limit's arm stops the send task as well: the in-flight responses are never sent.
limit_arm_stops_the_sender = replacing(
    (LIMIT, LIMIT + "                    self.closed = True  # nothing more to send\n"),
)

# --- which code the server runs -------------------------------------------------------------


def handle_events_replaced_after_class(text: str) -> str:
    """A module-level copy of _handle_events is what the class runs (set after the class)."""
    method = method_text(text, "_handle_events").rstrip("\n") + "\n"
    function = "".join(line[4:] if line.strip() else line for line in method.splitlines(True))
    function = function.replace(
        "async def _handle_events(self,", "async def _handle_events_traced(self: H2Protocol,"
    )
    return (
        text
        + "\n\n"
        + function
        + "\n\nH2Protocol._handle_events = _handle_events_traced  # type: ignore[method-assign]\n"
    )


requests_refused_by_the_caller = replacing(
    (
        TO_DISPATCH,
        "            else:\n"
        "                if self.context.terminated.is_set():\n"
        "                    # Shutting down: new streams are refused before the dispatch.\n"
        "                    for refused in events:\n"
        "                        if isinstance(refused, h2.events.RequestReceived):\n"
        "                            self.connection.reset_stream(refused.stream_id)\n"
        "                    events = [\n"
        "                        e\n"
        "                        for e in events\n"
        "                        if not isinstance(e, h2.events.RequestReceived)\n"
        "                    ]\n"
        "                await self._handle_events(events)\n",
    )
)
REQUEST_ARM = SHUTDOWN_IF + "\n" + LIMIT


def request_arm_in_a_helper(text: str) -> str:
    """The RequestReceived arm moved to a method; the old inline code left after `continue`
    (dead: it never runs)."""
    helper = "".join(line[8:] if line.strip() else line for line in REQUEST_ARM.splitlines(True))
    helper = (
        "    async def _on_request(self, event: h2.events.RequestReceived) -> None:\n"
        + "".join("        " + line if line.strip() else line for line in helper.splitlines(True))
    )
    text = replace_once(
        text,
        REQUEST_ARM,
        "                await self._on_request(event)\n                continue\n" + REQUEST_ARM,
    )
    return replace_once(text, FLUSH_DEF, helper + "\n" + FLUSH_DEF)


limit_arm_in_create_stream = replacing(
    ("\n" + LIMIT, ""),
    (
        COUNTED,
        COUNTED + "        if self.keep_alive_requests > self.config.keep_alive_max_requests:\n"
        "            self.connection.close_connection()\n",
    ),
)
TRACED = '''def traced(method: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """Marks a protocol method for the tracing worker (the method itself is unchanged)."""
    method.traced = True  # type: ignore[attr-defined]
    return method


class H2Protocol:
'''
LOGGED = '''def logged(method: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """The protocol method, its failures logged (a new function around the original)."""

    async def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            await method(*args, **kwargs)
        except Exception:
            logging.getLogger(__name__).exception("h2 protocol")
            raise

    return wrapper


class H2Protocol:
'''
# The class attribute is the wrapper; the code that runs is the original function it holds.
stream_send_wrapped_by_assignment = replacing(
    ("import h2\n", "import logging\nfrom typing import Any\n\nimport h2\n"),
    (CLASS_HEAD, LOGGED),
    (FLUSH_DEF, "    stream_send = logged(stream_send)\n\n" + FLUSH_DEF),
)
handle_events_returns_when_closed = replacing(
    (
        LOOP_HEAD,
        "        if self.closed:\n            return  # the connection is gone\n" + LOOP_HEAD,
    )
)
methods_decorated = replacing(
    (CLASS_HEAD, TRACED),
    (HANDLE_EVENTS_DEF, "    @traced\n" + HANDLE_EVENTS_DEF),
    (STREAM_SEND_DEF, "    @traced\n" + STREAM_SEND_DEF),
)


# --- the corpus --------------------------------------------------------------------------------

After = tuple[tuple[str, Callable[[str], bool], str], ...]


def not_in_method(needle: str, method: str) -> Callable[[str], bool]:
    return lambda source: needle not in method_text(source, method)


def limit_guard_repeated(guard: str) -> Callable[[str], bool]:
    """stream_send tests the limit only with the variant's own guard around it."""

    def holds(source: str) -> bool:
        text = method_text(source, "stream_send")
        return "keep_alive_max_requests" not in text or guard in text

    return holds


@dataclass(frozen=True)
class Variant:
    make: Edit
    #: fix -> "fix", "leave", "refuse" or alternatives joined by "|".
    verdicts: dict[str, str]
    base: tuple[str, str] = H173
    #: (fix, what must hold once that fix rewrote the variant, what it means).
    after: After = ()
    #: Fixes whose rewrite of this variant is served (0.17.3 variants only).
    served: tuple[str, ...] = ()


BOTH_EITHER = {GS: "fix|refuse", MR: "fix|refuse"}

VARIANTS: dict[str, Variant] = {
    # benign drift, on the later releases too
    "anycorn-reset-by-keyword": Variant(reset_by_keyword, {GS: "fix"}, A201),
    "anycorn-settings-before-reset": Variant(settings_before_reset, {GS: "fix"}, A201),
    "anycorn-idle-from-all": Variant(idle_from_all, {MR: "fix"}, A201),
    "h018-limit-test-multiline": Variant(limit_test_multiline, {MR: "fix"}, H180),
    "h018-terminated-in-a-local": Variant(terminated_in_a_local, {GS: "fix|refuse"}, H180),
    "limit-arm-flushes": Variant(limit_arm_flushes, {MR: "fix"}),
    "reset-in-try": Variant(reset_in_try, {GS: "fix|refuse"}),
    "counter-incremented-twice": Variant(counter_incremented_twice, {MR: "fix|refuse"}),
    "counter-is-a-property": Variant(counter_is_a_property, {MR: "fix|refuse"}),
    # the objects the inserted code acts on
    # h2fix sends its GOAWAY with the callable _flush uses (self._send): right.
    "send-filters-raw-data": Variant(send_filters_raw_data, {MR: "fix|refuse"}, served=(MR,)),
    "rawdata-local-list": Variant(rawdata_local_list, {MR: "refuse"}),
    "rawdata-subclass": Variant(rawdata_subclass, {MR: "fix|refuse"}),
    "connection-reset-without-code": Variant(
        connection_reset_without_code, {GS: "refuse", MR: "fix|refuse"}
    ),
    "connection-reset-forwards-code": Variant(connection_reset_forwards_code, {GS: "fix|refuse"}),
    "context-aliased": Variant(context_aliased, BOTH_EITHER),
    # the values max_requests repeats
    "limit-property-with-side-effect": Variant(
        limit_property_with_side_effect,
        {MR: "fix|refuse"},
        after=(
            (MR, not_in_method("self.request_limit", "stream_send"), "the side effect is repeated"),
        ),
    ),
    "limit-compared-with-ge": Variant(limit_compared_with_ge, {MR: "fix|refuse"}),
    "limit-none-guarded": Variant(
        limit_none_guarded,
        {MR: "fix|refuse"},
        after=(
            (
                MR,
                limit_guard_repeated("is not None"),
                "the limit is compared unguarded: None raises",
            ),
        ),
    ),
    "limit-zero-is-unlimited": Variant(
        limit_zero_is_unlimited,
        {MR: "fix|refuse"},
        after=((MR, limit_guard_repeated("0 <"), "a limit of 0 (none) closes connections"),),
    ),
    "config-reloaded": Variant(config_reloaded, {MR: "fix|refuse"}),
    # the calls the fixes change
    "close-with-last-stream-id": Variant(close_with_last_stream_id, {MR: "fix|refuse"}),
    "close-through-a-helper": Variant(
        close_through_a_helper,
        {MR: "fix|refuse"},
        after=(
            (
                MR,
                not_in_method("await self._goodbye()", "_handle_events"),
                "the limit still closes at once",
            ),
        ),
        served=(MR,),
    ),
    "reset-through-a-helper-method": Variant(
        reset_through_a_helper_method,
        {GS: "fix|refuse"},
        after=(
            (
                GS,
                not_in_method("reset_stream(stream_id)\n", "_refuse"),
                "the reset that runs is unchanged",
            ),
        ),
    ),
    "reset-of-the-last-created-stream": Variant(reset_of_the_last_created_stream, {GS: "refuse"}),
    # RFC 9113 section 8.7: REFUSED_STREAM says no processing happened, and none did (the
    # 503 is the server's, not the app's): a retry is safe, so the rewrite is right.
    "answered-then-reset": Variant(answered_then_reset, {GS: "fix|refuse"}),
    "reset-positional-zero": Variant(
        reset_positional_zero,
        {GS: "fix|refuse"},
        after=(
            (GS, not_in_method("event.stream_id, 0)", "_handle_events"), "NO_ERROR is still given"),
        ),
    ),
    "reset-refused-as-int": Variant(reset_refused_as_int, {GS: "leave|refuse"}),
    "reset-refused-imported-enum": Variant(reset_refused_imported_enum, {GS: "leave|refuse"}),
    "reset-then-stream-created-anyway": Variant(reset_then_stream_created_anyway, {GS: "refuse"}),
    "limit-arm-then-closed-event": Variant(
        limit_arm_then_closed_event, {MR: "refuse"}, served=(MR,)
    ),
    "idle-arm-other-condition": Variant(idle_arm_other_condition, {MR: "fix|refuse"}),
    "idle-before-close-stream": Variant(idle_before_close_stream, {MR: "fix|refuse"}),
    "limit-arm-stops-the-sender": Variant(limit_arm_stops_the_sender, {MR: "refuse"}, served=(MR,)),
    "idle-arm-closes-over-limit": Variant(
        idle_arm_closes_over_limit, {MR: "fix|refuse"}, served=(MR,)
    ),
    # which code the server runs
    "handle-events-replaced-after-class": Variant(
        handle_events_replaced_after_class,
        BOTH_EITHER,
        after=(
            (
                GS,
                lambda s: UNCHANGED_RESET not in in_function(s, "_handle_events_traced"),
                "the function that runs still resets with NO_ERROR",
            ),
            (
                MR,
                lambda s: "close_connection()\n" not in in_function(s, "_handle_events_traced"),
                "the function that runs still closes at the limit",
            ),
        ),
    ),
    "request-arm-in-a-helper": Variant(
        request_arm_in_a_helper,
        BOTH_EITHER,
        after=(
            (GS, not_in_method(UNCHANGED_RESET, "_on_request"), "the reset that runs is unchanged"),
            (
                MR,
                not_in_method("close_connection()\n", "_on_request"),
                "the close that runs is unchanged",
            ),
        ),
        served=(GS, MR),
    ),
    "requests-refused-by-the-caller": Variant(
        requests_refused_by_the_caller,
        {GS: "fix|refuse"},
        after=(
            (
                GS,
                not_in_method("reset_stream(refused.stream_id)\n", "handle"),
                "the reset that runs (in handle) is unchanged",
            ),
        ),
        served=(GS,),
    ),
    "limit-arm-in-create-stream": Variant(
        limit_arm_in_create_stream,
        {MR: "fix|refuse"},
        after=(
            (
                MR,
                not_in_method("close_connection()\n", "_create_stream"),
                "the limit still closes at once",
            ),
        ),
        served=(MR,),
    ),
    "methods-decorated": Variant(methods_decorated, BOTH_EITHER),
    "stream-send-wrapped-by-assignment": Variant(
        stream_send_wrapped_by_assignment, {MR: "fix|refuse"}, served=(MR,)
    ),
    "handle-events-returns-when-closed": Variant(
        handle_events_returns_when_closed, {GS: "fix", MR: "fix"}
    ),
}


def cases(*, served: bool = False) -> list[Any]:
    return [
        # 0.18.0's source is only read and rewritten (its annotations are never evaluated):
        # no Python floor here, unlike serving it.
        pytest.param(name, fix, id=f"{name}-{fix}")
        for name, v in VARIANTS.items()
        for fix in (v.served if served else v.verdicts)
    ]


@functools.cache
def base_source(distribution: str, version: str) -> str:
    return h2_source(distribution, version)


@functools.cache
def variant_source(name: str) -> str:
    variant = VARIANTS[name]
    return variant.make(base_source(*variant.base))


@functools.cache
def strict_rewrite(text: str, fix: str) -> h2fix.Rewrite:
    return h2fix.rewrite(text, [fix])


@functools.cache
def lenient_rewrite(text: str, fix: str) -> h2fix.Rewrite:
    """The rewrite with refusals recorded, not raised (LibCST work: once per variant)."""
    return h2fix.rewrite(text, [fix], strict=False)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_compiles(name: str) -> None:
    """Every variant is code a maintainer could ship: it compiles, so a refusal is about its
    structure, never about broken input. (0.18.0's source compiles on 3.9 too: its
    annotations are not evaluated.)"""
    compile(variant_source(name), "h2.py", "exec", dont_inherit=True)


@pytest.mark.parametrize(("name", "fix"), cases())
def test_verdict(name: str, fix: str) -> None:
    variant = VARIANTS[name]
    text = variant_source(name)
    assert text != base_source(*variant.base)
    rewritten = check_verdict(text, fix, variant.verdicts[fix])
    if rewritten is None:
        return
    result, _ = rewritten
    for which, holds, meaning in variant.after:
        if which == fix:
            assert holds(result.source), f"{meaning}:\n{result.diff()}"


def test_the_corpus_is_large_enough() -> None:
    assert 35 <= len(VARIANTS) <= 50
    for fix in (GS, MR):
        verdicts = [v.verdicts[fix] for v in VARIANTS.values() if fix in v.verdicts]
        assert len(verdicts) >= 15, fix
    parts = {
        part
        for v in VARIANTS.values()
        for verdict in v.verdicts.values()
        for part in verdict.split("|")
    }
    assert {"fix", "refuse", "leave"} <= parts
    assert all(v.base == H173 for v in VARIANTS.values() if v.served), "only 0.17.3 is installed"
    assert sum(len(v.served) for v in VARIANTS.values()) <= 10


# --- serving the variants whose rewrite is not obviously benign ------------------------------

BEHAVIOUR = {GS: shutdown_problems, MR: max_requests_problems}


@served_on_default_python
@pytest.mark.server
@pytest.mark.parametrize(("name", "fix"), cases(served=True))
def test_rewritten_variant_serves(name: str, fix: str, request: pytest.FixtureRequest) -> None:
    """Whatever the verdict: if the fix changes this variant, the served result holds up."""
    variant = VARIANTS[name]
    text = variant_source(name)
    result = lenient_rewrite(text, fix)
    if result.refusals or not result.changed:
        pytest.skip(f"h2fix changes nothing here: {[str(o) for o in result.outcomes]}")
    # H2FIX_TEST_WITHOUT_FIX=1: the variant is served as it is, and the check must fail.
    serve: Callable[[str, str | None], Served | str] = request.getfixturevalue("serve_variant")
    served = serve(text, fix if WITH_FIX else None)
    if isinstance(served, str):  # apply() refused: nothing was patched
        assert "refuse" in variant.verdicts[fix], f"rewrite() fixes it, apply() refuses: {served}"
        return
    if WITH_FIX:
        assert f"{fix}: applied" in served.log.read_text()
    problems = BEHAVIOUR[fix](served)
    assert not problems, "\n".join([*problems, "server log:", served.log.read_text()[-3000:]])
