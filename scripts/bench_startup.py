#!/usr/bin/env python3
"""What apply() costs at process start, against the alternatives, side by side in one run.

    pip install -e ".[test,bench]" && python scripts/bench_startup.py --repeat 21

Every sample is a fresh interpreter timing one thing with perf_counter:
  import      `import hypercorn.protocol.h2`
  cold        `import h2fix; h2fix.apply(fixes=["trailers"])`, empty cache
  warm        `h2fix.apply(fixes=["trailers"])` with the cache filled by an earlier
              process (h2fix imported before the clock starts)
  warm+imp    the same, `import h2fix` included
  by hand     a monkeypatch of the same fix written here: inspect.getsource,
              a text edit, compile, swap
  patchy      patchy.patch() with the equivalent diff (its import included)
The variants are interleaved round by round, so drift in the machine's speed
hits them all alike. Prints the median and the 10th-90th percentile per
variant and the ratios the targets are stated in.
"""

from __future__ import annotations

import argparse
import compileall
import difflib
import inspect
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap

PRELUDE = "import time, hypercorn.protocol.h2 as m\n"

VARIANTS = {
    "import": "import time\nt = time.perf_counter()\nimport hypercorn.protocol.h2\n",
    "cold": PRELUDE + "t = time.perf_counter()\nimport h2fix\nh2fix.apply(fixes=['trailers'])\n",
    "warm": PRELUDE + "import h2fix\nt = time.perf_counter()\nh2fix.apply(fixes=['trailers'])\n",
    "warm+imp": PRELUDE
    + "t = time.perf_counter()\nimport h2fix\nh2fix.apply(fixes=['trailers'])\n",
    "by hand": PRELUDE
    + textwrap.dedent(
        """\
        t = time.perf_counter()
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
        source = source.replace(send, fixed)
        namespace = {}
        code = compile(source, m.__file__, "exec", dont_inherit=True,
                       flags=__import__("__future__").annotations.compiler_flag)
        exec(code, m.__dict__, namespace)
        new = namespace["stream_send"]
        new.__qualname__ = old.__qualname__
        m.H2Protocol.stream_send = new
        """
    ),
    "patchy": PRELUDE
    + "import os\nt = time.perf_counter()\nimport patchy\n"
    + "patchy.patch(m.H2Protocol.stream_send, open(os.environ['DIFF']).read())\n",
}
SUFFIX = "print((time.perf_counter() - t) * 1000)\n"


def patchy_diff() -> str:
    """The trailers fix as a diff of stream_send's source, the form patchy takes."""
    from hypercorn.protocol.h2 import H2Protocol

    import h2fix

    old = textwrap.dedent(inspect.getsource(H2Protocol.stream_send))
    with h2fix.patched(fixes=["trailers"]):
        new = textwrap.dedent(inspect.getsource(H2Protocol.stream_send))
    return "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), "a", "b"))


def sample(variant: str, env: dict[str, str]) -> float:
    out = subprocess.run(
        [sys.executable, "-c", VARIANTS[variant] + SUFFIX],
        capture_output=True, text=True, env=env, check=True,
    ).stdout  # fmt: skip
    return float(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=21)
    args = parser.parse_args()
    # As deployed: bytecode cached (pip compiles site-packages; an editable h2fix is
    # compiled here), whatever PYTHONDONTWRITEBYTECODE this shell has.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    import h2fix

    compileall.compile_dir(os.path.dirname(h2fix.__file__), quiet=1)
    with tempfile.TemporaryDirectory() as scratch:
        diff_path = os.path.join(scratch, "stream_send.diff")
        with open(diff_path, "w") as file:
            file.write(patchy_diff())
        warm_cache = os.path.join(scratch, "warm")
        base = {**os.environ, "DIFF": diff_path}
        sample("warm", {**base, "H2FIX_CACHE_DIR": warm_cache})  # fills the warm cache
        times: dict[str, list[float]] = {name: [] for name in VARIANTS}
        for round_ in range(args.repeat):
            for name in VARIANTS:
                warm = name.startswith("warm")
                cache = warm_cache if warm else os.path.join(scratch, f"cold{round_}")
                times[name].append(sample(name, {**base, "H2FIX_CACHE_DIR": cache}))
    header = f"{'variant':<10}{'median ms':>11}{'p10-p90 ms':>16}"
    print(f"{header}   ({args.repeat} fresh processes each)")
    medians = {}
    for name, values in times.items():
        deciles = statistics.quantiles(values, n=10)
        medians[name] = statistics.median(values)
        print(f"{name:<10}{medians[name]:>11.2f}{deciles[0]:>8.2f}-{deciles[-1]:<7.2f}")
    print()
    print(f"warm / by hand   = {medians['warm'] / medians['by hand']:.2f}   (target <= 1.0)")
    print(f"warm+imp / by hand = {medians['warm+imp'] / medians['by hand']:.2f}")
    print(f"warm / patchy    = {medians['warm'] / medians['patchy']:.2f}")
    print(f"cold / import    = {medians['cold'] / medians['import']:.2f}   (target <= 2.0)")


if __name__ == "__main__":
    main()
