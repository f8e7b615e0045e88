"""A real grpcio client against a real Hypercorn / anycorn repaired by h2fix."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from support.servers import serving
from support.versions import needs_anycorn

pytestmark = pytest.mark.server

TIMEOUT = 20

SERVERS = {
    "hypercorn-asyncio": ("hypercorn", "asyncio", "apply"),
    "hypercorn-trio": ("hypercorn", "trio", "apply"),
    "anycorn-asyncio": ("anycorn", "asyncio", "apply"),
    "run-hypercorn-asyncio-2-workers": ("hypercorn", "asyncio", "run"),
    "run-hypercorn-trio-2-workers": ("hypercorn", "trio", "run"),
    "run-anycorn-asyncio-2-workers": ("anycorn", "asyncio", "run"),
    "vendored-hypercorn": ("hypercorn", "asyncio", "vendored"),
}


@pytest.fixture(
    scope="module",
    params=[
        pytest.param(server, id=name, marks=needs_anycorn if server[0] == "anycorn" else ())
        for name, server in SERVERS.items()
    ],
)
def channel(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[grpc.Channel]:
    target, worker_class, mode = request.param
    with (
        serving(tmp_path_factory.mktemp("server"), target, worker_class, mode) as port,
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        yield channel


def unary(channel: grpc.Channel, method: str) -> grpc.UnaryUnaryMultiCallable:
    return channel.unary_unary(f"/test.Test/{method}")


def test_unary_echo(channel: grpc.Channel) -> None:
    assert unary(channel, "Echo")(b"hello", timeout=TIMEOUT) == b"hello"


def test_response_beyond_flow_control_window(channel: grpc.Channel) -> None:
    size = 3 * 1024 * 1024  # the default windows are 64 KiB: most of it waits buffered
    assert unary(channel, "Big")(str(size).encode(), timeout=TIMEOUT) == b"x" * size


def test_server_stream_of_50(channel: grpc.Channel) -> None:
    stream = channel.unary_stream("/test.Test/Stream")
    assert list(stream(b"50", timeout=TIMEOUT)) == [str(i).encode() for i in range(50)]


def test_empty_server_stream(channel: grpc.Channel) -> None:
    call = channel.unary_stream("/test.Test/Stream")(b"0", timeout=TIMEOUT)
    assert list(call) == []
    assert call.code() is grpc.StatusCode.OK


def test_error_status_with_message(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        unary(channel, "Fail")(b"", timeout=TIMEOUT)
    error = caught.value
    assert isinstance(error, grpc.Call)
    assert error.code() is grpc.StatusCode.NOT_FOUND
    assert error.details() == "no such thing"


def test_custom_trailing_metadata(channel: grpc.Channel) -> None:
    response, call = unary(channel, "Metadata").with_call(b"meta", timeout=TIMEOUT)
    assert response == b"meta"
    trailing = dict(call.trailing_metadata())
    assert trailing["x-served-by"] == "h2fix-tests"
    assert trailing["x-count"] == "42"


def test_200_concurrent_calls_then_one_more(channel: grpc.Channel) -> None:
    echo = unary(channel, "Echo")
    futures = [echo.future(b"call %d" % i, timeout=TIMEOUT) for i in range(200)]
    assert [f.result() for f in futures] == [b"call %d" % i for i in range(200)]
    assert echo(b"after", timeout=TIMEOUT) == b"after"


def test_unpatched_server_fails_as_measured(tmp_path: Path) -> None:
    """Control: the same client against stock 0.17.3 fails, so the tests above can fail."""
    with (
        serving(tmp_path, fix=False) as port,
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        with pytest.raises(grpc.RpcError) as caught:
            unary(channel, "Echo")(b"hello", timeout=TIMEOUT)
        error = caught.value
        assert isinstance(error, grpc.Call)
        assert error.code() is grpc.StatusCode.UNKNOWN
        # The stream ended without trailers, so without a grpc-status. grpcio 1.85 words it
        # "Stream removed (Data frame with END_STREAM flag received)", 1.80 (the last for
        # Python 3.9) just "Stream removed": assert what both say.
        assert (error.details() or "").startswith("Stream removed"), error.details()


@pytest.mark.parametrize("target", ["hypercorn", pytest.param("anycorn", marks=needs_anycorn)])
def test_run_repairs_every_spawned_worker(tmp_path: Path, target: str) -> None:
    """Separate connections until both workers have answered; every call succeeds.

    Bounded by time, not by a count of connections: the port answers as soon as the
    first worker listens, and on a busy machine the second may take seconds more to
    start (100 quick connections were once all answered before it did)."""
    pids = set()
    connections = 0
    with serving(tmp_path, target, mode="run") as port:
        deadline = time.monotonic() + 60
        while len(pids) < 2 and time.monotonic() < deadline:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                response, call = unary(channel, "Metadata").with_call(b"x", timeout=TIMEOUT)
            assert response == b"x"
            pids.add(dict(call.trailing_metadata())["x-pid"])
            connections += 1
    assert len(pids) == 2, f"only worker(s) {pids} answered {connections} connections in 60 s"
