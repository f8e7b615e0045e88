"""Run h2fix in a fresh interpreter against a copy of a package (edited or not)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path


def copy_package(name: str, destination: Path) -> Path:
    """Copy the installed package `name` below `destination`; returns its h2.py."""
    spec = importlib.util.find_spec(name)
    assert spec is not None
    assert spec.submodule_search_locations
    source = Path(next(iter(spec.submodule_search_locations)))
    shutil.copytree(source, destination / name, ignore=shutil.ignore_patterns("__pycache__"))
    return destination / name / "protocol" / "h2.py"


def run_python(code: str, *path: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `code` in a new interpreter with `path` first on sys.path."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in path)}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
