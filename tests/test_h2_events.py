"""The request_received fix, proven on the paths that build RequestReceived themselves:
the HTTP/1.1 `Upgrade: h2c` path (real curl) and server push (the h2 library as client)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from support.clients import curl_h2c, pushed_responses
from support.servers import serving

pytestmark = pytest.mark.server


@pytest.mark.parametrize("worker_class", ["asyncio", "trio"])
def test_curl_h2c_upgrade_gets_its_response(tmp_path: Path, worker_class: str) -> None:
    with serving(tmp_path, "hypercorn", worker_class) as port:
        result = curl_h2c(port)
    assert (result.returncode, result.stdout) == (0, "hello HTTP/2"), result.stderr


def test_curl_h2c_upgrade_fails_on_stock_server_with_this_h2(tmp_path: Path) -> None:
    """Control: stock 0.17.3 with h2 >= 4.3 fails the upgrade, so the test above can fail."""
    with serving(tmp_path, "hypercorn", fix=False) as port:
        result = curl_h2c(port)
    # The connection dies without a response. curl words it by when it notices: 18 (transfer
    # closed with data outstanding), or 55 (send failure: broken pipe) if it was still sending.
    assert result.returncode != 0, result
    assert "hello" not in result.stdout, result
    log = next(tmp_path.glob("server-*.log")).read_text()
    # 0.17.3 builds `h2.events.RequestReceived()` with no arguments; h2 >= 4.3 requires its
    # stream_id. Python words the TypeError by version ("keyword-only" from 3.10, where h2's
    # events are keyword-only dataclasses, "positional" on 3.9): match the fault, not the words.
    assert "RequestReceived()" in log
    assert re.search(r"TypeError: .*missing 1 required [a-z-]+ argument: 'stream_id'", log), log


@pytest.mark.parametrize(
    ("target", "worker_class"), [("hypercorn", "asyncio"), ("hypercorn", "trio")]
)
def test_server_push_is_received(tmp_path: Path, target: str, worker_class: str) -> None:
    with serving(tmp_path, target, worker_class) as port:
        response, pushed = pushed_responses(port)
    assert (response.headers[b":status"], response.body) == (b"200", b"pushed")
    assert (pushed.headers[b":status"], pushed.body) == (b"200", b"hello")
