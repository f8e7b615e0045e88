"""Where the code to repair lives: the known servers, their module, version and source."""

from __future__ import annotations

import importlib.util
import os

from ._errors import SourceUnavailableError, TargetNotFoundError, UnknownTargetError
from ._record import Record, initialise


class Target(Record):
    """A server h2fix knows how to repair."""

    __slots__ = ("module", "name", "served_class")

    #: The distribution name, which is also the top-level package.
    name: str
    #: The module whose source the fixes rewrite.
    module: str
    #: The class the server really serves with, "package.module.Name": the package
    #: imports it from `module` at its own import, so this binding, not the one in
    #: `module`, is what runs (they differ after importlib.reload(module)).
    served_class: str

    def __init__(self, name: str, module: str, served_class: str) -> None:
        initialise(self, name, module, served_class)


TARGETS: dict[str, Target] = {
    target.name: target
    for target in (
        # hypercorn/protocol/__init__.py does `from .h2 import H2Protocol`.
        Target("hypercorn", "hypercorn.protocol.h2", "hypercorn.protocol.H2Protocol"),
        # The anyio fork keeps Hypercorn's layout under its own package name.
        Target("anycorn", "anycorn.protocol.h2", "anycorn.protocol.H2Protocol"),
    )
}


class Located(Record):
    """An installed target's module: where it is and what its source says."""

    __slots__ = ("file", "source", "target", "version")

    target: Target
    version: str
    file: str
    source: str

    def __init__(self, target: Target, version: str, file: str, source: str) -> None:
        initialise(self, target, version, file, source)

    @property
    def relative_file(self) -> str:
        """The file's path below its sys.path entry, e.g. hypercorn/protocol/h2.py."""
        from pathlib import PurePath  # deferred: not needed by apply()

        depth = self.target.module.count(".")
        return "/".join(PurePath(self.file).parts[-(depth + 1) :])


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise UnknownTargetError(name, list(TARGETS)) from None


def locate(name: str) -> Located:
    """Find an installed target's module without executing it."""
    target = get_target(name)
    try:
        # Imports the parent packages (hypercorn, hypercorn.protocol), not the module.
        spec = importlib.util.find_spec(target.module)
    except ImportError as error:
        raise TargetNotFoundError(target.name, target.module, str(error)) from error
    if spec is None:
        raise TargetNotFoundError(target.name, target.module, "no such module")
    origin = spec.origin
    if origin is None or not origin.endswith(".py"):
        raise SourceUnavailableError(
            target.module, origin, "only bytecode is installed, there is no .py file"
        )
    return Located(target, _version(target, origin), origin, read_source(target.module, origin))


def _version(target: Target, origin: str) -> str:
    """The installed version, from the wheel's `<name>-<version>.dist-info` directory
    beside the package when there is one (importlib.metadata costs ~10 ms to import)."""
    site = origin
    for _ in range(target.module.count(".") + 1):  # hypercorn/protocol/h2.py -> site
        site = os.path.dirname(site)
    prefix = f"{target.name}-"
    try:
        found = [
            name[len(prefix) : -len(".dist-info")]
            for name in os.listdir(site)
            if name.lower().startswith(prefix) and name.endswith(".dist-info")
        ]
    except OSError:
        found = []
    if len(found) == 1:
        return found[0]
    import importlib.metadata

    try:
        return importlib.metadata.version(target.name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def read_source(module: str, path: str) -> str:
    """A Python file's text, decoded as the interpreter would (encoding cookie, BOM)."""
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as error:
        raise SourceUnavailableError(
            module, path, f"it cannot be read ({error.strerror or error})"
        ) from error
    try:
        return importlib.util.decode_source(data)
    except (SyntaxError, UnicodeDecodeError) as error:
        raise SourceUnavailableError(module, path, f"it cannot be decoded ({error})") from error
