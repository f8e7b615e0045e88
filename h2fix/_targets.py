"""Where the code to repair lives: the known servers, their module, version and source."""

from __future__ import annotations

import importlib.util
import os
import stat

from ._results import Record, initialise

# Errors are imported where they are raised: a warm apply() raises none, and loading
# their classes would cost it about a sixth of its time (scripts/bench_startup.py).

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable

    from ._errors import H2FixError, SourceUnavailableError

#: About 50 times a real protocol module; no bigger file is read.
MAX_CHARACTERS = 1_000_000
_SIZE_NOTE = "a protocol module is about 15-20 kB"


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


def get_target(name: object) -> Target:
    """The known target called `name`; every public function taking `target` checks it here."""
    if not isinstance(name, str):
        from ._errors import ArgumentTypeError

        expected = f"a target name (str), one of {', '.join(map(repr, TARGETS))}"
        raise ArgumentTypeError("target", expected, name)
    try:
        return TARGETS[name]
    except KeyError:
        from ._errors import UnknownTargetError

        raise UnknownTargetError(name, list(TARGETS)) from None


def locate(name: str) -> Located:
    """Find an installed target's module without executing it."""
    target = get_target(name)
    try:
        # Imports the parent packages (hypercorn, hypercorn.protocol), not the module.
        spec = importlib.util.find_spec(target.module)
    except ImportError as error:
        raise import_failure(target, error) from error
    if spec is None:
        from ._errors import TargetNotFoundError

        raise TargetNotFoundError(target.name, target.module, "no such module")
    origin = spec.origin
    if origin is None or not origin.endswith(".py"):
        from ._errors import SourceUnavailableError

        raise SourceUnavailableError(
            target.module, origin, "only bytecode is installed, there is no .py file"
        )
    return Located(target, _version(target, origin), origin, read_source(target.module, origin))


def import_failure(target: Target, error: ImportError) -> H2FixError:
    """The error for a failed import of the target: not installed, or installed but
    missing a module it needs (then reinstalling the target is not the answer)."""
    from ._errors import DependencyMissingError, TargetNotFoundError

    own = {target.module.rsplit(".", depth)[0] for depth in range(target.module.count(".") + 1)}
    if error.name is None or error.name in own:
        return TargetNotFoundError(target.name, target.module, str(error))
    return DependencyMissingError(target.name, target.module, error.name, str(error))


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


def read_source(module: str | None, path: str, *, advise_reinstall: bool = True) -> str:
    """A Python file's text, decoded as the interpreter would (encoding cookie, BOM).

    Only a regular file of plausible size is read: a FIFO or a device (/dev/zero)
    would block or never end. `module` is None for a file the user named; for it,
    a SourceUnavailableError does not advise reinstalling a package.
    """

    def unavailable(reason: str) -> SourceUnavailableError:
        from ._errors import SourceUnavailableError

        if advise_reinstall:
            return SourceUnavailableError(module, path, reason)
        return SourceUnavailableError(module, path, reason, advice=None)

    try:
        # stat first: opening a FIFO without O_NONBLOCK waits for a writer.
        _expect_regular(os.stat(path), path, unavailable)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as error:
        raise unavailable(f"it cannot be read ({error.strerror or error})") from error
    try:
        # What was opened may have been swapped in after the stat.
        _expect_regular(os.fstat(fd), path, unavailable)
        with os.fdopen(fd, "rb", closefd=False) as file:
            data = file.read(MAX_CHARACTERS + 1)
    except OSError as error:
        raise unavailable(f"it cannot be read ({error.strerror or error})") from error
    finally:
        os.close(fd)
    # A character takes at least one byte: more bytes than the limit is too many characters.
    check_size(len(data), "bytes" if len(data) <= MAX_CHARACTERS else "bytes or more", path)
    try:
        return importlib.util.decode_source(data)
    except (SyntaxError, UnicodeDecodeError, LookupError) as error:
        raise unavailable(f"it cannot be decoded ({error})") from error


def _expect_regular(
    info: os.stat_result, path: str, unavailable: Callable[[str], SourceUnavailableError]
) -> None:
    if not stat.S_ISREG(info.st_mode):
        kinds = {stat.S_ISDIR: "a directory", stat.S_ISFIFO: "a FIFO", stat.S_ISSOCK: "a socket",
                 stat.S_ISCHR: "a character device", stat.S_ISBLK: "a block device"}  # fmt: skip
        kind = next((name for test, name in kinds.items() if test(info.st_mode)), "not a file")
        raise unavailable(f"it is {kind}, not a regular file")
    if info.st_size > MAX_CHARACTERS:
        check_size(info.st_size, "bytes", path)


def check_size(length: int, unit: str, where: str | None = None) -> None:
    """Refuse more than MAX_CHARACTERS (of source, or bytes of a file) as InvalidSourceError."""
    if length > MAX_CHARACTERS:
        from ._errors import InvalidSourceError

        raise InvalidSourceError(
            f"at most {MAX_CHARACTERS:,} {unit} ({_SIZE_NOTE})", f"{length:,} {unit}", where
        )
