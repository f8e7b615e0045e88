"""Rewrites of released files, shipped with h2fix, so known releases need no LibCST.

`scripts/known_releases.py` runs the LibCST fixes on every release file h2fix
knows and stores, per (file hash, fix set, environment facts), each fix's outcome
and the edits as line ranges. The stored sets are the ones start-up asks for:
all fixes (`apply()`) and each fix alone (`patch_h2_protocol_minimal()`); fixes
run in sequence and a later one may build on an earlier one's output, so a set
is stored whole, never composed. A lookup applies the edits to the file whose
SHA-256 matches; the result is byte for byte what the fixes produce (a test
regenerates the table from the releases and compares). Anything else - unknown
file, other h2 facts, another fix set - is a miss, and the caller takes the
LibCST path.

H2FIX_NO_KNOWN_RELEASES=1 turns the table off.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence

from ._environment import Environment
from ._results import FixOutcome, Outcome, Rewrite

#: (start, end, new lines): original lines [start, end) become the new lines.
Edit = tuple[int, int, tuple[str, ...]]
#: Per fix: (outcome value, message, changed functions).
Outcomes = tuple[tuple[str, str, tuple[str, ...]], ...]

#: Stands for the installed h2's version in stored messages.
H2_VERSION_MARK = "\x00h2-version\x00"


def facts(environment: Environment) -> str:
    """The environment as the fixes read it, without the h2 version number itself."""
    return repr((environment.request_received_parameters, environment.request_received_required))


def digest(source: str) -> str:
    return hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest()


def lookup(source: str, fixes: Sequence[str], environment: Environment) -> Rewrite | None:
    """The rewrite of a known release file, or None when the table does not know it."""
    if os.environ.get("H2FIX_NO_KNOWN_RELEASES", "") not in ("", "0"):
        return None
    from ._known_releases import ENTRIES

    entry = ENTRIES.get((digest(source), ",".join(fixes), facts(environment)))
    if entry is None:
        return None
    stored, edits = entry
    version = environment.h2_version or "unknown"
    outcomes = tuple(
        FixOutcome(fix, Outcome(outcome), message.replace(H2_VERSION_MARK, version), functions)
        for fix, (outcome, message, functions) in zip(fixes, stored)
    )
    new_source = apply_edits(source, edits)
    if new_source is None:
        return None
    return Rewrite(original=source, source=new_source, outcomes=outcomes)


def apply_edits(source: str, edits: Iterable[Edit]) -> str | None:
    """`source` with the edits made; None if any two overlap."""
    lines = source.splitlines(keepends=True)
    result: list[str] = []
    position = 0
    for start, end, new in sorted(edits):
        if start < position or end > len(lines):
            return None
        result += lines[position:start]
        result += new
        position = end
    result += lines[position:]
    return "".join(result)


def edits_between(original: str, rewritten: str) -> tuple[Edit, ...]:
    """The line edits that turn `original` into `rewritten`."""
    import difflib  # only the table's builder needs it

    old = original.splitlines(keepends=True)
    new = rewritten.splitlines(keepends=True)
    matcher = difflib.SequenceMatcher(a=old, b=new, autojunk=False)
    return tuple(
        (i1, i2, tuple(new[j1:j2]))
        for tag, i1, i2, j1, j2 in matcher.get_opcodes()
        if tag != "equal"
    )
