"""scripts/vendor.py: a patched copy of the whole package, reproducible and verified."""

from __future__ import annotations

import filecmp
import subprocess
import sys
import sysconfig
from pathlib import Path

import h2fix
from support.releases import unpacked
from support.servers import ROOT
from support.versions import needs_anycorn, needs_hypercorn_018

SCRIPT = ROOT / "scripts" / "vendor.py"


def vendor(*args: str, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = None
    if pythonpath is not None:
        import os

        env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, check=False
    )


def test_writes_the_whole_package_with_header_and_diff(tmp_path: Path) -> None:
    result = vendor("--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    h2 = tmp_path / "hypercorn" / "protocol" / "h2.py"
    assert result.stdout.splitlines() == [str(h2), str(h2) + ".diff"]
    installed = Path(sysconfig.get_path("purelib")) / "hypercorn"
    copied = {p.relative_to(tmp_path / "hypercorn") for p in (tmp_path / "hypercorn").rglob("*.py")}
    originals = {p.relative_to(installed) for p in installed.rglob("*.py")}
    assert copied == originals
    text = h2.read_text()
    assert text.startswith(
        f"# Patched by h2fix {h2fix.__version__} from hypercorn 0.17.3 with fixes: "
        "trailers, request_received.\n"
    )
    assert "send_headers(event.stream_id, event.headers, end_stream=True)" in text
    diff = (tmp_path / "hypercorn" / "protocol" / "h2.py.diff").read_text()
    assert diff.startswith("--- a/hypercorn/protocol/h2.py\n+++ b/hypercorn/protocol/h2.py\n")
    # Everything else is byte for byte the installed package.
    assert filecmp.cmp(installed / "config.py", tmp_path / "hypercorn" / "config.py", shallow=False)


def test_rerun_is_identical(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    assert vendor("--out", str(first)).returncode == 0
    assert vendor("--out", str(second)).returncode == 0
    assert vendor("--out", str(second)).returncode == 0  # over an existing copy
    comparison = filecmp.dircmp(first, second)
    assert not comparison.diff_files
    assert not comparison.left_only
    assert not comparison.right_only
    for sub in comparison.subdirs.values():
        assert not sub.diff_files


@needs_anycorn
def test_anycorn(tmp_path: Path) -> None:
    result = vendor("--target", "anycorn", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "anycorn" / "protocol" / "h2.py.diff").exists()


def test_refuses_site_packages() -> None:
    inside = Path(sysconfig.get_path("purelib")) / "somewhere"
    result = vendor("--out", str(inside))
    assert result.returncode == 2
    assert "expected --out outside site-packages" in result.stderr
    assert not inside.exists()


@needs_hypercorn_018
def test_nothing_to_fix_on_a_fixed_release(tmp_path: Path) -> None:
    result = vendor("--out", str(tmp_path), pythonpath=unpacked("hypercorn", "0.18.0"))
    assert result.returncode == 2
    assert "hypercorn 0.18.0: nothing to fix" in result.stderr
    assert not (tmp_path / "hypercorn").exists()
