"""The `h2fix` command line. Every subcommand goes through `rewrite` and the targets.

Exit codes: 0 nothing to do (or done), 1 `check` found a fix to apply or
`verify` found the repaired server wrong, 2 an error (with what to do).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from . import __version__
from . import fixes as _fixes
from ._environment import Environment
from ._errors import H2FixError, UnrecognisedStructureError
from ._prepare import expect_protocol
from ._results import FixOutcome, Outcome, Rewrite
from ._rewrite import rewrite
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
        """What apply() would do to this file; an installed target is checked as apply() does."""
        result = rewrite(self.source, fixes, strict=False)
        if self.located is not None:
            expect_protocol(self.located, result)
        return result


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except H2FixError as error:
        print(f"h2fix: error: {error}{_advice(error)}", file=sys.stderr)
        return 2
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="h2fix", description="Repair HTTP/2 trailers in Hypercorn 0.17.x and anycorn 0.18.x."
    )
    parser.add_argument("--version", action="version", version=f"h2fix {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help, description=help)

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

    run = command("run", "serve with the fix applied: h2fix run -- hypercorn app:app [options]")
    run.add_argument("--fix", action="append", choices=[fix.name for fix in _fixes.FIXES])
    run.add_argument("server", nargs=argparse.REMAINDER, help="the server's command line")
    run.set_defaults(handler=_run)
    return parser


# --- subcommands ---------------------------------------------------------------


def _diff(args: argparse.Namespace) -> int:
    color = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    refused = False
    for subject in _subjects(args):
        result = subject.rewrite(args.fix)
        text = result.diff(f"a/{subject.label}", f"b/{subject.label}")
        sys.stdout.write(_colorize(text) if color else text)
        refused |= _print_refusals(subject, result, sys.stderr)
    return 2 if refused else 0


def _check(args: argparse.Namespace) -> int:
    pending = refused = False
    for subject in _subjects(args):
        result = subject.rewrite(args.fix)
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


def _run(args: argparse.Namespace) -> int:  # noqa: RET503 - execv does not return
    command = list(args.server)
    if command[:1] == ["--"]:
        command = command[1:]
    server = Path(command[0]).name if command else ""
    if server not in TARGETS:
        print(
            f"h2fix: error: expected a server command ({' or '.join(TARGETS)}), "
            f"found {server or 'nothing'}; e.g. h2fix run -- hypercorn app:app",
            file=sys.stderr,
        )
        return 2
    locate(server)  # fail early, with advice, when it is not installed
    if args.fix:
        os.environ["H2FIX_RUN_FIXES"] = ",".join(args.fix)
    launcher = [sys.executable, "-m", "h2fix._launch", server, *command[1:]]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, launcher)


# --- helpers -------------------------------------------------------------------


def _subjects(args: argparse.Namespace) -> list[_Subject]:
    if args.paths:
        return [_Subject(path, read_source(path, path)) for path in args.paths]
    located = locate(args.target)
    return [_Subject(located.relative_file, located.source, located)]


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
