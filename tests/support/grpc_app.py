"""A gRPC service written as a bare ASGI app: length-prefixed messages and trailers.

It speaks the gRPC wire format by hand so the tests need no generated code:
each request and response message is 1 flag byte, a 4-byte big-endian length
and the payload. Methods (all take one message):

    /test.Test/Echo      unary: returns the request
    /test.Test/Big       unary: returns int(request) bytes
    /test.Test/Stream    server stream: int(request) messages b"0", b"1", ...
    /test.Test/Fail      unary: NOT_FOUND with a grpc-message
    /test.Test/Metadata  unary: echoes, with custom trailing metadata (and the worker's pid)
    /test.Test/Slow      unary: answers after float(request) seconds, or not at all when the
                         client gives up first (a deadline or a cancel resets the stream)
    /test.Test/Early     client stream: PERMISSION_DENIED after the first chunk of the body

and, under /conformance.Conformance/, any shape the call describes (support.conformance_service),

and plain HTTP paths: /hello (b"hello" once the body is read), /push (pushes /hello,
then b"pushed") and /early (413 at once, before reading the body).
"""

from __future__ import annotations

import os
import struct
from typing import Any, Callable

import anyio

from h2fix._probe import lifespan

from . import conformance_service

Scope = dict[str, Any]
Message = dict[str, Any]

NOT_FOUND = 5
PERMISSION_DENIED = 7


def frame(payload: bytes) -> bytes:
    return struct.pack(">?I", False, len(payload)) + payload


def unframe(data: bytes) -> list[bytes]:
    messages = []
    while data:
        (length,) = struct.unpack(">I", data[1:5])
        messages.append(data[5 : 5 + length])
        data = data[5 + length :]
    return messages


def _handle(path: str, request: bytes) -> tuple[list[bytes], list[tuple[bytes, bytes]]]:
    ok = [(b"grpc-status", b"0")]
    if path in ("/test.Test/Echo", "/test.Test/Slow"):
        return [request], ok
    if path == "/test.Test/Big":
        return [b"x" * int(request)], ok
    if path == "/test.Test/Stream":
        return [str(i).encode() for i in range(int(request))], ok
    if path == "/test.Test/Fail":
        return [], [(b"grpc-status", b"%d" % NOT_FOUND), (b"grpc-message", b"no such thing")]
    if path == "/test.Test/Metadata":
        served_by = [(b"x-served-by", b"h2fix-tests"), (b"x-count", b"42")]
        return [request], [*ok, *served_by, (b"x-pid", b"%d" % os.getpid())]
    return [], [(b"grpc-status", b"12"), (b"grpc-message", b"unimplemented")]


async def app(scope: Scope, receive: Callable[[], Any], send: Callable[[Message], Any]) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    if scope["path"] in ("/hello", "/push"):
        await _plain(scope, receive, send)
        return
    if scope["path"].startswith(conformance_service.PATH_PREFIX):
        await conformance_service.serve(scope, receive, send)
        return
    if scope["path"] in ("/early", "/test.Test/Early"):
        await _early(scope, receive, send)
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    requests = unframe(body)
    if scope["path"] == "/test.Test/Slow":
        # As a real gRPC server does, the handler ends without a response when the client
        # resets the stream (Hypercorn then sends http.disconnect).
        with anyio.move_on_after(float(requests[0])):
            while (await receive())["type"] != "http.disconnect":
                pass
            return
        requests = [b"slow"]
    responses, trailers = _handle(scope["path"], requests[0] if requests else b"")
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/grpc")],
            "trailers": True,
        }
    )
    for payload in responses:
        await send({"type": "http.response.body", "body": frame(payload), "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    await send({"type": "http.response.trailers", "headers": trailers, "more_trailers": False})


async def _plain(scope: Scope, receive: Callable[[], Any], send: Callable[[Message], Any]) -> None:
    while (await receive()).get("more_body", False):
        pass
    if scope["path"] == "/push":
        assert "http.response.push" in scope["extensions"], "server push not offered"
        await send({"type": "http.response.push", "path": "/hello", "headers": []})
    start = {"type": "http.response.start", "status": 200}
    await send({**start, "headers": [(b"content-type", b"text/plain")]})
    body = b"hello" if scope["path"] == "/hello" else b"pushed"
    await send({"type": "http.response.body", "body": body})


async def _early(scope: Scope, receive: Callable[[], Any], send: Callable[[Message], Any]) -> None:
    """Answer before the whole request is read: the client may still be sending its body."""
    if scope["path"] == "/early":
        await send({"type": "http.response.start", "status": 413, "headers": []})
        await send({"type": "http.response.body", "body": b"too large"})
        return
    await receive()  # the first chunk: enough to judge the call by, in this story
    start = {"type": "http.response.start", "status": 200, "trailers": True}
    await send({**start, "headers": [(b"content-type", b"application/grpc")]})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    trailers = [(b"grpc-status", b"%d" % PERMISSION_DENIED), (b"grpc-message", b"denied early")]
    await send({"type": "http.response.trailers", "headers": trailers, "more_trailers": False})
