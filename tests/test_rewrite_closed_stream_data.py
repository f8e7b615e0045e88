"""The `closed_stream_data` fix as tables of (before, after), no-op and refusal cases."""

from __future__ import annotations

import textwrap

import pytest

import h2fix
from h2fix import Outcome
from support.refusals import assert_refusal_recorded, assert_refused
from support.tables import assert_rewritten, handle_events_module, release_ids
from support.versions import rows

INIT = """\
self.connection = h2.connection.H2Connection(config=None)
self.streams: Dict[int, HTTPStream] = {}
"""

DATA_0_17 = """\
elif isinstance(event, h2.events.DataReceived):
    await self.streams[event.stream_id].handle(
        Body(stream_id=event.stream_id, data=event.data)
    )
    self.connection.acknowledge_received_data(
        event.flow_controlled_length, event.stream_id
    )
"""
DATA_FIXED = """\
elif isinstance(event, h2.events.DataReceived):
    if event.stream_id in self.streams:
        await self.streams[event.stream_id].handle(
            Body(stream_id=event.stream_id, data=event.data)
        )
    self.connection.acknowledge_received_data(
        event.flow_controlled_length, event.stream_id
    )
"""
ENDED_0_16 = """\
elif isinstance(event, h2.events.StreamEnded):
    await self.streams[event.stream_id].handle(EndBody(stream_id=event.stream_id))
"""
ENDED_FIXED = """\
elif isinstance(event, h2.events.StreamEnded):
    if event.stream_id in self.streams:
        await self.streams[event.stream_id].handle(EndBody(stream_id=event.stream_id))
"""
ENDED_0_17 = """\
elif isinstance(event, h2.events.StreamEnded):
    try:
        await self.streams[event.stream_id].handle(EndBody(stream_id=event.stream_id))
    except KeyError:
        # Response sent before full request received,
        # nothing to do already closed.
        pass
"""
ENDED_0_19 = """\
elif isinstance(event, h2.events.StreamEnded):
    with contextlib.suppress(KeyError):
        await self.streams[event.stream_id].handle(EndBody(stream_id=event.stream_id))
"""


# `from h2.connection import H2Connection` instead of `import h2.connection`.
FROM_IMPORT = ("import h2.connection\n", "from h2.connection import H2Connection\n")
FROM_INIT = INIT.replace("h2.connection.H2Connection", "H2Connection")
FULLWIDTH_SELF = ("_handle_events(self", "_handle_events(\uff53elf")


def module(*branches: str, init: str = INIT, receiver: str = "self", after: str = "") -> str:
    """A protocol class in Hypercorn's shape whose `_handle_events` dispatches to `branches`."""
    chain = "if isinstance(event, h2.events.RequestReceived):\n    await self._create(event)\n"
    chain += "".join(textwrap.dedent(b) for b in branches)
    chain += "elif isinstance(event, h2.events.WindowUpdated):\n    await self._update(event)\n"
    imports = "import h2.connection\nimport h2.events\n"
    return handle_events_module(chain, init=init, imports=imports, receiver=receiver, after=after)


def rewrite(source: str) -> h2fix.Rewrite:
    return h2fix.rewrite(source, ["closed_stream_data"])


# (before, after): one source each, as full modules
REWRITES = {
    "hypercorn-0.17": (module(DATA_0_17, ENDED_0_17), module(DATA_FIXED, ENDED_0_17)),
    "hypercorn-0.16-both-branches": (
        module(DATA_0_17, ENDED_0_16),
        module(DATA_FIXED, ENDED_FIXED),
    ),
    "anycorn-0.19-suppress-for-end": (
        module(DATA_0_17, ENDED_0_19),
        module(DATA_FIXED, ENDED_0_19),
    ),
    "imported-event-class": (
        module(DATA_0_17.replace("h2.events.DataReceived", "DataReceived"), ENDED_0_17),
        module(DATA_FIXED.replace("h2.events.DataReceived", "DataReceived"), ENDED_0_17),
    ),
    "other-receiver-name": (
        module(DATA_0_17, ENDED_0_17, receiver="proto"),
        module(DATA_FIXED, ENDED_0_17, receiver="proto"),
    ),
    "acknowledged-first": (
        module(
            "elif isinstance(event, h2.events.DataReceived):\n"
            "    self.connection.acknowledge_received_data(event.flow_controlled_length, "
            "event.stream_id)\n"
            "    await self.streams[event.stream_id].handle(Body(event.data))\n"
        ),
        module(
            "elif isinstance(event, h2.events.DataReceived):\n"
            "    self.connection.acknowledge_received_data(event.flow_controlled_length, "
            "event.stream_id)\n"
            "    if event.stream_id in self.streams:\n"
            "        await self.streams[event.stream_id].handle(Body(event.data))\n"
        ),
    ),
    "comment-stays-above": (
        module(
            "elif isinstance(event, h2.events.DataReceived):\n"
            "    # hand the body over\n"
            "    await self.streams[event.stream_id].handle(Body(event.data))\n"
            "    self.connection.acknowledge_received_data(\n"
            "        acknowledged_size=event.flow_controlled_length, stream_id=event.stream_id\n"
            "    )\n"
        ),
        module(
            "elif isinstance(event, h2.events.DataReceived):\n"
            "    # hand the body over\n"
            "    if event.stream_id in self.streams:\n"
            "        await self.streams[event.stream_id].handle(Body(event.data))\n"
            "    self.connection.acknowledge_received_data(\n"
            "        acknowledged_size=event.flow_controlled_length, stream_id=event.stream_id\n"
            "    )\n"
        ),
    ),
    "client-trailers-branch": (
        module(
            DATA_0_17,
            "elif isinstance(event, h2.events.TrailersReceived):\n"
            "    await self.streams[event.stream_id].handle(Trailers(event.headers))\n",
        ),
        module(
            DATA_FIXED,
            "elif isinstance(event, h2.events.TrailersReceived):\n"
            "    if event.stream_id in self.streams:\n"
            "        await self.streams[event.stream_id].handle(Trailers(event.headers))\n",
        ),
    ),
    "dict-built-with-dict-call": (
        module(DATA_0_17, init=INIT.replace("{}", "dict()")),
        module(DATA_FIXED, init=INIT.replace("{}", "dict()")),
    ),
    "connection-class-imported-by-name": (
        module(DATA_0_17, init=FROM_INIT).replace(*FROM_IMPORT),
        module(DATA_FIXED, init=FROM_INIT).replace(*FROM_IMPORT),
    ),
    # Python reads identifiers NFKC-normalised: a fullwidth letter names the same thing.
    "fullwidth-receiver": (
        module(DATA_0_17, ENDED_0_16).replace(*FULLWIDTH_SELF),
        module(DATA_FIXED, ENDED_FIXED).replace(*FULLWIDTH_SELF),
    ),
    "fullwidth-key-and-acknowledgement": (
        module(DATA_0_17.replace(".stream_id].", ".\uff53tream_id].").replace(".ac", ".\uff41c")),
        module(
            DATA_FIXED.replace("event.stream_id in", "event.\uff53tream_id in")
            .replace(".stream_id].", ".\uff53tream_id].")
            .replace(".ac", ".\uff41c")
        ),
    ),
    "attributes-assigned-in-the-method": (
        module(
            "elif isinstance(event, h2.events.DataReceived):\n    self.seen = 1\n"
            + DATA_0_17.split("\n", 1)[1]
        ),
        module(
            "elif isinstance(event, h2.events.DataReceived):\n    self.seen = 1\n"
            + DATA_FIXED.split("\n", 1)[1]
        ),
    ),
    "streams-cleared-elsewhere": (
        module(DATA_0_17, after="def reset(self):\n    self.streams = {}\n"),
        module(DATA_FIXED, after="def reset(self):\n    self.streams = {}\n"),
    ),
}


@pytest.mark.parametrize(("before", "after"), REWRITES.values(), ids=REWRITES.keys())
def test_rewrites(before: str, after: str) -> None:
    assert_rewritten("closed_stream_data", before, after, ("H2Protocol._handle_events",))


def test_hypercorn_0_16_names_both_events() -> None:
    [outcome] = rewrite(module(DATA_0_17, ENDED_0_16)).outcomes
    assert "DataReceived, StreamEnded" in outcome.message


def test_served_through_a_subclass_rewrites_the_base() -> None:
    """`H2Protocol` may derive from the class holding the dispatch: that method is the one run."""
    served = "\n\nclass H2Protocol(Base):\n    pass\n"
    before = module(DATA_0_17).replace("class H2Protocol:", "class Base:") + served
    after = module(DATA_FIXED).replace("class H2Protocol:", "class Base:") + served
    result = rewrite(before)
    assert result.source == after
    [outcome] = result.outcomes
    assert outcome.outcome is Outcome.REWRITTEN
    assert outcome.functions == ("Base._handle_events",)


# Left alone byte for byte: already guarded, with the DATA still acknowledged.
FIXED_UPSTREAM = {
    "anycorn-0.20-get": module(
        "elif isinstance(event, h2.events.DataReceived):\n"
        "    stream = self.streams.get(event.stream_id)\n"
        "    if stream is not None:\n"
        "        await stream.handle(Body(stream_id=event.stream_id, data=event.data))\n"
        "    self.connection.acknowledge_received_data(\n"
        "        event.flow_controlled_length, event.stream_id\n"
        "    )\n",
        ENDED_0_17,
    ),
    "membership-test": module(DATA_FIXED, ENDED_FIXED),
    "try-except-key-error": module(
        "elif isinstance(event, h2.events.DataReceived):\n"
        "    try:\n"
        "        await self.streams[event.stream_id].handle(Body(event.data))\n"
        "    except (KeyError, ValueError):\n"
        "        pass\n"
        "    self.connection.acknowledge_received_data(event.flow_controlled_length, 1)\n",
        ENDED_0_17,
    ),
    "fullwidth-membership-test": module(
        DATA_FIXED.replace("event.stream_id in self", "event.\uff53tream_id in \uff53elf"),
        ENDED_FIXED.replace("in self.streams", "in self.\uff53treams"),
    ),
    "fullwidth-except": module(
        DATA_FIXED, ENDED_0_17.replace("except KeyError", "except \uff2beyError")
    ),
    "suppress-lookup-error": module(
        "elif isinstance(event, h2.events.DataReceived):\n"
        "    with suppress(LookupError):\n"
        "        await self.streams[event.stream_id].handle(Body(event.data))\n"
        "    self.connection.acknowledge_received_data(event.flow_controlled_length, 1)\n",
        ENDED_0_17,
    ),
}


@pytest.mark.parametrize("source", FIXED_UPSTREAM.values(), ids=FIXED_UPSTREAM.keys())
def test_already_fixed_is_left_alone(source: str) -> None:
    result = rewrite(source)
    assert [o.outcome for o in result.outcomes] == [Outcome.FIXED_UPSTREAM]
    assert result.source == source


def test_module_without_data_events_is_not_applicable() -> None:
    source = "class H2Protocol:\n    async def _handle_events(self, events):\n        pass\n"
    result = rewrite(source)
    assert [o.outcome for o in result.outcomes] == [Outcome.NOT_APPLICABLE]


def _data(body: str) -> str:
    return "elif isinstance(event, h2.events.DataReceived):\n" + textwrap.indent(body, "    ")


ACK = "self.connection.acknowledge_received_data(event.flow_controlled_length, event.stream_id)\n"
HANDLE = "await self.streams[event.stream_id].handle(Body(event.data))\n"

# Drifted shapes the fix cannot prove safe: (source, words the refusal must expect)
REFUSED = {
    # "Applied" while broken: late DATA that never reaches the branch is never
    # acknowledged (the connection stalls), whatever the guard does.
    "events-filtered-before-the-loop": (
        module(_data(HANDLE + ACK)).replace(
            "        for event in events:\n",
            "        events = [e for e in events if e.stream_id in self.streams]\n"
            "        for event in events:\n",
        ),
        "only looped over in _handle_events",
    ),
    "caller-hands-a-slice": (
        module(_data(HANDLE + ACK)).replace(
            "await self._handle_events(events)", "await self._handle_events(events[1:])"
        ),
        "bound once and read by that call alone",
    ),
    "caller-filters-first": (
        module(_data(HANDLE + ACK)).replace(
            "        await self._handle_events(events)\n",
            "        events = [e for e in events if keep(e)]\n"
            "        await self._handle_events(events)\n",
        ),
        "bound once and read by that call alone",
    ),
    "dispatch-handed-on-as-a-callback": (
        module(
            _data(HANDLE + ACK),
            after="def later(self, events):\n    self.spawn(self._handle_events, events)\n",
        ),
        "every use of _handle_events a call",
    ),
    "dispatch-never-called": (
        module(_data(HANDLE + ACK)).replace("await self._handle_events(events)", "pass"),
        "a call of _handle_events",
    ),
    "events-from-elsewhere": (
        module(_data(HANDLE + ACK)).replace(
            "self.connection.receive_data(data)", "self.queue.pop(data)"
        ),
        "bound once and read by that call alone",
    ),
    # A guard on another key skips a live stream's DATA (its body is lost) or raises.
    "key-is-not-the-events-stream": (
        module(_data(HANDLE.replace("event.stream_id", "self.current_id") + ACK)),
        "keyed by `event.stream_id`",
    ),
    "event-rebound-in-the-branch": (
        module(_data("event = self.latest\n" + HANDLE + ACK)),
        "`event` not assigned in the branch",
    ),
    # `.get()` guards only with its None tested before any use.
    "get-result-used-untested": (
        module(
            _data(
                "stream = self.streams.get(event.stream_id)\n"
                "await stream.handle(Body(event.data))\n" + ACK
            )
        ),
        "the name read only under `if <name> is not None:`",
    ),
    "get-with-a-default": (
        module(
            _data(
                "stream = self.streams.get(event.stream_id, self.sink)\n"
                "if stream is not None:\n    await stream.handle(Body(event.data))\n" + ACK
            )
        ),
        "the name read only under `if <name> is not None:`",
    ),
    "get-result-used-after-the-test": (
        module(
            _data(
                "stream = self.streams.get(event.stream_id)\n"
                "if stream is not None:\n    await stream.handle(Body(event.data))\n"
                + ACK
                + "stream.touch()\n"
            )
        ),
        "the name read only under `if <name> is not None:`",
    ),
    "get-called-on-directly": (
        module(
            _data(HANDLE + ACK),
            "elif isinstance(event, h2.events.StreamEnded):\n"
            "    await self.streams.get(event.stream_id).handle(EndBody())\n",
        ),
        "the name read only under `if <name> is not None:`",
    ),
    # A handler that raises again keeps nothing from ending the connection.
    "except-key-error-raises-again": (
        module(
            _data(HANDLE + ACK),
            "elif isinstance(event, h2.events.StreamEnded):\n"
            "    try:\n        await self.streams[event.stream_id].handle(EndBody())\n"
            "    except KeyError:\n        raise\n",
        ),
        "as a statement of its own directly in the branch",
    ),
    "bare-continue-skips-the-ack": (
        module(_data("if event.stream_id not in self.streams:\n    continue\n" + HANDLE + ACK)),
        "no continue/break/return/raise before acknowledge_received_data",
    ),
    "no-ack": (module(_data(HANDLE)), "acknowledge_received_data(...)` as a statement"),
    # "Applied" while broken: a helper handed the event looks the stream up unguarded.
    "helper-handed-the-event": (
        module(_data(HANDLE + ACK + "await self._trace(event)\n")),
        "the event handed to no method of the protocol object",
    ),
    "function-handed-the-protocol-and-event": (
        module(_data(HANDLE + ACK + "trace(self, event)\n")),
        "the event handed to no method of the protocol object",
    ),
    "ack-inside-the-guard": (
        module(_data("try:\n    " + HANDLE + "    " + ACK + "except KeyError:\n    pass\n")),
        "so that it runs for a stream that is gone too",
    ),
    "ack-on-something-else": (
        module(_data(HANDLE + ACK), init=INIT.replace("h2.connection.H2Connection", "Proxy")),
        "an h2 H2Connection",
    ),
    "connection-assigned-twice": (
        module(_data(HANDLE + ACK), after="def swap(self):\n    self.connection = other\n"),
        "assigned once, an h2 H2Connection",
    ),
    "ack-of-the-wrong-size": (
        module(_data(HANDLE + ACK.replace("event.flow_controlled_length", "len(event.data)"))),
        "acknowledge_received_data(event.flow_controlled_length, ...)",
    ),
    "streams-not-a-dict": (
        module(_data(HANDLE + ACK), init=INIT.replace("= {}", "= StreamMap()")),
        "assigned only `{}` or `dict()`",
    ),
    "streams-reassigned-to-something-else": (
        module(_data(HANDLE + ACK), after="def load(self):\n    self.streams = Registry()\n"),
        "assigned only `{}` or `dict()`",
    ),
    "streams-never-assigned": (
        module(_data(HANDLE + ACK), init="self.connection = H2Connection()\n"),
        "assigned only `{}` or `dict()`",
    ),
    "key-with-a-call": (
        module(_data(HANDLE.replace("event.stream_id", "self.id_of(event)") + ACK)),
        "name or attribute chain",
    ),
    "lookup-bound-to-a-name": (
        module(
            _data("stream = self.streams[event.stream_id]\nawait stream.handle(Body())\n" + ACK)
        ),
        "as a statement of its own directly in the branch",
    ),
    "lookup-nested-in-an-if": (
        module(_data("if event.data:\n    " + HANDLE + ACK)),
        "as a statement of its own directly in the branch",
    ),
    "two-unguarded-lookups": (
        module(_data(HANDLE + HANDLE + ACK)),
        "one unguarded",
    ),
    "delegates-to-a-helper": (
        module(_data("await self._handle_data(event)\n" + ACK)),
        "look the stream up itself",
    ),
    "shared-branch": (
        module(
            "elif isinstance(event, (h2.events.DataReceived, h2.events.StreamEnded)):\n"
            "    " + HANDLE
        ),
        "one h2 event class",
    ),
    "method-defined-twice": (
        module(
            _data(HANDLE + ACK),
            after="async def _handle_events(self, events):\n    pass\n",
        ),
        "one definition of _handle_events",
    ),
    "class-defined-twice": (
        module(_data(HANDLE + ACK)) + "\n\nclass H2Protocol:\n    pass\n",
        "one definition of class H2Protocol",
    ),
    "overridden-in-a-subclass": (
        module(_data(HANDLE + ACK))
        + "\n\nclass Sub(H2Protocol):\n    async def _handle_events(self, events):\n        pass\n",
        "_handle_events defined in one class of the module",
    ),
    "self-rebound": (
        module(_data("(self, other) = pair\n" + HANDLE + ACK)),
        "`self` never rebound in _handle_events",
    ),
    "static-method": (
        module(_data(HANDLE + ACK)).replace(
            "    async def _handle_events", "    @staticmethod\n    async def _handle_events"
        ),
        "an undecorated method",
    ),
    # The function the server runs: one plain method, of the class it serves, reachable.
    "decorated-method": (
        module(_data(HANDLE + ACK)).replace(
            "    async def _handle_events", "    @traced\n    async def _handle_events"
        ),
        "an undecorated method",
    ),
    "method-rebound-by-assignment": (
        module(_data(HANDLE + ACK), after="_handle_events = _replay\n"),
        "one definition of _handle_events in its class",
    ),
    "class-name-rebound": (
        module(_data(HANDLE + ACK)) + "\n\nH2Protocol = Wrapped(H2Protocol)\n",
        "one definition of class H2Protocol in the module",
    ),
    "class-under-an-if": (
        "if True:\n" + textwrap.indent(module(_data(HANDLE + ACK)), "    "),
        "the class at the top level of the module",
    ),
    "served-class-is-another": (
        module(_data(HANDLE + ACK)).replace("class H2Protocol:", "class Legacy:")
        + "\n\nclass H2Protocol:\n    pass\n",
        "H2Protocol (the class the server imports) to be Legacy or a subclass of it",
    ),
    "no-served-class": (
        module(_data(HANDLE + ACK)).replace("class H2Protocol:", "class Legacy:"),
        "H2Protocol (the class the server imports) to be Legacy or a subclass of it",
    ),
    "return-before-the-dispatch": (
        module(_data(HANDLE + ACK)).replace(
            "        for event in events:\n", "        return\n        for event in events:\n"
        ),
        "the branch reachable",
    ),
    "earlier-arm-is-no-class-test": (
        module(_data(HANDLE + ACK)).replace(
            "if isinstance(event, h2.events.RequestReceived):", "if event.stream_id % 2 == 0:"
        ),
        "only isinstance(event, ...) tests before the DataReceived branch",
    ),
    "earlier-arm-in-an-else": (
        module(_data(HANDLE + ACK))
        .replace(
            "            elif isinstance(event, h2.events.DataReceived):\n",
            "            elif event.stream_id == 0:\n                pass\n"
            "            else:\n                if isinstance(event, h2.events.DataReceived):\n",
        )
        .replace(
            "                " + HANDLE + "                " + ACK + "            elif",
            "                    " + HANDLE + "                    " + ACK + "                elif",
        )
        .replace("                await self._update", "                    await self._update"),
        "only isinstance(event, ...) tests before the DataReceived branch",
    ),
    # The objects the guard acts on, seen through every spelling and every class.
    "self-rebound-fullwidth": (
        module(_data("\uff53elf = pool.pick()\n" + HANDLE + ACK)),
        "`self` never rebound in _handle_events",
    ),
    "streams-reassigned-fullwidth": (
        module(_data(HANDLE + ACK), after="def load(self):\n    \uff53elf.streams = Registry()\n"),
        "assigned only `{}` or `dict()`",
    ),
    "streams-assigned-in-a-tuple": (
        module(_data(HANDLE + ACK), after="def load(self):\n    self.streams, self.n = r, 0\n"),
        "assigned only `{}` or `dict()`",
    ),
    "streams-reassigned-in-a-subclass": (
        module(_data(HANDLE + ACK))
        + "\n\nclass Sub(H2Protocol):\n    def reset(self):\n        self.streams = Registry()\n",
        "assigned only `{}` or `dict()`",
    ),
    "connection-class-not-imported": (
        module(_data(HANDLE + ACK), init=FROM_INIT),
        "an h2 H2Connection",
    ),
    "connection-class-imported-from-elsewhere": (
        module(_data(HANDLE + ACK), init=FROM_INIT).replace(
            "import h2.connection\n", "from proxy import H2Connection\n"
        ),
        "an h2 H2Connection",
    ),
    "end-in-another-method": (
        module(
            _data(HANDLE + ACK),
            after=(
                "async def _ended(self, event):\n"
                "    if isinstance(event, h2.events.StreamEnded):\n"
                "        " + HANDLE
            ),
        ),
        "with the DataReceived branch",
    ),
    "two-data-branches": (
        module(
            _data(HANDLE + ACK),
            after=(
                "async def _more(self, event):\n"
                "    if isinstance(event, h2.events.DataReceived):\n"
                "        " + HANDLE + "        " + ACK
            ),
        ),
        "one DataReceived branch",
    ),
    "data-named-without-a-branch": (
        "import h2.events\n\nHANDLED = (h2.events.DataReceived,)\n",
        "`if isinstance(<event>, h2.events.DataReceived):` branch",
    ),
    "branch-outside-a-class": (
        "async def handle(self, event):\n"
        "    if isinstance(event, h2.events.DataReceived):\n"
        "        " + HANDLE + "        " + ACK,
        "directly inside a method of a class",
    ),
    "match-case": (
        module(
            _data(HANDLE + ACK),
            after=(
                "async def _other(self, event):\n"
                "    match event:\n"
                "        case h2.events.StreamEnded():\n"
                "            " + HANDLE
            ),
        ),
        "not match/case",
    ),
}


@pytest.mark.parametrize(("source", "expected"), rows(REFUSED, match_statement={"match-case"}))
def test_refused(source: str, expected: str) -> None:
    assert_refused(source, "closed_stream_data", expected)  # every case is valid Python


def test_refusal_is_recorded_when_not_strict() -> None:
    source, _ = REFUSED["bare-continue-skips-the-ack"]
    assert_refusal_recorded(source, "closed_stream_data")


# --- the real releases ---------------------------------------------------------------

RELEASES = {
    ("hypercorn", "0.16.0"): ("DataReceived, StreamEnded", Outcome.REWRITTEN),
    ("hypercorn", "0.17.0"): ("DataReceived", Outcome.REWRITTEN),
    ("hypercorn", "0.17.3"): ("DataReceived", Outcome.REWRITTEN),
    ("hypercorn", "0.18.0"): ("DataReceived", Outcome.REWRITTEN),
    ("anycorn", "0.18.1"): ("DataReceived", Outcome.REWRITTEN),
    ("anycorn", "0.18.7"): ("DataReceived", Outcome.REWRITTEN),
    ("anycorn", "0.19.0"): ("DataReceived", Outcome.REWRITTEN),
    ("anycorn", "0.20.1"): ("", Outcome.FIXED_UPSTREAM),
}


@pytest.mark.network
@pytest.mark.parametrize(("release", "expected"), RELEASES.items(), ids=release_ids(RELEASES))
def test_release_is_classified(release: tuple[str, str], expected: tuple[str, Outcome]) -> None:
    from support.releases import h2_source

    events, outcome = expected
    source = h2_source(*release)
    result = rewrite(source)
    [found] = result.outcomes
    assert found.outcome is outcome
    if outcome is not Outcome.REWRITTEN:
        assert result.source == source
        return
    assert f"skips {events} for" in found.message
    assert result.changed_functions == ("H2Protocol._handle_events",)
    compile(result.source, "h2.py", "exec", dont_inherit=True)
    # Only guards were added: every removed line comes back indented one level deeper.
    diff = result.diff().splitlines()
    removed = [line[1:].strip() for line in diff if line.startswith("-") and line[1:2] != "-"]
    added = [line[1:].strip() for line in diff if line.startswith("+") and line[1:2] != "+"]
    guards = ["if event.stream_id in self.streams:"] * len(events.split(", "))
    assert sorted(added) == sorted(removed + guards)
