from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest

import h2fix

_cache_dir: str | None = None


def pytest_configure(config: pytest.Config) -> None:
    # The suite, and every server it starts, keeps its start-up cache to itself.
    # XDG_CACHE_HOME too, so that a test without H2FIX_CACHE_DIR still stays out of
    # the user's ~/.cache/h2fix.
    global _cache_dir
    _cache_dir = tempfile.mkdtemp(prefix="h2fix-test-cache-")
    os.environ["H2FIX_CACHE_DIR"] = os.path.join(_cache_dir, "h2fix")
    os.environ["XDG_CACHE_HOME"] = _cache_dir


def pytest_unconfigure(config: pytest.Config) -> None:
    if _cache_dir is not None:
        shutil.rmtree(_cache_dir, ignore_errors=True)


@pytest.fixture(autouse=True)
def _unpatched() -> Iterator[None]:
    """Every test starts and ends with the in-process targets unpatched."""
    yield
    for target in ("hypercorn", "anycorn"):
        h2fix.revert(target)


def pytest_report_header() -> str:
    # Lets a reader of CI output see which run demonstrates the failure without the fix.
    return f"H2FIX_TEST_WITHOUT_FIX={os.environ.get('H2FIX_TEST_WITHOUT_FIX', '')!r}"
