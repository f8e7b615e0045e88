"""Real clients for the two paths that build h2's RequestReceived themselves: the HTTP/1.1
`Upgrade: h2c` path (curl) and server push (the h2 library as client)."""

from __future__ import annotations

import subprocess

from h2fix._probe import H2Client, Response
from support.tools import tool


def curl_h2c(port: int) -> subprocess.CompletedProcess[str]:
    """`curl --http2` of /hello over plain HTTP: an HTTP/1.1 request that upgrades to h2c."""
    return subprocess.run(
        [tool("curl", "curl"), "--http2", "-sS", "--max-time", "10", "-w", " HTTP/%{http_version}",
         f"http://127.0.0.1:{port}/hello"],
        capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip


def pushed_responses(port: int) -> tuple[Response, Response]:
    """GET /push (which pushes /hello): the response, and the one the server pushed."""
    client = H2Client(port)
    try:
        stream_id = client.start("/push", b"", grpc=False)
        [response] = client.wait(stream_id)
        [pushed_id] = client.pushed[stream_id]
        [pushed] = client.wait(pushed_id)
    finally:
        client.close()
    return response, pushed
