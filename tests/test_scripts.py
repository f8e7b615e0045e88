"""The benchmark scripts run and print the lines the README quotes (figures are in README).

Tiny repeat counts keep them to seconds; nothing here asserts a time (benchmarks are
scripts, not timed tests), only what the output must say and what must hold whatever
the machine's speed (the known-release path never imports LibCST).
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from support.servers import ROOT
from support.versions import needs_hypercorn_018, needs_patchy, script_on_default_python


def run_script(name: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / name), *args],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def ratio(output: str, label: str) -> float:
    match = re.search(rf"^{re.escape(label)}\s*=\s*([0-9.]+)\s+[0-9.]+-[0-9.]+", output, re.M)
    assert match, f"no line {label!r} in:\n{output}"
    return float(match[1])


def row(output: str, name: str) -> list[str]:
    match = re.search(rf"^{re.escape(name)}\s+([0-9].*)$", output, re.MULTILINE)
    assert match, f"no row {name!r} in:\n{output}"
    return match[1].split()


@script_on_default_python
@needs_patchy
def test_bench_startup() -> None:
    output = run_script("bench_startup.py", "--repeat", "2")
    assert "order rotated every round" in output
    for variant in ("import", "import h2fix", "cold known", "cold LibCST", "warm",
                    "warm+import", "by hand", "by hand (A/A)", "patchy"):  # fmt: skip
        _median, spread, rss, versus, _libcst = row(output, variant)
        assert re.fullmatch(r"[0-9.]+-[0-9.]+", spread)
        assert float(rss) > 0
        assert re.fullmatch(r"[+-][0-9.]+", versus)
    # The shipped table repairs a known release without LibCST; a drifted file needs it.
    assert row(output, "cold known")[-1] == "0/2"
    assert row(output, "cold LibCST")[-1] == "2/2"
    assert re.search(r"^LibCST imported by cold known = 0 of 2", output, re.MULTILINE)
    assert re.search(r"^cold known RSS - import RSS = [+-][0-9.]+ MB", output, re.MULTILINE)
    assert re.search(r"^A/A spread: .* [0-9.]+-[0-9.]+x$", output, re.MULTILINE)
    for label in ("by hand (A/A) / by hand", "cold known / import", "cold LibCST / import",
                  "warm+import / by hand", "warm / by hand", "import h2fix / import"):  # fmt: skip
        assert ratio(output, label) > 0


@script_on_default_python
@pytest.mark.server
def test_bench_workers() -> None:
    output = run_script("bench_workers.py", "--rounds", "1", "--workers", "2")
    for variant in ("stock", "stock (A/A)", "h2fix warm", "h2fix empty cache", "h2fix no cache"):
        assert len(row(output, variant)) == 2
    for label in ("stock (A/A) / stock", "h2fix empty cache / stock", "h2fix no cache / stock"):
        assert ratio(output, label) > 0
    # Every worker with the unusable cache said so (and still served).
    match = re.search(r"^cache warnings logged .* = (\d+)$", output, re.MULTILINE)
    assert match, output
    assert int(match[1]) >= 1


@script_on_default_python
@pytest.mark.server
@pytest.mark.network
@needs_hypercorn_018  # the stock server it measures against
def test_bench_throughput() -> None:
    output = run_script("bench_throughput.py", "--seconds", "0.3", "--rounds", "1")
    for server in ("0.17.3 + h2fix", "0.17.3 vendored", "0.18.0 stock", "0.18.0 stock (A/A)"):
        assert len(row(output, server)) == 4
    for metric in ("unary calls/s", "unary CPU/call", "stream calls/s", "stream CPU/call"):
        assert ratio(output, f"{metric}: stock again / stock") > 0
        for pair in ("patched / stock", "vendored / stock", "patched / vendored"):
            line = re.search(rf"^{re.escape(metric)}: {pair} .*$", output, re.MULTILINE)
            assert line, output
            assert re.search(r"(within|OUTSIDE) the A/A spread \(1 \+- [0-9.]+\)", line[0])
