"""The start-up cache: a warm apply() skips LibCST; every cache fault falls back safely.

Each test runs apply() in fresh interpreters (the cache only matters across
processes). The tests run as root, so "another user" is uid 65534 (nobody):
files and directories are handed to it with os.chown, which is exactly what
that user could have made itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import time
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

import h2fix

ATTACKER = 65534

APPLY = """
import json, logging, sys, hypercorn.protocol.h2 as module
logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s %(message)s")
import h2fix
{prelude}
before = module.H2Protocol.stream_send
report = h2fix.apply(fixes={fixes!r})
print(json.dumps({{
    "libcst": "libcst" in sys.modules,
    "outcomes": [f.outcome.value for f in report.fixes],
    "patched": module.H2Protocol.stream_send is not before,
    "h2fix": h2fix.__file__,
}}))
"""

needs_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0,
    reason="acts as another user (chown to uid 65534), which only root can do",
)


def environment(cache: Path | None, env: Mapping[str, str | None]) -> dict[str, str]:
    # The cold path these tests mean is the LibCST one: the known-release table
    # (tests/test_known_releases.py) would make the installed release cheap anyway.
    variables = {**os.environ, "H2FIX_NO_KNOWN_RELEASES": "1"}
    if cache is not None:
        variables["H2FIX_CACHE_DIR"] = str(cache)
    for name, value in env.items():
        if value is None:
            variables.pop(name, None)
        else:
            variables[name] = value
    return variables


def apply_command(fixes: list[str] | None, prelude: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(APPLY.format(fixes=fixes, prelude=prelude))]


def apply_in_fresh_process(
    cache: Path | None,
    fixes: list[str] | None = None,
    *,
    env: Mapping[str, str | None] | None = None,
    cwd: Path | None = None,
    prelude: str = "",
    timeout: float = 120,
) -> dict[str, Any]:
    """h2fix.apply() in a new interpreter; its report, and its log in "log"."""
    result = subprocess.run(
        apply_command(fixes, prelude),
        capture_output=True,
        text=True,
        env=environment(cache, env or {}),
        cwd=cwd,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    data["log"] = result.stderr
    return data


def entries(cache: Path) -> list[Path]:
    return sorted(p for p in cache.glob("*.bin") if not p.name.startswith(".tmp-"))


def warnings(log: str) -> list[str]:
    return [line for line in log.splitlines() if line.startswith("WARNING h2fix.cache")]


def assert_cold_and_refused(result: dict[str, Any], why: str) -> None:
    assert result["libcst"]  # the cold path: nothing was loaded
    assert result["patched"]
    assert result["outcomes"] == ["applied"] * 6  # one per fix
    [warning] = warnings(result["log"])
    assert why in warning
    assert "H2FIX_CACHE_DIR" in warning  # and how to fix it


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
    assert warm["outcomes"] == cold["outcomes"] == ["applied"] * 6  # one per fix
    # A plain miss is no problem: nothing to warn about.
    assert warnings(cold["log"]) == warnings(warm["log"]) == []


def test_key_covers_the_fix_set(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    apply_in_fresh_process(cache, ["trailers"])
    apply_in_fresh_process(cache)
    assert len(entries(cache)) == 2
    assert apply_in_fresh_process(cache, ["trailers"])["outcomes"] == ["applied"]


def test_an_entry_renamed_to_another_key_is_not_used(tmp_path: Path) -> None:
    # The content hash is only a checksum: the key inside it is what ties an entry to a key.
    cache = tmp_path / "cache"
    apply_in_fresh_process(cache, ["trailers"])
    [trailers_only] = entries(cache)
    apply_in_fresh_process(cache)
    [all_fixes] = set(entries(cache)) - {trailers_only}
    shutil.copyfile(trailers_only, all_fixes)
    result = apply_in_fresh_process(cache)
    assert result["libcst"]
    assert result["outcomes"] == ["applied"] * 6  # one per fix
    assert f"expected the entry for key {all_fixes.stem}" in result["log"]
    assert warnings(result["log"]) == []  # one bad entry: replaced by this cold run
    assert not apply_in_fresh_process(cache)["libcst"]


def corrupt(entry: Path) -> None:
    data = bytearray(entry.read_bytes())
    data[-10] ^= 0xFF
    entry.write_bytes(bytes(data))


def truncate(entry: Path) -> None:
    entry.write_bytes(entry.read_bytes()[:100])


DAMAGED_ENTRIES = {"corrupt": corrupt, "truncated": truncate}


@pytest.mark.parametrize("damage", DAMAGED_ENTRIES.values(), ids=DAMAGED_ENTRIES.keys())
def test_damaged_entry_is_replaced(tmp_path: Path, damage: Any) -> None:
    cache = tmp_path / "cache"
    apply_in_fresh_process(cache)
    [entry] = entries(cache)
    damage(entry)
    result = apply_in_fresh_process(cache)
    assert result["libcst"]  # cold path
    assert result["outcomes"] == ["applied"] * 6  # one per fix
    assert "content hash mismatch" in result["log"]
    assert warnings(result["log"]) == []
    assert not apply_in_fresh_process(cache)["libcst"]


def not_a_file(entry: Path) -> None:
    entry.unlink()
    entry.mkdir()


def writable_by_others(entry: Path) -> None:
    entry.chmod(0o666)


def owned_by_someone_else(entry: Path) -> None:
    os.chown(entry, ATTACKER, ATTACKER)


def symlink_to_a_good_entry(entry: Path) -> None:
    elsewhere = entry.with_name("elsewhere")
    entry.rename(elsewhere)
    entry.symlink_to(elsewhere)


UNTRUSTED_ENTRIES = {
    "a-directory": (not_a_file, "expected a regular file, found a directory"),
    "writable-by-others": (writable_by_others, "writable by group or others"),
    "owned-by-someone-else": (owned_by_someone_else, "owned by uid 65534"),
    "symlink": (symlink_to_a_good_entry, "Too many levels of symbolic links"),
}


@pytest.mark.parametrize(
    ("damage", "why"), UNTRUSTED_ENTRIES.values(), ids=UNTRUSTED_ENTRIES.keys()
)
def test_untrusted_entry_falls_back_to_cold(tmp_path: Path, damage: Any, why: str) -> None:
    cache = tmp_path / "cache"
    apply_in_fresh_process(cache)
    [entry] = entries(cache)
    damage(entry)
    assert_cold_and_refused(apply_in_fresh_process(cache), why)


@pytest.mark.parametrize("name", ["entry", "lock"])
def test_a_fifo_does_not_hang_start_up(tmp_path: Path, name: str) -> None:
    cache = tmp_path / "cache"
    apply_in_fresh_process(cache)
    [entry] = entries(cache)
    if name == "lock":
        entry.unlink()  # a miss, so the cold path takes the lock
        planted = entry.with_suffix(".lock")
        planted.unlink()
    else:
        planted = entry
        planted.unlink()
    os.mkfifo(planted, 0o600)
    started = time.monotonic()
    result = apply_in_fresh_process(cache, timeout=60)  # it blocked forever on open()
    assert time.monotonic() - started < 30
    assert_cold_and_refused(result, "expected a regular file, found a FIFO")


@needs_root
def test_directory_owned_by_someone_else(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    apply_in_fresh_process(cache)
    os.chown(cache, ATTACKER, ATTACKER)
    assert_cold_and_refused(apply_in_fresh_process(cache), "owned by uid 65534")


def test_directory_writable_by_others(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    apply_in_fresh_process(cache)
    cache.chmod(0o777)
    assert_cold_and_refused(apply_in_fresh_process(cache), "writable by group or others")


def shared_tmp(tmp_path: Path) -> Path:
    """A directory like /tmp: everyone may create entries in it (sticky)."""
    shared = tmp_path / "tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    return shared


@needs_root
def test_attacker_owned_ancestor_is_refused(tmp_path: Path) -> None:
    # XDG_CACHE_HOME=/tmp/.cache: another user made /tmp/.cache first, so they can
    # rename h2fix/ away and put their own in its place at any time.
    xdg = shared_tmp(tmp_path) / ".cache"
    env = {"H2FIX_CACHE_DIR": None, "XDG_CACHE_HOME": str(xdg)}
    apply_in_fresh_process(None, env=env)
    assert not apply_in_fresh_process(None, env=env)["libcst"]  # warm while it is ours
    os.chown(xdg, ATTACKER, ATTACKER)
    assert_cold_and_refused(
        apply_in_fresh_process(None, env=env),
        f"{xdg}: expected a directory owned by root, found one owned by uid 65534",
    )


@needs_root
def test_attacker_owned_symlink_in_the_chain_is_refused(tmp_path: Path) -> None:
    shared = shared_tmp(tmp_path)
    real = tmp_path / "real-cache-home"
    apply_in_fresh_process(real / "h2fix")
    link = shared / ".cache"
    link.symlink_to(real)
    env = {"H2FIX_CACHE_DIR": None, "XDG_CACHE_HOME": str(link)}
    assert not apply_in_fresh_process(None, env=env)["libcst"]  # our own link is followed
    os.lchown(link, ATTACKER, ATTACKER)
    assert_cold_and_refused(
        apply_in_fresh_process(None, env=env),
        f"{link}: expected a symbolic link owned by root, found one owned by uid 65534",
    )


def test_group_writable_ancestor_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    apply_in_fresh_process(home / ".cache" / "h2fix")
    home.chmod(0o775)  # a group-writable home
    assert_cold_and_refused(
        apply_in_fresh_process(home / ".cache" / "h2fix"), f"{home}: expected a directory not"
    )


def test_umask_000_creates_no_world_writable_directory(tmp_path: Path) -> None:
    cache = tmp_path / "home" / ".cache" / "h2fix"
    result = apply_in_fresh_process(cache, prelude="import os; os.umask(0)")
    assert result["libcst"]
    for made in (tmp_path / "home", tmp_path / "home" / ".cache", cache):
        assert stat.S_IMODE(made.stat().st_mode) == 0o700, made
    [entry] = entries(cache)
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    assert not apply_in_fresh_process(cache, prelude="import os; os.umask(0)")["libcst"]


@needs_root
def test_root_with_a_users_home_uses_no_cache(tmp_path: Path) -> None:
    # `sudo -E`: root, with HOME still the user's.
    home = tmp_path / "alice"
    home.mkdir()
    os.chown(home, ATTACKER, ATTACKER)
    env = {"H2FIX_CACHE_DIR": None, "XDG_CACHE_HOME": None, "HOME": str(home)}
    assert_cold_and_refused(
        apply_in_fresh_process(None, env=env),
        f"home directory {home}: expected owned by uid 0, found owned by uid 65534",
    )
    assert list(home.iterdir()) == []  # no root-owned files left in the user's home


def zipped_h2fix(tmp_path: Path) -> Path:
    archive = tmp_path / "h2fix.pyz"
    package = Path(h2fix.__file__).parent
    with zipfile.ZipFile(archive, "w") as zipped:
        for file in package.rglob("*.py"):
            zipped.write(file, file.relative_to(package.parent))
    return archive


@pytest.mark.parametrize("no_cache", ["1", ""], ids=["cache-off", "cache-on"])
def test_h2fix_run_from_a_zip(tmp_path: Path, no_cache: str) -> None:
    archive = zipped_h2fix(tmp_path)
    cache = tmp_path / "cache"
    env = {"PYTHONPATH": str(archive), "H2FIX_NO_CACHE": no_cache}
    # cwd elsewhere: `python -c` puts it first on sys.path, and this checkout has h2fix/.
    result = apply_in_fresh_process(cache, env=env, cwd=tmp_path)
    assert result["h2fix"].startswith(str(archive))  # the zipped copy ran
    assert result["patched"]
    assert not cache.exists()  # no key could be computed: the cache was not touched
    if no_cache:
        assert warnings(result["log"]) == []  # turned off: nothing computed, nothing to say
    else:
        [warning] = warnings(result["log"])
        assert "cannot compute the key from h2fix's own files" in warning
        assert "H2FIX_NO_CACHE=1" in warning


def test_relative_xdg_cache_home_is_ignored(tmp_path: Path) -> None:
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    env = {"H2FIX_CACHE_DIR": None, "XDG_CACHE_HOME": "relative", "HOME": str(home)}
    result = apply_in_fresh_process(None, env=env, cwd=work)
    assert result["patched"]
    assert list(work.iterdir()) == []
    assert len(entries(home / ".cache" / "h2fix")) == 1  # the XDG default instead


def test_relative_h2fix_cache_dir_turns_the_cache_off(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    result = apply_in_fresh_process(None, env={"H2FIX_CACHE_DIR": "relative"}, cwd=work)
    assert list(work.iterdir()) == []
    assert_cold_and_refused(
        result, "H2FIX_CACHE_DIR=relative: expected an absolute path, found a relative one"
    )


def test_stale_temporary_files_are_pruned(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    stale, young = cache / ".tmp-123-stale.bin", cache / ".tmp-456-young.bin"
    stale.write_bytes(b"left by a process killed while storing")
    young.write_bytes(b"another process is writing it now")
    an_hour_ago = time.time() - 3600
    os.utime(stale, (an_hour_ago, an_hour_ago))
    apply_in_fresh_process(cache)
    assert not stale.exists()
    assert young.exists()
    assert len(entries(cache)) == 1


def test_workers_starting_cold_together_compute_once(tmp_path: Path) -> None:
    # hypercorn --workers 4 with apply() in the app module. The wait is raised
    # above its default so that a loaded test machine cannot make it give up.
    cache = tmp_path / "cache"
    command = apply_command(None, "import h2fix._cache; h2fix._cache.LOCK_WAIT_SECONDS = 120")
    workers = [
        subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment(cache, {}),
        )
        for _ in range(4)
    ]
    results = []
    for worker in workers:
        out, err = worker.communicate(timeout=240)
        assert worker.returncode == 0, err
        results.append(json.loads(out))
    assert all(r["patched"] for r in results)
    assert [r["libcst"] for r in results].count(True) == 1  # the others waited, then loaded
    assert len(entries(cache)) == 1


@contextlib.contextmanager
def lock_held(lock: Path) -> Iterator[None]:
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def test_waiting_for_another_process_is_bounded(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    apply_in_fresh_process(cache)
    [entry] = entries(cache)
    entry.unlink()
    with lock_held(entry.with_suffix(".lock")):  # a process computing it, stuck
        started = time.monotonic()
        result = apply_in_fresh_process(
            cache, prelude="import h2fix._cache; h2fix._cache.LOCK_WAIT_SECONDS = 1"
        )
        elapsed = time.monotonic() - started
    assert result["libcst"]
    assert result["patched"]
    assert "gave up waiting 1.0 s for another process" in result["log"]
    assert elapsed < 60


TWO_APPLIES = """
import logging, hypercorn.protocol.h2
logging.basicConfig(format="%(levelname)s %(name)s %(message)s")
import h2fix
h2fix.apply(fixes=["trailers"])
h2fix.revert()
h2fix.apply()
"""


@needs_root
def test_an_unusable_cache_warns_once_per_process(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    os.chown(cache, ATTACKER, ATTACKER)
    result = subprocess.run(
        [sys.executable, "-c", TWO_APPLIES],
        capture_output=True,
        text=True,
        env=environment(cache, {}),
        timeout=120,
        check=True,
    )
    [warning] = warnings(result.stderr)  # two cold paths, one warning
    assert f"not using {cache}: {cache}: expected a directory owned by root, found" in warning


def test_read_only_directory(tmp_path: Path) -> None:
    # /proc refuses new directories even to root: a truly read-only place.
    assert_cold_and_refused(
        apply_in_fresh_process(Path("/proc/h2fix-cache")), "not using /proc/h2fix-cache"
    )


def test_no_cache_switch(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    apply_in_fresh_process(cache, env={"H2FIX_NO_CACHE": "1"})
    assert not cache.exists()
    result = apply_in_fresh_process(cache, env={"H2FIX_NO_CACHE": "1"})
    assert result["libcst"]
    assert warnings(result["log"]) == []


def test_xdg_cache_home_is_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # monkeypatch: the rest of the suite keeps its private H2FIX_CACHE_DIR.
    monkeypatch.delenv("H2FIX_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    result = apply_in_fresh_process(None)
    assert result["patched"]
    assert len(entries(tmp_path / "h2fix")) == 1


def test_warm_fills_the_cache_for_workers(tmp_path: Path) -> None:
    """`h2fix warm` at image build time: the first worker then starts warm."""
    cache = tmp_path / "cache"
    env = environment(cache, {})
    done = subprocess.run(
        [sys.executable, "-m", "h2fix", "warm"], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    assert f"start-up cache filled in {cache}" in done.stdout
    [entry] = entries(cache)
    first = apply_in_fresh_process(cache)
    assert not first["libcst"]
    assert first["patched"]
    assert entries(cache) == [entry]  # the one warm wrote was used, not recomputed


def test_warm_says_when_there_is_no_cache(tmp_path: Path) -> None:
    env = environment(tmp_path / "cache", {"H2FIX_NO_CACHE": "1"})
    done = subprocess.run(
        [sys.executable, "-m", "h2fix", "warm"], capture_output=True, text=True, env=env
    )
    assert done.returncode == 2
    assert "expected a usable start-up cache to fill, found the cache turned off" in done.stderr
