"""The start-up cache: a warm apply() skips LibCST; every cache fault falls back safely."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from support.isolated import run_python

APPLY = """
import json, logging, sys, hypercorn.protocol.h2 as module
logging.basicConfig(level=logging.DEBUG, format="%(name)s %(message)s")
import h2fix
before = module.H2Protocol.stream_send
report = h2fix.apply(fixes={fixes!r})
print(json.dumps({{
    "libcst": "libcst" in sys.modules,
    "outcomes": [f.outcome.value for f in report.fixes],
    "patched": module.H2Protocol.stream_send is not before,
}}))
"""


def apply_in_fresh_process(
    cache: Path | None, fixes: list[str] | None = None, **env: str
) -> dict[str, Any]:
    variables = {"H2FIX_CACHE_DIR": str(cache)} if cache else {}
    variables.update(env)
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        result = run_python(APPLY.format(fixes=fixes))
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    data["log"] = result.stderr
    return data


def entries(cache: Path) -> list[Path]:
    return sorted(cache.glob("*.bin"))


def test_cold_then_warm(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cold = apply_in_fresh_process(cache)
    assert cold["libcst"]
    assert cold["patched"]
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    [entry] = entries(cache)
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    warm = apply_in_fresh_process(cache)
    assert not warm["libcst"]  # the warm path never imports LibCST
    assert warm["patched"]
    assert warm["outcomes"] == cold["outcomes"] == ["applied"] * 3  # one per fix


def test_key_covers_the_fix_set(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    apply_in_fresh_process(cache, ["trailers"])
    apply_in_fresh_process(cache)
    assert len(entries(cache)) == 2
    assert apply_in_fresh_process(cache, ["trailers"])["outcomes"] == ["applied"]


def corrupt(entry: Path) -> None:
    data = bytearray(entry.read_bytes())
    data[-10] ^= 0xFF
    entry.write_bytes(bytes(data))


def truncate(entry: Path) -> None:
    entry.write_bytes(entry.read_bytes()[:100])


def not_a_file(entry: Path) -> None:
    entry.unlink()
    entry.mkdir()


def writable_by_others(entry: Path) -> None:
    entry.chmod(0o666)


def owned_by_someone_else(entry: Path) -> None:
    os.chown(entry, 65534, 65534)


ENTRY_FAULTS = {
    "corrupt": (corrupt, "content hash mismatch"),
    "truncated": (truncate, "content hash mismatch"),
    "unreadable": (not_a_file, "Is a directory"),
    "entry-writable-by-others": (writable_by_others, "writable by group or others"),
    "entry-owned-by-someone-else": (owned_by_someone_else, "owned by uid 65534"),
}


@pytest.mark.parametrize(("damage", "logged"), ENTRY_FAULTS.values(), ids=ENTRY_FAULTS.keys())
def test_untrusted_entry_falls_back_to_cold(tmp_path: Path, damage: Any, logged: str) -> None:
    cache = tmp_path / "cache"
    apply_in_fresh_process(cache)
    [entry] = entries(cache)
    damage(entry)
    result = apply_in_fresh_process(cache)
    assert result["libcst"]  # cold path
    assert result["patched"]
    assert result["outcomes"] == ["applied"] * 3  # one per fix
    assert "h2fix cache: not using" in result["log"]
    assert logged in result["log"]


def test_directory_owned_by_someone_else(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    apply_in_fresh_process(cache)
    os.chown(cache, 65534, 65534)
    result = apply_in_fresh_process(cache)
    assert result["libcst"]
    assert result["patched"]
    assert "owned by uid 65534" in result["log"]


def test_directory_writable_by_others(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    apply_in_fresh_process(cache)
    cache.chmod(0o777)
    result = apply_in_fresh_process(cache)
    assert result["libcst"]
    assert result["patched"]
    assert "writable by group or others" in result["log"]
    assert "h2fix cache: not storing" in result["log"]


def test_read_only_directory(tmp_path: Path) -> None:
    # /proc refuses new directories even to root: a truly read-only place.
    result = apply_in_fresh_process(Path("/proc/h2fix-cache"))
    assert result["patched"]
    assert "h2fix cache: not storing in /proc/h2fix-cache" in result["log"]


def test_no_cache_switch(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    apply_in_fresh_process(cache, H2FIX_NO_CACHE="1")
    assert not cache.exists()
    assert apply_in_fresh_process(cache, H2FIX_NO_CACHE="1")["libcst"]


def test_xdg_cache_home_is_the_default(tmp_path: Path) -> None:
    os.environ.pop("H2FIX_CACHE_DIR", None)
    result = apply_in_fresh_process(None, XDG_CACHE_HOME=str(tmp_path))
    assert result["patched"]
    assert len(entries(tmp_path / "h2fix")) == 1
