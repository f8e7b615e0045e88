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

    def __init__(
        self, function: str, expected_file: str, found: str, *, in_place: bool = False
    ) -> None:
        self.function = function
        self.expected_file = expected_file
        self.found = found
        #: True when the function object is h2fix's but its __code__ was swapped
        #: (patchy and similar tools patch that way).
        self.in_place = in_place
        if in_place:
            message = (
                f"expected {function} to run the code h2fix installed from {expected_file}, "
                f"found its __code__ replaced in place by {found}: something else patched it "
                f"after h2fix; remove that patch first"
            )
        else:
            message = (
                f"expected {function} to be the one defined in {expected_file}, "
                f"found {found}: something else already replaced it; "
                f"remove the other patch or apply h2fix before it"
            )
        super().__init__(message)


class DeadCodeChangedError(H2FixError):
    """A fix rewrote a definition the running class does not use (shadowed or in an
    untaken branch), so patching would not repair what runs."""

    def __init__(
        self, fix: str, function: str, path: str, live_line: int, changed_lines: Sequence[int]
    ) -> None:
        self.fix = fix
        self.function = function
        self.path = path
        self.live_line = live_line
        self.changed_lines = tuple(changed_lines)
        lines = ", ".join(str(line) for line in self.changed_lines)
        super().__init__(
            f"fix {fix!r} refused in {function}: expected it to change the definition the "
            f"running class uses ({path}:{live_line}), but it changed the definition(s) at "
            f"line {lines}, which the running code does not use (dead or shadowed); "
            f"nothing was changed"
        )


class UnreachablePatchError(H2FixError):
    """The class the server serves would not run the function h2fix puts in."""

    def __init__(self, served: str, function: str, found: str) -> None:
        self.served = served
        self.function = function
        self.found = found
        super().__init__(
            f"expected {served}, the class the server uses, to run {function} "
            f"once patched, but {found}; nothing was changed"
        )


class ModuleReloadedError(H2FixError):
    """The target module was reloaded (importlib.reload): two classes of one name exist."""

    def __init__(self, module: str, cls: str, served: str, *, after_apply: bool) -> None:
        self.module = module
        self.cls = cls
        self.served = served
        self.after_apply = after_apply
        if after_apply:
            found = (
                f"{module} was reloaded after h2fix patched it: {served} still serves the "
                f"class h2fix patched, but {module}.{cls} is now a new, unpatched class"
            )
        else:
            found = (
                f"{module} was reloaded after {served} was imported: the server uses the "
                f"class from the first import, not {module}.{cls}, so patching the latter "
                f"would repair nothing"
            )
        super().__init__(
            f"expected {served} to be {module}.{cls}, but {found}; nothing was changed; "
            f"restart the process instead of reloading the server's modules"
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


_FrozenRecordError: type[H2FixError] | None = None


def frozen_record_error(cls: str, field: str, found: str) -> AttributeError:
    """What assigning to (or deleting) a field of an h2fix result raises.

    An H2FixError and, as when these results were frozen dataclasses,
    a dataclasses.FrozenInstanceError (an AttributeError). The class is made on
    first use because `dataclasses` takes milliseconds to import.
    """
    global _FrozenRecordError
    if _FrozenRecordError is None:
        import dataclasses

        class FrozenRecordError(H2FixError, dataclasses.FrozenInstanceError):
            """A field of an immutable h2fix value was assigned to or deleted."""

        FrozenRecordError.__module__ = __name__
        FrozenRecordError.__qualname__ = FrozenRecordError.__name__
        _FrozenRecordError = FrozenRecordError
    error = _FrozenRecordError(
        f"cannot assign to field {field!r}: expected {cls} to stay as it was made "
        f"(it is immutable: make a new one instead), found {found}"
    )
    assert isinstance(error, AttributeError)
    return error
