"""The frames a repaired server sends, read by the h2 library with small windows."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from h2fix._probe import H2Client, Response
from support.grpc_app import frame, unframe
from support.servers import serving
from support.versions import needs_anycorn

pytestmark = pytest.mark.server


@pytest.fixture(
    scope="module",
    params=[
        pytest.param(("hypercorn", "asyncio"), id="hypercorn-asyncio"),
        pytest.param(("hypercorn", "trio"), id="hypercorn-trio"),
        pytest.param(("anycorn", "asyncio"), id="anycorn-asyncio", marks=needs_anycorn),
    ],
)
def port(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    target, worker_class = request.param
    with serving(tmp_path_factory.mktemp("server"), target, worker_class) as port:
        yield port


@pytest.fixture
def client(port: int) -> Iterator[H2Client]:
    client = H2Client(port, window=1024)
    yield client
    client.close()


def assert_well_formed(response: Response) -> None:
    """HEADERS, DATA..., HEADERS(END_STREAM): trailers last, END_STREAM on them."""
    assert re.fullmatch(r"headers( data)* trailers end", " ".join(response.events)), response
    assert response.trailers_ended_stream
    assert response.headers[b":status"] == b"200"


@pytest.mark.parametrize("size", [0, 10, 100_000], ids=["empty", "small", "100KB"])
def test_trailers_come_last_with_end_stream(client: H2Client, size: int) -> None:
    response = client.call("/test.Test/Big", frame(str(size).encode()))
    assert_well_formed(response)
    assert response.trailers[b"grpc-status"] == b"0"
    assert unframe(response.body) == [b"x" * size]


def test_stream_of_messages(client: H2Client) -> None:
    response = client.call("/test.Test/Stream", frame(b"50"))
    assert_well_formed(response)
    assert unframe(response.body) == [str(i).encode() for i in range(50)]


def test_hpack_stays_in_sync_across_responses(client: H2Client) -> None:
    # Each response's header blocks refer to the dynamic table the previous one left.
    for i in range(5):
        response = client.call("/test.Test/Metadata", frame(b"m%d" % i))
        assert_well_formed(response)
        assert response.trailers[b"x-served-by"] == b"h2fix-tests"


def test_concurrent_streams_each_well_formed(client: H2Client) -> None:
    streams = [client.start("/test.Test/Big", frame(b"20000")) for _ in range(10)]
    for response in client.wait(*streams):
        assert_well_formed(response)
        assert unframe(response.body) == [b"x" * 20000]
