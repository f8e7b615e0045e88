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


#: What to do about an installed target's unreadable source.
REINSTALL_ADVICE = "reinstall the package from a wheel or sdist that ships .py files"


class SourceUnavailableError(H2FixError):
    """The target's Python source cannot be read (bytecode only, unreadable, ...)."""

    def __init__(
        self,
        module: str | None,
        path: str | None,
        reason: str,
        advice: str | None = REINSTALL_ADVICE,
    ) -> None:
        #: None for a file the user named rather than an installed target's module.
        self.module = module
        self.path = path
        self.reason = reason
        # A file the user named is not a package: advice to reinstall one would mislead.
        self.advice = advice
        what = f"the Python source of {module}" if module else "Python source"
        super().__init__(
            f"expected {what} at {path or '(no file)'}, but {reason}"
            + (f"; {advice}" if advice else "")
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

    def __init__(self, module: str | None, path: str) -> None:
        #: None for a file the user named rather than an installed target's module.
        self.module = module
        self.path = path
        if module is None:
            super().__init__(
                f"expected {path} to be an HTTP/2 protocol module like Hypercorn's "
                "protocol/h2.py, but none of h2fix's fixes recognise anything in it; "
                "name the server's protocol/h2.py (or a copy of it)"
            )
        else:
            super().__init__(
                f"expected {module} ({path}) to be an HTTP/2 protocol module like Hypercorn's, "
                "but none of h2fix's fixes recognise anything in it; check that the installed "
                "package is the genuine one (pip install --force-reinstall it)"
            )


class DependencyMissingError(H2FixError, ImportError):
    """The server is installed but cannot be imported: a module it needs is missing.

    Also an `ImportError`, like `TargetNotFoundError`, but it does not claim the
    server is missing: reinstalling the server would not necessarily help.
    """

    def __init__(self, target: str, module: str, missing: str, reason: str) -> None:
        self.target = target
        self.module = module
        self.missing = missing
        self.reason = reason
        super().__init__(
            f"expected {module} to import, but a module it needs, {missing!r}, cannot be "
            f"imported ({reason}); install the package that provides {missing!r} "
            f"(or reinstall {target} with its dependencies: pip install {target})",
            name=missing,
        )


class InvalidSourceError(H2FixError):
    """The source text is not something h2fix hands to LibCST: it does not parse, is
    far larger or deeper than a protocol module, or exhausted the interpreter."""

    def __init__(self, expected: str, found: str, where: str | None = None) -> None:
        self.expected = expected
        self.found = found
        #: The file, when the source came from one.
        self.where = where
        prefix = f"{where}: " if where else ""
        super().__init__(f"{prefix}expected {expected}, found {found}")


class FixFailedError(H2FixError):
    """A fix raised an exception h2fix did not plan for: a bug in h2fix, reported as one."""

    def __init__(self, fix: str, error: BaseException) -> None:
        self.fix = fix
        self.error = error
        super().__init__(
            f"fix {fix!r} was expected to rewrite or refuse this code, but it failed with "
            f"{type(error).__name__}: {error}; nothing was changed for it. This is a bug in "
            "h2fix: please report it with the file"
        )


class ArgumentTypeError(H2FixError, TypeError):
    """An argument of h2fix's API has the wrong type (also a `TypeError`)."""

    def __init__(self, argument: str, expected: str, value: object, hint: str = "") -> None:
        self.argument = argument
        self.expected = expected
        self.value = value
        found = f"{type(value).__name__} {_short_repr(value)}"
        super().__init__(
            f"{argument}: expected {expected}, found {found}" + (f"; {hint}" if hint else "")
        )


def _short_repr(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class NoFixSelectedError(H2FixError, ValueError):
    """An empty list of fixes: almost certainly a mistake, so it is not a silent no-op."""

    def __init__(self, known: Sequence[str]) -> None:
        self.known = tuple(known)
        super().__init__(
            "no fixes selected: expected at least one of "
            f"{', '.join(self.known)}, or None for all of them"
        )
