"""The process behind `h2fix run`: the server's own command line, repaired first.

    python -c BOOTSTRAP PATH0 [--fix NAME]... hypercorn app:app [options]
    python -m h2fix._launch [--fix NAME]... hypercorn app:app [options]

Hypercorn and anycorn start every worker with multiprocessing's "spawn", which
imports the parent's main module in the child under the name `__mp_main__`
before the worker function runs. This module is that main module, so each
worker applies the fix before it serves: no change to the user's code, any
number of workers.

`h2fix run` uses the first form. `python -m` (and `-c`) would put the working
directory first on sys.path before anything is imported, where a stray
`priority.py` or a planted `hypercorn/` would shadow the real ones; plain
`hypercorn` (a console script) has its own directory there instead. The
bootstrap sets sys.path[0] to what the server's own command would have had
(PATH0) before it imports anything, then runs this module with runpy so that
it is `__main__` with a module spec: spawn re-imports it by name in workers.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

#: "<pid of the launching process> <target> <fix,fix,...>" (no fixes: all of them).
#: The only way the settings reach spawned workers is their inherited environment,
#: so the launching process keeps it set while it lives (Hypercorn starts workers
#: again after a reload or a crash). A worker trusts it only when its parent set
#: it, and removes it before the app runs, so neither the app nor its children see it.
RUN_VARIABLE = "H2FIX_RUN"

BOOTSTRAP = """\
import sys
path0 = sys.argv.pop(1)
if not getattr(sys.flags, "safe_path", False):  # -P / PYTHONSAFEPATH: no entry at all
    sys.path[0] = path0
import runpy
runpy.run_module("h2fix._launch", run_name="__main__", alter_sys=True)
"""

#: Hypercorn's own error log format, so the line reads as part of the server's log.
_LOG_FORMAT = "%(asctime)s [%(process)d] [%(levelname)s] %(message)s"
_LOG_DATE_FORMAT = "[%Y-%m-%d %H:%M:%S %z]"


def command(
    path0: str, target: str, fixes: Sequence[str] | None, server_args: Sequence[str]
) -> list[str]:
    """The command line that runs `target` with `server_args`, repaired, in this interpreter."""
    fix_args = [arg for name in fixes or () for arg in ("--fix", name)]
    return [sys.executable, "-c", BOOTSTRAP, path0, *fix_args, target, *server_args]


def main(argv: list[str]) -> int:
    from ._errors import H2FixError

    fixes: list[str] = []
    while argv[:1] == ["--fix"] and len(argv) > 1:
        fixes.append(argv[1])
        argv = argv[2:]
    if not argv:
        print("h2fix: error: expected a server name (hypercorn or anycorn)", file=sys.stderr)
        return 2
    target, *server_args = argv
    os.environ[RUN_VARIABLE] = f"{os.getpid()} {target} {','.join(fixes)}"
    try:
        _apply(target, fixes or None)
    except H2FixError as error:
        print(f"h2fix: error: {error}", file=sys.stderr)
        return 2
    import importlib

    server_main = importlib.import_module(f"{target}.__main__").main
    sys.argv = [target, *server_args]
    # Hypercorn's main() returns the exit code; anycorn's (click) raises SystemExit.
    return int(server_main() or 0)


def _apply_in_worker() -> None:
    value = os.environ.pop(RUN_VARIABLE, None)
    if value is None:
        return  # a process the app spawned itself: not a server worker
    parent, target, fixes = [*value.split(" "), "", ""][:3]
    if parent != str(os.getppid()):
        return  # not set by this process's parent: left over from elsewhere
    from ._errors import H2FixError

    try:
        _apply(target, fixes.split(",") if fixes else None)
    except H2FixError as error:
        print(f"h2fix: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def _apply(target: str, fixes: list[str] | None) -> None:
    from ._runtime import apply

    _logger()  # so apply()'s one INFO line ("h2fix: repaired ...") reaches the server's log
    apply(target, fixes)


def _logger() -> logging.Logger:
    """The `h2fix` logger, writing to stderr like Hypercorn's error log unless the
    process has logging configured already (then that configuration decides)."""
    logger = logging.getLogger("h2fix")
    if not logger.hasHandlers():
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_LOG_FORMAT, _LOG_DATE_FORMAT))
        logger.addHandler(handler)
        logger.propagate = False  # a root handler added later must not print it twice
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)
    return logger


if __name__ == "__mp_main__":  # a worker being spawned: repair it before it serves
    _apply_in_worker()
elif __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
