"""A per-user disk cache of prepared code, so apply() at start-up skips LibCST.

An entry holds the rewritten source, the outcomes and the marshalled code
objects, keyed by everything they depend on: the target file and a hash of its
source, the h2fix version, the fix set, the environment facts the fixes read,
and the Python version (marshal and bytecode are per-version).

It is only ever an optimisation. Any problem - a corrupt or truncated entry, an
unreadable file, a read-only directory, a directory or entry owned by someone
else or writable by group or others - is logged at debug level and apply()
takes the cold path. Nothing is loaded that cannot be trusted: the directory
and the entry must be the user's own and private, and the entry's content
hash must match. H2FIX_NO_CACHE=1 turns the cache off.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import marshal
import os
import stat
import sys
import types
from pathlib import Path

from ._results import FixOutcome, Outcome

logger = logging.getLogger("h2fix.cache")

_MAGIC = b"h2fix-cache-2\n"  # 2: every definition of a changed function
_DIGEST_SIZE = 32


def directory() -> Path | None:
    """The cache directory, or None when the cache is turned off."""
    if os.environ.get("H2FIX_NO_CACHE", "") not in ("", "0"):
        return None
    configured = os.environ.get("H2FIX_CACHE_DIR")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "h2fix"


def key(parts: tuple[object, ...]) -> str:
    from . import __version__

    python = (sys.version, sys.implementation.cache_tag, importlib.util.MAGIC_NUMBER)
    return hashlib.sha256(repr((__version__, _code_stamp(), python, parts)).encode()).hexdigest()


def _code_stamp() -> tuple[tuple[str, int, int], ...]:
    """Sizes and times of the code that makes entries, so an edited checkout never
    reads entries an older edit wrote under the same version number."""
    package = os.path.dirname(__file__)
    fixes = os.path.join(package, "fixes")
    files = [os.path.join(package, "_rewrite.py"), os.path.join(package, "_prepare.py")]
    files += sorted(os.path.join(fixes, n) for n in os.listdir(fixes) if n.endswith(".py"))
    stamps = []
    for file in files:
        info = os.stat(file)
        stamps.append((os.path.basename(file), info.st_size, info.st_mtime_ns))
    return tuple(stamps)


Codes = dict[str, tuple[types.CodeType, ...]]
Entry = tuple[str, tuple[FixOutcome, ...], Codes, Codes]


def load(entry_key: str) -> Entry | None:
    folder = directory()
    if folder is None:
        return None
    path = folder / f"{entry_key}.bin"
    try:
        _check_private(folder, is_dir=True)
        with path.open("rb") as file:
            _check_private(Path(path), is_dir=False, fd=file.fileno())
            data = file.read()
        return _decode(data)
    except FileNotFoundError:
        return None
    except Exception as error:  # any problem at all: take the cold path
        logger.debug("h2fix cache: not using %s: %s", path, error)
        return None


def store(entry_key: str, entry: Entry) -> None:
    folder = directory()
    if folder is None:
        return
    import tempfile  # deferred: only the cold path writes

    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        _check_private(folder, is_dir=True)
        data = _encode(entry)
        # Written whole to a private temporary file, then renamed over: readers see
        # the old entry, the new one, or none, never a part.
        fd, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".bin")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
            os.replace(temporary, folder / f"{entry_key}.bin")
        except BaseException:
            os.unlink(temporary)
            raise
    except Exception as error:
        logger.debug("h2fix cache: not storing in %s: %s", folder, error)


def _check_private(path: Path, *, is_dir: bool, fd: int | None = None) -> None:
    info = os.fstat(fd) if fd is not None else os.stat(path)
    if is_dir and not stat.S_ISDIR(info.st_mode):
        raise OSError(f"{path} is not a directory")
    if info.st_uid != os.getuid():
        raise PermissionError(f"{path} is owned by uid {info.st_uid}, not {os.getuid()}")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise PermissionError(f"{path} is writable by group or others")


def _encode(entry: Entry) -> bytes:
    source, outcomes, original_code, new_code = entry
    plain_outcomes = tuple((o.fix, o.outcome.value, o.message, o.functions) for o in outcomes)
    payload = marshal.dumps((source, plain_outcomes, original_code, new_code))
    return _MAGIC + hashlib.sha256(payload).digest() + payload


def _decode(data: bytes) -> Entry:
    if not data.startswith(_MAGIC):
        raise ValueError("not an h2fix cache entry")
    digest = data[len(_MAGIC) : len(_MAGIC) + _DIGEST_SIZE]
    payload = data[len(_MAGIC) + _DIGEST_SIZE :]
    if hashlib.sha256(payload).digest() != digest:
        raise ValueError("content hash mismatch (corrupt or truncated)")
    source, plain_outcomes, original_code, new_code = marshal.loads(payload)
    outcomes = tuple(
        FixOutcome(fix, Outcome(outcome), message, tuple(functions))
        for fix, outcome, message, functions in plain_outcomes
    )
    for codes in (original_code, new_code):
        if not all(
            isinstance(cs, tuple) and all(isinstance(c, types.CodeType) for c in cs)
            for cs in codes.values()
        ):
            raise ValueError("an entry's code is not code")
    return source, outcomes, original_code, new_code
