#!/usr/bin/env python3
"""Time to the first response of `hypercorn --workers N` with h2fix.apply() in the app module.

    pip install -e ".[test]" && python scripts/bench_workers.py --rounds 7

Each sample starts `python -m hypercorn app:app --workers N` (spawned workers, each
importing the app module, so each runs h2fix.apply()) and sends one HTTP/1.1 request
as soon as the port accepts connections; the time is from starting the server to
the response. Then the server is stopped by its process id. Variants:
  stock              the same app module without h2fix
  stock (A/A)        the same again: the A/A control (how far two measurements of
                     one thing differ here)
  h2fix warm         h2fix.apply() with the cache filled by an earlier run
  h2fix empty cache  a new, empty cache directory: the workers start cold together
                     (the first computes the entry, the others wait for it)
  h2fix no cache     an unusable cache (someone else's directory, or read-only when
                     not run as root): every worker falls back to computing its own
The order of the variants is rotated every round; ratios are per round, shown as
median and 10th-90th percentile. Hypercorn is the installed one (0.17.3, a release
the shipped table knows, so no worker imports LibCST).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _stats import spread  # scripts/ is sys.path[0] when a script runs

APP = """\
{prologue}

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({{"type": "lifespan.startup.complete"}})
            else:
                await send({{"type": "lifespan.shutdown.complete"}})
                return
    await send({{"type": "http.response.start", "status": 200, "headers": []}})
    await send({{"type": "http.response.body", "body": b"ok"}})
"""
WITH_H2FIX = "import h2fix\n\nh2fix.apply()"

#: name -> (app module, cache)
VARIANTS = {
    "stock": ("stock_app", "none"),
    "stock (A/A)": ("stock_app", "none"),
    "h2fix warm": ("h2fix_app", "warm"),
    "h2fix empty cache": ("h2fix_app", "empty"),
    "h2fix no cache": ("h2fix_app", "unusable"),
}
RATIOS = (
    ("stock (A/A)", "stock", "the noise: 1.00 +- this spread"),
    ("h2fix warm", "stock", "<= 1.2"),
    ("h2fix empty cache", "stock", "<= 1.2"),
    ("h2fix no cache", "stock", "<= 1.2"),
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def first_response(port: int, deadline: float) -> None:
    """Connect as soon as the port accepts, then wait for one HTTP response."""
    request = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.settimeout(max(deadline - time.monotonic(), 0.1))
                sock.sendall(request)
                reply = sock.recv(64)
                if reply.startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.005)
    raise TimeoutError(f"no response from 127.0.0.1:{port}")


def sample(module: str, workers: int, env: dict[str, str], log: Path) -> float:
    port = free_port()
    command = [sys.executable, "-m", "hypercorn", f"{module}:app", "--workers", str(workers),
               "--bind", f"127.0.0.1:{port}"]  # fmt: skip
    with log.open("ab") as output:
        started = time.perf_counter()
        process = subprocess.Popen(
            command, stdout=output, stderr=output, env=env, start_new_session=True
        )
        try:
            first_response(port, time.monotonic() + 60)
            return (time.perf_counter() - started) * 1000
        finally:
            # Stopped by its own process id; its group takes the workers it spawned.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def unusable_cache(scratch: Path) -> Path:
    """A cache directory h2fix must refuse: another user's, or read-only for this one."""
    folder = scratch / "unusable"
    folder.mkdir(mode=0o700)
    if os.geteuid() == 0:
        os.chown(folder, 65534, 65534)  # nobody's: h2fix trusts only the user's own
    else:
        folder.chmod(0o500)
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args(argv)
    for name in ("PYTHONDONTWRITEBYTECODE", "H2FIX_NO_CACHE", "H2FIX_NO_KNOWN_RELEASES"):
        os.environ.pop(name, None)
    names = list(VARIANTS)
    times: dict[str, list[float]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as temporary:
        scratch = Path(temporary)
        apps = scratch / "apps"
        apps.mkdir()
        (apps / "stock_app.py").write_text(APP.format(prologue=""))
        (apps / "h2fix_app.py").write_text(APP.format(prologue=WITH_H2FIX))
        unusable = unusable_cache(scratch)
        path = os.pathsep.join(filter(None, [str(apps), os.environ.get("PYTHONPATH")]))
        base = {**os.environ, "PYTHONPATH": path, "H2FIX_CACHE_DIR": str(scratch / "warm")}
        log = scratch / "servers.log"
        try:
            sample("h2fix_app", args.workers, base, log)  # fills the warm cache
            for round_ in range(args.rounds):
                shift = round_ % len(names)
                for name in names[shift:] + names[:shift]:
                    module, cache = VARIANTS[name]
                    env = dict(base)
                    if cache == "empty":
                        env["H2FIX_CACHE_DIR"] = str(scratch / f"empty-{round_}")
                    elif cache == "unusable":
                        env["H2FIX_CACHE_DIR"] = str(unusable)
                    times[name].append(sample(module, args.workers, env, log))
        except BaseException:
            sys.stderr.write(log.read_text(errors="replace")[-3000:])
            raise
        fallbacks = log.read_text(errors="replace").count("every start takes the slow path")
    report(times, args.rounds, args.workers, fallbacks)


def report(times: dict[str, list[float]], rounds: int, workers: int, fallbacks: int) -> None:
    print(f"{rounds} rounds of `hypercorn --workers {workers}`, order rotated every round; "
          "time from start to the first HTTP response")  # fmt: skip
    print(f"{'variant':<19}{'median ms':>10}{'p10-p90 ms':>19}")
    for name, values in times.items():
        low, high = spread(values)
        print(f"{name:<19}{statistics.median(values):>10.0f}{low:>10.0f}-{high:<8.0f}")
    print()
    print(f"{'ratio (per round)':<32}{'median':>7}{'p10-p90':>15}   target")
    for numerator, denominator, target in RATIOS:
        ratios = [a / b for a, b in zip(times[numerator], times[denominator])]
        low, high = spread(ratios)
        label = f"{numerator} / {denominator}"
        print(f"{label:<32} = {statistics.median(ratios):.2f}{low:>9.2f}-{high:<5.2f}   {target}")
    print()
    print(f"cache warnings logged by workers with the unusable cache = {fallbacks}")


if __name__ == "__main__":
    main()
