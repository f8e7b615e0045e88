"""Serve the test gRPC app with a real Hypercorn or anycorn, optionally repaired by h2fix.

python -m support.serve --target hypercorn --worker-class trio --port 8000 --fix
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys

import h2fix

from .grpc_app import app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", default="hypercorn", choices=["hypercorn", "anycorn"])
    parser.add_argument("--worker-class", default="asyncio", choices=["asyncio", "trio"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--fix", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    if args.fix:
        print(h2fix.apply(args.target), file=sys.stderr, flush=True)
    bind = [f"127.0.0.1:{args.port}"]
    if args.target == "hypercorn":
        from hypercorn.config import Config

        config = Config()
        config.bind = bind
        if args.worker_class == "trio":
            import trio
            from hypercorn.trio import serve as trio_serve

            trio.run(functools.partial(trio_serve, app, config))
        else:
            from hypercorn.asyncio import serve

            asyncio.run(serve(app, config))  # type: ignore[arg-type]
    else:
        import anycorn
        import anyio

        config = anycorn.Config()
        config.bind = bind
        anyio.run(anycorn.serve, app, config, backend=args.worker_class)


if __name__ == "__main__":
    main()
