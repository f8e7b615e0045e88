"""The `trailers` fix as tables of (before, after), no-op and refusal cases."""

from __future__ import annotations

import textwrap

import pytest

import h2fix
from h2fix import Outcome, UnrecognisedStructureError
from support.tables import assert_rewritten


def module(trailers_branch: str, *, end_of_body: bool = True, first: str = "") -> str:
    """A protocol class in Hypercorn's shape with the given Trailers branch."""
    end = textwrap.dedent(
        """\
        elif isinstance(event, (EndBody, EndData)):
            self.stream_buffers[event.stream_id].set_complete()
            self.priority.unblock(event.stream_id)
            await self.has_data.set()
            await self.stream_buffers[event.stream_id].drain()
        """
    )
    if not end_of_body:
        end = "elif isinstance(event, (EndBody, EndData)):\n    pass\n"
    trailers = textwrap.dedent(trailers_branch)
    if trailers.splitlines()[0].endswith(":") and "_flush()" not in trailers:
        # As every release: the branch hands what h2 encoded to the transport.
        trailers += "    await self._flush()\n"
    branches = [trailers, end]
    if first == "trailers-last":
        branches.reverse()
    chain = "".join(branches).replace("elif", "if", 1)
    body = textwrap.indent(chain, " " * 12)
    return (
        "import h2.connection\n\n"
        "from .events import EndBody, EndData, Trailers\n\n\n"
        "class H2Protocol:\n"
        "    def __init__(self) -> None:\n"
        "        self.connection = h2.connection.H2Connection()\n\n"
        "    async def stream_send(self, event):\n"
        "        try:\n"
        f"{body}"
        "        except KeyError:\n"
        "            return\n\n"
        # Where the send task's objects come from, and where h2's bytes go out: the fix
        # proves the end-of-body branch acts on these.
        "    async def _create_stream(self, request):\n"
        "        self.stream_buffers[request.stream_id] = StreamBuffer()\n"
        "        self.priority.insert_stream(request.stream_id)\n\n"
        "    async def send_task(self):\n"
        "        await self.has_data.wait()\n\n"
        "    async def _flush(self):\n"
        "        await self.send(self.connection.data_to_send())\n"
    )


FIXED = """\
elif isinstance(event, Trailers):
    self.priority.unblock(event.stream_id)
    await self.has_data.set()
    await self.stream_buffers[event.stream_id].drain()
    self.connection.send_headers(event.stream_id, event.headers, end_stream=True)
    await self._flush()
"""

REWRITES = {
    "hypercorn-0.17": (
        """\
        elif isinstance(event, Trailers):
            self.connection.send_headers(event.stream_id, event.headers)
            await self._flush()
        """,
        FIXED,
    ),
    "tuple-isinstance": (
        """\
        elif isinstance(event, (Trailers,)):
            self.connection.send_headers(event.stream_id, event.headers)
        """,
        """\
        elif isinstance(event, (Trailers,)):
            self.priority.unblock(event.stream_id)
            await self.has_data.set()
            await self.stream_buffers[event.stream_id].drain()
            self.connection.send_headers(event.stream_id, event.headers, end_stream=True)
        """,
    ),
    "qualified-class": (
        """\
        elif isinstance(event, events.Trailers):
            self.connection.send_headers(event.stream_id, event.headers)
        """,
        """\
        elif isinstance(event, events.Trailers):
            self.priority.unblock(event.stream_id)
            await self.has_data.set()
            await self.stream_buffers[event.stream_id].drain()
            self.connection.send_headers(event.stream_id, event.headers, end_stream=True)
        """,
    ),
    "reformatted-call-trailing-comma": (
        """\
        elif isinstance(event, Trailers):
            self.connection.send_headers(
                event.stream_id,
                event.headers,
            )
        """,
        """\
        elif isinstance(event, Trailers):
            self.priority.unblock(event.stream_id)
            await self.has_data.set()
            await self.stream_buffers[event.stream_id].drain()
            self.connection.send_headers(
                event.stream_id,
                event.headers,
                end_stream=True,
            )
        """,
    ),
    "wrapped-call-no-trailing-comma": (
        """\
        elif isinstance(event, Trailers):
            self.connection.send_headers(
                event.stream_id, event.headers
            )
        """,
        """\
        elif isinstance(event, Trailers):
            self.priority.unblock(event.stream_id)
            await self.has_data.set()
            await self.stream_buffers[event.stream_id].drain()
            self.connection.send_headers(
                event.stream_id, event.headers, end_stream=True
            )
        """,
    ),
    "keyword-arguments": (
        """\
        elif isinstance(event, Trailers):
            self.connection.send_headers(headers=h, stream_id=event.stream_id)
        """,
        """\
        elif isinstance(event, Trailers):
            self.priority.unblock(event.stream_id)
            await self.has_data.set()
            await self.stream_buffers[event.stream_id].drain()
            self.connection.send_headers(headers=h, stream_id=event.stream_id, end_stream=True)
        """,
    ),
    "explicit-end-stream-false": (
        """\
        elif isinstance(event, Trailers):
            self.connection.send_headers(event.stream_id, event.headers, end_stream=False)
        """,
        """\
        elif isinstance(event, Trailers):
            self.priority.unblock(event.stream_id)
            await self.has_data.set()
            await self.stream_buffers[event.stream_id].drain()
            self.connection.send_headers(event.stream_id, event.headers, end_stream=True)
        """,
    ),
    "positional-end-stream-false": (
        """\
        elif isinstance(event, Trailers):
            self.connection.send_headers(event.stream_id, event.headers, False)
        """,
        """\
        elif isinstance(event, Trailers):
            self.priority.unblock(event.stream_id)
            await self.has_data.set()
            await self.stream_buffers[event.stream_id].drain()
            self.connection.send_headers(event.stream_id, event.headers, True)
        """,
    ),
    "half-fixed-end-stream-only": (
        """\
        elif isinstance(event, Trailers):
            self.connection.send_headers(event.stream_id, event.headers, end_stream=True)
            await self._flush()
        """,
        FIXED,
    ),
    "half-fixed-drain-only": (
        """\
        elif isinstance(event, Trailers):
            self.priority.unblock(event.stream_id)
            await self.has_data.set()
            await self.stream_buffers[event.stream_id].drain()
            self.connection.send_headers(event.stream_id, event.headers)
            await self._flush()
        """,
        FIXED,
    ),
    "half-fixed-middle-step-missing": (
        """\
        elif isinstance(event, Trailers):
            self.priority.unblock(event.stream_id)
            await self.stream_buffers[event.stream_id].drain()
            self.connection.send_headers(event.stream_id, event.headers)
            await self._flush()
        """,
        FIXED,
    ),
    "comments-kept": (
        """\
        elif isinstance(event, Trailers):  # HTTP/2 trailers
            # h2 encodes the block here
            self.connection.send_headers(event.stream_id, event.headers)  # send
            await self._flush()
        """,
        """\
        elif isinstance(event, Trailers):  # HTTP/2 trailers
            self.priority.unblock(event.stream_id)
            await self.has_data.set()
            await self.stream_buffers[event.stream_id].drain()
            # h2 encodes the block here
            self.connection.send_headers(event.stream_id, event.headers, end_stream=True)  # send
            await self._flush()
        """,
    ),
}


@pytest.mark.parametrize(("before", "after"), REWRITES.values(), ids=REWRITES.keys())
def test_rewrites(before: str, after: str) -> None:
    assert_rewritten("trailers", module(before), module(after), ("H2Protocol.stream_send",))


def test_branch_order_changed() -> None:
    before, after = REWRITES["hypercorn-0.17"]
    result = h2fix.rewrite(module(before, first="trailers-last"), ["trailers"])
    assert result.source == module(after, first="trailers-last")


def test_attribute_names_come_from_the_class() -> None:
    before = module(REWRITES["hypercorn-0.17"][0])
    renamed = (
        before.replace(".priority.", ".prio.")
        .replace(".has_data.", ".wakeup.")
        .replace(".stream_buffers[", ".buffers[")
        .replace("(self, event)", "(this, event)")
        .replace("(self, request)", "(this, request)")
        .replace("(self)", "(this)")
        .replace("self.", "this.")
    )
    result = h2fix.rewrite(renamed, ["trailers"])
    assert "this.prio.unblock(event.stream_id)\n" in result.source
    assert "await this.wakeup.set()\n" in result.source
    assert "await this.buffers[event.stream_id].drain()\n" in result.source


def test_event_variable_renamed_throughout() -> None:
    before, after = REWRITES["hypercorn-0.17"]
    result = h2fix.rewrite(module(before).replace("event", "ev"), ["trailers"])
    assert result.source == module(after).replace("event", "ev")


def test_init_alone_does_not_confirm_the_attributes() -> None:
    # __init__ assigning the usual names proves nothing about what the server drains.
    before = module(REWRITES["hypercorn-0.17"][0], end_of_body=False).replace(
        "        self.connection = h2.connection.H2Connection()\n",
        "        self.connection = h2.connection.H2Connection()\n        self.priority = object()\n"
        "        self.has_data = object()\n        self.stream_buffers = {}\n",
    )
    with pytest.raises(UnrecognisedStructureError, match="end-of-body branch"):
        h2fix.rewrite(before, ["trailers"])


NOOPS = {
    "already-fixed-upstream": (FIXED, Outcome.FIXED_UPSTREAM),
    "no-trailers-support": (
        "elif isinstance(event, Body):\n    pass\n",
        Outcome.NOT_APPLICABLE,
    ),
}


@pytest.mark.parametrize(("branch", "outcome"), NOOPS.values(), ids=NOOPS.keys())
def test_noops(branch: str, outcome: Outcome) -> None:
    source = module(branch)
    if outcome is Outcome.NOT_APPLICABLE:
        source = source.replace(", Trailers", "")
    result = h2fix.rewrite(source, ["trailers"])
    assert result.source == source
    assert not result.changed
    assert [o.outcome for o in result.outcomes] == [outcome]


def test_decoy_elsewhere_is_left_alone() -> None:
    decoy = (
        "\n\ndef describe(event):\n    if isinstance(event, Trailers):\n        return 'trailers'\n"
    )
    before, after = REWRITES["hypercorn-0.17"]
    result = h2fix.rewrite(module(before) + decoy, ["trailers"])
    assert result.source == module(after) + decoy


REFUSALS = {
    "delegates-to-helper": (
        """\
        elif isinstance(event, Trailers):
            await self._send_trailers(event)
        """,
        "call <connection>.send_headers itself",
    ),
    "send-nested-in-try": (
        """\
        elif isinstance(event, Trailers):
            try:
                self.connection.send_headers(event.stream_id, event.headers)
            except KeyError:
                pass
        """,
        "directly in the branch",
    ),
    "shared-with-other-events": (
        """\
        elif isinstance(event, (Trailers, Data)):
            self.connection.send_headers(event.stream_id, event.headers)
        """,
        "a branch for Trailers alone",
    ),
    "end-stream-not-a-literal": (
        """\
        elif isinstance(event, Trailers):
            self.connection.send_headers(event.stream_id, event.headers, end_stream=last)
        """,
        "literal True or False",
    ),
    "steps-out-of-order": (
        """\
        elif isinstance(event, Trailers):
            await self.stream_buffers[event.stream_id].drain()
            self.priority.unblock(event.stream_id)
            self.connection.send_headers(event.stream_id, event.headers)
        """,
        "unblock, then set, then drain",
    ),
}


@pytest.mark.parametrize(("branch", "expected"), REFUSALS.values(), ids=REFUSALS.keys())
def test_refusals(branch: str, expected: str) -> None:
    with pytest.raises(UnrecognisedStructureError) as caught:
        h2fix.rewrite(module(branch), ["trailers"])
    error = caught.value
    assert expected in error.expected
    assert error.where == "H2Protocol.stream_send"
    assert "Trailers" in error.found  # the message shows the code it found


def test_refuses_when_attributes_cannot_be_confirmed() -> None:
    source = module(REWRITES["hypercorn-0.17"][0], end_of_body=False)
    with pytest.raises(UnrecognisedStructureError, match="end-of-body branch"):
        h2fix.rewrite(source, ["trailers"])


def test_refusal_recorded_when_not_strict() -> None:
    source = module(REFUSALS["delegates-to-helper"][0])
    result = h2fix.rewrite(source, ["trailers"], strict=False)
    assert result.source == source
    [outcome] = result.outcomes
    assert outcome.outcome is Outcome.REFUSED
    assert isinstance(outcome.error, UnrecognisedStructureError)


def test_trailers_named_without_a_branch_is_refused() -> None:
    source = module("elif isinstance(event, Body):\n    pass\n")
    with pytest.raises(UnrecognisedStructureError, match="no such branch"):
        h2fix.rewrite(source, ["trailers"])


def test_unknown_fix_name() -> None:
    with pytest.raises(h2fix.UnknownFixError, match="trailers"):
        h2fix.rewrite("", ["nope"])


BUGGY = REWRITES["hypercorn-0.17"][0]
CONNECTION = "        self.connection = h2.connection.H2Connection()\n"

# "Applied" while still broken: the objects the end-of-body branch shows, or the connection
# the trailers go on, are not the ones the send task and the flush use, so copying the steps
# or ending the stream repairs nothing. (source, words the refusal expects)
NOT_THE_SEND_TASKS = {
    "end-of-body-unblocks-a-tree-holding-no-stream": (
        module(BUGGY).replace("self.priority.insert_stream", "self.other_tree.insert_stream"),
        "streams inserted in self.priority",
    ),
    "end-of-body-sets-an-event-nobody-waits-on": (
        module(BUGGY).replace("await self.has_data.wait()", "await self.other_event.wait()"),
        "self.has_data.wait() somewhere in the class",
    ),
    "end-of-body-drains-buffers-no-stream-has": (
        module(BUGGY).replace(
            "self.stream_buffers[request.stream_id] = StreamBuffer()",
            "self.other_buffers[request.stream_id] = StreamBuffer()",
        ),
        "the buffers the end-of-body branch drains must be the ones streams are given",
    ),
    "trailers-on-a-connection-nobody-flushes": (
        module(BUGGY.replace("self.connection.send_headers", "self.upgrade.send_headers")).replace(
            CONNECTION, CONNECTION + "        self.upgrade = h2.connection.H2Connection()\n"
        ),
        "sends self.upgrade.data_to_send()",
    ),
    "trailers-never-flushed": (
        module(BUGGY).replace(
            "headers)\n                await self._flush()\n", "headers)\n                pass\n", 1
        ),
        "after the send in the branch",
    ),
}


@pytest.mark.parametrize(
    ("source", "expected"), NOT_THE_SEND_TASKS.values(), ids=NOT_THE_SEND_TASKS.keys()
)
def test_objects_not_the_send_tasks_are_refused(source: str, expected: str) -> None:
    with pytest.raises(UnrecognisedStructureError) as caught:
        h2fix.rewrite(source, ["trailers"])
    assert expected in caught.value.expected
    assert caught.value.where == "H2Protocol.stream_send"
