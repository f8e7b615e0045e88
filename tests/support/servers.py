"""Start and stop a real server process on 127.0.0.1 for a test."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {timeout}s")


def stop(process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """Stop the server by its own process id (and its process group: workers)."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout)


@contextlib.contextmanager
def running(command: Sequence[str], port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            wait_for_port(port, process)
            yield process
        finally:
            stop(process)


@contextlib.contextmanager
def serving(
    tmp_path: Path, target: str = "hypercorn", worker_class: str = "asyncio", fix: bool = True
) -> Iterator[int]:
    """The test gRPC app served on a free port; yields the port."""
    port = free_port()
    command = [
        sys.executable, "-m", "support.serve", "--target", target,
        "--worker-class", worker_class, "--port", str(port), "--fix" if fix else "--no-fix",
    ]  # fmt: skip
    with running(command, port, tmp_path / f"server-{port}.log"):
        yield port
