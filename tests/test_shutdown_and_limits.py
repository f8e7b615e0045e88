"""Faults 3 and 4 of issue 10 with real clients: a connection that reaches the server's
request limit, and a graceful shutdown, must lose no call and fail none for good.

- max_requests (fault 3): after `keep_alive_max_requests` requests (1000 by default) on an
  HTTP/2 connection, Hypercorn calls h2's close_connection(): h2 goes CLOSED and the
  responses in flight, the crossing request's own among them, are never sent. Repaired,
  the server sends GOAWAY(NO_ERROR, last stream 2**31-1) (RFC 9113 §6.8: stop opening
  streams, nothing refused), completes every stream, and once the connection is idle sends
  the final GOAWAY, whose last stream id covers every stream it processed.
- graceful_shutdown (fault 4): after SIGTERM Hypercorn answers a new stream with
  RST_STREAM(NO_ERROR); grpcio reports INTERNAL and does not retry. Repaired, the stream is
  refused with REFUSED_STREAM (RFC 9113 §8.7: not processed, safe to retry), while the calls
  already in flight complete.

Without the fixes (H2FIX_TEST_WITHOUT_FIX=1) every test but the controls fails; the
controls serve every other fix and assert the stock failure, so the tests above them can fail.
"""

from __future__ import annotations

import collections
import contextlib
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import grpc
import h2.errors
import pytest

from h2fix._probe import H2Client
from support import grpc_load
from support.frames import MAX_STREAM_ID, FrameReader, Frames
from support.grpc_app import frame, unframe
from support.releases import unpacked
from support.servers import WITH_FIX, running_server
from support.versions import needs_anycorn_020, needs_hypercorn_018
from support.versions import wheel_on_default_python as ON_DEFAULT

pytestmark = pytest.mark.server

TIMEOUT = 15
INSTALLED = "0.17.3"  # the test extra's hypercorn


@dataclass(frozen=True)
class Server:
    target: str
    #: None: the installed release (hypercorn 0.17.3); otherwise a release's wheel, unpacked
    #: and put first on the server's path.
    version: str | None
    worker_class: str

    def first_on_path(self) -> Path | None:
        return None if self.version is None else unpacked(self.target, self.version)

    @property
    def release(self) -> str:
        return f"{self.target}-{self.version or INSTALLED}"


# Unpacked, as 0.18.0 is; it runs on the dependencies the installed anycorn 0.18.7 brings.


def row(target: str, version: str | None, worker_class: str, *marks: Any) -> Any:
    server = Server(target, version, worker_class)
    return pytest.param(server, id=f"{server.release}-{worker_class}", marks=marks)


SERVERS = [
    row("hypercorn", None, "asyncio"),
    row("hypercorn", None, "trio"),
    row("hypercorn", "0.18.0", "asyncio", pytest.mark.network, needs_hypercorn_018, ON_DEFAULT),
    row("hypercorn", "0.18.0", "trio", pytest.mark.network, needs_hypercorn_018, ON_DEFAULT),
    row("anycorn", "0.20.1", "trio", pytest.mark.network, needs_anycorn_020, ON_DEFAULT),
]


@contextlib.contextmanager
def started(
    tmp_path: Path, server: Server, *extra: str
) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    with running_server(
        tmp_path,
        server.target,
        server.worker_class,
        first_on_path=server.first_on_path(),
        extra=extra,
    ) as (port, process):
        yield port, process


def assert_repaired(tmp_path: Path, server: Server, fix: str) -> None:
    """The server's log carries h2fix's report: the fix under test was applied to the
    release meant."""
    if WITH_FIX:
        log = next(tmp_path.glob("server-*.log")).read_text()
        assert server.release.replace("-", " ") in log, log
        assert f"{fix}: applied" in log, log


def stopped(process: subprocess.Popen[bytes]) -> int:
    """The exit code of a server already told to stop (it must stop by itself)."""
    try:
        return process.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()  # by its own pid; running_server's stop then finds it gone
        process.wait()
        raise


def wait_until_not_listening(port: int) -> None:
    """Until the server, told to shut down, has closed its listening socket: by then it
    treats every new stream as arriving during the shutdown."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
        except OSError:
            # The trio worker closes its listeners a moment before it marks the shutdown.
            time.sleep(0.3)
            return
        time.sleep(0.02)
    raise TimeoutError(f"the server still accepts connections on port {port}")


def outcome(call: Callable[[], Any]) -> str:
    """How a gRPC call ended: "ok", or "<CODE>: <details>"."""
    try:
        call()
    except grpc.RpcError as error:
        return f"{error.code().name}: {error.details()}"
    return "ok"


def grpc_status(received: Frames, stream_id: int) -> bytes | None:
    """The grpc-status of the HEADERS frame that ended the stream (its trailers)."""
    for f in received.frames:
        if f.kind == "Headers" and f.stream_id == stream_id and f.end_stream:
            return f.headers.get(b"grpc-status")
    return None


def messages(received: Frames, stream_id: int) -> list[bytes]:
    data = [f.data for f in received.frames if f.kind == "Data" and f.stream_id == stream_id]
    return unframe(b"".join(data))


# --- fault 3: the request limit --------------------------------------------------------

CALLS = 1500
IN_FLIGHT = 50


def echo_calls(port: int, count: int = CALLS) -> collections.Counter[str]:
    """`count` Echo calls, IN_FLIGHT at a time, on one channel (one connection until the
    server asks the client to open another): how they ended."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return grpc_load.echo_calls(channel, count, IN_FLIGHT)


@pytest.mark.parametrize("server", SERVERS)
def test_1500_calls_on_one_channel_past_the_default_limit(tmp_path: Path, server: Server) -> None:
    """Calls 1001 and the 49 in flight with it complete; the rest go to a new connection."""
    with started(tmp_path, server) as (port, _):
        outcomes = echo_calls(port)
    assert outcomes == {"ok": CALLS}
    assert_repaired(tmp_path, server, "max_requests")


LIMIT = 10
PAST_THE_LIMIT = 3


def final_goaway(received: Frames) -> bool:
    return any(g.last_stream_id != MAX_STREAM_ID for g in received.of("GoAway"))


def requests_across_the_limit(port: int, linger: float = 0) -> tuple[list[int], list[int], Frames]:
    """LIMIT calls that take half a second, then PAST_THE_LIMIT quick ones, sent at once on one
    connection: every slow call is still in flight when request LIMIT + 1 crosses the limit.
    The stream ids (slow, quick), and every frame the server sent until its final GOAWAY
    (or until it closed the connection) and `linger` seconds more."""
    client = H2Client(port)
    try:
        reader = FrameReader(client)
        slow = [client.start("/test.Test/Slow", frame(b"0.5")) for _ in range(LIMIT)]
        quick = [client.start("/test.Test/Echo", frame(b"%d" % i)) for i in range(PAST_THE_LIMIT)]
        reader.read_until(final_goaway, TIMEOUT)
        return slow, quick, reader.read_for(linger)
    finally:
        client.close()


@pytest.mark.parametrize("server", SERVERS)
def test_requests_past_the_limit_complete_then_goaway(tmp_path: Path, server: Server) -> None:
    with started(tmp_path, server, "--keep-alive-max-requests", str(LIMIT)) as (port, _):
        slow, quick, received = requests_across_the_limit(port)
    goaways = received.of("GoAway")
    assert goaways, received
    # First: "open no more streams", refusing none of those already sent.
    assert (goaways[0].error_code, goaways[0].last_stream_id) == (0, MAX_STREAM_ID), goaways
    assert all(g.error_code == 0 for g in goaways), goaways
    assert not received.of("RstStream"), received
    # Every stream completes, while the connection stays up...
    for stream_id in slow + quick:
        assert received.ended(stream_id), f"stream {stream_id} never ended: {received}"
        assert grpc_status(received, stream_id) == b"0", received
    assert [messages(received, s) for s in slow] == [[b"slow"]] * LIMIT
    assert [messages(received, s) for s in quick] == [[b"%d" % i] for i in range(PAST_THE_LIMIT)]
    # ... the slow ones were in flight when the first GOAWAY came ...
    first = received.frames.index(goaways[0])
    assert all(received.index_of_end(s) > first for s in slow), received
    # ... and only then, idle, the final GOAWAY: every stream was processed.
    finals = [g for g in goaways if g.last_stream_id != MAX_STREAM_ID]
    assert finals, f"the connection closed with no final GOAWAY: {received}"
    final = finals[0]
    assert all(received.index_of_end(s) < received.frames.index(final) for s in slow + quick)
    assert final.last_stream_id >= max(slow + quick), final
    assert_repaired(tmp_path, server, "max_requests")


# --- fault 4: graceful shutdown --------------------------------------------------------

SHUTDOWN = ["--graceful-timeout", "30"]  # far longer than any call here takes
SLOW = b"1.5"  # seconds: still running well after the shutdown starts (about 0.4 s later)


def grpc_call_during_shutdown(port: int, process: subprocess.Popen[bytes]) -> tuple[str, str]:
    """A slow call in flight, SIGTERM, then a new call on the same channel: how the new call
    and the slow one ended."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        echo = channel.unary_unary("/test.Test/Echo")
        slow = channel.unary_unary("/test.Test/Slow").future(SLOW, timeout=30)
        # Streams open in order on the one connection: once this call is answered, the
        # server has the slow call too, before the shutdown begins.
        assert echo(b"before", timeout=TIMEOUT) == b"before"
        process.send_signal(signal.SIGTERM)
        wait_until_not_listening(port)
        new = outcome(lambda: echo(b"during", timeout=TIMEOUT))
        return new, outcome(slow.result)


@pytest.mark.parametrize("server", SERVERS)
def test_new_call_during_shutdown_is_not_internal(tmp_path: Path, server: Server) -> None:
    """A new call on the open channel is refused retry-safely (grpcio retries it, and gets
    UNAVAILABLE once the server is gone), and the slow call in flight completes."""
    with started(tmp_path, server, *SHUTDOWN) as (port, process):
        new, in_flight = grpc_call_during_shutdown(port, process)
        exit_code = stopped(process)
    assert not new.startswith("INTERNAL"), new
    assert new == "ok" or new.startswith("UNAVAILABLE"), new
    assert in_flight == "ok"
    assert exit_code == 0
    assert_repaired(tmp_path, server, "graceful_shutdown")


def new_stream_during_shutdown(
    port: int, process: subprocess.Popen[bytes]
) -> tuple[int, int, Frames]:
    """A slow call in flight, SIGTERM, then a new stream on the same connection: their ids,
    and the frames the server sent until both had ended (or the connection closed)."""
    client = H2Client(port)
    try:
        reader = FrameReader(client)
        slow = client.start("/test.Test/Slow", frame(SLOW))
        reader.ping(TIMEOUT)  # answered only once the server has handled the request
        process.send_signal(signal.SIGTERM)
        wait_until_not_listening(port)
        new = client.start("/test.Test/Echo", frame(b"during"))

        def both_ended(received: Frames) -> bool:
            reset = any(f.stream_id == new for f in received.of("RstStream"))
            return received.ended(slow) and (reset or received.ended(new))

        return slow, new, reader.read_until(both_ended, TIMEOUT)
    finally:
        client.close()


@pytest.mark.parametrize("server", SERVERS)
def test_new_stream_during_shutdown_is_refused(tmp_path: Path, server: Server) -> None:
    with started(tmp_path, server, *SHUTDOWN) as (port, process):
        slow, new, received = new_stream_during_shutdown(port, process)
        exit_code = stopped(process)
    resets = [f.error_code for f in received.of("RstStream") if f.stream_id == new]
    assert resets == [h2.errors.ErrorCodes.REFUSED_STREAM], received
    assert (grpc_status(received, slow), messages(received, slow)) == (b"0", [b"slow"])
    assert exit_code == 0
    assert_repaired(tmp_path, server, "graceful_shutdown")


# --- controls: the tests above can fail ------------------------------------------------


def test_without_max_requests_calls_past_the_limit_are_lost(tmp_path: Path) -> None:
    """Every other fix applied: from request LIMIT + 1 on the server closes h2 at once, with a
    GOAWAY that names the last stream it received, and no call on the connection ever ends
    (the slow ones, of half a second, would have within the second this waits after the GOAWAY)."""
    extra = ["--without", "max_requests", "--keep-alive-max-requests", str(LIMIT)]
    with running_server(tmp_path, extra=extra, fix=True) as (port, _):
        slow, quick, received = requests_across_the_limit(port, linger=1)
    goaways = received.of("GoAway")
    assert goaways, received
    assert all(slow[-1] < g.last_stream_id < MAX_STREAM_ID for g in goaways), goaways
    assert not any(received.ended(s) for s in slow + quick), received


def test_without_max_requests_grpc_calls_fail(tmp_path: Path) -> None:
    with running_server(tmp_path, extra=["--without", "max_requests"], fix=True) as (port, _):
        outcomes = echo_calls(port)
    assert outcomes["ok"] < CALLS, outcomes


def test_without_graceful_shutdown_a_new_call_fails_with_internal(tmp_path: Path) -> None:
    extra = ["--without", "graceful_shutdown", *SHUTDOWN]
    with running_server(tmp_path, extra=extra, fix=True) as (port, process):
        new, in_flight = grpc_call_during_shutdown(port, process)
        assert stopped(process) == 0
    assert new.startswith("INTERNAL"), new
    assert "error code 0" in new, new
    assert in_flight == "ok"


def test_without_graceful_shutdown_the_new_stream_is_reset_with_no_error(tmp_path: Path) -> None:
    extra = ["--without", "graceful_shutdown", *SHUTDOWN]
    with running_server(tmp_path, extra=extra, fix=True) as (port, process):
        _, new, received = new_stream_during_shutdown(port, process)
        assert stopped(process) == 0
    resets = [f.error_code for f in received.of("RstStream") if f.stream_id == new]
    assert resets == [h2.errors.ErrorCodes.NO_ERROR], received
