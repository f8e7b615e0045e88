#!/usr/bin/env python3
"""gRPC throughput: Hypercorn 0.17.3 repaired by h2fix against stock Hypercorn 0.18.0.

    pip install -e ".[test]" && python scripts/bench_throughput.py --seconds 5 --rounds 3

Both servers run the same ASGI gRPC app (defined here) with the same interpreter and
dependencies; only Hypercorn differs. 0.18.0 is downloaded from the package
registry into a temporary directory and put first on the server's sys.path; 0.17.3
is the installed one, started through `h2fix run`. The grpcio client keeps a fixed
number of calls in flight for a fixed time, unary and 50-message server streams,
alternating the servers round by round. Prints calls per second and the ratio.
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

HERE = Path(__file__).resolve().parent


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


def unary_rate(port: int, seconds: float, in_flight: int) -> float:
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        echo = channel.unary_unary("/bench.Bench/Echo")
        echo(b"warm-up", timeout=10)
        done = 0
        pending: collections.deque[Any] = collections.deque()
        deadline = time.perf_counter() + seconds
        started = time.perf_counter()
        while time.perf_counter() < deadline:
            pending.append(echo.future(b"x" * 64, timeout=30))
            if len(pending) >= in_flight:
                assert pending.popleft().result() == b"x" * 64
                done += 1
        for future in pending:
            future.result()
            done += 1
        return done / (time.perf_counter() - started)


def stream_rate(port: int, seconds: float, concurrency: int) -> float:
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stream = channel.unary_stream("/bench.Bench/Stream")
        counts = [0] * concurrency
        deadline = time.perf_counter() + seconds

        def work(index: int) -> None:
            while time.perf_counter() < deadline:
                assert len(list(stream(b"y" * 64, timeout=30))) == 50
                counts[index] += 1

        started = time.perf_counter()
        threads = [threading.Thread(target=work, args=(i,)) for i in range(concurrency)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return sum(counts) / (time.perf_counter() - started)


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--in-flight", type=int, default=32)
    parser.add_argument("--streams", type=int, default=8)
    args = parser.parse_args()

    from h2fix._probe import free_port, serving

    with tempfile.TemporaryDirectory() as scratch:
        stock = hypercorn_018(Path(scratch))
        # Hypercorn closes a connection after 1000 requests by default; one channel
        # here makes many more, for both servers alike.
        config = Path(scratch) / "hypercorn.toml"
        config.write_text("keep_alive_max_requests = 100000000\n")
        bind = ["bench_throughput:app", "--worker-class", "asyncio", "--config", str(config)]
        servers = {
            "0.17.3 + h2fix": (["-m", "h2fix", "run", "--", "hypercorn", *bind], [str(HERE)]),
            "0.18.0 stock": (["-m", "hypercorn", *bind], [str(stock), str(HERE)]),
        }
        results: dict[str, dict[str, list[float]]] = {
            name: {"unary": [], "stream": []} for name in servers
        }
        for _ in range(args.rounds):
            for name, (command, path) in servers.items():
                port = free_port()
                full = [sys.executable, *command, "--bind", f"127.0.0.1:{port}"]
                env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
                with serving(full, port, env=env):
                    results[name]["unary"].append(unary_rate(port, args.seconds, args.in_flight))
                    results[name]["stream"].append(stream_rate(port, args.seconds, args.streams))
    print(f"{args.rounds} rounds of {args.seconds:g} s per server and kind, alternating")
    print(f"{'server':<16}{'unary calls/s':>16}{'50-msg streams/s':>19}")
    medians = {}
    for name, kinds in results.items():
        medians[name] = {kind: statistics.median(values) for kind, values in kinds.items()}
        print(f"{name:<16}{medians[name]['unary']:>16.0f}{medians[name]['stream']:>19.1f}")
    patched, stock_ = medians["0.17.3 + h2fix"], medians["0.18.0 stock"]
    for kind in ("unary", "stream"):
        print(f"{kind}: patched / stock = {patched[kind] / stock_[kind]:.3f}   (target >= 0.97)")


if __name__ == "__main__":
    main()
