"""The `h2fix` command line. Every subcommand goes through `rewrite` and the targets.

Exit codes, per command (an error is one line on stderr, never a traceback):

    diff        0 the diff was printed (nothing when nothing would change), 2 an error
    check       0 no fix needed, 1 a fix would be applied, 2 an error
    status      0 printed, 2 an error or a fix refused the code
    list-fixes  0
    verify      0 every check that applies passes with h2fix, 1 one does not, 2 an error
    vendor      0 the copy was written and checked, 2 refused or failed
    warm        0 the start-up cache holds the installed target's entry, 2 an error
    run         the server's own exit code; 2 when h2fix refuses to start it
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import TextIO

from . import __version__
from . import fixes as _fixes
from ._environment import Environment
from ._errors import (
    H2FixError,
    InvalidSourceError,
    NotAProtocolError,
    UnrecognisedStructureError,
)
from ._launch import command as launcher_command
from ._prepare import expect_protocol
from ._results import FixOutcome, Outcome, Rewrite
from ._rewrite import rewrite
from ._run_command import parse as parse_server_command
from ._runtime import status
from ._targets import TARGETS, Located, locate, read_source


@dataclass(frozen=True)
class _Subject:
    """One file the command looks at: the installed target's, or one given by path."""

    label: str  # shown in diffs (a/<label>, b/<label>) and in messages
    source: str
    #: The installed target this file belongs to; None for a file given by path.
    located: Located | None = None

    def rewrite(self, fixes: list[str] | None) -> Rewrite:
        """What apply() would do to this file. A file in which no fix recognises anything
        is refused, as apply() refuses such an installed target."""
        result = rewrite(self.source, fixes, strict=False)
        unreadable = [e for e in result.refusals if isinstance(e, InvalidSourceError)]
        if unreadable:  # no fix could read it: one error, not one per fix
            raise unreadable[0]
        if self.located is not None:
            expect_protocol(self.located, result)
        elif _recognises_nothing(result) and (
            fixes is None or _recognises_nothing(rewrite(self.source, None, strict=False))
        ):
            # Judged by every fix: `--fix trailers` on Hypercorn 0.16 (no trailers
            # support) is a protocol module with nothing to do, not a stranger.
            raise NotAProtocolError(None, self.label)
        return result


def _recognises_nothing(result: Rewrite) -> bool:
    return all(o.outcome is Outcome.NOT_APPLICABLE for o in result.outcomes)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except H2FixError as error:
        _print_error(error)
        return 2
    except (RecursionError, MemoryError) as error:  # an error, never 1 ("a fix is needed")
        print(f"h2fix: error: {type(error).__name__}: {error}", file=sys.stderr)
        return 2
    return code


def _print_error(error: H2FixError, label: str | None = None) -> None:
    prefix = f"{label}: " if label else ""
    print(f"h2fix: error: {prefix}{error}{_advice(error)}", file=sys.stderr)


#: Exit codes per command, shown by --help (the module docstring says the same).
EXIT_CODES = {
    "diff": "0 the diff was printed (nothing when nothing would change), 2 an error",
    "check": "0 no fix needed, 1 a fix would be applied, 2 an error",
    "status": "0 printed, 2 an error or a fix refused the code",
    "list-fixes": "0",
    "verify": "0 every check that applies passes with h2fix, 1 one does not, 2 an error",
    "vendor": "0 the copy was written and checked, 2 refused or failed",
    "warm": "0 the start-up cache holds the installed target's entry, 2 an error",
    "run": "the server's own exit code; 2 when h2fix refuses to start it",
}


def _parser() -> argparse.ArgumentParser:
    width = max(map(len, EXIT_CODES)) + 2
    parser = argparse.ArgumentParser(
        prog="h2fix",
        description="Repair HTTP/2 trailers in Hypercorn 0.17.x and anycorn 0.18.x.",
        epilog="exit codes:\n"
        + "\n".join(f"  {name:<{width}}{codes}" for name, codes in EXIT_CODES.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-V", "--version", action="version", version=f"h2fix {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        epilog = f"exit codes: {EXIT_CODES[name]}"
        return commands.add_parser(name, help=help, description=help, epilog=epilog)

    def target_option(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--target", default="hypercorn", choices=list(TARGETS))

    def fix_options(sub: argparse.ArgumentParser) -> None:
        target_option(sub)
        names = [fix.name for fix in _fixes.FIXES]
        sub.add_argument("--fix", action="append", choices=names, help="only this fix (repeatable)")

    diff = command("diff", "print the unified diff of what apply() would change")
    fix_options(diff)
    diff.add_argument("paths", nargs="*", metavar="PATH", help="files to rewrite instead")
    diff.set_defaults(handler=_diff)

    check = command("check", "exit 1 when a fix would be applied, 0 when none is needed")
    fix_options(check)
    check.add_argument("paths", nargs="*", metavar="PATH", help="files to check instead")
    check.set_defaults(handler=_check)

    status_ = command("status", "the installed target, its versions and each fix's outcome")
    fix_options(status_)
    status_.add_argument("--json", action="store_true", help="one JSON object")
    status_.set_defaults(handler=_status)

    list_fixes = command("list-fixes", "the fixes h2fix knows")
    list_fixes.set_defaults(handler=_list_fixes)

    verify = command("verify", "serve a probe app without and with the fix, and compare frames")
    target_option(verify)
    verify.set_defaults(handler=_verify)

    vendor = command("vendor", "write a patched copy of the package, checked by serving it")
    fix_options(vendor)
    vendor.add_argument("--out", required=True, type=Path, metavar="DIR", help="where to write")
    vendor.set_defaults(handler=_vendor)

    warm = command(
        "warm", "fill the start-up cache now (at image build time), so workers start warm"
    )
    fix_options(warm)
    warm.set_defaults(handler=_warm)

    run = command("run", "serve with the fix applied: h2fix run -- hypercorn app:app [options]")
    run.add_argument("--fix", action="append", choices=[fix.name for fix in _fixes.FIXES])
    run.add_argument(
        "server",
        nargs=argparse.REMAINDER,
        help="the server's command line: hypercorn|anycorn ARGS or python -m hypercorn|anycorn "
        "ARGS, of this interpreter's environment (another environment's server is refused)",
    )
    run.set_defaults(handler=_run)
    return parser


# --- subcommands ---------------------------------------------------------------


def _diff(args: argparse.Namespace) -> int:
    color = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    refused = False
    for subject, result in _rewrites(args):
        if result is None:
            refused = True
            continue
        label = _diff_label(subject.label)
        text = result.diff(f"a/{label}", f"b/{label}")
        sys.stdout.write(_colorize(text) if color else text)
        refused |= _print_refusals(subject, result, sys.stderr)
    return 2 if refused else 0


def _check(args: argparse.Namespace) -> int:
    pending = refused = False
    for subject, result in _rewrites(args):
        if result is None:
            refused = True
            continue
        for outcome in result.outcomes:
            shown = Outcome.PENDING if outcome.outcome is Outcome.REWRITTEN else outcome.outcome
            print(f"{subject.label}: {outcome.fix}: {shown} ({outcome.message})", file=sys.stderr)
            pending |= shown is Outcome.PENDING
            refused |= shown is Outcome.REFUSED
    return 2 if refused else 1 if pending else 0


def _status(args: argparse.Namespace) -> int:
    report = status(args.target, args.fix)
    h2_version = Environment.detect().h2_version
    if args.json:
        data = {
            "target": report.target,
            "version": report.version,
            "module": report.module,
            "file": report.file,
            "h2_version": h2_version,
            "fixes": [_outcome_json(o) for o in report.fixes],
        }
        print(json.dumps(data, indent=2))
    else:
        width = max(len(o.fix) for o in report.fixes) + 2
        print(f"{'target:':<{width}}{report.target} {report.version}")
        print(f"{'file:':<{width}}{report.file}")
        print(f"{'h2:':<{width}}{h2_version or 'not installed'}")
        for outcome in report.fixes:
            print(f"{outcome.fix + ':':<{width}}{outcome.outcome} ({outcome.message})")
    return 2 if any(o.outcome is Outcome.REFUSED for o in report.fixes) else 0


def _list_fixes(args: argparse.Namespace) -> int:
    width = max(len(fix.name) for fix in _fixes.FIXES) + 2
    for fix in _fixes.FIXES:
        print(f"{fix.name:<{width}}{fix.description}")
        print(f"{'':<{width}}upstream: {fix.upstream}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from ._probe import verify

    locate(args.target)  # fail early, with advice, when it is not installed
    return verify(args.target, sys.stdout)


def _vendor(args: argparse.Namespace) -> int:
    from ._vendor import run

    return run(args.target, args.out, args.fix, sys.stdout)


def _warm(args: argparse.Namespace) -> int:
    from ._prepare import warm

    print(warm(args.target, args.fix))
    return 0


def _run(args: argparse.Namespace) -> int:  # execv does not return
    command = list(args.server)
    if command[:1] == ["--"]:
        command = command[1:]
    server = parse_server_command(command)
    locate(server.target)  # fail early, with advice, when it is not installed
    launcher = launcher_command(server.path0, server.target, args.fix, server.arguments)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, launcher)


# --- helpers -------------------------------------------------------------------


def _rewrites(args: argparse.Namespace) -> list[tuple[_Subject, Rewrite | None]]:
    """Each file's rewrite, or None after printing why there is none: one bad file
    does not hide the other files' results (the exit code is 2 all the same)."""
    if not args.paths:
        located = locate(args.target)
        subject = _Subject(located.relative_file, located.source, located)
        return [(subject, subject.rewrite(args.fix))]
    results: list[tuple[_Subject, Rewrite | None]] = []
    for path in args.paths:
        subject = _Subject(path, "")
        try:
            # advice=None: a file someone named is no package to reinstall.
            subject = _Subject(path, read_source(None, path, advise_reinstall=False))
            results.append((subject, subject.rewrite(args.fix)))
        except H2FixError as error:
            _print_error(error, None if path in str(error) else path)
            results.append((subject, None))
    return results


def _diff_label(path: str) -> str:
    """The path after a/ and b/: as given when relative; an absolute one without its
    root, as git writes it, so `patch -p1` applies the diff from the root."""
    pure = PurePath(path)
    return pure.relative_to(pure.anchor).as_posix() if pure.is_absolute() else pure.as_posix()


def _print_refusals(subject: _Subject, result: Rewrite, out: TextIO) -> bool:
    for error in result.refusals:
        print(f"h2fix: error: {subject.label}: {error}{_advice(error)}", file=out)
    return bool(result.refusals)


def _outcome_json(outcome: FixOutcome) -> dict[str, object]:
    return {
        "fix": outcome.fix,
        "outcome": outcome.outcome.value,
        "message": outcome.message,
        "functions": list(outcome.functions),
    }


def _advice(error: H2FixError) -> str:
    if isinstance(error, UnrecognisedStructureError):
        return (
            "\n  this is not code h2fix knows how to repair safely: pin a release from the "
            "version table in h2fix's README, or upgrade to one fixed upstream"
        )
    return ""  # the other errors' messages already say what to do


def _colorize(diff: str) -> str:
    styles = {"+++": "1", "---": "1", "@@": "36", "+": "32", "-": "31"}
    lines = []
    for line in diff.splitlines(keepends=True):
        style = next((s for prefix, s in styles.items() if line.startswith(prefix)), None)
        body = line.rstrip("\n")
        lines.append(f"\x1b[{style}m{body}\x1b[0m" + line[len(body) :] if style else line)
    return "".join(lines)
