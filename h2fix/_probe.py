"""`h2fix verify`: serve a probe app with the installed server and read its frames.

The probe app answers gRPC-style (a message, then trailers) and has a few paths
for the other faults. `verify` serves it as installed and repaired through
h2fix's launcher, runs one check per row (each on a connection of its own) with
the h2 library as the client, and hands the results to `_verdict`. The client
and the serving helpers are shared with the tests.
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
from typing import Any, BinaryIO, Callable, TextIO, Union

from ._errors import H2FixError

BODY_SIZE = 100_000  # well beyond the probe's flow-control window: DATA waits buffered
WINDOW = 4096
_FRAME_HEADER = 9  # bytes: length (3), type, flags, stream id (4)
_GOAWAY = 0x7
#: A GOAWAY with this last stream id refuses no stream: "open no new ones".
_ANY_STREAM = 2**31 - 1
#: Responses on one connection: past the 1001 send states that end an unfixed one.
MANY = 1050
#: Streams open at once: the most the probe's server allows (100), less one. Fewer
#: let the send task keep up, and then trailer responses release their state.
IN_FLIGHT = 99


async def lifespan(receive: Callable[[], Any], send: Callable[..., Any]) -> None:
    """Answer an ASGI lifespan scope: start-up, then shutdown."""
    while True:
        if (await receive())["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        else:
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: dict[str, Any], receive: Callable[[], Any], send: Callable[..., Any]) -> None:
    """A gRPC-style response (a large message, then trailers) to any other path."""
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    if scope["path"] == "/small":
        await small_response(receive, send)
        return
    if scope["path"] == "/wait":
        # Headers, then nothing until the client gives up (a gRPC deadline or
        # cancel): the stream is reset with an empty send buffer.
        await send({"type": "http.response.start", "status": 200, "headers": []})
        # Older servers send the headers with the first body message only.
        await send({"type": "http.response.body", "body": b"", "more_body": True})
        while (await receive())["type"] != "http.disconnect":
            pass
        # Still busy when the client has gone, as a handler past its deadline is:
        # the response never completes. (Nothing more arrives: this waits until
        # the server shuts down.)
        await receive()
        return
    if scope["path"] == "/plain":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    if scope["path"] == "/hold":
        # Answered once the whole request body is in: the client decides how long
        # the stream stays in flight.
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
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


async def small_response(receive: Callable[[], Any], send: Callable[..., Any]) -> None:
    """A few bytes, then trailers: many of these on one connection stay quick."""
    while (await receive()).get("more_body"):
        pass
    start = {"type": "http.response.start", "status": 200, "trailers": True}
    await send({**start, "headers": [(b"content-type", b"application/grpc")]})
    await send({"type": "http.response.body", "body": b"\x00\x00\x00\x00\x02ok"})
    await send({"type": "http.response.trailers", "headers": [(b"grpc-status", b"0")]})


@dataclass
class Response:
    #: Event kinds in arrival order: "headers", "data", "trailers", "end", "reset".
    events: list[str] = field(default_factory=list)
    headers: dict[bytes, bytes] = field(default_factory=dict)
    trailers: dict[bytes, bytes] = field(default_factory=dict)
    #: END_STREAM came on the trailers' HEADERS frame itself.
    trailers_ended_stream: bool = False
    body: bytes = b""
    #: The RST_STREAM error code, when the server reset the stream.
    reset_code: int | None = None

    @property
    def done(self) -> bool:
        return "end" in self.events or "reset" in self.events

    @property
    def data_after_trailers(self) -> bool:
        return "trailers" in self.events and "data" in self.events[self.events.index("trailers") :]


class H2Client:
    """h2c over a socket, with a small window opened only as data is read.

    Prior knowledge, or with `upgrade_path` an HTTP/1.1 GET of that path with
    `Upgrade: h2c` (RFC 7540 section 3.2), whose response comes on stream 1.
    """

    def __init__(
        self,
        port: int,
        window: int = WINDOW,
        timeout: float = 20,
        *,
        upgrade_path: str | None = None,
    ) -> None:
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
        self.responses: dict[int, Response] = {}
        #: parent stream id -> ids of the streams the server pushed with it
        self.pushed: dict[int, list[int]] = {}
        #: (last stream id, error code) of each GOAWAY the server sent, in order.
        self.goaways: list[tuple[int, int]] = []
        self._unparsed = b""
        try:
            if upgrade_path is None:
                self.conn.initiate_connection()
            else:
                self._upgrade(upgrade_path)
            self.sock.sendall(self.conn.data_to_send())
        except BaseException:
            self.sock.close()  # no client to close it: the caller gets only the error
            raise

    def _upgrade(self, path: str) -> None:
        settings = self.conn.initiate_upgrade_connection() or b""
        request = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
            f"HTTP2-Settings: {settings.decode()}\r\n\r\n"
        )
        self.sock.sendall(request.encode())
        received = b""
        while b"\r\n\r\n" not in received:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the server closed the connection before answering")
            received += data
        head, _, rest = received.partition(b"\r\n\r\n")
        status = head.split(b"\r\n")[0].decode("latin-1")
        if status.split()[1:2] != ["101"]:
            raise ConnectionError(f"expected 101 Switching Protocols, got {status!r}")
        self.responses[1] = Response()  # the upgraded request itself
        self._feed(rest)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.close_connection()
            self.sock.sendall(self.conn.data_to_send())
        self.sock.close()

    def start(self, path: str, body: bytes, grpc: bool = True) -> int:
        stream_id = self._open(path, grpc)
        self.conn.send_data(stream_id, body, end_stream=True)
        self.send()
        return stream_id

    def wait(self, *stream_ids: int) -> list[Response]:
        while not all(self.responses[s].done for s in stream_ids):
            self.receive()
        return [self.responses[s] for s in stream_ids]

    def receive(self) -> None:
        """Read once (waiting up to the timeout) and record what arrived."""
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        self._feed(data)
        self.sock.sendall(self.conn.data_to_send())

    def _feed(self, data: bytes) -> None:
        """Hand the received frames to h2, except GOAWAY, which is only recorded.

        h2 moves a connection that receives GOAWAY to CLOSED and then refuses the
        frames of the streams the server still finishes (RFC 9113 section 6.8 lets
        it): this client must read those responses to tell whether they arrive.
        """
        self._unparsed += data
        passed = bytearray()
        while len(self._unparsed) >= _FRAME_HEADER:
            length = int.from_bytes(self._unparsed[:3], "big")
            end = _FRAME_HEADER + length
            if len(self._unparsed) < end:
                break
            frame, self._unparsed = self._unparsed[:end], self._unparsed[end:]
            if frame[3] == _GOAWAY and length >= 8:
                # The frames before it first: what was answered when it came is then recorded.
                self._pass_to_h2(bytes(passed))
                passed = bytearray()
                last = int.from_bytes(frame[9:13], "big") & 0x7FFF_FFFF
                self._goaway_received(last, int.from_bytes(frame[13:17], "big"))
            else:
                passed += frame
        self._pass_to_h2(bytes(passed))

    def _pass_to_h2(self, frames: bytes) -> None:
        for event in self.conn.receive_data(frames):
            self._record(event)

    def _goaway_received(self, last_stream_id: int, error_code: int) -> None:
        """Record a GOAWAY; a subclass may also note what had happened by then."""
        self.goaways.append((last_stream_id, error_code))

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
            self._feed(data)
            self.sock.sendall(self.conn.data_to_send())

    def send(self) -> None:
        """Send what the h2 connection has queued (after using `conn` directly)."""
        self.sock.sendall(self.conn.data_to_send())

    def start_open(self, path: str, grpc: bool = False) -> int:
        """A request whose body the client has not ended: the stream stays in flight."""
        stream_id = self._open(path, grpc)
        self.send()
        return stream_id

    def _open(self, path: str, grpc: bool) -> int:
        """Queue a request's HEADERS (without END_STREAM) on a new stream."""
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
        self.responses[stream_id] = Response()
        return stream_id

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
            response.reset_code = int(event.error_code or 0)


# --- serving -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _shown(command: Sequence[str]) -> str:
    # Without the bootstrap code of `python -c`: its lines say nothing here.
    return " ".join(part for part in command if "\n" not in part)


class ServerExitedError(H2FixError, RuntimeError):
    def __init__(self, command: Sequence[str], port: int, code: int, stderr: str) -> None:
        self.command, self.port, self.code = list(command), port, code
        super().__init__(
            f"expected the server to listen on 127.0.0.1:{port}, but it exited with code "
            f"{code} first ({_shown(command)}): {stderr.strip()[-2000:] or 'no output'}"
        )


class ServerTimeoutError(H2FixError, TimeoutError):
    def __init__(self, command: Sequence[str], port: int, timeout: float) -> None:
        self.command, self.port, self.timeout = list(command), port, timeout
        super().__init__(
            f"expected the server to listen on 127.0.0.1:{port} within {timeout:g}s, "
            f"found nothing listening ({_shown(command)})"
        )


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
                raise ServerExitedError(command, port, process.returncode, error)
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if time.monotonic() > deadline:
                raise ServerTimeoutError(command, port, timeout)
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


#: Runs the stock server's `__main__` as `python -m` would, but with sys.path[0]
#: set as for the repaired one (h2fix._launch.command does the same): both columns
#: import the same code, whatever directory verify runs in.
STOCK_BOOTSTRAP = """\
import sys
path0 = sys.argv.pop(1)
if not getattr(sys.flags, "safe_path", False):
    sys.path[0] = path0
sys.argv[0] = sys.argv.pop(1)
import runpy
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def path0() -> str:
    """This process's first import location, so the servers see what status() saw."""
    if getattr(sys.flags, "safe_path", False) or not sys.path:
        return os.path.dirname(sys.executable)  # where a console script would start
    return sys.path[0]


def server_command(
    target: str, server_args: Sequence[str], fixes: Sequence[str] | None
) -> list[str]:
    """The stock server (`fixes` None) or the one repaired with `fixes` (never empty)."""
    if fixes is None:
        return [sys.executable, "-c", STOCK_BOOTSTRAP, path0(), target, *server_args]
    from ._launch import command  # not at import: the probe app's workers need none of it

    return command(path0(), target, fixes, server_args)


# --- verify --------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One row of `h2fix verify`: what is measured, and the fix for its fault."""

    label: str
    fix: str
    #: The probe's responses end with trailers: meaningless on a server without them.
    needs_trailers: bool


TRAILERS_RECEIVED = Check("trailers received", "trailers", True)
TRAILERS_END_STREAM = Check("END_STREAM on the trailers", "trailers", True)
NO_DATA_AFTER = Check("no DATA after the trailers", "trailers", True)
HPACK_IN_SYNC = Check("HPACK in sync (2nd request)", "trailers", True)
MANY_ON_ONE = Check(f"{MANY:,} trailer responses on 1 conn.", "send_state", True)
MANY_RESETS = Check(f"{MANY:,} reset streams on 1 conn.", "send_state", False)
H2C_UPGRADE = Check("h2c Upgrade answered on stream 1", "request_received", False)
LATE_DATA = Check("late request DATA survived", "closed_stream_data", False)
PAST_THE_LIMIT = Check("requests at the per-conn. limit answered", "max_requests", False)
REFUSED_IN_SHUTDOWN = Check("request in shutdown refused, retryable", "graceful_shutdown", False)
CHECKS = (
    TRAILERS_RECEIVED,
    TRAILERS_END_STREAM,
    NO_DATA_AFTER,
    HPACK_IN_SYNC,
    MANY_ON_ONE,
    MANY_RESETS,
    H2C_UPGRADE,
    LATE_DATA,
    PAST_THE_LIMIT,
    REFUSED_IN_SHUTDOWN,
)

#: Row label -> passed, failed, or None where the check could not tell.
Results = Mapping[str, Union[bool, None]]
#: A check run on a server of its own: given its port and process id.
Probe = Callable[[int, int], "dict[str, bool | None]"]


def probe(port: int, pid: int) -> dict[str, bool | None]:
    """Every check but MANY_ON_ONE, each fault on a connection of its own so one
    cannot spoil another."""
    results = trailer_checks(port)
    results[H2C_UPGRADE.label] = h2c_upgrade_answered(port)
    results[LATE_DATA.label] = survives_late_data(port)
    # Last: on an unfixed server it ends with the connection broken.
    results[MANY_RESETS.label] = survives_many_resets(port)
    return results


def many_on_one(port: int, pid: int) -> dict[str, bool | None]:
    return {MANY_ON_ONE.label: many_trailer_responses(port)}


def past_the_limit(port: int, pid: int) -> dict[str, bool | None]:
    return {PAST_THE_LIMIT.label: answered_past_the_limit(port)}


def in_shutdown(port: int, pid: int) -> dict[str, bool | None]:
    return {REFUSED_IN_SHUTDOWN.label: refused_in_shutdown(port, pid)}


def trailer_checks(port: int) -> dict[str, bool | None]:
    """Two requests on one connection, each a large message then trailers."""
    labels = (TRAILERS_RECEIVED, TRAILERS_END_STREAM, NO_DATA_AFTER, HPACK_IN_SYNC)
    results: dict[str, bool | None] = {check.label: False for check in labels}
    client = H2Client(port, timeout=10)
    try:
        first = client.call("/probe", b"")
        got = "trailers" in first.events
        results[TRAILERS_RECEIVED.label] = got and first.trailers.get(b"grpc-status") == b"0"
        results[TRAILERS_END_STREAM.label] = first.trailers_ended_stream
        results[NO_DATA_AFTER.label] = (not first.data_after_trailers) if got else None
        second = client.call("/probe", b"")
        results[HPACK_IN_SYNC.label] = "trailers" in second.events
    except Exception:
        pass  # the connection broke: what was not recorded failed
    finally:
        client.close()
    return results


def many_trailer_responses(port: int, count: int = MANY, in_flight: int = IN_FLIGHT) -> bool:
    """`count` small responses ending with trailers, `in_flight` at a time, on one
    connection. New streams keep arriving while earlier ones end, which is when an
    unfixed server keeps every finished stream's send state (1001 kill the connection)."""
    client = H2Client(port, timeout=10)
    try:
        running: set[int] = set()
        started = completed = 0
        while completed < count:
            while started < count and len(running) < in_flight:
                running.add(client.start("/small", b""))
                started += 1
            client.receive()
            for stream_id in [s for s in running if client.responses[s].done]:
                running.discard(stream_id)
                response = client.responses.pop(stream_id)
                if not response.trailers_ended_stream or "reset" in response.events:
                    return False
                completed += 1
        return True
    except Exception:
        return False
    finally:
        client.close()


def survives_many_resets(port: int, count: int = MANY, batch: int = IN_FLIGHT) -> bool:
    """`count` requests the client resets after their response headers, `batch` at a
    time, on one connection; a request after them must still complete. The reset
    streams' send buffers are empty: an unfixed server keeps their send state for
    the life of the connection, and the 1001st kills it."""
    import h2.errors

    client = H2Client(port, timeout=5)
    try:
        for first in range(0, count, batch):
            started = [client.start("/wait", b"", grpc=False) for _ in range(first, count)[:batch]]
            while not all(client.responses[s].events for s in started):
                client.receive()
            for stream_id in started:
                client.conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
                del client.responses[stream_id]
            client.send()
        return client.call("/plain", b"", grpc=False).body == b"ok"
    except Exception:
        return False
    finally:
        client.close()


def h2c_upgrade_answered(port: int) -> bool:
    """An HTTP/1.1 request asking to upgrade to h2c: `101 Switching Protocols`, then
    its response on stream 1 (the server builds a RequestReceived event for it)."""
    try:
        client = H2Client(port, timeout=5, upgrade_path="/plain")
    except Exception:
        return False
    try:
        [response] = client.wait(1)
        return response.headers.get(b":status") == b"200" and response.body == b"ok"
    except Exception:
        return False
    finally:
        client.close()


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


def answered_past_the_limit(port: int) -> bool:
    """LIMIT + 3 requests sent at once on one connection, so that the server passes
    its keep_alive_max_requests with requests still in flight: every one the server
    took must be answered. (An unfixed server closes h2 at the limit, and they are lost.)

    A request above the last stream id of a closing GOAWAY was not processed (RFC 9113
    section 6.8) and a client retries it elsewhere: that one may go unanswered."""
    client = H2Client(port, timeout=5)
    try:
        started = [client.start("/plain", b"", grpc=False) for _ in range(LIMIT + 3)]
        with contextlib.suppress(OSError):  # closed, or nothing more came
            client.wait(*started)
        closing = [last for last, _ in client.goaways if last < _ANY_STREAM]
        for stream_id in started:
            response = client.responses[stream_id]
            answered = response.body == b"ok" and "end" in response.events
            if not answered and not (closing and stream_id > min(closing)):
                return False
        return True
    except Exception:
        return False
    finally:
        client.close()


def refused_in_shutdown(port: int, pid: int) -> bool:
    """A request that arrives while the server shuts down gracefully is reset with
    REFUSED_STREAM, which tells the client it was not processed and is safe to retry
    (NO_ERROR says neither: gRPC fails the call with INTERNAL). A stream held open
    keeps the connection busy, so the server does not close it as idle first."""
    import h2.errors

    client = H2Client(port, timeout=5)
    try:
        client.start_open("/hold")
        client.call("/plain", b"", grpc=False)  # the server has taken in the held stream
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while True:
            # Until the server has begun shutting down, a request is still answered.
            response = client.call("/plain", b"", grpc=False)
            if "reset" in response.events or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        return response.reset_code == h2.errors.ErrorCodes.REFUSED_STREAM
    except Exception:
        return False
    finally:
        client.close()


#: Hypercorn closes an HTTP/2 connection after keep_alive_max_requests (1000)
#: requests, which would end MANY_ON_ONE early on any server.
CONFIG = "keep_alive_max_requests = 100000\n"
#: Under the asyncio worker the send task usually gets back to a finished stream
#: between requests from one client; under trio it falls behind (as it does under
#: real load), so the unreleased send state shows within 1,050 responses. An
#: unfixed trio server dies of it: MANY_ON_ONE gets a server of its own.
TRIO_CONFIG = CONFIG + 'worker_class = "trio"\n'
#: PAST_THE_LIMIT's server: a limit its client passes with a few requests.
LIMIT = 10
LIMIT_CONFIG = f"keep_alive_max_requests = {LIMIT}\n"


@dataclass(frozen=True)
class Configs:
    """The servers' configuration files, in a temporary directory verify removes."""

    default: str
    #: None when trio is not installed: MANY_ON_ONE then runs on the default worker.
    trio: str | None
    limited: str

    @classmethod
    @contextlib.contextmanager
    def written(cls) -> Iterator[Configs]:
        import importlib.util
        import tempfile

        with tempfile.TemporaryDirectory(prefix="h2fix-verify-") as folder:
            paths = []
            configs = (("default", CONFIG), ("trio", TRIO_CONFIG), ("limited", LIMIT_CONFIG))
            for name, text in configs:
                paths.append(os.path.join(folder, f"{name}.toml"))
                with open(paths[-1], "w", encoding="utf-8") as file:
                    file.write(text)
            has_trio = importlib.util.find_spec("trio") is not None
            yield cls(paths[0], paths[1] if has_trio else None, paths[2])


def measure(target: str, fixes: Sequence[str] | None, configs: Configs) -> dict[str, bool | None]:
    """Serve the probe app (stock when `fixes` is None) and run every check on it."""

    def serve(config: str, check: Probe) -> None:
        port = free_port()
        server_args = ["h2fix._probe:app", "--bind", f"127.0.0.1:{port}", "--config", config]
        with serving(server_command(target, server_args, fixes), port) as process:
            results.update(check(port, process.pid))

    results: dict[str, bool | None] = {}
    serve(configs.default, probe)
    serve(configs.trio or configs.default, many_on_one)
    serve(configs.limited, past_the_limit)
    serve(configs.default, in_shutdown)  # last: this one stops its server
    return results


def verify(target: str, out: TextIO) -> int:
    """Measure the server as installed and as h2fix repairs it; print rows and a verdict."""
    from ._runtime import status
    from ._verdict import render, usable_fixes

    report = status(target)
    fixes = usable_fixes(report)
    with Configs.written() as configs:
        stock = measure(target, None, configs)
        repaired = measure(target, fixes, configs) if fixes else None
    lines, code = render(report, stock, repaired)
    print("\n".join(lines), file=out)
    return code
