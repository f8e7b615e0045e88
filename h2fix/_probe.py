"""`h2fix verify`: serve a gRPC-style app with the installed server and read its frames.

Runs the server twice, as installed and through `h2fix run`, and checks what
an HTTP/2 client (the h2 library) receives from each.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, TextIO

BODY_SIZE = 100_000  # well beyond the probe's flow-control window: DATA waits buffered
WINDOW = 4096


async def lifespan(receive: Callable[[], Any], send: Callable[..., Any]) -> None:
    """Answer an ASGI lifespan scope: start-up, then shutdown."""
    while True:
        if (await receive())["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        else:
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: dict[str, Any], receive: Callable[[], Any], send: Callable[..., Any]) -> None:
    """One gRPC-style response to any request: a large message, then trailers."""
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    if scope["path"] == "/early":
        # Answered before the body is read, as a size limit or an auth check would.
        await send({"type": "http.response.start", "status": 413, "headers": []})
        await send({"type": "http.response.body", "body": b"too large"})
        return
    while (await receive()).get("more_body"):
        pass
    start = {"type": "http.response.start", "status": 200, "trailers": True}
    await send({**start, "headers": [(b"content-type", b"application/grpc")]})
    message = b"\x00" + BODY_SIZE.to_bytes(4, "big") + b"x" * BODY_SIZE
    await send({"type": "http.response.body", "body": message})
    trailers = [(b"grpc-status", b"0"), (b"grpc-message", b"OK")]
    await send({"type": "http.response.trailers", "headers": trailers})


@dataclass
class Response:
    #: Event kinds in arrival order: "headers", "data", "trailers", "end", "reset".
    events: list[str] = field(default_factory=list)
    headers: dict[bytes, bytes] = field(default_factory=dict)
    trailers: dict[bytes, bytes] = field(default_factory=dict)
    #: END_STREAM came on the trailers' HEADERS frame itself.
    trailers_ended_stream: bool = False
    body: bytes = b""

    @property
    def done(self) -> bool:
        return "end" in self.events or "reset" in self.events

    @property
    def data_after_trailers(self) -> bool:
        return "trailers" in self.events and "data" in self.events[self.events.index("trailers") :]


class H2Client:
    """Prior-knowledge h2c over a socket, with a small window opened only as data is read."""

    def __init__(self, port: int, window: int = WINDOW, timeout: float = 20) -> None:
        import h2.config
        import h2.connection
        import h2.settings

        self.timeout = timeout
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window}
        )
        self.conn.initiate_connection()
        self.sock.sendall(self.conn.data_to_send())
        self.responses: dict[int, Response] = {}
        #: parent stream id -> ids of the streams the server pushed with it
        self.pushed: dict[int, list[int]] = {}

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.close_connection()
            self.sock.sendall(self.conn.data_to_send())
        self.sock.close()

    def start(self, path: str, body: bytes, grpc: bool = True) -> int:
        stream_id: int = self.conn.get_next_available_stream_id()
        headers = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":authority", b"127.0.0.1"),
            (b":path", path.encode()),
        ]
        if grpc:
            headers += [(b"content-type", b"application/grpc"), (b"te", b"trailers")]
        self.conn.send_headers(stream_id, headers)
        self.conn.send_data(stream_id, body, end_stream=True)
        self.sock.sendall(self.conn.data_to_send())
        self.responses[stream_id] = Response()
        return stream_id

    def wait(self, *stream_ids: int) -> list[Response]:
        while not all(self.responses[s].done for s in stream_ids):
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the server closed the connection")
            for event in self.conn.receive_data(data):
                self._record(event)
            self.sock.sendall(self.conn.data_to_send())
        return [self.responses[s] for s in stream_ids]

    def pump(self, seconds: float) -> None:
        """Read and record whatever arrives for `seconds`, completing nothing in particular."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                break
            finally:
                self.sock.settimeout(self.timeout)
            if not data:
                raise ConnectionError("the server closed the connection")
            for event in self.conn.receive_data(data):
                self._record(event)
            self.sock.sendall(self.conn.data_to_send())

    def send(self) -> None:
        """Send what the h2 connection has queued (after using `conn` directly)."""
        self.sock.sendall(self.conn.data_to_send())

    def call(self, path: str, body: bytes, grpc: bool = True) -> Response:
        [response] = self.wait(self.start(path, body, grpc))
        return response

    def _record(self, event: Any) -> None:
        import h2.events

        if isinstance(event, h2.events.PushedStreamReceived):
            pushed = event.pushed_stream_id or 0
            self.pushed.setdefault(event.parent_stream_id or 0, []).append(pushed)
            self.responses[pushed] = Response()
            return
        response = self.responses.get(getattr(event, "stream_id", 0) or 0)
        if response is None:
            return
        if isinstance(event, h2.events.ResponseReceived):
            response.events.append("headers")
            response.headers = dict(event.headers or [])
        elif isinstance(event, h2.events.DataReceived):
            response.events.append("data")
            response.body += event.data or b""
            self.conn.acknowledge_received_data(event.flow_controlled_length or 0, event.stream_id)
        elif isinstance(event, h2.events.TrailersReceived):
            response.events.append("trailers")
            response.trailers = dict(event.headers or [])
            response.trailers_ended_stream = event.stream_ended is not None
        elif isinstance(event, h2.events.StreamEnded):
            response.events.append("end")
        elif isinstance(event, h2.events.StreamReset):
            response.events.append("reset")


# --- serving -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def serving(
    command: Sequence[str],
    port: int,
    *,
    log: BinaryIO | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 30,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a server command in its own process group until the block ends.

    Its output goes to `log`, or is kept to explain an early exit.
    """
    process = subprocess.Popen(
        command,
        stdout=log or subprocess.DEVNULL,
        stderr=log or subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                error = process.stderr.read().decode() if process.stderr else "(see its log)"
                raise RuntimeError(f"{command[2:4]} exited early: {error.strip()[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listened on 127.0.0.1:{port} in {timeout}s")
            time.sleep(0.05)
        yield process
    finally:
        # Stopped by its own process id; the group takes the workers it spawned too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        if process.stderr:
            process.stderr.close()


def server_command(target: str, port: int, fixed: bool, app: str = "h2fix._probe:app") -> list[str]:
    serve = ["-m", "h2fix._launch", target] if fixed else ["-m", target]
    return [sys.executable, *serve, app, "--bind", f"127.0.0.1:{port}"]


# --- verify --------------------------------------------------------------------

CHECKS = (
    "trailers received",
    "END_STREAM on the trailers",
    "no DATA after the trailers",
    "HPACK in sync (2nd request)",
    "late request DATA survived",
)


def probe(port: int) -> dict[str, bool | None]:
    """Two requests on one connection; None where a check does not apply."""
    results: dict[str, bool | None] = dict.fromkeys(CHECKS, False)
    client = H2Client(port, timeout=10)
    try:
        first = client.call("/probe", b"")
        got = "trailers" in first.events
        results[CHECKS[0]] = got and first.trailers.get(b"grpc-status") == b"0"
        results[CHECKS[1]] = first.trailers_ended_stream
        results[CHECKS[2]] = (not first.data_after_trailers) if got else None
        second = client.call("/probe", b"")
        results[CHECKS[3]] = "trailers" in second.events
    except Exception:
        pass
    finally:
        client.close()
    results[CHECKS[4]] = survives_late_data(port)
    return results


def survives_late_data(port: int) -> bool:
    """On a new connection: the client sends body DATA for a request the server has
    already answered (RFC 9113 allows it); a request after it must still complete."""
    client = H2Client(port, timeout=5)
    try:
        stream_id: int = client.conn.get_next_available_stream_id()
        headers = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"127.0.0.1")]
        client.conn.send_headers(stream_id, [*headers, (b":path", b"/early")])
        client.send()
        client.responses[stream_id] = Response()
        client.wait(stream_id)
        client.conn.send_data(stream_id, b"x" * 1000, end_stream=True)
        client.send()
        return "end" in client.call("/probe", b"").events
    except Exception:
        return False
    finally:
        client.close()


def verify(target: str, out: TextIO) -> int:
    columns = {"without fix": False, "with h2fix": True}
    results = {}
    for label, fixed in columns.items():
        port = free_port()
        with serving(server_command(target, port, fixed), port):
            results[label] = probe(port)
    width = max(map(len, CHECKS)) + 2
    words = {True: "yes", False: "NO", None: "n/a"}
    header = f"{target + ':':<{width}}" + "".join(f"{c:<14}" for c in columns)
    print(header.rstrip(), file=out)
    for check in CHECKS:
        row = "".join(f"{words[results[label][check]]:<14}" for label in columns)
        print(f"{check:<{width}}{row}".rstrip(), file=out)
    fixed_ok = all(results["with h2fix"].values())
    verdict = "correct" if fixed_ok else "NOT correct"
    print(f"the server repaired by h2fix is {verdict}", file=out)
    return 0 if fixed_ok else 1
