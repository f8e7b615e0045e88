"""A per-user disk cache of prepared code, so apply() at start-up skips LibCST.

An entry holds the rewritten source, the outcomes and the marshalled code
objects, keyed by everything they depend on: the target file and a hash of its
source, the h2fix version, the fix set, the environment facts the fixes read,
and the Python version (marshal and bytecode are per-version). The key is also
inside the hashed payload, so an entry renamed to another key is not used.

It is only ever an optimisation: any problem takes the cold path, never an
error. The cache holds code apply() runs, so nothing is read through a directory
another user could change (see _safedir). A cache that cannot be used at all
(rather than a plain miss, or one damaged entry that the next store replaces)
logs one WARNING per process on the `h2fix.cache` logger, because every start
is then slow until someone fixes it. H2FIX_NO_CACHE=1 turns the cache off.

Several processes starting cold at once (hypercorn --workers 4) would each spend
the LibCST time; instead the first takes a lock next to the entry and the others
wait for its result, for LOCK_WAIT_SECONDS at most.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import marshal
import os
import sys
import time
import types
from collections.abc import Iterator

from ._results import FixOutcome, Outcome
from ._safedir import SUPPORTED, open_private_directory, open_private_file

logger = logging.getLogger("h2fix.cache")

_MAGIC = b"h2fix-cache-3\n"  # 3: the key inside the payload; every definition of a function
_DIGEST_SIZE = 32
# Real entries are tens of kB; anything far larger is not one, and is not read whole.
_MAX_ENTRY_BYTES = 8 * 1024 * 1024
#: How long a process waits for another one computing the same entry before computing it too.
LOCK_WAIT_SECONDS = 5.0
_LOCK_POLL_SECONDS = 0.05
# A temporary file this old was left by a process killed while storing.
_STALE_TEMPORARY_SECONDS = 600
_FIX_HINT = (
    "set H2FIX_CACHE_DIR to an absolute path of a directory only you can write to "
    "(or H2FIX_NO_CACHE=1 to turn the cache off and silence this)"
)

Codes = dict[str, tuple[types.CodeType, ...]]
Entry = tuple[str, tuple[FixOutcome, ...], Codes, Codes]

_warned = False


def location() -> str | None:
    """The cache directory, or None when the cache is turned off.

    Raises UnsafeLocationError (or OSError) when the configuration makes a cache unusable.
    """
    if os.environ.get("H2FIX_NO_CACHE", "") not in ("", "0"):
        return None
    if not SUPPORTED:
        logger.debug("h2fix cache: off on this platform (no O_NOFOLLOW or dir_fd)")
        return None
    configured = os.environ.get("H2FIX_CACHE_DIR")
    if configured:
        # Relative to whichever directory each worker happens to start in: never meant.
        if not os.path.isabs(configured):
            from ._errors import UnsafeLocationError

            raise UnsafeLocationError(
                f"H2FIX_CACHE_DIR={configured}", "an absolute path", "a relative one"
            )
        return configured
    # The XDG base directory spec: a relative XDG_CACHE_HOME is invalid and ignored.
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if os.path.isabs(xdg):
        return os.path.join(xdg, "h2fix")
    home = os.path.expanduser("~")
    owner = os.stat(home).st_uid
    if owner != os.geteuid():
        # e.g. root under `sudo -E`: writing there would leave root's files in a user's home.
        from ._errors import UnsafeLocationError

        raise UnsafeLocationError(
            f"home directory {home}", f"owned by uid {os.geteuid()}", f"owned by uid {owner}"
        )
    return os.path.join(home, ".cache", "h2fix")


def describe_location() -> str:
    """Where the cache is, or why there is none, for messages."""
    try:
        folder = location()
    except Exception as error:
        return f"no usable cache ({error})"
    return "the cache turned off (H2FIX_NO_CACHE)" if folder is None else f"the cache {folder}"


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


@contextlib.contextmanager
def opened(parts: tuple[object, ...]) -> Iterator[Slot]:
    """The cache entry for `parts`; its directory stays open (and checked) until the end."""
    slot = Slot(parts)
    try:
        yield slot
    finally:
        slot.close()


class Slot:
    """One entry of the cache. Never raises: every problem is logged and disables the slot.

    prepare() does: load() -> on a miss, `with locked():` load() again -> compute -> store().
    """

    def __init__(self, parts: tuple[object, ...]) -> None:
        self._folder = "(cache)"
        self._directory: int | None = None
        self._key = ""
        try:
            folder = location()
            if folder is None:
                return  # off: not even the key is computed
            self._folder = folder
        except Exception as error:
            self._unusable(error)
            return
        try:
            self._key = key(parts)
        except Exception as error:  # e.g. h2fix run from a zip: no files to stamp
            self._unusable(error, problem="cannot compute the key from h2fix's own files",
                           hint="install h2fix as files, or set H2FIX_NO_CACHE=1")  # fmt: skip
            return
        try:
            self._directory = open_private_directory(folder, create=True)
        except Exception as error:
            self._unusable(error)

    def load(self) -> Entry | None:
        if self._directory is None:
            return None
        name = f"{self._key}.bin"
        try:
            fd, size = open_private_file(name, self._directory, os.O_RDONLY, self._folder)
            try:
                if size > _MAX_ENTRY_BYTES:
                    raise ValueError(f"expected at most {_MAX_ENTRY_BYTES} bytes, found {size}")
                data = _read_at_most(fd, _MAX_ENTRY_BYTES)
            finally:
                os.close(fd)
        except FileNotFoundError:
            logger.debug("h2fix cache: no entry %s in %s yet", name, self._folder)
            return None
        except (ValueError, EOFError) as error:
            logger.debug("h2fix cache: not using %s in %s: %s", name, self._folder, error)
            return None
        except Exception as error:
            self._unusable(error)
            return None
        try:
            return _decode(data, self._key)
        except Exception as error:  # damaged: the cold path stores a good one over it
            logger.debug("h2fix cache: not using %s in %s: %s", name, self._folder, error)
            return None

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Held while this process computes the entry, so others wait instead of computing it."""
        lock = self._lock()
        try:
            yield
        finally:
            if lock is not None:
                os.close(lock)  # releases the flock

    def store(self, entry: Entry) -> None:
        if self._directory is None:
            return
        directory = self._directory
        self._prune_temporaries()
        temporary = f".tmp-{os.getpid()}-{os.urandom(6).hex()}.bin"
        try:
            data = _encode(entry, self._key)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
            fd, _ = open_private_file(temporary, directory, flags, self._folder)
            try:
                with os.fdopen(fd, "wb") as file:
                    file.write(data)
                # Written whole, then renamed over (atomic on POSIX): readers see the
                # old entry, the new one, or none, never a part.
                os.rename(temporary, f"{self._key}.bin", src_dir_fd=directory, dst_dir_fd=directory)
            except BaseException:
                os.unlink(temporary, dir_fd=directory)
                raise
        except Exception as error:
            self._unusable(error, storing=True)

    def close(self) -> None:
        if self._directory is not None:
            os.close(self._directory)
            self._directory = None

    def _lock(self) -> int | None:
        if self._directory is None:
            return None
        try:
            import fcntl
        except ImportError:  # Windows: no flock; each process computes for itself
            return None
        try:
            fd, _ = open_private_file(
                f"{self._key}.lock", self._directory, os.O_RDWR | os.O_CREAT, self._folder
            )
        except Exception as error:
            self._unusable(error)
            return None
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    logger.debug(
                        "h2fix cache: gave up waiting %.1f s for another process to store %s.bin",
                        LOCK_WAIT_SECONDS,
                        self._key,
                    )
                    os.close(fd)
                    return None
                time.sleep(_LOCK_POLL_SECONDS)
            except OSError as error:  # e.g. a file system without flock: go on without
                logger.debug("h2fix cache: no lock in %s: %s", self._folder, error)
                os.close(fd)
                return None

    def _prune_temporaries(self) -> None:
        assert self._directory is not None
        now = time.time()
        try:
            names = os.listdir(self._directory)
        except OSError:
            return
        for name in names:
            if not name.startswith(".tmp-"):
                continue
            # Another process may be pruning the same file, or still writing a young one.
            with contextlib.suppress(OSError):
                info = os.stat(name, dir_fd=self._directory, follow_symlinks=False)
                if now - info.st_mtime > _STALE_TEMPORARY_SECONDS:
                    os.unlink(name, dir_fd=self._directory)

    def _unusable(
        self,
        error: Exception,
        *,
        problem: str | None = None,
        hint: str = _FIX_HINT,
        storing: bool = False,
    ) -> None:
        global _warned
        self.close()
        if problem is None:
            problem = f"{'not storing in' if storing else 'not using'} {self._folder}"
        message = f"h2fix cache: {problem}: {error}"
        if _warned:
            logger.debug("%s", message)
            return
        _warned = True
        logger.warning("%s; every start takes the slow path (LibCST); %s", message, hint)


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > limit:
            raise ValueError(f"expected at most {limit} bytes, found more")
        chunks.append(chunk)


def _encode(entry: Entry, entry_key: str) -> bytes:
    source, outcomes, original_code, new_code = entry
    plain_outcomes = tuple((o.fix, o.outcome.value, o.message, o.functions) for o in outcomes)
    payload = marshal.dumps((entry_key, source, plain_outcomes, original_code, new_code))
    return _MAGIC + hashlib.sha256(payload).digest() + payload


def _decode(data: bytes, entry_key: str) -> Entry:
    if not data.startswith(_MAGIC):
        raise ValueError("not an h2fix cache entry")
    digest = data[len(_MAGIC) : len(_MAGIC) + _DIGEST_SIZE]
    payload = data[len(_MAGIC) + _DIGEST_SIZE :]
    if hashlib.sha256(payload).digest() != digest:
        raise ValueError("content hash mismatch (corrupt or truncated)")
    stored_key, source, plain_outcomes, original_code, new_code = marshal.loads(payload)
    if stored_key != entry_key:
        raise ValueError(f"expected the entry for key {entry_key}, found one for {stored_key}")
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
