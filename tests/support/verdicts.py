"""One check of a drift corpus's verdict, shared by the corpora (tests/test_drift_*.py).

A verdict is "fix", "leave" or "refuse", or alternatives joined by "|" ("fix|refuse":
either is right). Whatever the verdict, nothing is ever half done: a refusal changes
nothing even when refusals are only recorded, and a rewrite compiles and is final (a
second run changes nothing more).
"""

from __future__ import annotations

from typing import Any

import h2fix
from h2fix import FixOutcome, H2FixError, Outcome, Rewrite, UnrecognisedStructureError


def outcome_of(result: Rewrite, fix: str) -> FixOutcome:
    return next(o for o in result.outcomes if o.fix == fix)


def check_verdict(
    text: str, fix: str, verdict: str, **options: Any
) -> tuple[Rewrite, FixOutcome] | None:
    """Check what `fix` does to `text` against `verdict`; `options` go to h2fix.rewrite
    (an `environment`). Returns the rewrite and the fix's outcome when it changed the code,
    for the corpus's own checks of the result; None when it refused or left the code."""
    result = _rewrite_or_refusal(text, fix, options)
    if isinstance(result, H2FixError):
        assert "refuse" in verdict, f"refused, expected {verdict}: {result}"
        _check_refusal(result, fix)
        lenient = h2fix.rewrite(text, [fix], strict=False, **options)
        assert lenient.source == text, "refused, yet the source changed"
        return None
    outcome = outcome_of(result, fix)
    if not outcome.outcome.changes_code:
        assert "leave" in verdict, f"expected {verdict}, h2fix: {outcome}"
        assert result.source == text
        assert not outcome.functions
        return None
    assert "fix" in verdict, f"expected {verdict}, h2fix: {outcome}\n{result.diff()}"
    assert outcome.outcome is Outcome.REWRITTEN, outcome
    assert result.changed
    compile(result.source, "h2.py", "exec", dont_inherit=True)
    again = outcome_of(h2fix.rewrite(result.source, [fix], strict=False, **options), fix)
    assert not again.outcome.changes_code, f"not idempotent: {again}"
    return result, outcome


def _rewrite_or_refusal(text: str, fix: str, options: dict[str, Any]) -> Rewrite | H2FixError:
    """The rewrite, or the refusal: code h2fix cannot prove (UnrecognisedStructureError) or
    cannot read (InvalidSourceError); anything else propagates and fails the test."""
    try:
        return h2fix.rewrite(text, [fix], **options)
    except (UnrecognisedStructureError, h2fix.InvalidSourceError) as error:
        return error


def _check_refusal(error: H2FixError, fix: str) -> None:
    if isinstance(error, UnrecognisedStructureError):
        assert error.fix == fix, f"another fix refused: {error}"
        assert error.expected
        assert error.found  # the message shows what it found instead
