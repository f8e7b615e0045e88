"""What the rewrite tables (tests/test_rewrite_*.py) share: the check of a rewrite row,
and the releases whose protocol/h2.py each fix classifies."""

from __future__ import annotations

import textwrap
from collections.abc import Iterable

import libcst as cst

import h2fix
from h2fix import Environment, FixOutcome, Outcome

#: The releases the tables run each fix on: both servers, before, at and after each fault.
RELEASES = [
    ("hypercorn", "0.16.0"),
    ("hypercorn", "0.17.0"),
    ("hypercorn", "0.17.3"),
    ("hypercorn", "0.18.0"),
    ("anycorn", "0.18.1"),
    ("anycorn", "0.18.7"),
    ("anycorn", "0.19.0"),
    ("anycorn", "0.20.1"),
]


def release_ids(releases: Iterable[tuple[str, str]]) -> list[str]:
    """`hypercorn-0.17.3` for each (distribution, version) of `releases` (a list or dict)."""
    return ["-".join(release) for release in releases]


def assert_rewritten(
    fix: str,
    before: str,
    after: str,
    functions: tuple[str, ...],
    environment: Environment | None = None,
) -> FixOutcome:
    """`fix` turns `before` into exactly `after` (itself valid Python that compiles), in
    `functions`, and finds nothing more to do in its own output."""
    cst.parse_module(after)
    result = h2fix.rewrite(before, [fix], environment=environment)
    assert result.source == after
    [outcome] = result.outcomes
    assert (outcome.outcome, outcome.functions) == (Outcome.REWRITTEN, functions)
    compile(result.source, "h2.py", "exec", dont_inherit=True)
    again = h2fix.rewrite(result.source, [fix], environment=environment)
    assert (again.changed, again.outcomes[0].outcome) == (False, Outcome.FIXED_UPSTREAM)
    assert again.source == result.source
    return outcome


def handle_events_module(
    chain: str, *, init: str, imports: str, receiver: str = "self", after: str = ""
) -> str:
    """A protocol class in Hypercorn's shape: `__init__` runs `init`, `handle` passes what
    `<connection>.receive_data()` returns to `_handle_events`, which runs the dispatch
    `chain` for each event (`self` spelt `receiver` in both); `after`
    follows in the class body."""
    if receiver != "self":
        chain = chain.replace("self.", f"{receiver}.")
        init = init.replace("self.", f"{receiver}.")
    return (
        f"{imports}\n\n"
        "class H2Protocol:\n"
        f"    def __init__({receiver}) -> None:\n"
        f"{textwrap.indent(textwrap.dedent(init), ' ' * 8)}\n"
        # As every release: the caller hands the dispatch what h2 received, whole.
        f"    async def handle({receiver}, data):\n"
        f"        events = {receiver}.connection.receive_data(data)\n"
        f"        await {receiver}._handle_events(events)\n\n"
        f"    async def _handle_events({receiver}, events):\n"
        "        for event in events:\n"
        f"{textwrap.indent(chain, ' ' * 12)}"
        f"        await {receiver}._flush()\n"
        f"{textwrap.indent(textwrap.dedent(after), '    ')}"
    )
