"""The shipped table of known releases: current, equal to the fixes' own output, LibCST-free."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from types import ModuleType

import pytest

import h2fix
import h2fix.fixes
from h2fix import _known
from h2fix._environment import H2_KEYWORD_EVENTS, H2_NO_ARGUMENT_EVENTS
from h2fix._targets import locate
from support.releases import h2_source
from support.servers import ROOT


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "known_releases", ROOT / "scripts" / "known_releases.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.network
@pytest.mark.skipif(
    sys.version_info[:2] != (3, 11),
    reason="the table does not depend on the Python version (the same LibCST rewrites of the "
    "same files); it is regenerated and compared once, on CI's default Python 3.11 (a minute)",
)
def test_table_is_what_the_fixes_give() -> None:
    """Regenerated from the releases by the LibCST fixes, the table is byte for byte the same."""
    script = load_script()
    sources = {
        f"{name} {version}": h2_source(name, version)
        for name, versions in script.RELEASES.items()
        for version in versions
    }
    assert script.render(sources) == (ROOT / "h2fix" / "_known_releases.py").read_text(), (
        "h2fix/_known_releases.py is out of date: run python scripts/known_releases.py"
    )


@pytest.mark.parametrize(
    "environment", [H2_KEYWORD_EVENTS, H2_NO_ARGUMENT_EVENTS], ids=["h2-4.3+", "h2-4.2"]
)
@pytest.mark.parametrize(
    "fixes",
    [None, *([fix.name] for fix in h2fix.fixes.FIXES)],
    ids=["all", *(fix.name for fix in h2fix.fixes.FIXES)],
)
def test_lookup_equals_the_libcst_rewrite(
    environment: h2fix.Environment, fixes: list[str] | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = h2_source("hypercorn", "0.17.3")
    names = [fix.name for fix in h2fix.fixes.select(fixes)]
    known = _known.lookup(source, names, environment)
    assert known is not None
    monkeypatch.setenv("H2FIX_NO_KNOWN_RELEASES", "1")
    assert h2fix.rewrite(source, fixes, environment=environment) == known


def test_unknown_code_and_the_switch_miss() -> None:
    source = h2_source("hypercorn", "0.17.3")
    names = ["trailers"]
    assert _known.lookup(source + "\n", names, H2_KEYWORD_EVENTS) is None  # drifted: LibCST path
    other_h2 = h2fix.Environment("9.9", ("stream_id", "other"), ("stream_id",))
    assert _known.lookup(source, names, other_h2) is None  # facts the table has not seen
    os.environ["H2FIX_NO_KNOWN_RELEASES"] = "1"
    try:
        assert _known.lookup(source, names, H2_KEYWORD_EVENTS) is None
    finally:
        del os.environ["H2FIX_NO_KNOWN_RELEASES"]


def test_overlapping_edits_are_a_miss() -> None:
    assert _known.apply_edits("a\nb\nc\n", [(0, 2, ("x\n",)), (1, 3, ("y\n",))]) is None
    assert _known.apply_edits("a\nb\nc\n", [(2, 3, ("z\n",)), (0, 1, ())]) == "b\nz\n"


def test_known_release_applies_without_libcst(tmp_path: object) -> None:
    """A cold apply() on the installed release never imports LibCST."""
    code = (
        "import sys, h2fix\n"
        "report = h2fix.apply()\n"
        "assert report.changed, report\n"
        "print('libcst' in sys.modules)\n"
    )
    env = {**os.environ, "H2FIX_NO_CACHE": "1"}
    env.pop("H2FIX_NO_KNOWN_RELEASES", None)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert done.stdout.strip() == "False"
    assert locate("hypercorn").version == "0.17.3"  # the table knows this file
