"""The repaired server under faults, load and live patching, over real sockets on 127.0.0.1."""

from __future__ import annotations

import collections
import http.client
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import h2.settings
import pytest

from h2fix._probe import H2Client, Response
from support.grpc_app import frame, unframe
from support.servers import running_server

pytestmark = pytest.mark.server

BIG = 100_000
WORKER_CLASSES = ["asyncio", "trio"]


# Hypercorn's asyncio worker, 0.17.3 and 0.18.0 alike, with or without h2fix, never exits on
# SIGTERM once a client vanished while its response waited for flow control: the response
# task stays parked in StreamBuffer.drain(), so that connection is never dropped, and since
# Python 3.12 asyncio's Server.wait_closed(), which the worker awaits before its graceful
# timeout starts, waits for every connection to be dropped. Up to 3.11 it returned at once
# and the 3 s graceful timeout ended the task. See README, "Python versions".
ASYNCIO_SHUTDOWN_WAITS_FOR_EVERY_CONNECTION = sys.version_info >= (3, 12)


@pytest.fixture(params=WORKER_CLASSES)
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[int, Any]]:
    with running_server(tmp_path, worker_class=request.param, extra=["--inspect"]) as server:
        yield server
        if server[1].returncode is None:  # not already stopped (and checked) by the test
            stop_cleanly(server[1])


def stop_cleanly(process: Any) -> None:
    """SIGTERM: the server must finish and exit 0.

    Hypercorn gives open connections a 3 s graceful timeout; the rest is margin for a
    loaded machine (the stop is tested, not its speed).
    """
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=15) == 0


def well_formed(response: Response, size: int) -> bool:
    return (
        re.fullmatch(r"headers( data)* trailers end", " ".join(response.events)) is not None
        and response.trailers_ended_stream
        and unframe(response.body) == [b"x" * size]
    )


def call_on_new_connection(port: int, path: str, body: bytes = b"") -> Response:
    client = H2Client(port)
    try:
        return client.call(path, body)
    finally:
        client.close()


def debug(port: int, path: str) -> Any:
    """What the test server reports about itself at /debug/<path>.

    Asked over HTTP/1.1, which creates no H2Protocol: over HTTP/2 each question would add a
    connection of its own to the closed ones it counts, as soon as the server noticed it closed
    (how soon varies with Python version and load, so counts were off by one at random).
    """
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        connection.request("GET", f"/debug/{path}")
        response = connection.getresponse()
        assert response.status == 200, response.status
        return json.loads(response.read())
    finally:
        connection.close()


def wait_until_closed(port: int, count: int, released: bool = True) -> list[dict[str, Any]]:
    """What the server's HTTP/2 connections still hold, once at least `count` exist and all are
    closed, and (with `released`) hold no send state; or as they are after a deadline.

    A connection is marked closed before its send task has finished with the frame it was
    flushing, which then releases the stream (under trio on a loaded machine this was seen
    between two polls): wait for it, within a deadline, rather than judge mid-way.
    """
    deadline = time.monotonic() + 20
    while True:
        protocols = debug(port, "protocols")
        closed = [p for p in protocols if p["closed"]]
        settled = len(closed) == len(protocols) >= count
        if settled and (not released or all(map(holds_nothing, closed))):
            return closed
        if time.monotonic() > deadline:
            return closed
        time.sleep(0.05)


def holds_nothing(protocol: dict[str, Any]) -> bool:
    return protocol == {"closed": True, "stream_buffers": 0, "priority_streams": 0}


def open_windows(client: H2Client, *stream_ids: int) -> None:
    for stream_id in stream_ids:
        client.conn.increment_flow_control_window(2**24, stream_id)
    client.conn.increment_flow_control_window(2**24)
    client.send()


def test_trailers_wait_for_a_window_held_at_zero(server: tuple[int, Any]) -> None:
    port, _ = server
    client = H2Client(port, window=0)
    try:
        started = time.monotonic()
        stream_id = client.start("/test.Test/Big", frame(str(BIG).encode()))
        response = client.responses[stream_id]
        # The headers first (a loaded machine may take a while), then a second of nothing.
        deadline = time.monotonic() + 20
        while not response.events and time.monotonic() < deadline:
            client.pump(0.1)
        client.pump(1.0)
        assert response.events == ["headers"]  # no DATA can move, and trailers wait for it
        open_windows(client, stream_id)
        client.wait(stream_id)
        assert well_formed(response, BIG), response.events
        assert time.monotonic() - started >= 1.0
    finally:
        client.close()
    assert wait_until_closed(port, 1) == [
        {"closed": True, "stream_buffers": 0, "priority_streams": 0}
    ]


def test_client_resets_the_stream_while_trailers_wait(server: tuple[int, Any]) -> None:
    port, _ = server
    client = H2Client(port, window=0)
    try:
        stuck = client.start("/test.Test/Big", frame(str(BIG).encode()))
        other = client.start("/test.Test/Big", frame(b"20000"))
        client.pump(0.5)
        client.conn.reset_stream(stuck)
        open_windows(client, other)
        [response] = client.wait(other)
        assert well_formed(response, 20000)
        # The connection still serves new streams.
        client.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 65535})
        client.send()
        assert well_formed(client.call("/test.Test/Big", frame(b"1000")), 1000)
    finally:
        client.close()
    assert wait_until_closed(port, 1) == [
        {"closed": True, "stream_buffers": 0, "priority_streams": 0}
    ]


def test_client_closes_the_connection_while_trailers_wait(
    server: tuple[int, Any], request: pytest.FixtureRequest
) -> None:
    port, process = server
    client = H2Client(port, window=0)
    client.start("/test.Test/Big", frame(str(BIG).encode()))
    client.pump(0.5)
    client.sock.close()  # abruptly: no GOAWAY
    assert well_formed(call_on_new_connection(port, "/test.Test/Big", frame(b"5000")), 5000)
    closed = wait_until_closed(port, 2, released=False)  # the vanished client's stream may stay
    assert len(closed) == 2
    # A connection that died mid-response ends with its send task; nothing may be stuck in
    # a drain, and the server must still stop cleanly (the fixture checks).
    assert all(p["priority_streams"] <= 1 for p in closed)
    if request.node.callspec.params["server"] == "asyncio":
        stop_after_a_client_vanished(process)


def stop_after_a_client_vanished(process: Any) -> None:
    """stop_cleanly, except where Hypercorn's asyncio worker is known not to stop (see
    ASYNCIO_SHUTDOWN_WAITS_FOR_EVERY_CONNECTION): there a stop is expected to fail, and the
    server is killed by its pid."""
    if not ASYNCIO_SHUTDOWN_WAITS_FOR_EVERY_CONNECTION:
        stop_cleanly(process)
        return
    process.send_signal(signal.SIGTERM)
    try:
        assert process.wait(timeout=15) == 0  # the day Hypercorn (or a fix) releases the task
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.xfail(
            "Hypercorn's asyncio worker does not exit on SIGTERM with a connection whose client "
            "vanished while a response waited in drain(): Python >= 3.12's "
            "Server.wait_closed() waits for that connection forever"
        )


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_load_10000_unary_and_100_streams(tmp_path: Path, worker_class: str) -> None:
    # Hypercorn closes a connection after 1000 requests by default, failing the calls
    # then in flight (stock behaviour, not the trailers bug): lift it.
    extra = ["--inspect", "--keep-alive-max-requests", "1000000"]
    # Under trio, Hypercorn's send task falls behind and each finished stream stays in the
    # connection's priority tree, which refuses a 1001st stream (stock 0.18.0 measures the
    # same): trio connections are given 500 calls each. See README, "What happens when".
    per_connection = 10_000 if worker_class == "asyncio" else 500
    with running_server(tmp_path, worker_class=worker_class, extra=extra) as server:
        port, process = server
        rss_before = rss_kib(process.pid)
        for first in range(0, 10_000, per_connection):
            with own_connection(port) as channel:
                unary_load(channel, range(first, first + per_connection), in_flight=64)
        with own_connection(port) as channel:
            stream = channel.unary_stream("/test.Test/Stream")
            calls = [stream(b"50", timeout=60) for _ in range(100)]
            for call in calls:
                assert list(call) == [str(i).encode() for i in range(50)]
        rss_after = rss_kib(process.pid)
        connections = 10_000 // per_connection + 1
        # Under trio finished streams stay in the priority tree (see above): only count them.
        closed = wait_until_closed(port, connections, released=worker_class == "asyncio")
        print(
            f"\n[{worker_class}] server RSS {rss_before} KiB -> {rss_after} KiB "
            f"(+{rss_after - rss_before} KiB) over 10,000 unary calls and 100 streams; "
            f"left in finished connections: {closed}"
        )
        assert len(closed) == connections
        if worker_class == "asyncio":
            assert all(map(holds_nothing, closed)), closed
        assert rss_after - rss_before < 100_000  # bounded; the figure is printed above
        stop_cleanly(process)


def own_connection(port: int) -> grpc.Channel:
    """A channel that opens its own connection: grpcio otherwise shares connections between
    channels to the same address (17 connections were seen for 21 channels), and then neither
    the per-connection call counts nor the count of connections would hold."""
    return grpc.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
    )


def unary_load(channel: grpc.Channel, numbers: range, in_flight: int) -> None:
    echo = channel.unary_unary("/test.Test/Echo")
    pending: collections.deque[Any] = collections.deque()
    for i in numbers:
        pending.append((i, echo.future(b"%d" % i, timeout=60)))
        if len(pending) == in_flight:
            j, future = pending.popleft()
            assert future.result() == b"%d" % j
    for j, future in pending:
        assert future.result() == b"%d" % j


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    assert match
    return int(match[1])


@pytest.mark.parametrize("threads", [1, 8], ids=["1-thread", "8-threads"])
def test_apply_revert_1000_times_while_serving(tmp_path: Path, threads: int) -> None:
    """Each response is either wholly old (no trailers) or wholly new (well-formed)."""
    extra = ["--no-fix", "--toggle", "1000", "--toggle-threads", str(threads)]
    kinds: collections.Counter[str] = collections.Counter()
    with running_server(tmp_path, extra=extra) as (port, process):
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            done = toggled(port)
            # A fresh connection per request: the old code breaks HPACK for what follows.
            response = call_on_new_connection(port, "/test.Test/Big", frame(b"3000"))
            kinds[classify(response)] += 1
            if done:
                break
        assert done, "the toggling did not finish in time"
        stop_cleanly(process)
    print(f"\nresponses while toggling from {threads} thread(s): {dict(kinds)}")
    assert set(kinds) <= {"old", "new"}, kinds
    assert kinds["new"] >= 1  # at least the last one, after the final apply()


def toggled(port: int) -> bool:
    done: bool = debug(port, "toggle")["done"]
    return done


def classify(response: Response) -> str:
    if well_formed(response, 3000):
        return "new"
    # Hypercorn 0.17.3 as released: the body, then an empty DATA frame ends the stream.
    if re.fullmatch(r"headers( data)+ end", " ".join(response.events)) and not response.trailers:
        return "old"
    return "half: " + " ".join(response.events)
