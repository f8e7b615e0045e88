"""The pure core: source text in, rewritten source text and outcomes out.

Every shell (runtime patch, command line, vendoring script) goes through
`rewrite`, so the diff the CLI prints is exactly what `apply()` compiles and
what the vendoring script writes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from . import _known
from . import fixes as _fixes
from ._environment import Environment
from ._errors import UnrecognisedStructureError
from ._results import FixOutcome, Outcome, Rewrite


def rewrite(
    source: str,
    fixes: Iterable[str] | None = None,
    *,
    environment: Environment | None = None,
    strict: bool = True,
) -> Rewrite:
    """Rewrite `source` (a server's protocol/h2.py) with the named fixes (all by default).

    A fix that does not recognise the code raises `UnrecognisedStructureError`;
    with strict=False it is recorded as refused instead and the other fixes still run.
    `environment` defaults to the running one (the installed h2). A release file
    h2fix knows is rewritten from its shipped table, without LibCST, to the same result.
    """
    selected = _fixes.select(fixes)
    environment = environment or Environment.detect()
    known = _known.lookup(source, [fix.name for fix in selected], environment)
    if known is not None:
        return known
    return rewrite_with_libcst(source, selected, environment, strict)


def rewrite_with_libcst(
    source: str, selected: Sequence[_fixes.Fix], environment: Environment, strict: bool
) -> Rewrite:
    """The rewrite computed by the fixes themselves (what the known-release table stores)."""
    import libcst as cst  # deferred: libcst takes longer to import than the server

    try:
        tree = cst.parse_module(source)
    except cst.ParserSyntaxError as error:
        raise UnrecognisedStructureError(
            ",".join(fix.name for fix in selected),
            "<module>",
            "Python source that parses",
            str(error).splitlines()[0],
        ) from error
    outcomes = []
    for fix in selected:
        try:
            tree, outcome = fix.load()(tree, environment)
        except UnrecognisedStructureError as error:
            if strict:
                raise
            outcome = FixOutcome(fix.name, Outcome.REFUSED, str(error), error=error)
        outcomes.append(outcome)
    return Rewrite(original=source, source=tree.code, outcomes=tuple(outcomes))
