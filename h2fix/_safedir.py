"""Reach a directory only through directories no other user can change, and open files in it.

The start-up cache holds code that apply() runs. Whoever can write to *any*
directory on the way to it (not only the last one) can put a directory of their
own in its place, so every step is opened relative to the one before it, never
through a symbolic link it has not checked, and checked on the descriptor it
got (not by path, which could be swapped between the check and the use).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._errors import UnsafeLocationError

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
# O_PATH (Linux) reaches a directory one may only traverse (mode --x), as the kernel does.
_TRAVERSE = getattr(os, "O_PATH", os.O_RDONLY)
# As the kernel: a chain of more links than this is a loop.
_MAX_SYMLINKS = 40

#: False where the primitives this needs are missing (Windows): the cache is then off.
SUPPORTED = (
    bool(_NOFOLLOW and _DIRECTORY)
    and hasattr(os, "geteuid")
    and {os.open, os.stat, os.mkdir, os.readlink, os.rename, os.unlink} <= os.supports_dir_fd
)


def _unsafe(path: str, expected: str, found: str) -> UnsafeLocationError:
    # Imported here: a warm apply() raises no error, and loading them costs (see _targets).
    from ._errors import UnsafeLocationError

    return UnsafeLocationError(path, expected, found)


def open_private_directory(path: str, *, create: bool) -> int:
    """A descriptor of directory `path` (opened for reading), checked all the way from `/`.

    Every directory on the way must be owned by root or the effective user and not
    writable by group or others unless sticky (like /tmp); a symbolic link is followed
    only when root or the user owns it. The directory itself must be the user's and
    not writable by group or others. With `create`, missing directories are made
    one by one, mode 0700 (the umask can only take bits away), and checked as well.
    """
    if not os.path.isabs(path):
        raise _unsafe(path, "an absolute path", "a relative one")
    uid = os.geteuid()
    pending = _components(path)
    chain = [(os.open("/", _TRAVERSE | _DIRECTORY | _CLOEXEC), "/")]
    try:
        _expect_safe_ancestor(os.fstat(chain[0][0]), "/", uid)
        links = 0
        while pending:
            name = pending.pop(0)
            if name == "..":
                if len(chain) > 1:  # "/.." is "/"
                    os.close(chain.pop()[0])
                continue
            parent, parent_path = chain[-1]
            here = os.path.join(parent_path, name)
            try:
                fd = _open_directory_entry(name, parent, here, create)
            except _SymbolicLink as link:
                links += 1
                if links > _MAX_SYMLINKS:
                    raise _unsafe(path, f"at most {_MAX_SYMLINKS} symbolic links", "more") from None
                if os.path.isabs(link.target):
                    while len(chain) > 1:
                        os.close(chain.pop()[0])
                pending[:0] = _components(link.target)
                continue
            chain.append((fd, here))
            _expect_safe_ancestor(os.fstat(fd), here, uid)
        final, final_path = chain[-1]
        # The ancestors were only traversed; the cache directory itself is listed.
        readable = os.open(".", os.O_RDONLY | _DIRECTORY | _CLOEXEC, dir_fd=final)
        try:
            _expect_private(os.fstat(readable), final_path, uid)
        except BaseException:
            os.close(readable)
            raise
        return readable
    finally:
        for fd, _ in chain:
            os.close(fd)


def open_private_file(name: str, directory: int, flags: int, where: str) -> tuple[int, int]:
    """A descriptor of regular file `name` in `directory`, and its size, or an error.

    Never follows a symbolic link, and never blocks: a FIFO or device planted in
    place of the file is opened without waiting for a writer, then refused.
    """
    fd = os.open(name, flags | _NOFOLLOW | _NONBLOCK | _CLOEXEC, 0o600, dir_fd=directory)
    try:
        info = os.fstat(fd)
        path = os.path.join(where, name)
        if not stat.S_ISREG(info.st_mode):
            raise _unsafe(path, "a regular file", _kind(info.st_mode))
        _expect_private(info, path, os.geteuid())
    except BaseException:
        os.close(fd)
        raise
    return fd, info.st_size


class _SymbolicLink(Exception):
    def __init__(self, target: str) -> None:
        self.target = target


def _open_directory_entry(name: str, parent: int, here: str, create: bool) -> int:
    try:
        return _open_directory_no_follow(name, parent, here)
    except FileNotFoundError:
        if not create:
            raise
    # Made meanwhile by another process: then it is opened and checked like any other.
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, 0o700, dir_fd=parent)
    return _open_directory_no_follow(name, parent, here)


def _open_directory_no_follow(name: str, parent: int, here: str) -> int:
    try:
        return os.open(name, _TRAVERSE | _DIRECTORY | _NOFOLLOW | _CLOEXEC, dir_fd=parent)
    except OSError as error:
        # ELOOP on Linux, ENOTDIR or EMLINK elsewhere: not a directory, maybe a link.
        if error.errno not in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
            raise
    raise _SymbolicLink(_trusted_link_target(name, parent, here))


def _trusted_link_target(name: str, parent: int, here: str) -> str:
    info = os.stat(name, dir_fd=parent, follow_symlinks=False)
    if not stat.S_ISLNK(info.st_mode):
        raise _unsafe(here, "a directory", _kind(info.st_mode))
    uid = os.geteuid()
    # The directory holding the link is already known safe, but a sticky one (/tmp)
    # lets anyone add entries: only the owner of the link says who chose its target.
    if info.st_uid not in (0, uid):
        raise _unsafe(
            here, f"a symbolic link owned by {_you(uid)}", f"one owned by uid {info.st_uid}"
        )
    return os.readlink(name, dir_fd=parent)


def _expect_safe_ancestor(info: os.stat_result, path: str, uid: int) -> None:
    if not stat.S_ISDIR(info.st_mode):
        raise _unsafe(path, "a directory", _kind(info.st_mode))
    if info.st_uid not in (0, uid):
        raise _unsafe(path, f"a directory owned by {_you(uid)}", f"one owned by uid {info.st_uid}")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not info.st_mode & stat.S_ISVTX:
        raise _unsafe(
            path,
            "a directory not writable by group or others (or sticky, like /tmp)",
            f"mode {stat.filemode(info.st_mode)}: writable by group or others",
        )


def _expect_private(info: os.stat_result, path: str, uid: int) -> None:
    if info.st_uid != uid:
        raise _unsafe(path, f"owner uid {uid}", f"owned by uid {info.st_uid}")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise _unsafe(
            path,
            "no write permission for group or others",
            f"mode {stat.filemode(info.st_mode)}: writable by group or others",
        )


def _you(uid: int) -> str:
    return "root" if uid == 0 else f"root or uid {uid}"


def _components(path: str) -> list[str]:
    return [part for part in path.split("/") if part not in ("", ".")]


def _kind(mode: int) -> str:
    kinds = {
        stat.S_ISDIR: "a directory",
        stat.S_ISREG: "a regular file",
        stat.S_ISLNK: "a symbolic link",
        stat.S_ISFIFO: "a FIFO",
        stat.S_ISSOCK: "a socket",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
    }
    return next((name for test, name in kinds.items() if test(mode)), f"mode {mode:o}")
