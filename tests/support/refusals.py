"""The one way a fix's rewrite table checks a refusal, shared by the tables."""

from __future__ import annotations

import libcst as cst
import pytest

import h2fix
from h2fix import Outcome, UnrecognisedStructureError


def assert_refused(source: str, fix: str, expected: str) -> None:
    """`fix` refuses valid Python (for its shape only), saying what it expected and found."""
    cst.parse_module(source)
    with pytest.raises(UnrecognisedStructureError) as caught:
        h2fix.rewrite(source, [fix])
    error = caught.value
    assert error.fix == fix
    assert expected in error.expected, error.expected
    assert error.found  # the message shows what it found instead


def assert_refusal_recorded(source: str, fix: str) -> None:
    """With strict=False the refusal is an outcome, and nothing changes."""
    result = h2fix.rewrite(source, [fix], strict=False)
    [outcome] = result.outcomes
    assert outcome.outcome is Outcome.REFUSED
    assert not result.changed
    assert result.source == source
