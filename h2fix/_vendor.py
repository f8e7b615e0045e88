"""`h2fix vendor`: a patched copy of an installed server package, written where the user says.

The copy is built in a staging directory inside `--out`, checked twice in fresh
interpreters (the matcher finds nothing left to fix; the copy, served on
127.0.0.1, sends correct trailers to a real HTTP/2 client), and only then moved
into place. Nothing outside `--out` is written or deleted, and inside it only a
package directory that an earlier run marked as its own is replaced.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from ._errors import H2FixError
from ._targets import Located

DESCRIPTION = "write a patched copy of the installed server package, checked by serving it"

#: Written into every copy; its presence is what allows a later run to replace the copy.
MARKER = ".h2fix-vendored"


# --- errors --------------------------------------------------------------------


class VendorError(H2FixError):
    """Vendoring refused or failed; nothing was written or deleted."""


class UnsafeDestinationError(VendorError):
    """--out is, holds, or lies inside installed code or an import path."""

    def __init__(self, out: Path, relation: str, place: Path, what: str) -> None:
        self.out = out
        self.place = place
        super().__init__(
            f"expected --out apart from installed packages and import paths, found {out} "
            f"{relation} {place} ({what}): a copy there could replace or shadow installed "
            "code; choose a directory of your own project, e.g. ./vendored"
        )


class ForeignDirectoryError(VendorError):
    """The destination package directory exists and was not written by h2fix."""

    def __init__(self, path: Path, found: str) -> None:
        self.path = path
        super().__init__(
            f"expected {path} to be absent or a copy written by h2fix vendor (holding "
            f"{MARKER}), found {found}; it was left as it is: remove it yourself or "
            "choose another --out"
        )


class NothingToFixError(VendorError):
    def __init__(self, label: str, outcomes: str) -> None:
        super().__init__(
            f"expected at least one selected fix to change {label}, found nothing to fix "
            f"({outcomes}); no copy was written"
        )


class WriteError(VendorError):
    def __init__(self, path: Path, error: OSError) -> None:
        self.path = path
        super().__init__(
            f"expected to write the copy at {path}, found: {error.strerror or error} "
            f"({error.filename or path}); anything written for it was removed"
        )


class CopyCheckError(VendorError):
    """A check of the staged copy failed; the copy was deleted."""

    def __init__(self, check: str, expected: str, found: str) -> None:
        self.check = check
        super().__init__(
            f"{check}: expected {expected}, found: {found}; the copy was deleted and "
            "nothing was written"
        )


# --- where writing is safe -----------------------------------------------------


@dataclass(frozen=True)
class Protected:
    path: Path  # symlinks resolved
    what: str


def protected_places(package: Path) -> list[Protected]:
    """Directories a copy must neither be, hold, nor sit inside: installed code and the
    import paths of every interpreter in sight."""
    places = [Protected(package, "the installed package being copied")]
    # PYTHONPATH before sys.path (which holds it too): the more telling name is shown.
    for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep):
        if entry:
            places.append(Protected(Path(entry), "a PYTHONPATH entry"))
    invocation = _invocation_entry()
    for entry in sys.path:
        if entry and entry != invocation:
            places.append(Protected(Path(entry), "an entry of this interpreter's sys.path"))
    pyenv = _pyenv_root()
    if pyenv is not None:
        for pattern in ("versions/*/lib/python*", "versions/*/envs/*/lib/python*"):
            for found in sorted(pyenv.glob(pattern)):
                places.append(Protected(found, "the library of a Python installed by pyenv"))
    for root in (Path("/usr/lib"), Path("/usr/local/lib")):
        for found in sorted(root.glob("python3*")):
            places.append(Protected(found, "a system Python's library"))
    return [Protected(_resolved(place.path), place.what) for place in places]


def _invocation_entry() -> str | None:
    """sys.path[0] when Python put it there for how it was started (the script's directory,
    or the current one for -m and -c). It is not an install location, and `--out .` is
    the usual way to vendor into a project."""
    if sys.flags.isolated or getattr(sys.flags, "safe_path", False) or not sys.path:
        return None
    first = sys.path[0]
    started_from = {os.getcwd()}
    if sys.argv and sys.argv[0] not in ("", "-c"):
        started_from.add(os.path.dirname(os.path.abspath(sys.argv[0])))
    if first == "" or os.path.abspath(first) in started_from:
        return first
    return None


def _pyenv_root() -> Path | None:
    root = os.environ.get("PYENV_ROOT")
    if not root and shutil.which("pyenv"):
        try:
            completed = subprocess.run(
                ["pyenv", "root"], capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.SubprocessError):
            completed = None
        if completed is not None and completed.returncode == 0:
            root = completed.stdout.strip()
    if not root:
        root = str(Path.home() / ".pyenv")
    return Path(root) if os.path.isdir(root) else None


def _resolved(path: Path) -> Path:
    return Path(os.path.realpath(os.path.abspath(path)))


def check_destination(out: Path, package: Path) -> None:
    """Refuse `out` (resolved) when a copy there could touch installed code or an import path."""
    for place in protected_places(package):
        relation = (
            "is" if out == place.path
            else "sits inside" if place.path in out.parents
            else "contains" if out in place.path.parents
            else None
        )  # fmt: skip
        if relation is not None:
            raise UnsafeDestinationError(out, relation, place.path, place.what)
    for directory in (out, *out.parents):
        installed = next((p.name for p in _entries(directory) if _marks_installed(p)), None)
        if installed is not None:
            relation = "is" if directory == out else "sits inside"
            what = f"it holds {installed}: packages are installed there"
            raise UnsafeDestinationError(out, relation, directory, what)
    if os.path.lexists(out) and not out.is_dir():
        raise VendorError(f"expected --out to be a directory or absent, found a file: {out}")


def _entries(directory: Path) -> list[Path]:
    """A directory's entries; none for one that is absent (yet) or cannot be listed."""
    try:
        return sorted(directory.iterdir())
    except OSError:
        return []


def _marks_installed(path: Path) -> bool:
    return path.name.endswith(".pth") or (path.name.endswith(".dist-info") and path.is_dir())


def _check_replaceable(destination: Path) -> None:
    """An existing destination may be replaced only when it is a copy h2fix wrote."""
    if not os.path.lexists(destination):
        return
    if destination.is_symlink():
        raise ForeignDirectoryError(destination, f"a symbolic link to {os.readlink(destination)}")
    if not destination.is_dir():
        raise ForeignDirectoryError(destination, "a file")
    if not (destination / MARKER).is_file():
        raise ForeignDirectoryError(destination, f"a directory without {MARKER}")


# --- writing the copy ----------------------------------------------------------


@dataclass(frozen=True)
class Vendored:
    target: str
    version: str
    fixes: tuple[str, ...]
    out: Path
    #: The rewritten module and its diff, below `out`.
    files: tuple[Path, ...]


def vendor(target: str, out: Path, fixes: Sequence[str] | None = None) -> Vendored:
    """Write a patched, verified copy of the installed `target` package to `out/<target>`."""
    out = _resolved(out)
    located = _locate_installed(target)
    package = _package_directory(located)
    check_destination(out, package)
    destination = out / target
    _check_replaceable(destination)
    patch = _patch(located, fixes)  # refusals and "nothing to fix" stop here: nothing written
    with _staging(out) as staging:
        _write_copy(staging / target, package, patch)
        _check_matcher(staging, target, fixes)
        _check_serving(staging, located.target.module, target)
        _check_replaceable(destination)  # again: it may have appeared while the checks ran
        _move_into_place(staging / target, destination, out)
    files = (out / patch.relative, out / f"{patch.relative}.diff")
    return Vendored(target, located.version, patch.fixes, out, files)


@dataclass(frozen=True)
class _Patch:
    label: str  # e.g. "hypercorn 0.17.3"
    fixes: tuple[str, ...]
    relative: Path  # the rewritten file below --out, e.g. hypercorn/protocol/h2.py
    source: str  # with the header
    diff: str
    encoding: str  # the original file's, so a coding declaration stays true


def _patch(located: Located, fixes: Sequence[str] | None) -> _Patch:
    import tokenize

    from . import __version__
    from ._prepare import expect_protocol
    from ._results import Outcome
    from ._rewrite import rewrite

    result = rewrite(located.source, fixes)  # strict: UnrecognisedStructureError
    expect_protocol(located, result)
    label = f"{located.target.name} {located.version}"
    if not result.changed:
        raise NothingToFixError(label, "; ".join(str(o) for o in result.outcomes))
    applied = tuple(o.fix for o in result.outcomes if o.outcome is Outcome.REWRITTEN)
    relative = Path(located.relative_file)
    header = (
        f"# Patched by h2fix {__version__} from {label} with fixes: {', '.join(applied)}.\n"
        f"# The change is in {relative.name}.diff beside this file.\n"
    )
    diff = result.diff(f"a/{relative.as_posix()}", f"b/{relative.as_posix()}")
    with open(located.file, "rb") as original:
        encoding = tokenize.detect_encoding(original.readline)[0]
    source = _with_header(result.source, header)
    return _Patch(label, applied, relative, source, diff, encoding)


@contextlib.contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """A directory inside --out to build the copy in (so the final move is a rename and
    never leaves a half-written tree); on failure, also the empty directories made for it."""
    made = [directory for directory in (out, *out.parents) if not directory.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".h2fix-staging-", dir=out))
    except OSError as error:
        raise WriteError(out, error) from error
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for directory in made:  # innermost first; rmdir leaves any that are not empty
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise
    shutil.rmtree(staging, ignore_errors=True)


def _write_copy(tree: Path, package: Path, patch: _Patch) -> None:
    from . import __version__

    try:
        shutil.copytree(package, tree, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        rewritten = tree.parent / patch.relative
        # Bytes, not text: no newline translation, and the file's own encoding.
        rewritten.write_bytes(patch.source.encode(patch.encoding))
        rewritten.with_name(rewritten.name + ".diff").write_bytes(patch.diff.encode())
        marker = f"h2fix {__version__}\n{patch.label}\nfixes: {', '.join(patch.fixes)}\n"
        (tree / MARKER).write_bytes(marker.encode())
    except OSError as error:
        raise WriteError(tree.parent, error) from error


def _locate_installed(target: str) -> Located:
    """The installed target, not a package that only `python -m`/`-c` make importable by
    putting the current directory first (e.g. the copy an earlier run wrote into `.`)."""
    import importlib.machinery

    from ._targets import _version, locate, read_source

    located = locate(target)  # raises, with advice, when the target is not installed
    invocation = _invocation_entry()
    if invocation is None:
        return located
    if _package_directory(located).parent != _resolved(Path(invocation or ".")):
        return located
    search = [entry for entry in sys.path if entry != invocation]
    spec = importlib.machinery.PathFinder.find_spec(target, search)
    if spec is None or not spec.submodule_search_locations:
        return located  # only there: check_destination decides whether --out is safe
    inner = located.target.module.split(".")[1:]
    file = os.path.join(next(iter(spec.submodule_search_locations)), *inner) + ".py"
    source = read_source(located.target.module, file)
    return Located(located.target, _version(located.target, file), file, source)


def _package_directory(located: Located) -> Path:
    return _resolved(Path(located.file).parents[located.target.module.count(".") - 1])


def _with_header(source: str, header: str) -> str:
    lines = source.splitlines(keepends=True)
    # A shebang or an encoding declaration must stay on the first two lines.
    keep = 0
    while keep < min(2, len(lines)) and (
        (keep == 0 and lines[0].startswith("#!"))
        or (lines[keep].startswith("#") and "coding" in lines[keep])
    ):
        keep += 1
    return "".join(lines[:keep]) + header + "".join(lines[keep:])


def _move_into_place(tree: Path, destination: Path, out: Path) -> None:
    try:
        if not os.path.lexists(destination):
            tree.rename(destination)
            return
        # The earlier copy is moved aside first, so a failure can put it back untouched.
        aside = Path(tempfile.mkdtemp(prefix=".h2fix-replaced-", dir=out))
        try:
            destination.rename(aside / destination.name)
            try:
                tree.rename(destination)
            except OSError:
                (aside / destination.name).rename(destination)
                raise
        finally:
            shutil.rmtree(aside, ignore_errors=True)
    except OSError as error:
        raise WriteError(destination, error) from error


# --- checking the copy in fresh interpreters -----------------------------------

# -I: neither the current directory nor PYTHON* variables decide what is imported; the
# copy goes first and the caller's PYTHONPATH (and user site, if it had one) after it,
# so dependencies installed with --target still import. -B: no bytecode in the copy.
_BOOTSTRAP = """\
import json, os, site, sys
_setup = json.loads(sys.argv.pop(1))
sys.path[:0] = _setup["path"]
for _directory in _setup["user_site"]:
    site.addsitedir(_directory)
"""

_MATCHER = """
import h2fix
report = h2fix.status(_setup["target"], _setup["fixes"])
if not os.path.realpath(report.file).startswith(_setup["root"] + os.sep):
    sys.exit("imported " + report.file + ", not the copy in " + _setup["root"])
print("; ".join(str(fix) for fix in report.fixes if fix.outcome.changes_code or fix.error))
"""

_SERVER = """
import importlib, runpy
os.chdir(_setup["root"])  # Hypercorn puts the current directory on sys.path for the app
module = importlib.import_module(_setup["module"])
if not os.path.realpath(module.__file__).startswith(_setup["root"] + os.sep):
    sys.exit("imported " + module.__file__ + ", not the copy in " + _setup["root"])
sys.argv[0] = _setup["target"]
runpy.run_module(_setup["target"], run_name="__main__", alter_sys=True)
"""


def _fresh_python(code: str, root: Path, **setup: object) -> tuple[list[str], dict[str, str]]:
    import site

    entries = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    pythonpath = [os.path.abspath(entry) for entry in entries if entry]
    user_site = [site.getusersitepackages()] if site.ENABLE_USER_SITE else []
    data = {
        "root": str(root),
        "path": [str(root), *pythonpath],
        "user_site": [d for d in user_site if os.path.isdir(d)],
        **setup,
    }
    command = [sys.executable, "-I", "-B", "-c", _BOOTSTRAP + code, json.dumps(data)]
    # No start-up cache entries (nor anything else) written on the user's behalf.
    env = {**os.environ, "H2FIX_NO_CACHE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    return command, env


def _check_matcher(root: Path, target: str, fixes: Sequence[str] | None) -> None:
    """The copy imports from itself and the selected fixes find nothing left to do."""
    command, env = _fresh_python(_MATCHER, root, target=target, fixes=list(fixes or []) or None)
    completed = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=300, check=False
    )
    left = (completed.stdout + completed.stderr).strip()
    if completed.returncode != 0 or left:
        raise CopyCheckError(
            "the copy imported in a fresh interpreter",
            "it to import from itself with no selected fix left to apply",
            left[-2000:] or f"exit code {completed.returncode}",
        )


def _check_serving(root: Path, module: str, target: str) -> None:
    """Serve the copy and read its frames; this does not trust the matcher at all."""
    from ._probe import free_port, serving

    port = free_port()
    command, env = _fresh_python(_SERVER, root, target=target, module=module)
    command += ["h2fix._probe:app", "--bind", f"127.0.0.1:{port}"]
    try:
        with serving(command, port, env=env, timeout=60):
            results = serve_checks(port)
    except (RuntimeError, TimeoutError) as error:
        raise CopyCheckError(
            f"the copy served by `python -m {target}` on 127.0.0.1",
            "it to start serving",
            str(error),
        ) from error
    failed = [f"{name}: NO" for name, ok in results.items() if not ok]
    if failed:
        raise CopyCheckError(
            f"the copy served by `python -m {target}` on 127.0.0.1",
            "a large body, then trailers ending the stream, twice on one connection",
            ", ".join(failed),
        )


SERVE_CHECKS = (
    "trailers received",
    "END_STREAM on the trailers",
    "no DATA after the trailers",
    "body complete",
    "HPACK in sync (2nd request)",
)


def serve_checks(port: int) -> dict[str, bool]:
    """Two requests to h2fix's probe app on one connection, read through a small window."""
    from ._probe import BODY_SIZE, H2Client

    expected_body = b"\x00" + BODY_SIZE.to_bytes(4, "big") + b"x" * BODY_SIZE
    results = dict.fromkeys(SERVE_CHECKS, False)
    client = H2Client(port, timeout=20)
    try:
        first = client.call("/h2fix-vendor-check", b"")
        results["trailers received"] = first.trailers.get(b"grpc-status") == b"0"
        results["END_STREAM on the trailers"] = first.trailers_ended_stream
        results["no DATA after the trailers"] = not first.data_after_trailers
        results["body complete"] = first.body == expected_body
        second = client.call("/h2fix-vendor-check", b"")
        # A desynchronised HPACK table raises while decoding the second response's headers.
        results["HPACK in sync (2nd request)"] = second.trailers.get(b"grpc-status") == b"0"
    except Exception:
        pass  # any failure to read the responses leaves the remaining checks failed
    finally:
        client.close()
    return results


# --- command line --------------------------------------------------------------


def run(target: str, out: Path, fixes: Sequence[str] | None, stdout: TextIO) -> int:
    """Vendor and report; errors propagate to the caller, which prints them and exits 2."""
    vendored = vendor(target, out, fixes)
    for path in vendored.files:
        print(_shown(path), file=stdout)
    directory = _shown(vendored.out)
    print(
        f"{vendored.target} {vendored.version} with fixes {', '.join(vendored.fixes)}: "
        "checked by importing it and by serving it to an HTTP/2 client",
        file=stdout,
    )
    print(f"use it: PYTHONPATH={shlex.quote(directory)} {target} app:app", file=stdout)
    return 0


def _shown(path: Path) -> str:
    """Relative to the current directory when below it; absolute otherwise (a path full
    of ../ is harder to read than the absolute one)."""
    cwd = _resolved(Path.cwd())
    path = _resolved(path)
    if path == cwd:
        return "."
    if cwd in path.parents:
        return str(path.relative_to(cwd))
    return str(path)


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """scripts/vendor.py: the same command as `h2fix vendor`."""
    from . import fixes as _fixes
    from ._targets import TARGETS

    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION)
    parser.add_argument("--target", default="hypercorn", choices=list(TARGETS))
    names = [fix.name for fix in _fixes.FIXES]
    parser.add_argument("--fix", action="append", choices=names, help="only this fix (repeatable)")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="where to write")
    args = parser.parse_args(argv)
    try:
        return run(args.target, args.out, args.fix, sys.stdout)
    except H2FixError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
