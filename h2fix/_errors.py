"""Every error h2fix raises on purpose derives from `H2FixError`.

Each message says what was expected and what was found, and where it helps,
what to do about it.
"""

from __future__ import annotations

from collections.abc import Sequence


class H2FixError(Exception):
    """Base class of every error h2fix raises on purpose."""


class UnknownTargetError(H2FixError, ValueError):
    def __init__(self, target: str, known: Sequence[str]) -> None:
        self.target = target
        self.known = tuple(known)
        super().__init__(f"unknown target {target!r}: expected one of {', '.join(self.known)}")


class UnknownFixError(H2FixError, ValueError):
    def __init__(self, fix: str, known: Sequence[str]) -> None:
        self.fix = fix
        self.known = tuple(known)
        super().__init__(f"unknown fix {fix!r}: expected one of {', '.join(self.known)}")


class TargetNotFoundError(H2FixError, ImportError):
    """The server package to repair is not installed (also an `ImportError`)."""

    def __init__(self, target: str, module: str, reason: str) -> None:
        self.target = target
        self.module = module
        self.reason = reason
        super().__init__(
            f"{target} is not installed: cannot import {module} ({reason}); pip install {target}",
            name=module,
        )


class SourceUnavailableError(H2FixError):
    """The target's Python source cannot be read (bytecode only, unreadable, ...)."""

    def __init__(self, module: str, path: str | None, reason: str) -> None:
        self.module = module
        self.path = path
        self.reason = reason
        super().__init__(
            f"expected the Python source of {module} at {path or '(no file)'}, "
            f"but {reason}; reinstall the package from a wheel or sdist that ships .py files"
        )


class SourceChangedError(H2FixError):
    """The source file on disk is not what the running process imported."""

    def __init__(self, module: str, path: str, function: str) -> None:
        self.module = module
        self.path = path
        self.function = function
        super().__init__(
            f"expected {path} to be the code {module} was imported from, but "
            f"{function} compiled from it differs from the running one: the file "
            f"changed since import; restart the process"
        )


class FunctionReplacedError(H2FixError):
    """Someone other than h2fix already replaced a function h2fix would patch."""

    def __init__(self, function: str, expected_file: str, found: str) -> None:
        self.function = function
        self.expected_file = expected_file
        self.found = found
        super().__init__(
            f"expected {function} to be the one defined in {expected_file}, "
            f"found {found}: something else already replaced it; "
            f"remove the other patch or apply h2fix before it"
        )


class UnrecognisedStructureError(H2FixError):
    """The code a fix must change does not have a shape the fix can trust."""

    def __init__(self, fix: str, where: str, expected: str, found: str) -> None:
        self.fix = fix
        self.where = where
        self.expected = expected
        self.found = found
        found_text = found if "\n" not in found else "\n" + _indent(found)
        super().__init__(
            f"fix {fix!r} refused in {where}: expected {expected}; found: {found_text}"
        )


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.strip("\n").splitlines())


class NotAProtocolError(H2FixError):
    """The target module holds none of the code any fix knows: not a Hypercorn-like protocol."""

    def __init__(self, module: str, path: str) -> None:
        self.module = module
        self.path = path
        super().__init__(
            f"expected {module} ({path}) to be an HTTP/2 protocol module like Hypercorn's, "
            "but none of h2fix's fixes recognise anything in it; check that the installed "
            "package is the genuine one (pip install --force-reinstall it)"
        )
