"""The pure core: source text in, rewritten source text and outcomes out.

Every shell (runtime patch, command line, vendoring script) goes through
`rewrite`, so the diff the CLI prints is exactly what `apply()` compiles and
what the vendoring script writes.

For bad code it raises only H2FixError subclasses (for bad argument types, an
ArgumentTypeError, which is also a TypeError): whatever goes wrong inside LibCST
or a fix is mapped to one, so no caller ever sees a traceback for a bad file.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from . import _known
from . import fixes as _fixes
from ._environment import Environment
from ._errors import (
    ArgumentTypeError,
    FixFailedError,
    H2FixError,
    InvalidSourceError,
    UnrecognisedStructureError,
)
from ._limits import check_source
from ._results import FixOutcome, Outcome, Rewrite

if TYPE_CHECKING:
    import libcst as cst


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
    Source that does not compile, or is far larger or deeper than a protocol module,
    raises `InvalidSourceError` before LibCST sees it.
    """
    _expect_arguments(source, environment)
    selected = _fixes.select(fixes)
    environment = environment or Environment.detect()
    known = _known.lookup(source, [fix.name for fix in selected], environment)
    if known is not None:
        return known
    return rewrite_with_libcst(source, selected, environment, strict)


def rewrite_with_libcst(
    source: str, selected: Sequence[_fixes.Fix], environment: Environment, strict: bool
) -> Rewrite:
    """The rewrite computed by the fixes themselves (what the known-release table stores).

    Source no fix can read is refused by every fix (raised when strict)."""
    try:
        tree = _parse(source)
    except InvalidSourceError as error:
        if strict:
            raise
        return Rewrite(source, source, tuple(_refused(fix.name, error) for fix in selected))
    from .fixes._tree import indexed  # deferred: it imports libcst

    outcomes = []
    with indexed(tree):  # every fix's proofs walk the parsed tree: collect it once
        for fix in selected:
            try:
                tree, outcome = fix.load()(tree, environment)
            except (RecursionError, MemoryError) as error:
                failure: H2FixError = _exhausted(error)
                if strict:
                    raise failure from error
                outcome = _refused(fix.name, failure)
            except H2FixError as error:
                if strict or not isinstance(error, UnrecognisedStructureError):
                    raise
                outcome = _refused(fix.name, error)
            except Exception as error:  # a bug in a fix: say so, never a bare traceback
                failure = FixFailedError(fix.name, error)
                if strict:
                    raise failure from error
                outcome = _refused(fix.name, failure)
            outcomes.append(outcome)
    try:
        code = tree.code
    except (RecursionError, MemoryError) as error:
        raise _exhausted(error) from error
    return Rewrite(original=source, source=code, outcomes=tuple(outcomes))


def _parse(source: str) -> cst.Module:
    """The LibCST tree of `source`, once it is known to be safe to hand to LibCST."""
    check_source(source)
    import libcst as cst  # deferred: libcst takes longer to import than the server

    try:
        return cst.parse_module(source)
    except cst.ParserSyntaxError as error:
        # Python compiles it (checked above), LibCST does not: syntax newer than LibCST.
        found = f"LibCST cannot parse it: {str(error).splitlines()[0]}"
        raise InvalidSourceError("Python source that LibCST parses", found) from error
    except (RecursionError, MemoryError) as error:
        raise _exhausted(error) from error


def _refused(fix: str, error: H2FixError) -> FixOutcome:
    return FixOutcome(fix, Outcome.REFUSED, str(error), error=error)


def _expect_arguments(source: object, environment: object) -> None:
    if not isinstance(source, str):
        hint = (
            "decode it first, e.g. importlib.util.decode_source(data)"
            if isinstance(source, (bytes, bytearray))
            else ""
        )
        raise ArgumentTypeError("source", "the text of a module (str)", source, hint)
    if environment is not None and not isinstance(environment, Environment):
        expected = "None (the running one) or an h2fix.Environment"
        raise ArgumentTypeError("environment", expected, environment)


def _exhausted(error: BaseException) -> InvalidSourceError:
    return InvalidSourceError(
        "code LibCST can rewrite within Python's recursion limit and memory",
        f"{type(error).__name__} while rewriting it",
    )
