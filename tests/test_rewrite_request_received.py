"""The `request_received` fix as tables, for both shapes of h2's event constructors."""

from __future__ import annotations

import textwrap

import libcst as cst
import pytest

import h2fix
from h2fix import Environment, Outcome, UnrecognisedStructureError
from h2fix._environment import H2_KEYWORD_EVENTS, H2_NO_ARGUMENT_EVENTS


def module(body: str) -> str:
    return (
        "import h2.events\nfrom h2.events import RequestReceived\n\n\n"
        "class H2Protocol:\n"
        "    async def initiate(self, headers):\n"
        f"{textwrap.indent(textwrap.dedent(body), ' ' * 8)}"
        "        await self._create_stream(event)\n"
    )


def rewrite(source: str, environment: Environment) -> h2fix.Rewrite:
    return h2fix.rewrite(source, ["request_received"], environment=environment)


NO_ARGUMENTS = """\
event = h2.events.RequestReceived()
event.stream_id = 1
event.headers = headers
"""
KEYWORDS = "event = h2.events.RequestReceived(stream_id=1, headers=headers)\n"

# (before, after) with h2 >= 4.3 (keyword-only events)
TO_KEYWORDS = {
    "hypercorn-0.17": (NO_ARGUMENTS, KEYWORDS),
    "stream-id-only": (
        "event = h2.events.RequestReceived()\nevent.stream_id = 1\nlog(event)\n",
        "event = h2.events.RequestReceived(stream_id=1)\nlog(event)\n",
    ),
    "imported-name": (
        "event = RequestReceived()\nevent.stream_id = sid\n",
        "event = RequestReceived(stream_id=sid)\n",
    ),
    "other-order": (
        "ev = h2.events.RequestReceived()\nev.headers = cast(list, hs)\nev.stream_id = 3\n",
        "ev = h2.events.RequestReceived(headers=cast(list, hs), stream_id=3)\n",
    ),
    "commented-assignment-stays": (
        "event = h2.events.RequestReceived()\nevent.stream_id = 1\n"
        "event.headers = headers  # as sent\n",
        "event = h2.events.RequestReceived(stream_id=1)\nevent.headers = headers  # as sent\n",
    ),
}

# (before, after) with h2 <= 4.2 (no-argument constructors): anycorn 0.18.2+'s direction
TO_NO_ARGUMENTS = {
    "anycorn-0.18": (
        "event = h2.events.RequestReceived(stream_id=1)\nevent.headers = headers\n",
        "event = h2.events.RequestReceived()\nevent.stream_id = 1\nevent.headers = headers\n",
    ),
    "hypercorn-0.18": (KEYWORDS, NO_ARGUMENTS),
}


REWRITES = {
    **{f"to-keywords-{k}": (H2_KEYWORD_EVENTS, *v) for k, v in TO_KEYWORDS.items()},
    **{f"to-no-arguments-{k}": (H2_NO_ARGUMENT_EVENTS, *v) for k, v in TO_NO_ARGUMENTS.items()},
}


@pytest.mark.parametrize(("environment", "before", "after"), REWRITES.values(), ids=REWRITES.keys())
def test_rewrites(environment: Environment, before: str, after: str) -> None:
    expected = module(after)
    cst.parse_module(expected)
    result = rewrite(module(before), environment)
    assert result.source == expected
    [outcome] = result.outcomes
    assert (outcome.outcome, outcome.functions) == (Outcome.REWRITTEN, ("H2Protocol.initiate",))


NOOPS = {
    "keywords-with-keyword-h2": (KEYWORDS, H2_KEYWORD_EVENTS, Outcome.FIXED_UPSTREAM),
    "no-arguments-with-old-h2": (NO_ARGUMENTS, H2_NO_ARGUMENT_EVENTS, Outcome.NOT_NEEDED),
    "no-construction": ("event = make_event()\n", H2_KEYWORD_EVENTS, Outcome.NOT_APPLICABLE),
    "h2-not-installed": (NO_ARGUMENTS, Environment(), Outcome.NOT_NEEDED),
}


@pytest.mark.parametrize(("body", "environment", "outcome"), NOOPS.values(), ids=NOOPS.keys())
def test_noops(body: str, environment: Environment, outcome: Outcome) -> None:
    source = module(body)
    result = rewrite(source, environment)
    assert result.source == source
    assert [o.outcome for o in result.outcomes] == [outcome]


REFUSALS = {
    "not-assigned": (
        "await self._create_stream(h2.events.RequestReceived())\nevent = None\n",
        H2_KEYWORD_EVENTS,
        "as a statement",
    ),
    "stream-id-set-later": (
        "event = h2.events.RequestReceived()\nlog('x')\nevent.stream_id = 1\n",
        H2_KEYWORD_EVENTS,
        "`event.stream_id = ...` right after",
    ),
    "positional-with-old-h2": (
        "event = h2.events.RequestReceived(1)\n",
        H2_NO_ARGUMENT_EVENTS,
        "keyword arguments only",
    ),
    "not-h2s-event": (
        "event = events.RequestReceived()\nevent.stream_id = 1\n",
        H2_KEYWORD_EVENTS,
        "imported from h2",
    ),
    "value-reads-the-event": (
        "event = h2.events.RequestReceived()\nevent.headers = headers\n"
        "event.stream_id = event.headers[0]\n",
        H2_KEYWORD_EVENTS,
        "`event.stream_id = ...` right after",
    ),
    "split-value-reads-the-event": (
        "event = h2.events.RequestReceived(stream_id=event.stream_id)\n",
        H2_NO_ARGUMENT_EVENTS,
        "do not read `event` itself",
    ),
    "keywords-missing-stream-id": (
        "event = h2.events.RequestReceived(headers=headers)\n",
        H2_KEYWORD_EVENTS,
        "keyword arguments including stream_id",
    ),
}


@pytest.mark.parametrize(
    ("body", "environment", "expected"), REFUSALS.values(), ids=REFUSALS.keys()
)
def test_refusals(body: str, environment: Environment, expected: str) -> None:
    with pytest.raises(UnrecognisedStructureError) as caught:
        rewrite(module(body), environment)
    assert expected in caught.value.expected
    assert caught.value.where == "H2Protocol.initiate"
    assert "RequestReceived(" in caught.value.found


def test_environment_detects_the_installed_h2() -> None:
    import h2.events

    environment = Environment.detect()
    assert environment.request_received_required == ("stream_id",)
    kwargs = dict.fromkeys(environment.request_received_required, 1)
    h2.events.RequestReceived(**kwargs)  # the shape it detected is the one h2 accepts


# "Applied" while still broken, each rewritten before it was refused: the call is not h2's
# own class after all, or a construction the fix does not see still raises TypeError.
# (source, h2 shape, words the refusal expects, where it is refused)
HIDDEN = {
    "h2-rebound-in-the-method": (
        module("h2 = legacy\n" + NO_ARGUMENTS),
        H2_KEYWORD_EVENTS,
        "imported from h2",
        "H2Protocol.initiate",
    ),
    "h2-a-parameter": (
        module(NO_ARGUMENTS).replace("(self, headers)", "(self, headers, h2=legacy)"),
        H2_KEYWORD_EVENTS,
        "imported from h2",
        "H2Protocol.initiate",
    ),
    "imported-name-rebound-in-the-method": (
        module("RequestReceived = Legacy\n" + NO_ARGUMENTS.replace("h2.events.", "")),
        H2_KEYWORD_EVENTS,
        "imported from h2",
        "H2Protocol.initiate",
    ),
    "subclass-without-init": (
        module("event = Upgrade()\nevent.stream_id = 1\n").replace(
            "class H2Protocol:",
            "class Upgrade(h2.events.RequestReceived):\n    pass\n\n\nclass H2Protocol:",
        ),
        H2_KEYWORD_EVENTS,
        "no subclass of RequestReceived without an __init__",
        "H2Protocol.initiate",
    ),
    "subclass-of-a-subclass-with-old-h2": (
        module("event = Inner(stream_id=1)\n").replace(
            "class H2Protocol:",
            "class Upgrade(RequestReceived):\n    kind = 1\n\n\n"
            "class Inner(Upgrade):\n    pass\n\n\nclass H2Protocol:",
        ),
        H2_NO_ARGUMENT_EVENTS,
        "no subclass of RequestReceived without an __init__",
        "H2Protocol.initiate",
    ),
    "imported-under-an-alias": (
        module(NO_ARGUMENTS.replace("h2.events.RequestReceived", "Received")).replace(
            "from h2.events import RequestReceived\n",
            "from h2.events import RequestReceived as Received\n",
        ),
        H2_KEYWORD_EVENTS,
        "called by its own name",
        "<module>",
    ),
    "assigned-to-an-alias": (
        module("Received = h2.events.RequestReceived\nevent = Received()\n"),
        H2_KEYWORD_EVENTS,
        "called by its own name",
        "<module>",
    ),
}


@pytest.mark.parametrize(
    ("source", "environment", "expected", "where"), HIDDEN.values(), ids=HIDDEN.keys()
)
def test_hidden_constructions_are_refused(
    source: str, environment: Environment, expected: str, where: str
) -> None:
    cst.parse_module(source)
    with pytest.raises(UnrecognisedStructureError) as caught:
        rewrite(source, environment)
    assert expected in caught.value.expected
    assert caught.value.where == where
