"""The send_state fix with a real grpcio client: finished and cancelled streams leave nothing.

Hypercorn releases a stream's send buffer and priority node only when its send task
schedules the stream once more after the last DATA. Streams that end with trailers (every
gRPC call) or are reset (every deadline or cancel) are not reached again under load, and
at 1001 nodes the priority tree raises TooManyStreamsError: the connection dies and,
under the trio worker, the whole server. The test server's /debug/protocols report
counts what each connection still holds.

Every test lifts keep_alive_max_requests: Hypercorn closes an HTTP/2 connection after
1000 requests with the calls in flight on it (another fault, not this one).
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from h2fix._probe import H2Client
from support.grpc_load import echo_calls, given_up_calls
from support.releases import unpacked
from support.servers import WITH_FIX, running_server
from support.versions import needs_anycorn, needs_hypercorn_018

pytestmark = pytest.mark.server

IN_FLIGHT = 50
SERVERS = [
    pytest.param(("hypercorn", "asyncio"), id="hypercorn-asyncio"),
    pytest.param(("hypercorn", "trio"), id="hypercorn-trio"),
    pytest.param(("anycorn", "trio"), id="anycorn-trio", marks=needs_anycorn),
]
KEEP_ALIVE = ["--keep-alive-max-requests", "1000000"]
# What an open connection may hold once its calls are done: nothing, or (for the
# connection asking) its own /debug request.
IDLE = {(0, 0), (1, 1)}


@pytest.fixture(params=SERVERS)
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[int, Any]]:
    target, worker_class = request.param
    extra = ["--inspect", *KEEP_ALIVE]
    with running_server(tmp_path, target, worker_class, extra=extra) as (port, process):
        yield port, process
        assert process.poll() is None, "the server exited"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0


def open_connections(port: int) -> list[tuple[int, int]]:
    """(stream buffers, priority nodes) of every connection the server has open."""
    client = H2Client(port)
    try:
        report = json.loads(client.call("/debug/protocols", b"", grpc=False).body)
    finally:
        client.close()
    return [(p["stream_buffers"], p["priority_streams"]) for p in report if not p["closed"]]


def wait_until_idle(port: int) -> list[tuple[int, int]]:
    deadline = time.monotonic() + 10
    while not set(held := open_connections(port)) <= IDLE and time.monotonic() < deadline:
        time.sleep(0.1)
    return held


def unary_calls(port: int, count: int, sample_every: int = 250) -> tuple[Any, list[int]]:
    """`count` Echo calls, IN_FLIGHT at a time, on one channel; the outcomes, and the
    largest priority tree of the server's connections every `sample_every` calls."""
    largest: list[int] = []

    def sample() -> None:
        largest.append(max(nodes for _, nodes in open_connections(port)))

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        outcomes = echo_calls(channel, count, IN_FLIGHT, every=(sample_every, sample))
    return outcomes, largest


def test_1500_unary_calls_50_in_flight_on_one_channel(server: tuple[int, Any]) -> None:
    port, _ = server
    outcomes, largest = unary_calls(port, 1500)
    assert outcomes == {"ok": 1500}
    # Bounded by the calls in flight, not by the calls made.
    assert max(largest) <= 2 * IN_FLIGHT, largest
    assert set(wait_until_idle(port)) <= IDLE


CONTROL_IN_FLIGHT = 99


@pytest.mark.skipif(not WITH_FIX, reason="serves the stock server: nothing to compare")
def test_without_send_state_the_trio_server_dies(tmp_path: Path) -> None:
    """The same load with every fix but this one: the fault is real and this fix removes it."""
    others = ["--only-fix", "trailers", "--only-fix", "request_received"]
    extra = ["--inspect", *KEEP_ALIVE, *others]
    with running_server(tmp_path, "hypercorn", "trio", extra=extra) as (port, process):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            # As many in flight as the server allows (100 streams): the send loop then falls
            # behind for sure, even on a busy machine where 50 let it keep up now and then.
            outcomes = echo_calls(channel, 1500, CONTROL_IN_FLIGHT)
        assert outcomes["ok"] < 1500, outcomes
        assert process.wait(timeout=10) != 0  # TooManyStreamsError ended the process
    log = next(tmp_path.glob("server-*.log")).read_text()
    assert "TooManyStreamsError" in log


@pytest.mark.network
@needs_hypercorn_018
def test_stock_hypercorn_018_under_trio(tmp_path: Path) -> None:
    """Hypercorn 0.18.0 as released has the fault too; with h2fix it serves the load."""
    site = unpacked("hypercorn", "0.18.0")
    extra = ["--inspect", *KEEP_ALIVE]
    with running_server(tmp_path, "hypercorn", "trio", first_on_path=site, extra=extra) as (
        port,
        process,
    ):
        outcomes, largest = unary_calls(port, 1500)
        assert outcomes == {"ok": 1500}
        assert max(largest) <= 2 * IN_FLIGHT, largest
        assert set(wait_until_idle(port)) <= IDLE
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    log = next(tmp_path.glob("server-*.log")).read_text()
    assert "hypercorn 0.18.0" in log
    assert "trailers: already fixed upstream" in log
    assert "send_state: applied" in log


def test_cancelled_calls_release_their_state(server: tuple[int, Any]) -> None:
    """1100 cancelled calls on one channel: the server keeps nothing of them, and the
    connection still serves."""
    port, _ = server
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        outcomes = given_up_calls(channel, 1100, IN_FLIGHT)
        assert set(outcomes) == {"CANCELLED", "DEADLINE_EXCEEDED: Deadline Exceeded"}, outcomes
        assert set(wait_until_idle(port)) <= IDLE
        echo = channel.unary_unary("/test.Test/Echo")
        assert echo(b"still serving", timeout=10) == b"still serving"


@pytest.mark.skipif(not WITH_FIX, reason="serves the stock server: nothing to compare")
def test_without_send_state_cancelled_calls_leak(tmp_path: Path) -> None:
    """The same cancellations with every fix but this one: their send state stays."""
    others = ["--only-fix", "trailers", "--only-fix", "request_received"]
    extra = ["--inspect", *KEEP_ALIVE, *others]
    with (
        running_server(tmp_path, "hypercorn", "asyncio", extra=extra) as (port, _),
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        given_up_calls(channel, 500, IN_FLIGHT)
        time.sleep(1)
        held = open_connections(port)
    assert not set(held) <= IDLE, held  # a calm connection still holding streams
