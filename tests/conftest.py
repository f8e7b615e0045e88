from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest

import h2fix


def pytest_configure(config: pytest.Config) -> None:
    # The suite, and every server it starts, keeps its start-up cache to itself.
    os.environ["H2FIX_CACHE_DIR"] = tempfile.mkdtemp(prefix="h2fix-test-cache-")


@pytest.fixture(autouse=True)
def _unpatched() -> Iterator[None]:
    """Every test starts and ends with the in-process targets unpatched."""
    yield
    for target in ("hypercorn", "anycorn"):
        h2fix.revert(target)


def pytest_report_header() -> str:
    # Lets a reader of CI output see which run demonstrates the failure without the fix.
    return f"H2FIX_TEST_WITHOUT_FIX={os.environ.get('H2FIX_TEST_WITHOUT_FIX', '')!r}"
