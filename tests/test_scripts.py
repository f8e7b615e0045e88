"""The benchmark scripts run and print the ratios they promise (figures are in README)."""

from __future__ import annotations

import re
import subprocess
import sys

from support.servers import ROOT
from support.versions import needs_hypercorn_018, needs_patchy


def run_script(name: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / name), *args],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def ratio(output: str, label: str) -> float:
    match = re.search(rf"^{re.escape(label)}\s*=\s*([0-9.]+)", output, re.MULTILINE)
    assert match, output
    return float(match[1])


@needs_patchy
def test_bench_startup() -> None:
    output = run_script("bench_startup.py", "--repeat", "3")
    medians = {}
    for variant in ("import", "cold", "warm", "warm+imp", "by hand", "patchy"):
        match = re.search(rf"^{re.escape(variant)}\s+([0-9.]+)", output, re.MULTILINE)
        assert match, output
        medians[variant] = float(match[1])
    # The cache's whole point, with a wide margin for a noisy machine.
    assert medians["warm"] * 10 < medians["cold"]
    assert ratio(output, "cold / import") > 0


@needs_hypercorn_018  # the stock server it measures against
def test_bench_throughput() -> None:
    output = run_script("bench_throughput.py", "--seconds", "0.5", "--rounds", "1")
    assert ratio(output, "unary: patched / stock") > 0
    assert ratio(output, "stream: patched / stock") > 0
