"""The frames a server sends on an H2Client's connection, read one by one.

h2fix._probe.H2Client reads through an h2 client, which is right until a GOAWAY: h2 then
moves its connection to CLOSED and rejects the HEADERS and DATA that a graceful close
still sends for the streams in flight, exactly what the tests of a graceful close must
see. This reader parses the frames itself (hyperframe, and hpack for the header blocks),
so every frame is recorded in the order it came. Requests are still sent through the
client's h2 connection.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from typing import Callable

import hpack
import hyperframe.frame

from h2fix._probe import H2Client

HEADER_SIZE = 9
#: A GOAWAY with this last stream id refuses nothing: "stop opening streams" (RFC 9113 §6.8).
MAX_STREAM_ID = 2**31 - 1


@dataclass(frozen=True)
class Frame:
    kind: str  # hyperframe's class name without "Frame": "Headers", "Data", "GoAway", ...
    stream_id: int
    end_stream: bool = False
    headers: dict[bytes, bytes] = field(default_factory=dict)
    data: bytes = b""
    #: RST_STREAM and GOAWAY only
    error_code: int = 0
    #: GOAWAY only
    last_stream_id: int = 0


@dataclass
class Frames:
    """What arrived, in order, and whether the server closed the connection after it."""

    frames: list[Frame] = field(default_factory=list)
    closed: bool = False

    def of(self, kind: str) -> list[Frame]:
        return [f for f in self.frames if f.kind == kind]

    def ended(self, stream_id: int) -> bool:
        return any(f.end_stream and f.stream_id == stream_id for f in self.frames)

    def index_of_end(self, stream_id: int) -> int:
        return next(
            i for i, f in enumerate(self.frames) if f.end_stream and f.stream_id == stream_id
        )


class FrameReader:
    """Reads the server's frames from `client`'s socket from now on (the client's own h2
    connection sees none of them)."""

    def __init__(self, client: H2Client) -> None:
        self.client = client
        self.received = Frames()
        self._buffer = b""
        self._decoder = hpack.Decoder()

    def read_until(self, done: Callable[[Frames], bool], timeout: float) -> Frames:
        """Read until `done` holds or the server closes the connection; TimeoutError (saying
        what did arrive) if neither happens within `timeout` seconds."""
        if not self._read(done, timeout) and not self.received.closed:
            raise TimeoutError(f"waited {timeout:g}s; received {self.received.frames}")
        return self.received

    def read_for(self, seconds: float) -> Frames:
        """Read whatever arrives within `seconds` (less if the server closes the connection)."""
        self._read(lambda _: False, seconds)
        return self.received

    def _read(self, done: Callable[[Frames], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        sock = self.client.sock
        while not done(self.received):
            left = deadline - time.monotonic()
            if self.received.closed or left <= 0:
                return False
            sock.settimeout(left)
            try:
                data = sock.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:
                data = b""
            if not data:
                self.received.closed = True
            self._buffer += data
            self._parse()
        return True

    def ping(self, timeout: float) -> None:
        """A PING and its ACK: the server has handled every frame sent before it."""
        self.client.conn.ping(b"h2fix-pg")
        self.client.send()
        count = len(self.received.of("Ping"))
        self.read_until(lambda r: len(r.of("Ping")) > count, timeout)

    def _parse(self) -> None:
        while len(self._buffer) >= HEADER_SIZE:
            header = memoryview(self._buffer[:HEADER_SIZE])
            frame, length = hyperframe.frame.Frame.parse_frame_header(header)
            if len(self._buffer) < HEADER_SIZE + length:
                return
            frame.parse_body(memoryview(self._buffer[HEADER_SIZE : HEADER_SIZE + length]))
            self._buffer = self._buffer[HEADER_SIZE + length :]
            self.received.frames.append(self._recorded(frame))

    def _recorded(self, frame: hyperframe.frame.Frame) -> Frame:
        kind = type(frame).__name__.removesuffix("Frame")
        end_stream = "END_STREAM" in frame.flags
        if isinstance(frame, hyperframe.frame.HeadersFrame):
            # Small header blocks: the servers here never need CONTINUATION frames.
            headers = dict(self._decoder.decode(frame.data, raw=True))
            return Frame(kind, frame.stream_id, end_stream, headers=headers)
        if isinstance(frame, hyperframe.frame.DataFrame):
            return Frame(kind, frame.stream_id, end_stream, data=frame.data)
        if isinstance(frame, hyperframe.frame.RstStreamFrame):
            return Frame(kind, frame.stream_id, error_code=frame.error_code)
        if isinstance(frame, hyperframe.frame.GoAwayFrame):
            return Frame(kind, 0, error_code=frame.error_code, last_stream_id=frame.last_stream_id)
        if isinstance(frame, hyperframe.frame.PingFrame) and "ACK" not in frame.flags:
            return Frame("PingFromServer", 0)
        return Frame(kind, frame.stream_id)
