"""The `graceful_shutdown` fix as tables of (before, after), no-op and refusal cases."""

from __future__ import annotations

import textwrap

import pytest

import h2fix
from h2fix import Outcome
from support.refusals import assert_refusal_recorded, assert_refused
from support.tables import RELEASES, assert_rewritten, handle_events_module, release_ids
from support.versions import rows

IMPORTS = "import h2\nimport h2.connection\nimport h2.events\n"
INIT = "self.connection = h2.connection.H2Connection(config=None)\n"
REFUSED = "h2.errors.ErrorCodes.REFUSED_STREAM"

REQUEST_0_17 = """\
if isinstance(event, h2.events.RequestReceived):
    if self.context.terminated.is_set():
        self.connection.reset_stream(event.stream_id)
        self.connection.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 0})
    else:
        await self._create_stream(event)
        await self.send(Updated(idle=False))

    if self.keep_alive_requests > self.config.keep_alive_max_requests:
        self.connection.close_connection()
"""
REQUEST_FIXED = REQUEST_0_17.replace(
    "self.connection.reset_stream(event.stream_id)\n",
    "self.connection.reset_stream(\n"
    f"            event.stream_id, error_code={REFUSED}\n"
    "        )\n",
)


def module(
    request: str = REQUEST_0_17,
    *,
    init: str = INIT,
    imports: str = IMPORTS,
    receiver: str = "self",
    after: str = "",
) -> str:
    """A protocol class in Hypercorn's shape whose `_handle_events` starts with `request`."""
    chain = textwrap.dedent(request)
    chain += "elif isinstance(event, h2.events.DataReceived):\n    await self._data(event)\n"
    return handle_events_module(chain, init=init, imports=imports, receiver=receiver, after=after)


def rewrite(source: str) -> h2fix.Rewrite:
    return h2fix.rewrite(source, ["graceful_shutdown"])


def reset_arm(arm: str) -> str:
    """The RequestReceived branch with `arm` as the body of the shutdown test."""
    return (
        "if isinstance(event, h2.events.RequestReceived):\n"
        "    if self.context.terminated.is_set():\n"
        f"{textwrap.indent(arm, ' ' * 8)}"
        "    else:\n"
        "        await self._create_stream(event)\n"
    )


RESET = "self.connection.reset_stream(event.stream_id)\n"
WRAPPED = f"self.connection.reset_stream(\n    event.stream_id, error_code={REFUSED}\n)\n"
FULLWIDTH_SELF = ("_handle_events(self", "_handle_events(\uff53elf")

# `from h2.connection import H2Connection` beside the plain imports.
BY_NAME = ("import h2.events\n", "import h2.events\nfrom h2.connection import H2Connection\n")
INIT_BY_NAME = INIT.replace("h2.connection.H2Connection", "H2Connection")
DECORATED = ("    async def _handle_events", "    @traced\n    async def _handle_events")

# (before, after): one source each, as full modules
REWRITES = {
    "hypercorn-0.17": (module(), module(REQUEST_FIXED)),
    "stream-id-as-keyword": (
        module(reset_arm(RESET.replace("(event", "(stream_id=event"))),
        module(reset_arm(WRAPPED.replace("    event", "    stream_id=event"))),
    ),
    "other-receiver-name": (module(receiver="proto"), module(REQUEST_FIXED, receiver="proto")),
    "other-event-name": (
        module().replace("event", "ev").replace("_handle_evs", "_handle_events"),
        module(REQUEST_FIXED).replace("event", "ev").replace("_handle_evs", "_handle_events"),
    ),
    "imported-event-class": (
        module(reset_arm(RESET).replace("h2.events.RequestReceived", "RequestReceived")),
        module(reset_arm(WRAPPED).replace("h2.events.RequestReceived", "RequestReceived")),
    ),
    "spread-over-lines-with-a-trailing-comma": (
        module(reset_arm("self.connection.reset_stream(\n    event.stream_id,\n)\n")),
        module(
            reset_arm(
                "self.connection.reset_stream(\n    event.stream_id,\n"
                f"    error_code={REFUSED},\n)\n"
            )
        ),
    ),
    "logging-beside-the-reset": (
        module(reset_arm('log.info("refused %d", event.stream_id)\n' + RESET)),
        module(reset_arm('log.info("refused %d", event.stream_id)\n' + WRAPPED)),
    ),
    "reset-in-an-elif-arm": (
        module(
            "if isinstance(event, h2.events.RequestReceived):\n"
            "    if not self.closing:\n"
            "        await self._create_stream(event)\n"
            "    elif event.stream_id:\n"
            "        " + RESET
        ),
        module(
            "if isinstance(event, h2.events.RequestReceived):\n"
            "    if not self.closing:\n"
            "        await self._create_stream(event)\n"
            "    elif event.stream_id:\n" + textwrap.indent(WRAPPED, " " * 8)
        ),
    ),
    "connection-class-imported-by-name": (
        module(init=INIT_BY_NAME).replace(*BY_NAME),
        module(REQUEST_FIXED, init=INIT_BY_NAME).replace(*BY_NAME),
    ),
    "h2-imported-only-through-submodules": (
        module(imports="import h2.connection\nimport h2.events\n"),
        module(REQUEST_FIXED, imports="import h2.connection\nimport h2.events\n"),
    ),
    "h2-imported-locally-elsewhere": (
        module(after="def helper(self):\n    import h2.settings\n"),
        module(REQUEST_FIXED, after="def helper(self):\n    import h2.settings\n"),
    ),
    # Python reads identifiers NFKC-normalised: a fullwidth letter names the same thing.
    "fullwidth-receiver": (
        module().replace(*FULLWIDTH_SELF),
        module(REQUEST_FIXED).replace(*FULLWIDTH_SELF),
    ),
    "fullwidth-method-name": (
        module(reset_arm(RESET.replace("reset_stream", "reset_\uff53tream"))),
        module(reset_arm(WRAPPED.replace("reset_stream", "reset_\uff53tream"))),
    ),
}


@pytest.mark.parametrize(("before", "after"), REWRITES.values(), ids=REWRITES.keys())
def test_rewrites(before: str, after: str) -> None:
    outcome = assert_rewritten("graceful_shutdown", before, after, ("H2Protocol._handle_events",))
    assert "REFUSED_STREAM" in outcome.message


def test_served_through_a_subclass_rewrites_the_base() -> None:
    served = "\n\nclass H2Protocol(Base):\n    pass\n"
    before = module().replace("class H2Protocol:", "class Base:") + served
    after = module(REQUEST_FIXED).replace("class H2Protocol:", "class Base:") + served
    result = rewrite(before)
    assert result.source == after
    assert result.outcomes[0].functions == ("Base._handle_events",)


def test_the_code_names_h2s_refused_stream() -> None:
    """What the rewrite inserts is h2's REFUSED_STREAM, 7 on the wire (RFC 9113 §7)."""
    import h2.connection  # loads h2.errors, as the rewritten module's own import does
    import h2.errors

    assert h2.errors.ErrorCodes.REFUSED_STREAM == 7
    assert "h2.errors" in __import__("sys").modules
    assert h2.connection  # the import the proof requires is the one that loads it


# Left alone byte for byte: the reset already says REFUSED_STREAM.
FIXED_UPSTREAM = {
    "keyword-from-h2-errors": module(REQUEST_FIXED),
    "error-codes-imported": module(
        reset_arm(RESET.replace("event.stream_id)", "event.stream_id, ErrorCodes.REFUSED_STREAM)"))
    ),
    "positional-seven": module(reset_arm(RESET.replace("event.stream_id)", "event.stream_id, 7)"))),
    "keyword-seven": module(
        reset_arm(RESET.replace("event.stream_id)", "event.stream_id, error_code=7)"))
    ),
}


@pytest.mark.parametrize("source", FIXED_UPSTREAM.values(), ids=FIXED_UPSTREAM.keys())
def test_already_fixed_is_left_alone(source: str) -> None:
    result = rewrite(source)
    assert [o.outcome for o in result.outcomes] == [Outcome.FIXED_UPSTREAM]
    assert result.source == source


NOT_APPLICABLE = {
    "no-request-branch": (
        "class H2Protocol:\n    async def _handle_events(self, events):\n        pass\n"
    ),
    "no-reset-in-the-branch": module(
        "if isinstance(event, h2.events.RequestReceived):\n    await self._create_stream(event)\n"
    ),
    "only-constructs-the-event": (
        "import h2.events\n\ndef make():\n    return h2.events.RequestReceived()\n"
    ),
}


@pytest.mark.parametrize("source", NOT_APPLICABLE.values(), ids=NOT_APPLICABLE.keys())
def test_not_applicable(source: str) -> None:
    result = rewrite(source)
    assert [o.outcome for o in result.outcomes] == [Outcome.NOT_APPLICABLE]
    assert result.source == source


def _with_code(code: str) -> str:
    return module(reset_arm(RESET.replace("event.stream_id)", f"event.stream_id, {code})")))


# Drifted shapes the fix cannot prove safe: (source, words the refusal must expect)
REFUSED_CASES = {
    # "Not applicable" while the fault stays: the reset is in a method the branch calls.
    "reset-in-a-helper": (
        module(
            REQUEST_0_17.replace(
                "self.connection.reset_stream(event.stream_id)", "self._refuse(event.stream_id)"
            ),
            after="def _refuse(self, stream_id):\n    self.connection.reset_stream(stream_id)\n",
        ),
        "directly in the RequestReceived branch",
    ),
    # "Applied" while broken: a request dropped before the dispatch is never answered at
    # all, so changing the reset's code repairs nothing for it.
    "shutdown-requests-dropped-before-the-loop": (
        module().replace(
            "        for event in events:\n",
            "        events = [e for e in events if not self.context.terminated.is_set()]\n"
            "        for event in events:\n",
        ),
        "only looped over in _handle_events",
    ),
    "caller-drops-requests-in-shutdown": (
        module().replace(
            "        await self._handle_events(events)\n",
            "        if not self.context.terminated.is_set():\n"
            "            await self._handle_events(events)\n"
            "        await self._handle_events(events[:0])\n",
        ),
        "bound once and read by that call alone",
    ),
    # The code: only REFUSED_STREAM is left alone; anything else is a choice not ours.
    "another-error-code": (
        _with_code("error_code=h2.errors.ErrorCodes.CANCEL"),
        "no error code yet, or REFUSED_STREAM (7)",
    ),
    "no-error-given-explicitly": (_with_code("error_code=0"), "no error code yet"),
    "code-from-a-variable": (_with_code("error_code=code"), "no error code yet"),
    "unknown-keyword": (_with_code("reason=1"), "reset_stream(stream_id[, error_code])"),
    "star-arguments": (
        module(reset_arm("self.connection.reset_stream(*ids)\n")),
        "reset_stream(stream_id[, error_code])",
    ),
    # The stream: the event's own.
    "decoy-reset-of-another-stream": (
        module(reset_arm("self.connection.reset_stream(self.last_stream_id)\n")),
        "reset_stream(event.stream_id): the stream of the request",
    ),
    "reset-of-another-events-stream": (
        module(reset_arm("self.connection.reset_stream(other.stream_id)\n")),
        "reset_stream(event.stream_id)",
    ),
    "event-rebound-in-the-branch": (
        module(reset_arm("event = self.queue.pop()\n" + RESET)),
        "`event` never rebound in the RequestReceived branch",
    ),
    "two-resets": (
        module(reset_arm(RESET + RESET.replace("event.stream_id", "event.stream_id, 8"))),
        "one reset_stream() call in the RequestReceived branch",
    ),
    # The request really is unprocessed.
    "reset-after-creating-the-stream": (
        module(
            "if isinstance(event, h2.events.RequestReceived):\n"
            "    await self._create_stream(event)\n"
            "    if self.context.terminated.is_set():\n"
            "        " + RESET
        ),
        "uses event only for event.stream_id",
    ),
    "created-in-the-same-arm": (
        module(reset_arm("await self._create_stream(event)\n" + RESET)),
        "uses event only for event.stream_id",
    ),
    "event-handed-to-a-queue": (
        module(reset_arm("self.pending.append(event)\n" + RESET)),
        "uses event only for event.stream_id",
    ),
    "create-method-called-with-the-id": (
        module(reset_arm("await self._create_stream(event.stream_id)\n" + RESET)),
        "no call of self._create_stream()",
    ),
    "reset-not-a-statement": (
        module(reset_arm("done = self.connection.reset_stream(event.stream_id)\n")),
        "as a statement of its own",
    ),
    # The call is h2's.
    "reset-on-a-local-alias": (
        module(reset_arm("conn = self.connection\nconn.reset_stream(event.stream_id)\n")),
        "reset_stream() called on `self.<connection>`",
    ),
    "connection-not-h2": (
        module(init=INIT.replace("h2.connection.H2Connection", "Proxy")),
        "an h2 H2Connection",
    ),
    "connection-assigned-twice": (
        module(after="def swap(self):\n    self.connection = other\n"),
        "assigned once, an h2 H2Connection",
    ),
    "connection-class-from-elsewhere": (
        module(init=INIT.replace("h2.connection.H2Connection", "H2Connection")).replace(
            "import h2.events\n", "import h2.events\nfrom proxy import H2Connection\n"
        ),
        "an h2 H2Connection",
    ),
    # The name the new code reads.
    "h2-rebound-at-module-level": (
        module() + "\n\nh2 = None\n",
        "`h2` bound only by `import h2`",
    ),
    "h2-imported-with-an-alias": (
        module(imports=IMPORTS + "import h2.settings as h2\n"),
        "`h2` bound only by `import h2`",
    ),
    "h2-from-another-package": (
        module(imports=IMPORTS + "from vendored import h2\n"),
        "`h2` bound only by `import h2`",
    ),
    "h2-a-parameter": (
        module().replace("_handle_events(self, events)", "_handle_events(self, events, h2=None)"),
        "`h2` bound only by `import h2`",
    ),
    "h2-declared-global-elsewhere": (
        module(after="def swap(self):\n    global h2\n    h2 = None\n"),
        "`h2` bound only by `import h2`",
    ),
    "h2-bound-by-a-module-level-loop": (
        module() + "\n\nfor h2 in ():\n    pass\n",
        "`h2` bound only by `import h2`",
    ),
    "no-import-of-h2-connection": (
        module(init=INIT_BY_NAME).replace("import h2.connection\n", "").replace(*BY_NAME),
        "`import h2.connection` at module level",
    ),
    # The method the server runs.
    "overridden-in-a-subclass": (
        module()
        + "\n\nclass Sub(H2Protocol):\n    async def _handle_events(self, events):\n        pass\n",
        "_handle_events defined in one class of the module",
    ),
    "method-defined-twice": (
        module(after="async def _handle_events(self, events):\n    pass\n"),
        "one definition of _handle_events",
    ),
    "decorated-method": (
        module().replace(*DECORATED),
        "an undecorated method",
    ),
    "self-rebound": (
        module(reset_arm("self = self.parent\n" + RESET)),
        "`self` never rebound in _handle_events",
    ),
    "class-defined-twice": (module() + "\n\nclass H2Protocol:\n    pass\n", "one definition"),
    "served-class-is-another": (
        module().replace("class H2Protocol:", "class Legacy:")
        + "\n\nclass H2Protocol:\n    pass\n",
        "H2Protocol (the class the server imports) to be Legacy",
    ),
    "return-before-the-dispatch": (
        module().replace(
            "        for event in events:\n", "        return\n        for event in events:\n"
        ),
        "the branch reachable",
    ),
    "earlier-arm-takes-every-event": (
        module(
            "if isinstance(event, h2.events.Event):\n    pass\nel" + reset_arm(RESET),
        ),
        "no test before the RequestReceived branch that takes a RequestReceived",
    ),
    "earlier-arm-is-no-class-test": (
        module("if event is None:\n    pass\nel" + reset_arm(RESET)),
        "only isinstance(event, ...) tests before the RequestReceived branch",
    ),
    "shared-branch": (
        module(
            "if isinstance(event, (h2.events.RequestReceived, h2.events.DataReceived)):\n"
            "    " + RESET
        ),
        "a branch for one h2 event class",
    ),
    "two-request-branches": (
        module(
            after=(
                "async def _more(self, event):\n"
                "    if isinstance(event, h2.events.RequestReceived):\n"
                "        " + RESET
            )
        ),
        "one RequestReceived branch",
    ),
    "dispatch-by-a-table": (
        "import h2.events\n\n"
        "class H2Protocol:\n"
        "    HANDLERS = {h2.events.RequestReceived: 'refuse'}\n"
        "    def refuse(self, event):\n"
        "        self.connection.reset_stream(event.stream_id)\n",
        "`if isinstance(<event>, h2.events.RequestReceived):` branch",
    ),
    # "Applied" while broken: the reset that changes runs only under a flag; with the flag
    # off (as shipped) a helper answers the shutdown request, with NO_ERROR.
    "reset-under-a-flag-helper-otherwise": (
        module(
            REQUEST_0_17.replace(
                "        " + RESET,
                "        if DEBUG:\n            "
                + RESET
                + "        else:\n            await self._refuse(event.stream_id)\n",
            )
        ),
        "directly in one arm",
    ),
    "match-case": (
        module(
            after=(
                "async def _other(self, event):\n"
                "    match event:\n"
                "        case h2.events.RequestReceived():\n"
                "            " + RESET
            )
        ),
        "not match/case",
    ),
}


@pytest.mark.parametrize(
    ("source", "expected"), rows(REFUSED_CASES, match_statement={"match-case"})
)
def test_refused(source: str, expected: str) -> None:
    assert_refused(source, "graceful_shutdown", expected)  # every case is valid Python


def test_refusal_is_recorded_when_not_strict() -> None:
    source, _ = REFUSED_CASES["another-error-code"]
    assert_refusal_recorded(source, "graceful_shutdown")


# --- the real releases ---------------------------------------------------------------


@pytest.mark.network
@pytest.mark.parametrize("release", RELEASES, ids=release_ids(RELEASES))
def test_release_is_rewritten(release: tuple[str, str]) -> None:
    """No release refuses retry-safely yet: each resets with NO_ERROR, and only that changes."""
    from support.releases import h2_source

    result = rewrite(h2_source(*release))
    [found] = result.outcomes
    assert found.outcome is Outcome.REWRITTEN
    assert result.changed_functions == ("H2Protocol._handle_events",)
    compile(result.source, "h2.py", "exec", dont_inherit=True)
    diff = result.diff().splitlines()
    removed = [line[1:].strip() for line in diff if line.startswith("-") and line[1:2] != "-"]
    added = [line[1:].strip() for line in diff if line.startswith("+") and line[1:2] != "+"]
    assert removed == ["self.connection.reset_stream(event.stream_id)"]
    assert added == [
        "self.connection.reset_stream(",
        f"event.stream_id, error_code={REFUSED}",
        ")",
    ]
