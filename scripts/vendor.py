#!/usr/bin/env python3
"""Write a patched copy of an installed Hypercorn (or anycorn) package to a directory.

    python scripts/vendor.py --target hypercorn --out vendored/

Copies the whole package tree, rewrites the files h2fix repairs (each gets a
header naming the original version, the fixes and the h2fix version, and a
.diff beside it), then imports the copy in a fresh interpreter with --out first
on sys.path and checks that nothing is left to fix. Re-running gives identical
output. Exit codes: 0 written and verified, 2 refused or failed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import h2fix
from h2fix._targets import locate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--target", default="hypercorn", choices=["hypercorn", "anycorn"])
    parser.add_argument("--out", required=True, type=Path, help="directory to write into")
    parser.add_argument("--fix", action="append", help="only this fix (repeatable)")
    args = parser.parse_args(argv)
    try:
        written = vendor(args.target, args.out, args.fix)
    except (h2fix.H2FixError, VendorError) as error:
        print(f"vendor: error: {error}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


class VendorError(Exception):
    pass


def vendor(target: str, out: Path, fixes: list[str] | None) -> list[Path]:
    out = out.resolve()
    _refuse_site_packages(out)
    located = locate(target)
    package = Path(located.file).parents[located.target.module.count(".") - 1]
    result = h2fix.rewrite(located.source, fixes)  # strict: a refusal stops here
    if not result.changed:
        raise VendorError(
            f"{target} {located.version}: nothing to fix "
            f"({'; '.join(str(o) for o in result.outcomes)})"
        )
    applied = [o.fix for o in result.outcomes if o.outcome is h2fix.Outcome.REWRITTEN]
    header = (
        f"# Patched by h2fix {h2fix.__version__} from {target} {located.version}"
        f" with fixes: {', '.join(applied)}.\n"
        f"# The change is in {Path(located.file).name}.diff beside this file.\n"
    )
    relative = Path(located.relative_file)

    # Build the copy beside the destination, then swap it in: never a half-written tree.
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".h2fix-") as staging:
        tree = Path(staging) / target
        shutil.copytree(package, tree, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        (Path(staging) / relative).write_text(_with_header(result.source, header))
        diff = result.diff(f"a/{relative.as_posix()}", f"b/{relative.as_posix()}")
        (Path(staging) / relative.with_name(relative.name + ".diff")).write_text(diff)
        _verify_copy(Path(staging), target)
        destination = out / target
        if destination.exists():
            shutil.rmtree(destination)
        tree.rename(destination)
    return [out / relative, out / relative.with_name(relative.name + ".diff")]


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


def _refuse_site_packages(out: Path) -> None:
    roots = {*site.getsitepackages(), site.getusersitepackages()}
    roots |= {sysconfig.get_path(name) for name in ("purelib", "platlib")}
    for root in filter(None, roots):
        root_path = Path(root).resolve()
        if out == root_path or root_path in out.parents:
            raise VendorError(
                f"expected --out outside site-packages, found {out} inside {root_path}: "
                "writing there would shadow or corrupt the installed package"
            )


_CHECK = """
import sys, h2fix
report = h2fix.status({target!r})
assert report.file.startswith({root!r}), "imported " + report.file + ", not the copy"
left = [str(fix) for fix in report.fixes if fix.outcome.changes_code or fix.error]
print("; ".join(left))
"""


def _verify_copy(root: Path, target: str) -> None:
    """Import the copy in a fresh interpreter, first on sys.path; nothing may be left to fix."""
    code = _CHECK.format(target=target, root=str(root))
    env = {**os.environ, "PYTHONPATH": str(root)}
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    if completed.returncode != 0 or completed.stdout.strip():
        raise VendorError(
            f"expected the copy to need no fix, found: "
            f"{(completed.stdout + completed.stderr).strip()[-2000:]}"
        )


if __name__ == "__main__":
    raise SystemExit(main())
