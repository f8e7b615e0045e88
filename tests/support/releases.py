"""Real releases' sources, downloaded from the package registry at test time.

Wheels are cached (H2FIX_TEST_CACHE, default ~/.cache/h2fix-tests) and never
committed: h2fix carries facts about these files, not their code.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

CACHE = Path(os.environ.get("H2FIX_TEST_CACHE", Path.home() / ".cache" / "h2fix-tests"))


def wheel(distribution: str, version: str) -> Path:
    folder = CACHE / "wheels"

    def cached() -> list[Path]:  # older wheels are spelled Hypercorn-...
        prefix = f"{distribution}-{version}-"
        return sorted(p for p in folder.glob("*.whl") if p.name.lower().startswith(prefix))

    found = cached()
    if not found:
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                # Only the files are read (or served by a newer Python): a release that
                # needs a newer Python than this one is still downloaded.
                sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                "--only-binary=:all:", "--ignore-requires-python",
                "--dest", str(folder), f"{distribution}=={version}",
            ],
            check=True,
        )  # fmt: skip
        found = cached()
    return found[0]


def h2_source(distribution: str, version: str) -> str:
    """The release's protocol/h2.py."""
    with zipfile.ZipFile(wheel(distribution, version)) as archive:
        return importlib.util.decode_source(archive.read(f"{distribution}/protocol/h2.py"))


def unpacked(distribution: str, version: str) -> Path:
    """The whole wheel unpacked into the cache: a directory to put first on sys.path."""
    target = CACHE / "unpacked" / f"{distribution}-{version}"
    if not (target / distribution).is_dir():
        with zipfile.ZipFile(wheel(distribution, version)) as archive:
            archive.extractall(target)
    return target
