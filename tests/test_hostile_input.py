"""Hostile and careless input: every bad file is one line and exit 2, never a crash.

Inputs that crashed or hung h2fix are run in a fresh interpreter, so that a
regression fails the test instead of taking the test run down with it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import h2fix
from h2fix._limits import MAX_CHARACTERS, MAX_DEPTH, MAX_STATEMENT_TOKENS
from support.releases import h2_source

#: What Python 3.9's parser, LibCST's parser or LibCST's tree walks crashed on, hung
#: on or raised RecursionError / MemoryError for, before h2fix checked its input.
HOSTILE = {
    "2000-nested-brackets": "x = " + "[" * 2000 + "]" * 2000 + "\n",
    "150-nested-lists": "x = " + "[" * 150 + "]" * 150 + "\n",
    "150-nested-calls": "x = " + "f(" * 150 + ")" * 150 + "\n",
    "2000-term-sum": "x = " + "a + " * 2000 + "a\n",
    "20000-term-sum": "x = " + "a + " * 20_000 + "a\n",
    "150000-attribute-chain": "x = a" + ".b" * 150_000 + "\n",  # Python 3.9's parser: SIGSEGV
    "1000-unary-minus": "x = " + "-" * 1000 + "1\n",
    "400-term-and": "x = " + "a and " * 400 + "a\n",
    "400-adjacent-strings": "x = " + "'a' " * 400 + "\n",
    "deep-indentation": "".join(" " * i + "if a:\n" for i in range(99)) + " " * 99 + "pass\n",
    "syntax-error": "def f(:\n    pass\n",
    "unterminated": "x = (\n",
    "null-byte": "x = 1\0\n",
    "too-large": "x = 1\n" * (MAX_CHARACTERS // 6 + 1),
}


def h2fix_command(*args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "h2fix", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *expected: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("h2fix: error: ")
    for text in expected:
        assert text in line
    return line


@pytest.mark.parametrize("source", HOSTILE.values(), ids=HOSTILE.keys())
@pytest.mark.parametrize("command", ["check", "diff"])
def test_cli_refuses_hostile_source(tmp_path: Path, command: str, source: str) -> None:
    path = tmp_path / "h2.py"
    path.write_text(source)
    started = time.monotonic()
    result = h2fix_command(command, path)
    line = assert_one_line_error(result, str(path), "expected ", ", found ")
    assert time.monotonic() - started < 30
    assert result.stdout == ""
    assert "reinstall" not in line  # a file someone named is no package


@pytest.mark.parametrize(
    "source",
    [s for name, s in HOSTILE.items() if not name.startswith(("2000-nested", "150000"))],
    ids=[n for n in HOSTILE if not n.startswith(("2000-nested", "150000"))],
)
def test_rewrite_raises_only_h2fix_errors(source: str) -> None:
    with pytest.raises(h2fix.InvalidSourceError) as caught:
        h2fix.rewrite(source)
    assert str(caught.value).startswith("expected ")


def test_rewrite_of_crashing_input_in_a_fresh_interpreter() -> None:
    code = (
        "import h2fix\n"
        "for source in ('x = ' + '[' * 2000 + ']' * 2000, 'x = a' + '.b' * 150_000):\n"
        "    try:\n"
        "        h2fix.rewrite(source)\n"
        "    except h2fix.InvalidSourceError as error:\n"
        "        print(type(error).__name__)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert (result.returncode, result.stdout.split()) == (0, ["InvalidSourceError"] * 2)


#: The deepest input of each shape the limits let through. Rewriting it must leave room
#: on the stack for a caller's own frames: it is run with this many frames already used.
CALLER_FRAMES = 300
AT_THE_LIMITS = {
    "nested-lists": "x = " + "[" * (MAX_DEPTH - 4) + "]" * (MAX_DEPTH - 4) + "\n",
    "nested-calls": "x = " + "f(" * (MAX_DEPTH - 4) + ")" * (MAX_DEPTH - 4) + "\n",
    "sum": "x = " + "a + " * (MAX_DEPTH - 4) + "a\n",
    "and": "x = " + "a and " * (MAX_DEPTH - 4) + "a\n",
    "adjacent-strings": "x = " + "'a' " * (MAX_DEPTH - 4) + "\n",
    "199-parentheses": "x = " + "(" * 199 + "1" + ")" * 199 + "\n",
    "long-flat-statement": "x = [" + "1, " * (MAX_STATEMENT_TOKENS // 2 - 4) + "]\n",
}


@pytest.mark.parametrize("source", AT_THE_LIMITS.values(), ids=AT_THE_LIMITS.keys())
def test_rewrite_at_the_limits_is_safe(source: str) -> None:
    def nested(depth: int) -> h2fix.Rewrite:
        return nested(depth - 1) if depth else h2fix.rewrite(source, strict=False)

    result = nested(CALLER_FRAMES)
    assert not result.changed
    assert {o.outcome for o in result.outcomes} == {h2fix.Outcome.NOT_APPLICABLE}


@pytest.mark.network
@pytest.mark.parametrize(
    ("distribution", "version"),
    [
        ("hypercorn", "0.16.0"),
        ("hypercorn", "0.17.3"),
        ("hypercorn", "0.18.0"),
        ("anycorn", "0.18.1"),
        ("anycorn", "0.18.7"),
        ("anycorn", "0.19.0"),
    ],
)
def test_real_releases_are_well_within_the_limits(distribution: str, version: str) -> None:
    from h2fix._limits import check_source

    source = h2_source(distribution, version)
    assert len(source) < MAX_CHARACTERS // 40
    check_source(source)  # raises if any limit were too tight


# --- files that are not source at all --------------------------------------------------


def test_device_is_refused_without_reading_it() -> None:
    line = assert_one_line_error(h2fix_command("check", "/dev/zero"), "/dev/zero")
    assert "character device, not a regular file" in line


def test_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "h2.py"
    os.mkfifo(fifo)
    line = assert_one_line_error(h2fix_command("check", fifo, timeout=20), str(fifo))
    assert "a FIFO, not a regular file" in line


def test_directory_is_refused(tmp_path: Path) -> None:
    assert "a directory" in assert_one_line_error(h2fix_command("diff", tmp_path))


def test_large_file_is_refused_before_reading(tmp_path: Path) -> None:
    big = tmp_path / "h2.py"
    with big.open("wb") as file:
        file.truncate(50 * MAX_CHARACTERS)  # sparse: costs no disk
    line = assert_one_line_error(h2fix_command("check", big), str(big))
    assert f"expected at most {MAX_CHARACTERS:,} bytes" in line


def test_undecodable_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "h2.py"
    path.write_bytes(b"x = '\xff\xfe'\n")
    assert "cannot be decoded" in assert_one_line_error(h2fix_command("check", path))


@pytest.mark.parametrize("options", [[], ["--fix", "trailers"]], ids=["all-fixes", "one-fix"])
def test_not_a_protocol_is_refused_not_passed(tmp_path: Path, options: list[str]) -> None:
    """`check main.py` used to exit 0 ("not applicable"): a gate that always passes."""
    main = tmp_path / "main.py"
    main.write_text("from fastapi import FastAPI\n\napp = FastAPI()\n")
    line = assert_one_line_error(h2fix_command("check", *options, main), str(main))
    assert "to be an HTTP/2 protocol module" in line
    assert "pip install" not in line


def test_every_file_is_reported(tmp_path: Path) -> None:
    """One bad file among several: the others are still checked, and the exit is 2."""
    good = tmp_path / "h2.py"
    good.write_text(h2_source("hypercorn", "0.17.3"))
    result = h2fix_command("check", tmp_path / "missing.py", good)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert lines[0].startswith("h2fix: error: expected Python source at ")
    assert f"{good}: trailers: would be applied" in result.stderr
