"""The conformance service of the test gRPC app: each call says what it wants back.

As the Connect conformance suite's reference server does, one handler serves every RPC
shape (unary, server, client and bidi streaming) and the client describes the response
it expects. Here the description travels in the request header `conformance-spec`
(JSON), so that the request messages stay pure payload (empty, huge, or none at all):

    {"read": "all",          # the whole request first (default); "first": answer after the
                             # first message, leaving the rest unread; "echo": ping-pong,
                             # each request message sent back as soon as it has arrived
     "headers": [[name, value], ...],   # extra response headers ("-bin" values in base64)
     "responses": [step, ...],  # N: a message of N bytes of `pattern`; "echo": every request
                                # message back; "summary": what arrived, as JSON;
                                # {"sleep": s}: wait s seconds (ends the call when the
                                # client resets the stream meanwhile, as a real server does)
     "status": 0, "message": "text", "details": "<base64>",   # grpc-status-details-bin
     "trailers": [[name, value], ...],
     "trailers_only": "start"}  # or "trailers": the status in the response headers, no body

Request headers named x-conformance-* come back in the response headers and trailers.
"""

from __future__ import annotations

import hashlib
import json
import struct
from typing import Any, Callable

import anyio

Scope = dict[str, Any]
Message = dict[str, Any]

PATH_PREFIX = "/conformance.Conformance/"
SPEC_HEADER = b"conformance-spec"
ECHOED_PREFIX = b"x-conformance-"
PATTERN = bytes(range(251))  # a prime length: a shifted or truncated message shows


def pattern(size: int) -> bytes:
    return (PATTERN * (size // len(PATTERN) + 1))[:size]


def summary(messages: list[bytes]) -> bytes:
    """What the server received, for the client to compare with what it sent."""
    digest = hashlib.sha256(b"".join(messages)).hexdigest()
    return json.dumps(
        {"messages": len(messages), "bytes": sum(map(len, messages)), "sha256": digest}
    ).encode()


def percent_encoded(text: str) -> bytes:
    """grpc-message as the gRPC spec encodes it: UTF-8, then %XX outside printable ASCII."""
    return b"".join(
        bytes([byte]) if 0x20 <= byte <= 0x7E and byte != 0x25 else b"%%%02X" % byte
        for byte in text.encode()
    )


class RequestMessages:
    """Length-prefixed messages parsed from the request body as it arrives."""

    def __init__(self, receive: Callable[[], Any]) -> None:
        self._receive = receive
        self._buffer = bytearray()
        self.ended = False
        self.disconnected = False

    async def next(self) -> bytes | None:
        """The next whole message, or None at the end of the body (or a reset)."""
        while True:
            if len(self._buffer) >= 5:
                (length,) = struct.unpack(">I", self._buffer[1:5])
                if len(self._buffer) >= 5 + length:
                    message = bytes(self._buffer[5 : 5 + length])
                    del self._buffer[: 5 + length]
                    return message
            if self.ended:
                return None
            await self._take(await self._receive())

    async def reset_within(self, seconds: float) -> bool:
        """Wait `seconds`; True as soon as the client resets the stream instead."""
        with anyio.move_on_after(seconds):
            while not self.disconnected:
                await self._take(await self._receive())
        return self.disconnected

    async def _take(self, event: Message) -> None:
        if event["type"] == "http.disconnect":
            self.ended = self.disconnected = True
            return
        self._buffer += event.get("body", b"")
        if not event.get("more_body", False):
            self.ended = True


def _frame(payload: bytes) -> bytes:
    return struct.pack(">?I", False, len(payload)) + payload


def _headers(pairs: list[list[str]]) -> list[tuple[bytes, bytes]]:
    return [(name.encode(), value.encode()) for name, value in pairs]


def _status(spec: dict[str, Any]) -> list[tuple[bytes, bytes]]:
    status = [(b"grpc-status", b"%d" % spec.get("status", 0))]
    if "message" in spec:
        status.append((b"grpc-message", percent_encoded(spec["message"])))
    if "details" in spec:
        status.append((b"grpc-status-details-bin", spec["details"].encode()))
    return status


async def serve(scope: Scope, receive: Callable[[], Any], send: Callable[[Message], Any]) -> None:
    headers = dict(scope["headers"])
    spec: dict[str, Any] = json.loads(headers.get(SPEC_HEADER, b"{}"))
    echoed = [(name, value) for name, value in scope["headers"] if name.startswith(ECHOED_PREFIX)]
    requests = RequestMessages(receive)
    received: list[bytes] = []
    read = spec.get("read", "all")
    if read in ("all", "first"):
        while (message := await requests.next()) is not None:
            received.append(message)
            if read == "first":
                break
        if requests.disconnected:
            return
    response_headers = [
        (b"content-type", b"application/grpc"),
        *_headers(spec.get("headers", [])),
        *echoed,
    ]
    if spec.get("trailers_only"):
        # gRPC's Trailers-Only: the status in the one HEADERS block, and no body. ASGI has
        # no message for it; "start" is the portable try, "trailers" Hypercorn's own way
        # (trailers before any http.response.start are sent as the response headers).
        status = [*response_headers, *_status(spec), *_headers(spec.get("trailers", []))]
        if spec["trailers_only"] == "trailers":
            await send({"type": "http.response.trailers", "headers": status})
            return
        await send({"type": "http.response.start", "status": 200, "headers": status})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    start = {"type": "http.response.start", "status": 200, "trailers": True}
    await send({**start, "headers": response_headers})

    async def respond(payload: bytes) -> None:
        await send({"type": "http.response.body", "body": _frame(payload), "more_body": True})

    if read == "echo":
        while (message := await requests.next()) is not None:
            received.append(message)
            await respond(message)
        if requests.disconnected:
            return
    for step in spec.get("responses", []):
        if isinstance(step, dict):
            if await requests.reset_within(step["sleep"]):
                return
        elif step == "echo":
            for message in received:
                await respond(message)
        elif step == "summary":
            await respond(summary(received))
        else:
            await respond(pattern(step))
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    trailers = [*_status(spec), *_headers(spec.get("trailers", [])), *echoed]
    await send({"type": "http.response.trailers", "headers": trailers, "more_trailers": False})
