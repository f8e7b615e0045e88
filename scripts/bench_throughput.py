#!/usr/bin/env python3
"""gRPC throughput and server CPU per call: Hypercorn 0.17.3 repaired by h2fix, the same
repair vendored on disk, and stock Hypercorn 0.18.0, side by side.

    pip install -e ".[test]" && python scripts/bench_throughput.py --seconds 5 --rounds 7

Every server runs the same ASGI gRPC app (defined here) with the same interpreter and
dependencies:
  0.17.3 + h2fix       the installed 0.17.3, started through `h2fix run` (runtime patch)
  0.17.3 vendored      a copy written by `python -m h2fix vendor --out DIR` (the same
                       rewrite, on disk), served by plain `python -m hypercorn` with
                       DIR first on PYTHONPATH: what the runtime patch should cost
  0.18.0 stock         0.18.0 downloaded from the package registry into a temporary
                       directory, first on PYTHONPATH (upstream's own fix)
  0.18.0 stock (A/A)   the same server again: the A/A control. How far its figures are
                       from the first one's shows what a difference means here
The grpcio client keeps a fixed number of unary calls (or 50-message server streams)
in flight for a fixed time and counts them; the server's CPU time (utime + stime of
its whole process tree, from /proc) over the same window, divided by the calls, is
the CPU per call, which the client's own load on the machine disturbs less than
calls/s. The order of the servers is rotated every round. Ratios are per round and
shown as median and 10th-90th percentile, and each says whether it lies within the
A/A control's spread.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Any, Callable

from _stats import spread  # scripts/ is sys.path[0] when a script runs

HERE = Path(__file__).resolve().parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


# --- the app both servers run ------------------------------------------------------


def _frame(payload: bytes) -> bytes:
    return struct.pack(">?I", False, len(payload)) + payload


async def app(scope: dict[str, Any], receive: Callable[[], Any], send: Callable[..., Any]) -> None:
    if scope["type"] == "lifespan":
        from h2fix._probe import lifespan

        await lifespan(receive, send)
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    request = body[5:]
    count = 50 if scope["path"].endswith("/Stream") else 1
    start = {"type": "http.response.start", "status": 200, "trailers": True}
    await send({**start, "headers": [(b"content-type", b"application/grpc")]})
    for _ in range(count):
        await send({"type": "http.response.body", "body": _frame(request), "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    await send({"type": "http.response.trailers", "headers": [(b"grpc-status", b"0")]})


# --- the client --------------------------------------------------------------------


def unary_calls(port: int, seconds: float, in_flight: int, cpu: Callable[[], float]) -> Window:
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        echo = channel.unary_unary("/bench.Bench/Echo")
        echo(b"warm-up", timeout=10)
        done = 0
        pending: collections.deque[Any] = collections.deque()
        cpu_before, started = cpu(), time.perf_counter()
        deadline = started + seconds
        while time.perf_counter() < deadline:
            pending.append(echo.future(b"x" * 64, timeout=30))
            if len(pending) >= in_flight:
                assert pending.popleft().result() == b"x" * 64
                done += 1
        for future in pending:
            future.result()
            done += 1
        return Window(done, time.perf_counter() - started, cpu() - cpu_before)


def stream_calls(port: int, seconds: float, concurrency: int, cpu: Callable[[], float]) -> Window:
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stream = channel.unary_stream("/bench.Bench/Stream")
        assert len(list(stream(b"warm-up", timeout=10))) == 50
        counts = [0] * concurrency
        deadline = time.perf_counter() + seconds

        def work(index: int) -> None:
            while time.perf_counter() < deadline:
                assert len(list(stream(b"y" * 64, timeout=30))) == 50
                counts[index] += 1

        threads = [threading.Thread(target=work, args=(i,)) for i in range(concurrency)]
        cpu_before, started = cpu(), time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return Window(sum(counts), time.perf_counter() - started, cpu() - cpu_before)


class Window:
    """What one measurement saw: calls completed, wall time, server CPU seconds."""

    def __init__(self, calls: int, seconds: float, cpu: float) -> None:
        self.calls, self.seconds, self.cpu = calls, seconds, cpu

    @property
    def rate(self) -> float:
        return self.calls / self.seconds

    @property
    def cpu_per_call(self) -> float:
        """Microseconds of server CPU per call."""
        return self.cpu / max(self.calls, 1) * 1e6


def tree_cpu(root: int) -> float:
    """CPU seconds (user + system) used so far by process `root` and all its descendants."""
    stats: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as file:
                text = file.read()
        except OSError:
            continue  # exited meanwhile
        # The command name is in parentheses and may hold spaces: split after it.
        fields = text[text.rindex(")") + 2 :].split()
        parent, utime, stime = int(fields[1]), int(fields[11]), int(fields[12])
        stats[int(entry)] = (parent, (utime + stime) / CLOCK_TICKS)
    children: dict[int, list[int]] = collections.defaultdict(list)
    for pid, (parent, _) in stats.items():
        children[parent].append(pid)
    total, stack = 0.0, [root]
    while stack:
        pid = stack.pop()
        total += stats.get(pid, (0, 0.0))[1]
        stack.extend(children[pid])
    return total


# --- servers -----------------------------------------------------------------------


def hypercorn_018(scratch: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
         "--dest", str(scratch), "hypercorn==0.18.0"],
        check=True,
    )  # fmt: skip
    target = scratch / "hypercorn-0.18.0"
    with zipfile.ZipFile(next(scratch.glob("hypercorn-0.18.0-*.whl"))) as wheel:
        wheel.extractall(target)
    return target


def vendored_017(scratch: Path) -> Path:
    """The installed 0.17.3 rewritten on disk by `h2fix vendor` (which checks the copy)."""
    out = scratch / "vendored"
    subprocess.run(
        [sys.executable, "-m", "h2fix", "vendor", "--target", "hypercorn", "--out", str(out)],
        check=True, capture_output=True,
    )  # fmt: skip
    return out


PATCHED, VENDORED, STOCK, STOCK_AGAIN = (
    "0.17.3 + h2fix", "0.17.3 vendored", "0.18.0 stock", "0.18.0 stock (A/A)"
)  # fmt: skip
#: (numerator, denominator) of each ratio printed; the A/A control comes first.
RATIOS = ((STOCK_AGAIN, STOCK), (PATCHED, STOCK), (VENDORED, STOCK), (PATCHED, VENDORED))
SHORT = {PATCHED: "patched", VENDORED: "vendored", STOCK: "stock", STOCK_AGAIN: "stock again"}
#: metric -> (label, how to read a Window, True when more is better)
METRICS: dict[str, tuple[str, Callable[[Window], float], bool]] = {
    "unary calls/s": ("unary", lambda w: w.rate, True),
    "unary CPU/call": ("unary", lambda w: w.cpu_per_call, False),
    "stream calls/s": ("stream", lambda w: w.rate, True),
    "stream CPU/call": ("stream", lambda w: w.cpu_per_call, False),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--in-flight", type=int, default=32)
    parser.add_argument("--streams", type=int, default=8)
    args = parser.parse_args(argv)

    from h2fix._probe import free_port, serving

    with tempfile.TemporaryDirectory() as temporary:
        scratch = Path(temporary)
        stock = hypercorn_018(scratch)
        vendored = vendored_017(scratch)
        # Hypercorn closes a connection after 1000 requests by default; one channel
        # here makes many more, for every server alike.
        config = scratch / "hypercorn.toml"
        config.write_text("keep_alive_max_requests = 100000000\n")
        bind = ["bench_throughput:app", "--worker-class", "asyncio", "--config", str(config)]
        servers = {
            PATCHED: (["-m", "h2fix", "run", "--", "hypercorn", *bind], [HERE]),
            VENDORED: (["-m", "hypercorn", *bind], [vendored, HERE]),
            STOCK: (["-m", "hypercorn", *bind], [stock, HERE]),
            STOCK_AGAIN: (["-m", "hypercorn", *bind], [stock, HERE]),
        }
        names = list(servers)
        windows: dict[str, dict[str, list[Window]]] = {
            name: {"unary": [], "stream": []} for name in names
        }
        for round_ in range(args.rounds):
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                command, path = servers[name]
                port = free_port()
                full = [sys.executable, *command, "--bind", f"127.0.0.1:{port}"]
                env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in path)}
                with serving(full, port, env=env) as process:
                    cpu = lambda pid=process.pid: tree_cpu(pid)  # noqa: E731
                    unary = unary_calls(port, args.seconds, args.in_flight, cpu)
                    windows[name]["unary"].append(unary)
                    streams = stream_calls(port, args.seconds, args.streams, cpu)
                    windows[name]["stream"].append(streams)
    report(windows, args)


def report(windows: dict[str, dict[str, list[Window]]], args: argparse.Namespace) -> None:
    print(f"{args.rounds} rounds of {args.seconds:g} s per server and kind, order rotated "
          f"every round; {args.in_flight} unary calls or {args.streams} 50-message streams "
          "in flight")  # fmt: skip
    print(f"{'server':<20}{'unary calls/s':>14}{'CPU us/call':>13}"
          f"{'streams/s':>11}{'CPU us/stream':>15}")  # fmt: skip
    values: dict[str, dict[str, list[float]]] = {}
    for name, kinds in windows.items():
        values[name] = {
            metric: [read(w) for w in kinds[kind]] for metric, (kind, read, _) in METRICS.items()
        }
        row = {metric: statistics.median(v) for metric, v in values[name].items()}
        print(f"{name:<20}{row['unary calls/s']:>14.0f}{row['unary CPU/call']:>13.0f}"
              f"{row['stream calls/s']:>11.1f}{row['stream CPU/call']:>15.0f}")  # fmt: skip
    print()
    print("ratio (per round)                            median   p10-p90")
    for metric, (_, _, more_is_better) in METRICS.items():
        # How far from 1 the A/A control strays: the noise a real difference must exceed.
        noise = max(abs(r - 1) for r in spread(per_round(values, metric, STOCK_AGAIN, STOCK)))
        for numerator, denominator in RATIOS:
            ratios = per_round(values, metric, numerator, denominator)
            low, high = spread(ratios)
            middle = statistics.median(ratios)
            label = f"{metric}: {SHORT[numerator]} / {SHORT[denominator]}"
            if numerator == STOCK_AGAIN:
                verdict = "the A/A control"
            else:
                inside = abs(middle - 1) <= noise
                verdict = f"{'within' if inside else 'OUTSIDE'} the A/A spread (1 +- {noise:.3f})"
                if (numerator, denominator) == (PATCHED, STOCK):
                    verdict += "; target " + (">= 0.97" if more_is_better else "<= 1.03")
            print(f"{label:<44} = {middle:.3f}  {low:.3f}-{high:.3f}  {verdict}")


def per_round(
    values: dict[str, dict[str, list[float]]], metric: str, numerator: str, denominator: str
) -> list[float]:
    return [a / b for a, b in zip(values[numerator][metric], values[denominator][metric])]


if __name__ == "__main__":
    main()
