"""The process behind `h2fix run`: the server's own command line, repaired first.

Run as `python -m h2fix._launch hypercorn app:app [options]`. Hypercorn and
anycorn start every worker with multiprocessing's "spawn", which imports the
parent's main module in the child under the name `__mp_main__` before the
worker function runs. This module is that main module, so each worker applies
the fix before it serves: no change to the user's code, any number of workers.
"""

from __future__ import annotations

import importlib
import os
import sys

# Passed to spawned workers through their inherited environment.
TARGET_VARIABLE = "H2FIX_RUN_TARGET"
FIXES_VARIABLE = "H2FIX_RUN_FIXES"


def _apply_from_environment() -> None:
    from ._runtime import apply

    fixes = os.environ.get(FIXES_VARIABLE)
    apply(os.environ[TARGET_VARIABLE], fixes.split(",") if fixes else None)


def main(argv: list[str]) -> int:
    from ._errors import H2FixError

    target, *server_args = argv
    os.environ[TARGET_VARIABLE] = target
    try:
        _apply_from_environment()
    except H2FixError as error:
        print(f"h2fix: error: {error}", file=sys.stderr)
        return 2
    server_main = importlib.import_module(f"{target}.__main__").main
    sys.argv = [target, *server_args]
    # Hypercorn's main() returns the exit code; anycorn's (click) raises SystemExit.
    return int(server_main() or 0)


if __name__ == "__mp_main__":  # a worker being spawned: repair it before it serves
    _apply_from_environment()
elif __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
