"""Start and stop a real server process on 127.0.0.1 for a test, in one of several modes.

- "apply": the test's own launcher calls h2fix.apply() and serves (support.serve);
- "run": `h2fix run -- hypercorn ... --workers 2` (spawned workers);
- "vendored": stock `python -m hypercorn` importing a copy written by `h2fix vendor`.

With H2FIX_TEST_WITHOUT_FIX=1 every mode serves the stock, unrepaired server.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from h2fix._probe import free_port
from h2fix._probe import serving as serving_command

TESTS = Path(__file__).resolve().parent.parent
ROOT = TESTS.parent
WITH_FIX = os.environ.get("H2FIX_TEST_WITHOUT_FIX", "") != "1"
APP = "support.grpc_app:app"


def vendored_copy(target: str, out: Path) -> Path:
    """A patched copy of the installed target, written (and checked) by `h2fix vendor`."""
    command = [sys.executable, "-m", "h2fix", "vendor", "--target", target, "--out", str(out)]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"h2fix vendor exited {completed.returncode}: {completed.stderr}")
    return out


@contextlib.contextmanager
def running_server(
    tmp_path: Path,
    target: str = "hypercorn",
    worker_class: str = "asyncio",
    mode: str = "apply",
    fix: bool = WITH_FIX,
    first_on_path: Path | None = None,
    extra: Sequence[str] = (),
) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """The test gRPC app served on a free port; yields the port and the server process.

    `first_on_path` puts a directory (e.g. an edited copy of the server) before all others;
    `extra` adds arguments to support.serve (mode "apply").
    """
    port = free_port()
    path = [str(TESTS)] if first_on_path is None else [str(first_on_path), str(TESTS)]
    bind = ["--bind", f"127.0.0.1:{port}", "--worker-class", worker_class]
    if mode == "apply":
        flag = "--fix" if fix else "--no-fix"
        command = ["-m", "support.serve", "--target", target, "--port", str(port), flag]
        command += ["--worker-class", worker_class, *extra]
    elif mode == "run":
        launcher = ["-m", "h2fix", "run", "--", target] if fix else ["-m", target]
        command = [*launcher, APP, *bind, "--workers", "2"]
    elif mode == "vendored":
        if fix:
            path.insert(0, str(vendored_copy(target, tmp_path / "vendored")))
        command = ["-m", target, APP, *bind]
    else:
        raise ValueError(mode)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    log = tmp_path / f"server-{port}.log"
    with contextlib.ExitStack() as stack:
        output = stack.enter_context(log.open("wb"))
        try:
            process = stack.enter_context(
                serving_command([sys.executable, *command], port, log=output, env=env)
            )
        except RuntimeError as error:
            # The log lives in a temporary directory that pytest soon removes: show it here.
            output.flush()
            tail = log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{error}\n--- {log.name} ---\n{tail}") from error
        yield port, process


@contextlib.contextmanager
def serving(tmp_path: Path, *args: Any, **kwargs: Any) -> Iterator[int]:
    """As running_server, yielding the port only."""
    with running_server(tmp_path, *args, **kwargs) as (port, _):
        yield port
