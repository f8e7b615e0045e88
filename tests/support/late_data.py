"""An h2 client's side of request DATA that arrives after the server has answered.

Shared by tests/test_closed_stream_data.py and the closed_stream_data drift corpus: open a
request without ending its body, let the server answer it in full (/early: 413 before the
body is read), then send the rest of the body as flow control allows.
"""

from __future__ import annotations

import time

from h2fix._probe import H2Client

WINDOW = 65_535  # h2's default receive window, per stream and for the connection


def send_body(client: H2Client, stream_id: int, data: bytes, deadline: float) -> None:
    """Send all of `data` and END_STREAM, as flow control allows: a window the server
    never reopens makes this raise TimeoutError (and a dropped connection, ConnectionError)."""
    while data:
        window = min(
            client.conn.local_flow_control_window(stream_id), client.conn.max_outbound_frame_size
        )
        if window > 0:
            client.conn.send_data(stream_id, data[:window])
            client.send()
            data = data[window:]
        elif time.monotonic() > deadline:
            raise TimeoutError(f"the server reopened no window: {len(data)} bytes left to send")
        else:
            client.pump(0.2)  # reads WINDOW_UPDATE frames
    client.conn.end_stream(stream_id)
    client.send()


def answered_early(client: H2Client) -> int:
    """A stream the server has answered in full (413) while its request body is still open."""
    stream_id = client.start_open("/early")
    [response] = client.wait(stream_id)
    assert "end" in response.events, response
    return stream_id
