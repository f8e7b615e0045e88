"""Serve the test gRPC app with a real Hypercorn or anycorn, optionally repaired by h2fix.

    python -m support.serve --target hypercorn --worker-class trio --port 8000 --fix

SIGTERM (or SIGINT) shuts the server down gracefully. For the reliability tests it can
also keep every H2Protocol it creates (--inspect) and answer /debug/protocols with
what is left in them, and toggle h2fix.apply()/revert() from threads while it serves
(--toggle N --toggle-threads T; /debug/toggle says when that is done).
"""

from __future__ import annotations

import argparse
import functools
import json
import signal
import sys
import threading
from typing import Any, Callable

import anyio

import h2fix
from h2fix.fixes import FIXES

from .grpc_app import Message, Scope, app

PROTOCOLS: list[Any] = []
TOGGLED = threading.Event()


async def until_signalled() -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            return


async def debug_app(
    scope: Scope, receive: Callable[[], Any], send: Callable[[Message], Any]
) -> None:
    if scope["type"] != "http" or not scope["path"].startswith("/debug/"):
        await app(scope, receive, send)
        return
    if scope["path"] == "/debug/protocols":
        data: Any = [
            {
                "closed": protocol.closed,
                "stream_buffers": len(protocol.stream_buffers),
                # The tree always holds its root, stream 0.
                "priority_streams": len(protocol.priority._streams) - 1,
            }
            for protocol in PROTOCOLS
        ]
    else:
        data = {"done": TOGGLED.is_set()}
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": json.dumps(data).encode()})


def track_protocols(target: str) -> None:
    module = __import__(f"{target}.protocol.h2", fromlist=["H2Protocol"])
    original_init = module.H2Protocol.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        PROTOCOLS.append(self)

    module.H2Protocol.__init__ = init


def toggle(target: str, cycles: int, threads: int) -> None:
    """apply()/revert() `cycles` times in all, from `threads` threads at once; then apply()."""

    def work(count: int) -> None:
        for _ in range(count):
            h2fix.apply(target)
            h2fix.revert(target)

    def run() -> None:
        workers = [threading.Thread(target=work, args=(cycles // threads,)) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        h2fix.apply(target)
        TOGGLED.set()

    threading.Thread(target=run, daemon=True).start()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", default="hypercorn", choices=["hypercorn", "anycorn"])
    parser.add_argument("--worker-class", default="asyncio", choices=["asyncio", "trio"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--fix", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--only-fix", action="append", help="apply only this fix (repeatable); all by default"
    )
    parser.add_argument(
        "--without", action="append", default=[], help="a fix to leave out (for controls)"
    )
    parser.add_argument("--inspect", action="store_true")
    parser.add_argument("--toggle", type=int, default=0)
    parser.add_argument("--toggle-threads", type=int, default=1)
    parser.add_argument(
        "--keep-alive-max-requests",
        type=int,
        help="the server's limit of requests per connection (1000 by default)",
    )
    parser.add_argument(
        "--graceful-timeout",
        type=float,
        help="seconds a graceful shutdown waits for the calls in flight (3 by default)",
    )
    args = parser.parse_args()
    if args.fix:
        fixes = args.only_fix or [fix.name for fix in FIXES if fix.name not in args.without]
        print(h2fix.apply(args.target, fixes=fixes), file=sys.stderr, flush=True)
    if args.inspect:
        track_protocols(args.target)
    if args.toggle:
        toggle(args.target, args.toggle, args.toggle_threads)
    bind = [f"127.0.0.1:{args.port}"]
    if args.target == "hypercorn":
        from hypercorn.config import Config

        config = Config()
        if args.worker_class == "trio":
            from hypercorn.trio import serve
        else:
            from hypercorn.asyncio import serve  # type: ignore[assignment]
    else:
        from anycorn import Config, serve  # type: ignore[assignment]

        config = Config()
    config.bind = bind
    if args.keep_alive_max_requests:
        config.keep_alive_max_requests = args.keep_alive_max_requests
    if args.graceful_timeout is not None:
        config.graceful_timeout = args.graceful_timeout
    anyio.run(
        functools.partial(serve, debug_app, config, shutdown_trigger=until_signalled),
        backend=args.worker_class,
    )


if __name__ == "__main__":
    main()
