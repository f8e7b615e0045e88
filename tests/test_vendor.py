"""`h2fix vendor` / scripts/vendor.py: a patched copy of the whole package that cannot
destroy anything, is reproducible, and is checked by serving it."""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
import sysconfig
from collections.abc import Mapping
from pathlib import Path

import pytest

import h2fix
from h2fix._vendor import MARKER, _invocation_entry, protected_places
from support.isolated import copy_package
from support.releases import unpacked, wheel
from support.runtime import FIXES
from support.servers import ROOT
from support.versions import needs_anycorn, needs_hypercorn_018

SCRIPT = ROOT / "scripts" / "vendor.py"
INSTALLED = Path(sysconfig.get_path("purelib")) / "hypercorn"


def vendor(
    *args: str | Path,
    cwd: Path | None = None,
    env: Mapping[str, str | None] | None = None,
    python: str = sys.executable,
    cli: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run scripts/vendor.py (or `python -m h2fix vendor`); `env` entries of None are unset."""
    environment = dict(os.environ)
    for name, value in (env or {}).items():
        if value is None:
            environment.pop(name, None)
        else:
            environment[name] = value
    command = ["-m", "h2fix", "vendor"] if cli else [str(SCRIPT)]
    return subprocess.run(
        [python, *command, *map(str, args)],
        capture_output=True,
        text=True,
        env=environment,
        cwd=cwd,
        timeout=300,
        check=False,
    )


def tree(root: Path) -> dict[str, bytes | None]:
    """Every file (bytes) and directory (None) below root, hidden ones included."""
    found: dict[str, bytes | None] = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        found[relative] = None if path.is_dir() else path.read_bytes()
    return found


def assert_refused(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "expected" in result.stderr
    assert "found" in result.stderr
    for word in words:
        assert word in result.stderr


def pip_target(directory: Path) -> Path:
    """hypercorn 0.17.3 installed with `pip install --target directory`, as users do."""
    subprocess.run(
        [
            sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
            "--disable-pip-version-check", "--target", str(directory),
            str(wheel("hypercorn", "0.17.3")),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return directory


# --- what is written -----------------------------------------------------------


def test_writes_the_whole_package_with_header_diff_and_marker(tmp_path: Path) -> None:
    result = vendor("--out", tmp_path)
    assert result.returncode == 0, result.stderr
    h2 = tmp_path / "hypercorn" / "protocol" / "h2.py"
    assert result.stdout.splitlines()[:2] == [str(h2), str(h2) + ".diff"]
    copied = {p.relative_to(tmp_path / "hypercorn") for p in (tmp_path / "hypercorn").rglob("*.py")}
    originals = {p.relative_to(INSTALLED) for p in INSTALLED.rglob("*.py")}
    assert copied == originals
    text = h2.read_text()
    assert text.startswith(
        f"# Patched by h2fix {h2fix.__version__} from hypercorn 0.17.3 with fixes: "
        "trailers, request_received, send_state, closed_stream_data, graceful_shutdown, "
        "max_requests.\n"
    )
    assert "send_headers(event.stream_id, event.headers, end_stream=True)" in text
    diff = (tmp_path / "hypercorn" / "protocol" / "h2.py.diff").read_text()
    assert diff.startswith("--- a/hypercorn/protocol/h2.py\n+++ b/hypercorn/protocol/h2.py\n")
    assert (tmp_path / "hypercorn" / MARKER).read_text() == (
        f"h2fix {h2fix.__version__}\nhypercorn 0.17.3\n"
        "fixes: trailers, request_received, send_state, closed_stream_data, graceful_shutdown, "
        "max_requests\n"
    )
    # Everything else is byte for byte the installed package, and nothing else is there.
    assert filecmp.cmp(INSTALLED / "config.py", tmp_path / "hypercorn" / "config.py", shallow=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hypercorn"]
    assert not list(tmp_path.rglob("__pycache__"))


def test_rerun_is_identical(tmp_path: Path) -> None:
    # Bytecode writing left on: the checks must not write any into the copy.
    env = {"PYTHONDONTWRITEBYTECODE": None}
    first, second = tmp_path / "first", tmp_path / "second"
    assert vendor("--out", first, env=env).returncode == 0
    assert vendor("--out", second, env=env).returncode == 0
    again = vendor("--out", second, env=env)  # over the copy the previous run wrote
    assert again.returncode == 0, again.stderr
    assert tree(first) == tree(second)


@needs_anycorn
def test_anycorn(tmp_path: Path) -> None:
    result = vendor("--target", "anycorn", "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "anycorn" / "protocol" / "h2.py.diff").exists()


@needs_hypercorn_018
def test_nothing_to_fix_on_a_fixed_release(tmp_path: Path) -> None:
    out = tmp_path / "out"
    # send_state is still needed there (tests/test_send_state.py); these two are not.
    two = ("--fix", "trailers", "--fix", "request_received")
    result = vendor("--out", out, *two, env={"PYTHONPATH": str(unpacked("hypercorn", "0.18.0"))})
    assert_refused(result, "change hypercorn 0.18.0, found nothing to fix")
    assert not out.exists()


# --- the command ---------------------------------------------------------------


def test_command_prints_paths_relative_to_the_current_directory_and_usage(
    tmp_path: Path,
) -> None:
    result = vendor("--target", "hypercorn", "--out", "vendored", cwd=tmp_path, cli=True)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    h2 = "vendored/hypercorn/protocol/h2.py"
    assert lines[:2] == [h2, h2 + ".diff"]
    assert lines[-1] == "use it: PYTHONPATH=vendored hypercorn app:app"
    assert (tmp_path / "vendored" / "hypercorn" / "protocol" / "h2.py").is_file()


def test_one_fix_while_another_is_pending(tmp_path: Path) -> None:
    # With h2 >= 4.3 request_received is pending too; only the selected fix is checked.
    pending = [f.fix for f in h2fix.status("hypercorn").fixes if f.outcome.changes_code]
    assert pending == list(FIXES)
    result = vendor("--out", tmp_path, "--fix", "trailers", cli=True)
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "hypercorn" / "protocol" / "h2.py").read_text()
    assert "with fixes: trailers.\n" in text
    assert "end_stream=True" in text
    assert "RequestReceived()" in text  # left as installed


# --- the destination ----------------------------------------------------------


def test_refuses_site_packages() -> None:
    inside = Path(sysconfig.get_path("purelib")) / "somewhere"
    result = vendor("--out", inside)
    assert_refused(result, "sits inside", str(Path(sysconfig.get_path("purelib")).resolve()))
    assert not inside.exists()


def test_refuses_a_pip_target_directory_on_pythonpath(tmp_path: Path) -> None:
    deps = pip_target(tmp_path / "deps")
    before = tree(deps)
    env = {"PYTHONPATH": str(deps)}
    assert_refused(vendor("--out", deps, env=env), f"{deps} contains {deps / 'hypercorn'}")
    # Inside the package it would copy: this used to recurse until the path was too long.
    inside = deps / "hypercorn" / "vendored"
    assert_refused(vendor("--out", inside, env=env), "the installed package being copied")
    assert tree(deps) == before


def test_refuses_a_pythonpath_entry(tmp_path: Path) -> None:
    entry = tmp_path / "lib"
    (entry / "tools").mkdir(parents=True)
    env = {"PYTHONPATH": str(entry)}
    assert_refused(vendor("--out", entry, env=env), f"{entry} is {entry} (a PYTHONPATH entry)")
    assert_refused(vendor("--out", entry / "tools", env=env), "sits inside")
    assert_refused(vendor("--out", tmp_path, env=env), f"{tmp_path} contains {entry}")
    assert tree(tmp_path) == {"lib": None, "lib/tools": None}


def test_refuses_another_pythons_site_packages(tmp_path: Path) -> None:
    pyenv = tmp_path / "pyenv"
    site_packages = pyenv / "versions" / "3.99.0" / "lib" / "python3.99" / "site-packages"
    site_packages.mkdir(parents=True)
    tree_before = tree(pyenv)
    out = site_packages / "vendored"
    result = vendor("--out", out, env={"PYENV_ROOT": str(pyenv)})
    assert_refused(result, "a Python installed by pyenv")
    assert tree(pyenv) == tree_before


def test_refuses_a_directory_where_packages_are_installed(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "extra.pth").write_text("/nowhere\n")
    assert_refused(vendor("--out", plugins), "extra.pth")
    assert_refused(vendor("--out", plugins / "sub"), "sits inside")
    assert sorted(p.name for p in plugins.iterdir()) == ["extra.pth"]


def test_refuses_through_a_symbolic_link(tmp_path: Path) -> None:
    deps = pip_target(tmp_path / "deps")
    link = tmp_path / "link"
    link.symlink_to(deps)
    result = vendor("--out", link, env={"PYTHONPATH": str(deps)})
    assert_refused(result, str(deps))


def test_keeps_a_directory_it_did_not_write(tmp_path: Path) -> None:
    notes = tmp_path / "hypercorn" / "notes.txt"
    notes.parent.mkdir()
    notes.write_text("mine")
    result = vendor("--out", tmp_path)
    assert_refused(result, f"a directory without {MARKER}", "left as it is")
    assert tree(tmp_path) == {"hypercorn": None, "hypercorn/notes.txt": b"mine"}


def test_every_system_and_pyenv_python_is_protected() -> None:
    places = {place.path for place in protected_places(INSTALLED)}
    system = [*Path("/usr/lib").glob("python3*"), *Path("/usr/local/lib").glob("python3*")]
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    pyenv = list(pyenv_root.glob("versions/*/lib/python*"))
    # Not the entry Python adds for how it was started (the script's or current directory).
    import_path = [Path(p) for p in sys.path if p and p != _invocation_entry()]
    for expected in (*system, *pyenv, *import_path):
        assert expected.resolve() in places


# --- the checks of the copy ----------------------------------------------------


def test_second_run_into_the_current_directory(tmp_path: Path) -> None:
    # The check used to import the previous copy from the current directory.
    for _ in range(2):
        result = vendor("--out", ".", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    # `python -m` puts the current directory first for the command itself, too.
    result = vendor("--out", ".", cwd=tmp_path, cli=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "hypercorn/protocol/h2.py"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hypercorn"]


def test_the_checks_keep_pythonpath(tmp_path: Path) -> None:
    # An interpreter with nothing installed: h2fix, libcst, h2 and the rest come from
    # PYTHONPATH only, as with dependencies installed by `pip install --target`.
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    python = str(bare / "bin" / "python")
    path = os.pathsep.join([str(ROOT), sysconfig.get_path("purelib")])
    out = tmp_path / "out"
    result = vendor("--out", out, python=python, env={"PYTHONPATH": path})
    assert result.returncode == 0, result.stderr
    assert (out / "hypercorn" / "protocol" / "h2.py.diff").is_file()


def test_refuses_a_copy_that_serves_wrong(tmp_path: Path) -> None:
    # The fixes trust the end-of-body branch's drain(); here it returns at once, which no
    # matcher can see. Served, the trailers overtake the buffered body.
    h2 = copy_package("hypercorn", tmp_path / "edited")
    source = h2.read_text()
    waits = "    async def drain(self) -> None:\n        await self._is_empty.wait()\n"
    assert waits in source
    h2.write_text(source.replace(waits, "    async def drain(self) -> None:\n        return\n"))
    out = tmp_path / "out"
    result = vendor("--out", out, env={"PYTHONPATH": str(tmp_path / "edited")})
    assert_refused(result, "served by `python -m hypercorn`", "body complete: NO")
    assert "the copy was deleted" in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("fix", [["--fix", "trailers"], []], ids=["trailers", "all"])
def test_copy_serves_correctly_to_the_probe(tmp_path: Path, fix: list[str]) -> None:
    from h2fix._probe import free_port, serving
    from h2fix._vendor import serve_checks

    result = vendor("--out", tmp_path / "vendored", *fix)
    assert result.returncode == 0, result.stderr
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "vendored")}
    command = [sys.executable, "-m", "hypercorn", "h2fix._probe:app", "--bind", f"127.0.0.1:{port}"]
    with serving(command, port, env=env):
        assert all(serve_checks(port).values())
