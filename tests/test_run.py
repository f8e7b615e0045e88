"""`h2fix run`: which commands it runs, what the server's processes see, what they log.

Every server here is real (Hypercorn or anycorn with 2 spawned workers on 127.0.0.1),
started through the `h2fix` console script of this environment, and stopped by its
process id.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from h2fix._probe import H2Client, Response, free_port, serving
from support.grpc_app import frame, unframe
from support.versions import needs_anycorn

pytestmark = pytest.mark.server

TESTS = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
H2FIX = str(BIN / "h2fix")
BIG = 100_000

#: An app that reports what its process sees, and otherwise serves the test gRPC app.
ENV_APP = """
import json, os, subprocess, sys
from support.grpc_app import app as grpc_app

def h2fix_variables():
    return sorted(name for name in os.environ if name.startswith("H2FIX_RUN"))

async def app(scope, receive, send):
    if scope["type"] == "http" and scope["path"] == "/env":
        child = subprocess.run(
            [sys.executable, "-c",
             "import os; print(sorted(n for n in os.environ if n.startswith('H2FIX_RUN')))"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        body = {"pid": os.getpid(), "env": h2fix_variables(), "child": child,
                "path": sys.path[:3]}
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})
    else:
        await grpc_app(scope, receive, send)
"""


@contextmanager
def h2fix_run(
    tmp_path: Path,
    server: Sequence[str],
    *,
    app: str = "support.grpc_app:app",
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    run_options: Sequence[str] = (),
    worker_class: str = "asyncio",
) -> Iterator[tuple[int, Path]]:
    """`h2fix run [options] -- SERVER APP --bind ... --workers 2`; yields the port and its log."""
    port = free_port()
    bind = ["--bind", f"127.0.0.1:{port}", "--worker-class", worker_class, "--workers", "2"]
    command = [H2FIX, "run", *run_options, "--", *server, app, *bind]
    # Changes directory, then becomes the command: same process id, so it is stopped by it.
    chdir = "import os, sys; os.chdir(sys.argv[1]); os.execv(sys.argv[2], sys.argv[2:])"
    full = [sys.executable, "-c", chdir, str(cwd or tmp_path), *command]
    environment = {**os.environ, "PYTHONPATH": str(TESTS), **(env or {})}
    log = tmp_path / f"server-{port}.log"
    with log.open("wb") as output, serving(full, port, log=output, env=environment):
        yield port, log


def call(port: int, path: str, body: bytes = b"", grpc: bool = True) -> Response:
    client = H2Client(port)
    try:
        return client.call(path, body, grpc=grpc)
    finally:
        client.close()


def assert_trailers_repaired(port: int) -> None:
    """A response bigger than the window: trailers after all DATA, with END_STREAM."""
    response = call(port, "/test.Test/Big", frame(str(BIG).encode()))
    assert re.fullmatch(r"headers( data)* trailers end", " ".join(response.events))
    assert response.trailers_ended_stream
    assert response.trailers[b"grpc-status"] == b"0"
    assert unframe(response.body) == [b"x" * BIG]


def info_lines(log: Path, count: int) -> list[str]:
    """The h2fix INFO lines in the server's log, once `count` of them are there."""
    deadline = time.monotonic() + 20
    while True:
        lines = [line for line in log.read_text().splitlines() if "[INFO] h2fix:" in line]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


# --- commands it accepts ---------------------------------------------------------


@pytest.mark.parametrize(
    "server",
    [
        pytest.param([str(BIN / "hypercorn")], id="this-environment's-hypercorn"),
        pytest.param([sys.executable, "-m", "hypercorn"], id="python-m-hypercorn"),
        pytest.param(
            [str(BIN / "python3"), "-m", "anycorn"], id="python3-m-anycorn", marks=needs_anycorn
        ),
    ],
)
def test_runs_the_server_of_this_environment(tmp_path: Path, server: list[str]) -> None:
    with h2fix_run(tmp_path, server) as (port, _):
        assert_trailers_repaired(port)


def test_refuses_another_environments_server(tmp_path: Path) -> None:
    # A real second environment with a console script as pip writes it.
    other = tmp_path / "other"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", other], check=True)
    script = other / "bin" / "hypercorn"
    script.write_text(f"#!{other / 'bin' / 'python'}\nfrom hypercorn.__main__ import main\n")
    script.chmod(0o755)
    result = subprocess.run(
        [H2FIX, "run", "--", str(script), "app:app"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("h2fix: error: expected hypercorn of this interpreter's environment")
    assert sys.executable in line
    assert f"found {script}, which runs {other / 'bin' / 'python'}" in line


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["uvicorn", "main:app"], "found uvicorn: h2fix repairs only"),
        ([sys.executable, "-m", "uvicorn", "main:app"], "found python -m uvicorn"),
        ([], "found nothing"),
    ],
    ids=["uvicorn", "python-m-uvicorn", "nothing"],
)
def test_refuses_other_servers(command: list[str], expected: str) -> None:
    result = subprocess.run(
        [H2FIX, "run", "--", *command], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("h2fix: error: expected ")
    assert expected in line


# --- what the server's processes see -------------------------------------------


def test_working_directory_does_not_shadow_the_server(tmp_path: Path) -> None:
    """Plain `hypercorn` does not import from the working directory first: nor may h2fix run."""
    cwd = tmp_path / "project"
    (cwd / "hypercorn").mkdir(parents=True)
    planted = "raise RuntimeError('imported {} from the working directory')\n"
    (cwd / "hypercorn" / "__init__.py").write_text(planted.format("hypercorn"))
    (cwd / "priority.py").write_text(planted.format("priority"))
    (cwd / "envapp.py").write_text(ENV_APP)
    with h2fix_run(tmp_path, ["hypercorn"], app="envapp:app", cwd=cwd) as (port, log):
        assert_trailers_repaired(port)
        seen = json.loads(call(port, "/env", grpc=False).body)
    assert "from the working directory" not in log.read_text()
    # Hypercorn itself puts the app's directory first when it loads the app, as it
    # does without h2fix; nothing before it came from there.
    assert seen["path"][0] == str(cwd)


def test_stale_environment_is_ignored_and_not_leaked(tmp_path: Path) -> None:
    (tmp_path / "envapp.py").write_text(ENV_APP)
    leftovers = {
        "H2FIX_RUN": "1 anycorn request_received",
        "H2FIX_RUN_FIXES": "request_received",  # the variable earlier versions read
        "H2FIX_RUN_TARGET": "anycorn",
    }
    with h2fix_run(tmp_path, ["hypercorn"], app="envapp:app", env=leftovers) as (port, log):
        assert_trailers_repaired(port)  # every fix, as no --fix was given
        seen = [json.loads(call(port, "/env", grpc=False).body) for _ in range(6)]
        lines = info_lines(log, 3)
    assert len({report["pid"] for report in seen}) >= 1
    for report in seen:
        # The variable h2fix set for this run is gone before the app runs; the user's
        # own variables are theirs, and left alone.
        assert report["env"] == ["H2FIX_RUN_FIXES", "H2FIX_RUN_TARGET"]
        assert report["child"] == "['H2FIX_RUN_FIXES', 'H2FIX_RUN_TARGET']"
    assert len(lines) == 3
    assert all(
        line.endswith(
            ": trailers, request_received, send_state, closed_stream_data, graceful_shutdown, "
            "max_requests"
        )
        for line in lines
    )


def test_fix_option_reaches_every_worker(tmp_path: Path) -> None:
    options = ["--fix", "request_received"]
    with h2fix_run(tmp_path, ["hypercorn"], run_options=options) as (port, log):
        response = call(port, "/test.Test/Big", frame(str(BIG).encode()))
        lines = info_lines(log, 3)
    assert not response.trailers_ended_stream  # the trailers fix was not asked for
    assert len(lines) == 3
    assert all(line.endswith(": repaired hypercorn 0.17.3: request_received") for line in lines)


@pytest.mark.parametrize("worker_class", ["asyncio", "trio"])
def test_one_info_line_per_process(tmp_path: Path, worker_class: str) -> None:
    with h2fix_run(tmp_path, ["hypercorn"], worker_class=worker_class) as (port, log):
        assert_trailers_repaired(port)
        lines = info_lines(log, 3)
    # The launching process and its two workers, in Hypercorn's own log format.
    pattern = (
        r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}\] \[(\d+)\] \[INFO\] "
        r"h2fix: repaired hypercorn 0\.17\.3: "
        r"trailers, request_received, send_state, closed_stream_data, graceful_shutdown, "
        r"max_requests"
    )
    matches = [re.fullmatch(pattern, line) for line in lines]
    assert all(matches), lines
    assert len({m.group(1) for m in matches if m}) == 3
