"""From an installed target's source to the code objects apply() swaps in.

This is the expensive part of apply() (LibCST, two compiles), so its result is
memoised per process, keyed by everything it depends on.
"""

from __future__ import annotations

import hashlib
import types
from collections.abc import Mapping
from dataclasses import dataclass

from . import _cache
from ._environment import Environment
from ._errors import H2FixError, NotAProtocolError, UnrecognisedStructureError
from ._results import FixOutcome, Outcome, Rewrite
from ._rewrite import rewrite
from ._targets import Located


@dataclass(frozen=True)
class Prepared:
    #: The rewritten module source, shown by tracebacks and inspect.getsource().
    source: str
    outcomes: tuple[FixOutcome, ...]
    #: qualname -> code compiled from the source on disk: what the live function must be.
    original_code: Mapping[str, types.CodeType]
    #: qualname -> code compiled from the rewritten source: what apply() swaps in.
    new_code: Mapping[str, types.CodeType]

    @property
    def refusals(self) -> tuple[H2FixError, ...]:
        return tuple(o.error for o in self.outcomes if o.error is not None)


_memo: dict[tuple[object, ...], Prepared] = {}


def patched_filename(located: Located) -> str:
    """The file name of patched code; linecache serves the rewritten source under it."""
    return f"{located.file} (patched by h2fix)"


def cache_key(
    located: Located, fixes: frozenset[str], environment: Environment
) -> tuple[object, ...]:
    digest = hashlib.sha256(located.source.encode()).hexdigest()
    return (located.file, digest, tuple(sorted(fixes)), environment)


def prepare(located: Located, fixes: frozenset[str], environment: Environment) -> Prepared:
    """The prepared code: from this process's memo, the disk cache, or made now."""
    key = cache_key(located, fixes, environment)
    prepared = _memo.get(key) or _prepare_through_cache(key, located, fixes, environment)
    if not prepared.refusals:  # a refusal is re-examined every time
        _memo[key] = prepared
    return prepared


def _prepare_through_cache(
    key: tuple[object, ...], located: Located, fixes: frozenset[str], environment: Environment
) -> Prepared:
    with _cache.opened(key) as slot:
        entry = slot.load()
        if entry is None:
            # Other processes starting cold at the same time wait here for this one's entry.
            with slot.locked():
                entry = slot.load()
                if entry is None:
                    prepared = _prepare(located, fixes, environment)
                    if not prepared.refusals:
                        slot.store(_entry(prepared))
                    return prepared
    return Prepared(*entry)


def _entry(prepared: Prepared) -> _cache.Entry:
    return (prepared.source, prepared.outcomes, dict(prepared.original_code),
            dict(prepared.new_code))  # fmt: skip


def _prepare(located: Located, fixes: frozenset[str], environment: Environment) -> Prepared:
    result = rewrite(located.source, fixes, environment=environment, strict=False)
    expect_protocol(located, result)
    original_code: dict[str, types.CodeType] = {}
    new_code: dict[str, types.CodeType] = {}
    if result.changed:
        # dont_inherit: h2fix's own `from __future__` flags must not leak into the target.
        original_module = compile(result.original, located.file, "exec", dont_inherit=True)
        new_module = compile(result.source, patched_filename(located), "exec", dont_inherit=True)
        for qualname in result.changed_functions:
            original, new = code_at(original_module, qualname), code_at(new_module, qualname)
            if original is None or new is None or original.co_freevars != new.co_freevars:
                raise UnrecognisedStructureError(
                    ",".join(o.fix for o in result.outcomes if qualname in o.functions),
                    qualname,
                    "the rewritten function to compile to one function of the same closure",
                    "no such function" if new is None or original is None else "other closure",
                )
            original_code[qualname], new_code[qualname] = original, new
    return Prepared(result.source, result.outcomes, original_code, new_code)


def expect_protocol(located: Located, result: Rewrite) -> None:
    """Refuse an installed target in which no fix recognises anything at all."""
    if all(o.outcome is Outcome.NOT_APPLICABLE for o in result.outcomes):
        raise NotAProtocolError(located.target.module, located.file)


def code_at(module_code: types.CodeType, qualname: str) -> types.CodeType | None:
    """The code object of the function `qualname` defined in `module_code`."""
    code = module_code
    for part in qualname.split("."):
        # The last definition of a name is the one the class or module keeps.
        candidates = [
            c for c in code.co_consts if isinstance(c, types.CodeType) and c.co_name == part
        ]
        if not candidates:
            return None
        code = candidates[-1]
    return code
