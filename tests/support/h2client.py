"""A small HTTP/2 client on the h2 library that records every event it receives."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.settings

from .grpc_app import frame


@dataclass
class Response:
    #: Event kinds in arrival order: "headers", "data", "trailers", "end", "reset".
    events: list[str] = field(default_factory=list)
    headers: dict[bytes, bytes] = field(default_factory=dict)
    trailers: dict[bytes, bytes] = field(default_factory=dict)
    #: True when END_STREAM came on the trailers HEADERS frame itself.
    trailers_ended_stream: bool = False
    body: bytes = b""

    @property
    def done(self) -> bool:
        return "end" in self.events or "reset" in self.events


class H2Client:
    """Prior-knowledge h2c with a small flow-control window the client opens slowly."""

    def __init__(self, port: int, window: int = 4096, timeout: float = 20) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window}
        )
        self.conn.initiate_connection()
        self.sock.sendall(self.conn.data_to_send())
        self.responses: dict[int, Response] = {}

    def close(self) -> None:
        self.conn.close_connection()
        self.sock.sendall(self.conn.data_to_send())
        self.sock.close()

    def start(self, method: str, message: bytes) -> int:
        stream_id: int = self.conn.get_next_available_stream_id()
        headers = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":authority", b"127.0.0.1"),
            (b":path", f"/test.Test/{method}".encode()),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ]
        self.conn.send_headers(stream_id, headers)
        self.conn.send_data(stream_id, frame(message), end_stream=True)
        self.sock.sendall(self.conn.data_to_send())
        self.responses[stream_id] = Response()
        return stream_id

    def wait(self, *stream_ids: int) -> list[Response]:
        while not all(self.responses[s].done for s in stream_ids):
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("server closed the connection")
            for event in self.conn.receive_data(data):
                self._record(event)
            self.sock.sendall(self.conn.data_to_send())
        return [self.responses[s] for s in stream_ids]

    def call(self, method: str, message: bytes) -> Response:
        [response] = self.wait(self.start(method, message))
        return response

    def _record(self, event: h2.events.Event) -> None:
        response = self.responses.get(getattr(event, "stream_id", 0) or 0)
        if response is None:
            return
        if isinstance(event, h2.events.ResponseReceived):
            response.events.append("headers")
            response.headers = dict(event.headers or [])
        elif isinstance(event, h2.events.DataReceived):
            response.events.append("data")
            response.body += event.data or b""
            # Open the window only as data is consumed: keeps it small throughout.
            self.conn.acknowledge_received_data(event.flow_controlled_length or 0, event.stream_id)
        elif isinstance(event, h2.events.TrailersReceived):
            response.events.append("trailers")
            response.trailers = dict(event.headers or [])
            response.trailers_ended_stream = event.stream_ended is not None
        elif isinstance(event, h2.events.StreamEnded):
            response.events.append("end")
        elif isinstance(event, h2.events.StreamReset):
            response.events.append("reset")
