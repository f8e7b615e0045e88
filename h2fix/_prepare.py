"""From an installed target's source to the code objects apply() swaps in.

This is the expensive part of apply() (LibCST, two compiles), so its result is
memoised per process, keyed by everything it depends on.
"""

from __future__ import annotations

import hashlib
import types

from . import _cache
from ._results import Outcome, Record, initialise

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from ._environment import Environment
    from ._errors import H2FixError
    from ._results import FixOutcome, Rewrite
    from ._targets import Located


class Prepared(Record):
    """What apply() swaps in for one fix set, and what it checks the live code against."""

    __slots__ = ("new_code", "original_code", "outcomes", "source")

    #: The rewritten module source, shown by tracebacks and inspect.getsource().
    source: str
    outcomes: tuple[FixOutcome, ...]
    #: qualname -> the code of every definition of that name compiled from the source
    #: on disk, in source order: the live function must be one of them.
    original_code: Mapping[str, tuple[types.CodeType, ...]]
    #: qualname -> the same definitions compiled from the rewritten source, pairwise.
    new_code: Mapping[str, tuple[types.CodeType, ...]]

    def __init__(
        self,
        source: str,
        outcomes: tuple[FixOutcome, ...],
        original_code: Mapping[str, tuple[types.CodeType, ...]],
        new_code: Mapping[str, tuple[types.CodeType, ...]],
    ) -> None:
        initialise(self, source, outcomes, original_code, new_code)

    def changed_definitions(self, qualname: str) -> tuple[int, ...]:
        """Positions (in `original_code[qualname]`) of the definitions the fixes changed."""
        pairs = zip(self.original_code[qualname], self.new_code[qualname])
        return tuple(i for i, (old, new) in enumerate(pairs) if not same_behaviour(old, new))

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


def warm(target: str, fixes: Iterable[str] | None = None) -> str:
    """Store the installed target's entry in the start-up cache now (`h2fix warm`).

    The fix set is what apply() with the same `fixes` asks for. Raises when the entry
    cannot be stored: a refusal, or a cache that is off or unusable.
    """
    from . import _registry as _fixes
    from ._environment import Environment
    from ._errors import CacheUnavailableError
    from ._targets import locate

    located = locate(target)
    wanted = frozenset(fix.name for fix in _fixes.select(fixes))
    environment = Environment.detect()
    key = cache_key(located, wanted, environment)
    prepared = _prepare_through_cache(key, located, wanted, environment)
    if prepared.refusals:
        raise prepared.refusals[0]
    with _cache.opened(key) as slot:
        if slot.load() is None:
            raise CacheUnavailableError(_cache.describe_location())
    return f"{located.target.name} {located.version}: start-up cache filled in {_cache.location()}"


def _entry(prepared: Prepared) -> _cache.Entry:
    return (prepared.source, prepared.outcomes, dict(prepared.original_code),
            dict(prepared.new_code))  # fmt: skip


def _prepare(located: Located, fixes: frozenset[str], environment: Environment) -> Prepared:
    from ._rewrite import rewrite  # deferred: a warm start never rewrites

    result = rewrite(located.source, fixes, environment=environment, strict=False)
    expect_protocol(located, result)
    original_code: dict[str, tuple[types.CodeType, ...]] = {}
    new_code: dict[str, tuple[types.CodeType, ...]] = {}
    if result.changed:
        # dont_inherit: h2fix's own `from __future__` flags must not leak into the target.
        original_module = compile(result.original, located.file, "exec", dont_inherit=True)
        new_module = compile(result.source, patched_filename(located), "exec", dont_inherit=True)
        for qualname in result.changed_functions:
            original = definitions(original_module, qualname)
            new = definitions(new_module, qualname)
            found = _mismatch(original, new)
            if found:
                from ._errors import UnrecognisedStructureError

                raise UnrecognisedStructureError(
                    ",".join(o.fix for o in result.outcomes if qualname in o.functions),
                    qualname,
                    "the rewritten source to define it as often, with the same closures, "
                    "and to change at least one definition",
                    found,
                )
            original_code[qualname], new_code[qualname] = original, new
    return Prepared(result.source, result.outcomes, original_code, new_code)


def expect_protocol(located: Located, result: Rewrite) -> None:
    """Refuse an installed target in which no fix recognises anything at all."""
    if all(o.outcome is Outcome.NOT_APPLICABLE for o in result.outcomes):
        from ._errors import NotAProtocolError

        raise NotAProtocolError(located.target.module, located.file)


def _mismatch(original: tuple[types.CodeType, ...], new: tuple[types.CodeType, ...]) -> str:
    """What is wrong with a pair of definition lists, or "" when they line up."""
    if not original or not new:
        return "no such function"
    if len(original) != len(new):
        return f"{len(original)} definition(s) before the rewrite, {len(new)} after"
    if any(old.co_freevars != rewritten.co_freevars for old, rewritten in zip(original, new)):
        return "another closure"
    if all(same_behaviour(old, rewritten) for old, rewritten in zip(original, new)):
        return "no definition compiles differently"
    return ""


def definitions(module_code: types.CodeType, qualname: str) -> tuple[types.CodeType, ...]:
    """The code of every definition of the function `qualname` in `module_code`, in
    source order.

    A name can be defined more than once (twice in a class body, or in both branches
    of an `if`); all of them are code constants of the enclosing body, and which one
    runs is known only to the running process, so callers compare with the live code.
    """
    found = [module_code]
    for part in qualname.split("."):
        found = [
            const
            for code in found
            for const in code.co_consts
            if isinstance(const, types.CodeType) and const.co_name == part
        ]
    return tuple(sorted(found, key=lambda code: code.co_firstlineno))


def same_behaviour(a: types.CodeType, b: types.CodeType) -> bool:
    """Equal code apart from line numbers and file name.

    Code objects compare their first line, and a rewrite moves every definition
    below the lines it inserts, so `==` cannot tell which definitions it changed.
    """
    return _shape(a) == _shape(b)


def _shape(code: types.CodeType) -> tuple[object, ...]:
    consts = tuple(
        _shape(const) if isinstance(const, types.CodeType) else (type(const), const)
        for const in code.co_consts
    )
    return (
        code.co_name,
        code.co_code,
        getattr(code, "co_exceptiontable", b""),  # Python 3.11+
        code.co_names,
        code.co_varnames,
        code.co_freevars,
        code.co_cellvars,
        code.co_flags,
        code.co_argcount,
        code.co_posonlyargcount,
        code.co_kwonlyargcount,
        consts,
    )
