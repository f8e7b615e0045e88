#!/usr/bin/env python3
"""What apply() costs at process start, against the alternatives, side by side in one run.

    pip install -e ".[test]" && python scripts/bench_startup.py --repeat 21

Every sample is a fresh interpreter that imports Hypercorn first (as a worker has)
and then times one thing with perf_counter:
  import            `import hypercorn.protocol.h2` (the baseline; nothing before it)
  import h2fix      `import h2fix` (every public name is a lazy attribute: this loads
                    no module of the warm path, `warm+import` counts them)
  cold known        `import h2fix; h2fix.apply(fixes=["trailers"])`, empty cache, on the
                    installed 0.17.3: the shipped table of known releases, no LibCST
  cold LibCST       the same on a drifted copy of the file (one comment line added, so
                    the table does not know it): LibCST parses and rewrites it
  warm              `h2fix.apply(fixes=["trailers"])` with the cache filled by an earlier
                    process (h2fix and its warm path imported before the clock starts)
  warm+import       the same, `import h2fix` included: what a worker pays
  by hand           a monkeypatch of the same fix written here: inspect.getsource,
                    a text edit, compile, swap
  by hand (A/A)     the same code again: the A/A control. Its ratio to `by hand`
                    shows how far two measurements of one thing differ here, so a
                    difference inside that spread means nothing
  patchy            patchy.patch() with the equivalent diff (its import included)
Every variant but `import` starts with `gc.collect()` after the Hypercorn import:
the full collection that import leaves owing (1-3 ms here) otherwise lands on
whichever variant allocates first, the hand patch and h2fix alike.
Each sample also reports the process's resident memory at the end (VmRSS, or the
peak from getrusage where /proc is missing) and whether LibCST was imported.

The order of the variants is rotated every round, so drift in the machine's speed
and any order effect hit them all alike. Ratios are computed per round (variants
of one round ran back to back) and shown as their median and 10th-90th percentile.
"""

from __future__ import annotations

import argparse
import compileall
import difflib
import inspect
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from _stats import spread  # scripts/ is sys.path[0] when a script runs

# The collection owed to the Hypercorn import (a full one, 1-3 ms here) would land in
# whichever variant allocates first after it; collected here, it lands in none.
PRELUDE = "import gc, time, hypercorn.protocol.h2 as m\ngc.collect()\n"
START = "t = time.perf_counter()\n"
APPLY = "h2fix.apply(fixes=['trailers'])\n"
BY_HAND = textwrap.dedent(
    """\
    import inspect, textwrap
    old = m.H2Protocol.stream_send
    source = textwrap.dedent(inspect.getsource(old))
    send = "self.connection.send_headers(event.stream_id, event.headers)"
    fixed = (
        "self.priority.unblock(event.stream_id)\\n"
        "            await self.has_data.set()\\n"
        "            await self.stream_buffers[event.stream_id].drain()\\n"
        "            self.connection.send_headers("
        "event.stream_id, event.headers, end_stream=True)"
    )
    assert send in source
    source = source.replace(send, fixed)
    namespace = {}
    code = compile(source, m.__file__, "exec", dont_inherit=True,
                   flags=__import__("__future__").annotations.compiler_flag)
    exec(code, m.__dict__, namespace)
    new = namespace["stream_send"]
    new.__qualname__ = old.__qualname__
    m.H2Protocol.stream_send = new
    """
)

#: name -> (code run in a fresh interpreter, which cache it gets, on the drifted copy?)
VARIANTS: dict[str, tuple[str, str, bool]] = {
    "import": ("import time\n" + START + "import hypercorn.protocol.h2\n", "none", False),
    "import h2fix": (PRELUDE + START + "import h2fix\n", "none", False),
    "cold known": (PRELUDE + START + "import h2fix\n" + APPLY, "empty", False),
    "cold LibCST": (PRELUDE + START + "import h2fix\n" + APPLY, "empty", True),
    # `h2fix.apply` is a lazy attribute: looking it up loads the warm path's modules.
    "warm": (PRELUDE + "import h2fix\nh2fix.apply\n" + START + APPLY, "warm", False),
    "warm+import": (PRELUDE + START + "import h2fix\n" + APPLY, "warm", False),
    "by hand": (PRELUDE + START + BY_HAND, "none", False),
    "by hand (A/A)": (PRELUDE + START + BY_HAND, "none", False),
    "patchy": (
        PRELUDE + "import os\n" + START + "import patchy\n"
        "patchy.patch(m.H2Protocol.stream_send, open(os.environ['DIFF']).read())\n",
        "none",
        False,
    ),
}
# Measured before anything else is imported for the report, so that it counts too.
SUFFIX = textwrap.dedent(
    """\
    elapsed = (time.perf_counter() - t) * 1000
    def rss_kb():
        try:
            with open("/proc/self/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            pass
        import resource  # the peak, not the current size: only where /proc is missing
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss = rss_kb()
    import json, sys
    print(json.dumps({"ms": elapsed, "rss_kb": rss, "libcst": "libcst" in sys.modules}))
    """
)

#: (numerator, denominator, target) of each ratio printed, in this order.
RATIOS = (
    ("by hand (A/A)", "by hand", "the noise: 1.00 +- this spread"),
    ("import h2fix", "import", ""),
    ("cold known", "import", "<= 0.5"),
    ("cold LibCST", "import", "<= 3.5"),
    ("warm+import", "by hand", "<= 1.0"),
    ("warm", "by hand", ""),
    ("warm+import", "patchy", ""),
)


def patchy_diff() -> str:
    """The trailers fix as a diff of stream_send's source, the form patchy takes."""
    from hypercorn.protocol.h2 import H2Protocol

    import h2fix

    old = textwrap.dedent(inspect.getsource(H2Protocol.stream_send))
    with h2fix.patched(fixes=["trailers"]):
        new = textwrap.dedent(inspect.getsource(H2Protocol.stream_send))
    return "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), "a", "b"))


def drifted_copy(scratch: Path) -> Path:
    """A copy of the installed hypercorn whose protocol/h2.py the known-release table
    does not know (one comment added); returns the directory to put on sys.path."""
    import hypercorn

    root = scratch / "drifted"
    shutil.copytree(Path(hypercorn.__file__).parent, root / "hypercorn",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    h2 = root / "hypercorn" / "protocol" / "h2.py"
    h2.write_text("# edited locally: not a released file\n" + h2.read_text())
    compileall.compile_dir(str(root), quiet=1)
    return root


def sample(variant: str, env: dict[str, str]) -> dict[str, float]:
    completed = subprocess.run(
        [sys.executable, "-c", VARIANTS[variant][0] + SUFFIX],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    if completed.returncode != 0:
        raise SystemExit(f"{variant}: exited {completed.returncode}:\n{completed.stderr}")
    result: dict[str, float] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=21, help="rounds (fresh processes each)")
    args = parser.parse_args(argv)
    # As deployed: bytecode cached (pip compiles site-packages; an editable h2fix is
    # compiled here), whatever PYTHONDONTWRITEBYTECODE this shell has; no switches.
    for name in ("PYTHONDONTWRITEBYTECODE", "H2FIX_NO_CACHE", "H2FIX_NO_KNOWN_RELEASES"):
        os.environ.pop(name, None)
    import h2fix

    compileall.compile_dir(os.path.dirname(h2fix.__file__), quiet=1)
    names = list(VARIANTS)
    times: dict[str, list[float]] = {name: [] for name in names}
    rss: dict[str, list[float]] = {name: [] for name in names}
    libcst: dict[str, int] = dict.fromkeys(names, 0)
    with tempfile.TemporaryDirectory() as temporary:
        scratch = Path(temporary)
        diff_path = scratch / "stream_send.diff"
        diff_path.write_text(patchy_diff())
        drifted = drifted_copy(scratch)
        base = {**os.environ, "DIFF": str(diff_path), "H2FIX_CACHE_DIR": str(scratch / "warm")}
        sample("warm", base)  # fills the warm cache
        for round_ in range(args.repeat):
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                _, cache, on_drifted = VARIANTS[name]
                env = dict(base)
                if cache == "empty":
                    env["H2FIX_CACHE_DIR"] = str(scratch / f"cold-{round_}-{names.index(name)}")
                if on_drifted:
                    first = [str(drifted), env.get("PYTHONPATH", "")]
                    env["PYTHONPATH"] = os.pathsep.join(filter(None, first))
                result = sample(name, env)
                times[name].append(result["ms"])
                rss[name].append(result["rss_kb"] / 1024)
                libcst[name] += bool(result["libcst"])
    report(times, rss, libcst, args.repeat)


def report(
    times: dict[str, list[float]],
    rss: dict[str, list[float]],
    libcst: dict[str, int],
    repeat: int,
) -> None:
    print(f"{repeat} rounds, one fresh process per variant and round, order rotated every round")
    print(f"{'variant':<15}{'median ms':>10}{'p10-p90 ms':>19}{'RSS MB':>9}{'vs import':>11}"
          f"{'LibCST':>9}")  # fmt: skip
    unpatched = statistics.median(rss["import"])
    for name, values in times.items():
        low, high = spread(values)
        memory = statistics.median(rss[name])
        print(
            f"{name:<15}{statistics.median(values):>10.2f}{low:>10.2f}-{high:<8.2f}"
            f"{memory:>9.1f}{memory - unpatched:>+11.1f}{libcst[name]:>5}/{repeat:<3}"
        )
    print()
    print(f"{'ratio (per round)':<28}{'median':>7}{'p10-p90':>15}   target")
    aa_low, aa_high = spread(per_round(times, "by hand (A/A)", "by hand"))
    for numerator, denominator, target in RATIOS:
        ratios = per_round(times, numerator, denominator)
        low, high = spread(ratios)
        label = f"{numerator} / {denominator}"
        # Three places below 0.1: `import h2fix` alone is a few thousandths of the import.
        digits = 3 if statistics.median(ratios) < 0.1 else 2
        median = f"{statistics.median(ratios):.{digits}f}"
        print(f"{label:<28} = {median:<4}{low:>9.{digits}f}-{high:<5.{digits}f}   {target}")
    print()
    print(f"A/A spread: two measurements of the same thing differ by {aa_low:.2f}-{aa_high:.2f}x")
    known = statistics.median(rss["cold known"]) - unpatched
    print(f"cold known RSS - import RSS = {known:+.1f} MB   (target <= 3 MB)")
    print(f"LibCST imported by cold known = {libcst['cold known']} of {repeat}   (target 0)")


def per_round(times: dict[str, list[float]], numerator: str, denominator: str) -> list[float]:
    return [a / b for a, b in zip(times[numerator], times[denominator])]


if __name__ == "__main__":
    main()
