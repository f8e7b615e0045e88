"""Which server command `h2fix run` accepts, and how the launcher must start it.

Only this interpreter's own server is run: h2fix runs the server as a module of
the interpreter it runs in, so another environment's `hypercorn` would silently
be replaced by this one's (other version, other libraries).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import PurePath

from ._errors import H2FixError
from ._targets import TARGETS

_EXAMPLE = "e.g. h2fix run -- hypercorn app:app"
_PYTHON = re.compile(r"python(\d+(\.\d+)*)?")
# pip's console script for long paths or spaces: `'''exec' "/path/python" "$0" "$@"`.
_SHELL_EXEC = re.compile(r"""'''exec' ("[^"]+"|\S+) "\$0" "\$@"$""")


class RunRefusedError(H2FixError):
    """`h2fix run` was given a command it will not run."""


@dataclass(frozen=True)
class ServerCommand:
    target: str
    #: What sys.path[0] would be under the command as given: a console script's
    #: directory, or the working directory for `python -m`.
    path0: str
    arguments: list[str]


def parse(command: list[str]) -> ServerCommand:
    """The server command in `command` (after `--`), or RunRefusedError saying why not."""
    if not command:
        raise RunRefusedError(
            f"expected a server command (hypercorn or anycorn), found nothing; {_EXAMPLE}"
        )
    name = PurePath(command[0]).name
    if _PYTHON.fullmatch(name) and command[1:2] == ["-m"]:
        module = command[2] if len(command) > 2 else "(nothing)"
        if module not in TARGETS:
            raise RunRefusedError(
                "expected python -m hypercorn or python -m anycorn, "
                f"found python -m {module}; {_EXAMPLE}"
            )
        _expect_this_interpreter(command[0], _resolve(command[0]), module)
        return ServerCommand(module, os.getcwd(), command[3:])
    if name not in TARGETS:
        raise RunRefusedError(
            "expected a server command (hypercorn or anycorn, or python -m either), found "
            f"{name}: h2fix repairs only the HTTP/2 code of those two servers, {name} is not "
            f"affected by the faults it fixes; run {name} without h2fix ({_EXAMPLE})"
        )
    executable = _resolve(command[0])
    if executable is None:
        # Not on PATH: this interpreter's copy, from where its console script would be.
        return ServerCommand(name, os.path.dirname(sys.executable), command[1:])
    _expect_this_interpreter(command[0], _script_interpreter(executable), name)
    # Python puts a script's directory first, with symbolic links resolved.
    return ServerCommand(name, os.path.dirname(os.path.realpath(executable)), command[1:])


def _resolve(program: str) -> str | None:
    if os.sep in program:
        return program if os.path.exists(program) else None
    return shutil.which(program)


def _script_interpreter(script: str) -> str | None:
    """The interpreter a console script names in its first lines, or None."""
    try:
        with open(script, "rb") as file:
            head = file.read(4096).decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    if not head or not head[0].startswith("#!"):
        return None
    program, _, rest = head[0][2:].strip().partition(" ")
    if program in ("/bin/sh", "/usr/bin/sh"):
        for line in head[1:4]:
            found = _SHELL_EXEC.match(line.strip())
            if found:
                return found.group(1).strip('"')
        return None
    if PurePath(program).name == "env":  # #!/usr/bin/env python3
        words = rest.split()
        return _resolve(words[0]) if words else None
    return program


def _expect_this_interpreter(given: str, interpreter: str | None, server: str) -> None:
    this = sys.executable
    if interpreter is not None and _same_interpreter(interpreter, this):
        return
    runs = f"which runs {interpreter}" if interpreter else "whose Python h2fix cannot tell"
    raise RunRefusedError(
        f"expected {server} of this interpreter's environment ({this}), found {given}, {runs}; "
        f"h2fix runs servers with its own interpreter only: use the h2fix installed beside "
        f"that {server} (its python -m h2fix run -- {server} ...)"
    )


def _same_interpreter(candidate: str, this: str) -> bool:
    """Same directory and the same program: a virtualenv's python is a link to the base
    interpreter, so the file alone does not tell environments apart."""
    candidate = os.path.abspath(candidate)
    if os.path.dirname(candidate) != os.path.dirname(os.path.abspath(this)):
        return False
    try:
        return os.path.samefile(candidate, this)
    except OSError:
        return False
