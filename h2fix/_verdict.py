"""`h2fix verify`'s table and verdict: what was measured, read against what h2fix says.

Pure: no servers, no I/O. Each row belongs to one fix; a row is "n/a" where its
fault cannot occur (the fix is not applicable, or the probe needs trailers the
server does not support). One closing line per fix says what h2fix did with it
and whether its checks hold; the exit code is 0 only when every applicable
check passes with h2fix and every fix h2fix left alone passes as installed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ._probe import CHECKS, Check, Results
from ._results import FixOutcome, Outcome, Report

_WORDS = {True: "yes", False: "NO", None: "n/a"}
_COLUMNS = ("without fix", "with h2fix")
_CELL = 14


def usable_fixes(report: Report) -> list[str]:
    """The fixes to serve the repaired column with: all but those h2fix refuses
    (with a refusal the launcher would start nothing at all)."""
    return [o.fix for o in report.fixes if o.outcome is not Outcome.REFUSED]


def applies(check: Check, outcomes: Mapping[str, FixOutcome]) -> bool:
    def possible(fix: str) -> bool:
        outcome = outcomes.get(fix)
        return outcome is not None and outcome.outcome is not Outcome.NOT_APPLICABLE

    return possible(check.fix) and (not check.needs_trailers or possible("trailers"))


def render(report: Report, stock: Results, repaired: Results | None) -> tuple[list[str], int]:
    """The table, one closing line per fix, the verdict; and the exit code.

    `repaired` is None when h2fix refused every fix (nothing was served repaired).
    """
    outcomes = {o.fix: o for o in report.fixes}
    rows = [check for check in CHECKS if check.fix in outcomes]
    width = max(len(check.label) for check in rows) + 2
    title = f"{report.target} {report.version}:"
    lines = [(f"{title:<{width}}" + "".join(f"{c:<{_CELL}}" for c in _COLUMNS)).rstrip()]
    for check in rows:
        if applies(check, outcomes):
            cells = [_WORDS[stock.get(check.label)], _cell(repaired, check)]
        else:
            cells = ["n/a", "n/a"]
        lines.append(f"{check.label:<{width}}" + "".join(f"{c:<{_CELL}}" for c in cells).rstrip())
    failures = []
    for outcome in report.fixes:
        checks = [c for c in rows if c.fix == outcome.fix and applies(c, outcomes)]
        line, ok = _fix_line(outcome, checks, stock, repaired)
        lines.append(line)
        if not ok:
            failures.append(outcome.fix)
    if repaired is None:
        lines.append("h2fix refused every fix: no repaired server was served to check")
        return lines, 1
    if failures:
        lines.append(f"NOT every applicable check passes with h2fix: {', '.join(failures)}")
        return lines, 1
    lines.append("every applicable check passes with h2fix")
    return lines, 0


def _cell(results: Results | None, check: Check) -> str:
    return "refused" if results is None else _WORDS[results.get(check.label)]


def _passes(results: Results | None, checks: Sequence[Check]) -> bool:
    # None means the check could not tell (no trailers arrived to have DATA after
    # them); the row that did fail says so.
    return results is not None and all(results.get(c.label) is not False for c in checks)


def _fix_line(
    outcome: FixOutcome, checks: Sequence[Check], stock: Results, repaired: Results | None
) -> tuple[str, bool]:
    """One fix's closing line, and whether it is all right."""
    head = f"{outcome.fix}: "
    kind = outcome.outcome
    if kind is Outcome.NOT_APPLICABLE:
        return head + f"not applicable ({outcome.message})", True
    as_installed = _passes(stock, checks)
    with_h2fix = _passes(repaired, checks)
    if kind in (Outcome.PENDING, Outcome.ALREADY_APPLIED):
        head += "applied by h2fix"
    elif kind is Outcome.FIXED_UPSTREAM:
        head += "fixed upstream"
    elif kind is Outcome.NOT_NEEDED:
        head += "not needed with this h2"
    else:  # refused: the reason is long (it quotes the code); status prints it
        head += "refused by h2fix, not applied (`h2fix status` says why)"
    if not checks:
        return head + " (no check applies to this version)", True
    if kind in (Outcome.PENDING, Outcome.ALREADY_APPLIED):
        before = "fails as installed" if not as_installed else "passes as installed too"
        if with_h2fix:
            return head + f" ({before}, passes with h2fix)", True
        return head + f", but FAILS with h2fix ({before})", False
    if not as_installed:
        # h2fix left the code alone (it looked right, or h2fix could not prove its
        # change): the measurement says the fault is there.
        return head + ", but FAILS as installed", False
    if repaired is not None and not with_h2fix:
        return head + " (passes as installed), but FAILS with h2fix", False
    return head + " (passes as installed)", True
