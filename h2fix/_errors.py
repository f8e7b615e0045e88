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


class UnsafeLocationError(H2FixError):
    """A directory or file on the way to the cache could be changed by another user."""

    def __init__(self, path: str, expected: str, found: str) -> None:
        self.path = path
        self.expected = expected
        self.found = found
        super().__init__(f"{path}: expected {expected}, found {found}")


class CacheUnavailableError(H2FixError):
    """`h2fix warm` could not store the entry: the start-up cache is off or unusable."""

    def __init__(self, where: str) -> None:
        self.where = where
        super().__init__(
            f"expected a usable start-up cache to fill, found {where}; set H2FIX_CACHE_DIR "
            "to an absolute path of a directory only you can write to (the h2fix.cache "
            "warning says what was wrong)"
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
