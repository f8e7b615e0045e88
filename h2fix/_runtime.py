"""The runtime shell: compile the rewritten source and swap the changed functions in.

All or nothing: every check and every compile happens before the first swap,
and the swaps of one call happen under one lock.

Who wants which fix is kept apart from what is installed. `apply()` pins its
fixes until `revert()`; each `patched()` block holds its fixes while it runs.
Whatever is installed is always the rewrite for the union of the pins and the
open blocks, so a block leaves an earlier `apply()` in place, and two blocks
overlapping in two threads keep the fixes until the last of them exits.
"""

from __future__ import annotations

import contextlib
import importlib
import linecache
import logging
import threading
import types
from collections import Counter

from . import _live
from . import _registry as _fixes
from ._environment import Environment
from ._live import Slot
from ._prepare import patched_filename, prepare
from ._results import FixOutcome, Outcome, Record, Report, initialise, replace
from ._targets import get_target, import_failure, locate

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from typing import Any

    from ._errors import H2FixError
    from ._prepare import Prepared
    from ._targets import Located

logger = logging.getLogger("h2fix")

# One lock for all targets: apply() is rare and fast, simplicity wins.
_lock = threading.RLock()


class _Applied(Record):
    """What is installed in one target now."""

    __slots__ = ("filename", "fixes", "located", "module", "outcomes", "requested", "slots")

    #: The patched module and its file, so revert() needs neither the source nor an import.
    module: types.ModuleType
    located: Located
    #: The fix set the installed code was rewritten with (what was asked for).
    requested: frozenset[str]
    #: The fixes that changed code.
    fixes: frozenset[str]
    #: Every attribute h2fix replaced, aliases included.
    slots: tuple[Slot, ...]
    #: The linecache key holding the rewritten source.
    filename: str
    outcomes: tuple[FixOutcome, ...]

    def __init__(
        self,
        *,
        module: types.ModuleType,
        located: Located,
        requested: frozenset[str],
        fixes: frozenset[str],
        slots: tuple[Slot, ...],
        filename: str,
        outcomes: tuple[FixOutcome, ...],
    ) -> None:
        initialise(self, module, located, requested, fixes, slots, filename, outcomes)


class _Holds:
    """Who wants which fixes in one target."""

    __slots__ = ("blocks", "pinned")

    def __init__(self) -> None:
        #: Fixes asked for by apply(): kept until revert().
        self.pinned: set[str] = set()
        #: Fix name -> how many open patched() blocks asked for it.
        self.blocks: Counter[str] = Counter()

    def wanted(self) -> frozenset[str]:
        return frozenset(self.pinned) | frozenset(f for f, n in self.blocks.items() if n > 0)


_applied: dict[str, _Applied] = {}
_holds: dict[str, _Holds] = {}


def apply(
    target: str = "hypercorn",
    fixes: Iterable[str] | None = None,
    strict: bool = True,
    *,
    missing_ok: bool = False,
) -> Report:
    """Repair the installed target in this process. Idempotent and thread-safe.

    With strict=True a fix that does not recognise the code raises and nothing
    changes; with strict=False it is logged, reported as refused, and the
    other fixes are applied. With missing_ok=True a target that is not installed
    is not an error: the report says so (`report.installed` is False).
    """
    wanted = _names(fixes)
    with _lock:
        report = _apply(target, wanted, strict, missing_ok)
        if report.installed:
            _holds.setdefault(target, _Holds()).pinned.update(wanted)
        return report


def revert(target: str = "hypercorn") -> None:
    """Put back the exact function objects apply() replaced. A no-op if none were.

    It undoes every fix in the target, including those of open patched() blocks.
    """
    get_target(target)  # a misspelt name must not pass for "nothing to revert"
    with _lock:
        state = _applied.get(target)
        if state is not None:
            for slot in state.slots:
                _live.expect_ours(slot, state.located.file)
        _holds.pop(target, None)
        if state is not None:
            if _live.reloaded_since(state.module, state.slots):
                logger.warning(
                    "h2fix: %s was reloaded after apply(); the original methods are back in "
                    "the class h2fix patched (the one %s serves); the reloaded module's class "
                    "was never patched",
                    state.module.__name__,
                    state.located.target.served_class,
                )
            _uninstall(target, state)


def status(
    target: str = "hypercorn",
    fixes: Iterable[str] | None = None,
    *,
    missing_ok: bool = False,
) -> Report:
    """What apply() would do now. Changes nothing and never raises for a refusal.

    It does raise FunctionReplacedError when what h2fix installed was replaced since.
    """
    wanted = _names(fixes)
    with _lock:
        try:
            located = locate(target)
        except ImportError as error:
            if missing_ok and _is_not_installed(error):
                return _not_installed(target, wanted)
            raise
        state = _applied.get(target)
        if state is not None:
            for slot in state.slots:
                _live.expect_ours(slot, state.located.file)
        prepared = prepare(located, wanted, Environment.detect())
        refusal = _dry_run(prepared, located, state)
    done = state.fixes if state else frozenset()
    outcomes = tuple(
        _refused(o, refusal)
        if refusal is not None and o.outcome is Outcome.REWRITTEN and o.fix not in done
        else replace(o, outcome=Outcome.ALREADY_APPLIED if o.fix in done else Outcome.PENDING)
        if o.outcome is Outcome.REWRITTEN
        else o
        for o in prepared.outcomes
    )
    return _report(located, outcomes)


def _dry_run(prepared: Prepared, located: Located, state: _Applied | None) -> H2FixError | None:
    """Why apply() would refuse to swap `prepared` in, from the live objects, or None."""
    if not prepared.new_code:
        return None
    from ._errors import H2FixError

    try:
        # Already imported: locate() imports the package, whose __init__ imports it.
        module = _import(located)
        if state is not None:
            _live.expect_same_class(module, state.slots, located.target)
        slots = _plan(prepared, located, module, state)
        _live.expect_reachable(located.target, module, slots)
    except H2FixError as error:
        return error
    return None


def _refused(outcome: FixOutcome, error: H2FixError) -> FixOutcome:
    return replace(outcome, outcome=Outcome.REFUSED, message=str(error), error=error)


@contextlib.contextmanager
def patched(
    target: str = "hypercorn",
    fixes: Iterable[str] | None = None,
    *,
    missing_ok: bool = False,
) -> Iterator[Report]:
    """Apply on entry; on exit undo what only this block wanted.

    Fixes applied before the block (by apply() or an enclosing block) stay; blocks
    that overlap, nested or in other threads, keep a fix in place until the last
    of them that wants it exits. A revert() inside a block undoes everything, and
    the block's exit then changes nothing.
    """
    wanted = _names(fixes)
    with _lock:
        report = _apply(target, wanted, True, missing_ok)
        holds = _holds.setdefault(target, _Holds()) if report.installed else None
        if holds is not None:
            holds.blocks.update(wanted)
    try:
        yield report
    finally:
        if holds is not None:
            _release(target, holds, wanted)


def patch_h2_protocol_minimal(target: str = "hypercorn") -> Report:
    """The trailers fix only."""
    return apply(target, fixes=["trailers"])


def patch_h2_protocol(target: str = "hypercorn") -> Report:
    """Every fix the installed versions need."""
    return apply(target)


# --- helpers -----------------------------------------------------------------


def _names(fixes: Iterable[str] | None) -> frozenset[str]:
    return frozenset(fix.name for fix in _fixes.select(fixes))


def _apply(target: str, wanted: frozenset[str], strict: bool, missing_ok: bool) -> Report:
    """Install `wanted` on top of what is held; report on `wanted` only."""
    get_target(target)  # a wrong type or name, before it is used as a key
    holds = _holds.get(target)
    try:
        held = holds.wanted() if holds else frozenset()
        located, outcomes = _install(target, wanted | held, strict)
    except ImportError as error:
        if missing_ok and _is_not_installed(error):
            return _not_installed(target, wanted)
        raise
    return _report(located, [o for o in outcomes if o.fix in wanted])


def _release(target: str, holds: _Holds, wanted: frozenset[str]) -> None:
    """A patched() block ends: narrow what is installed to what is still wanted."""
    with _lock:
        if _holds.get(target) is not holds:
            return  # revert() ran inside the block and already undid everything
        holds.blocks.subtract(wanted)
        still = holds.wanted()
        if still:
            # Refusals were reported when these fixes were applied: do not raise them now.
            _install(target, still, strict=False)
            return
        del _holds[target]
        state = _applied.get(target)
        if state is not None:
            for slot in state.slots:
                _live.expect_ours(slot, state.located.file)
            _uninstall(target, state)


def _install(
    target: str, requested: frozenset[str], strict: bool
) -> tuple[Located, tuple[FixOutcome, ...]]:
    """Make the installed code the rewrite for exactly `requested`; outcomes per fix."""
    located = locate(target)
    module = _import(located)
    state = _applied.get(target)
    if state is not None:
        for slot in state.slots:
            _live.expect_ours(slot, located.file)
        _live.expect_same_class(module, state.slots, located.target)
        if state.requested == requested:
            _handle_refusals(tuple(o.error for o in state.outcomes if o.error), strict)
            return located, _as_already_applied(state.outcomes)

    prepared = prepare(located, requested, Environment.detect())
    _handle_refusals(prepared.refusals, strict)
    before = state.fixes if state else frozenset()
    outcomes = tuple(
        replace(o, outcome=Outcome.ALREADY_APPLIED if o.fix in before else Outcome.APPLIED)
        if o.outcome is Outcome.REWRITTEN
        else o
        for o in prepared.outcomes
    )
    if not prepared.new_code:
        if state is not None:
            _uninstall(target, state)
        return located, outcomes

    slots = _plan(prepared, located, module, state)
    _live.expect_reachable(located.target, module, slots)
    replaced = {(id(s.owner), s.name) for s in slots}
    restored = [s for s in (state.slots if state else ()) if (id(s.owner), s.name) not in replaced]
    _swap(
        [(s.owner, s.name, s.patched) for s in slots]
        + [(s.owner, s.name, s.original) for s in restored]
    )
    # Forget the previous text only after the new one is in place.
    if state is not None:
        linecache.cache.pop(state.filename, None)
    filename = patched_filename(located)
    _register_source(filename, prepared.source)
    _applied[target] = _Applied(
        module=module,
        located=located,
        requested=requested,
        fixes=frozenset(o.fix for o in prepared.outcomes if o.outcome is Outcome.REWRITTEN),
        slots=tuple(slots),
        filename=filename,
        outcomes=outcomes,
    )
    new = [o.fix for o in outcomes if o.outcome is Outcome.APPLIED]
    if new:
        logger.info("h2fix: repaired %s %s: %s", target, located.version, ", ".join(new))
    undone = sorted(before - _applied[target].fixes)
    if undone:
        logger.info("h2fix: reverted %s %s: %s", target, located.version, ", ".join(undone))
    return located, outcomes


def _uninstall(target: str, state: _Applied) -> None:
    """Put every original back (the slots were checked by the caller)."""
    _swap([(s.owner, s.name, s.original) for s in state.slots])
    linecache.cache.pop(state.filename, None)
    del _applied[target]
    fixes = ", ".join(sorted(state.fixes))
    logger.info("h2fix: reverted %s %s: %s", target, state.located.version, fixes)


def _plan(
    prepared: Prepared, located: Located, module: types.ModuleType, state: _Applied | None
) -> list[Slot]:
    """The slots to install: every name bound to each changed function's live definition."""
    slots: list[Slot] = []
    for qualname, new_code in prepared.new_code.items():
        owner, name = _live.owner_and_name(module, qualname)
        previous = [s for s in state.slots if s.qualname == qualname] if state else []
        if previous:
            # Found and checked when it was first replaced; h2fix's own function is there now.
            original = previous[0].original
            names = tuple(s.name for s in previous)
        else:
            original = _live.live_function(owner, name, qualname, located.file)
            names = _live.aliases(owner, original, name)
        candidates = prepared.original_code[qualname]
        live = _live.live_definition(original, candidates, qualname, located)
        _live.expect_live_changed(prepared, qualname, live, located.file)
        function = _rebuild(original, new_code[live])
        slots += [Slot(qualname, owner, n, original, function, function.__code__) for n in names]
    return slots


def _import(located: Located) -> types.ModuleType:
    try:
        return importlib.import_module(located.target.module)
    except ImportError as error:
        raise import_failure(located.target, error) from error


def _report(located: Located, outcomes: Iterable[FixOutcome]) -> Report:
    return Report(
        target=located.target.name,
        module=located.target.module,
        version=located.version,
        file=located.file,
        fixes=tuple(outcomes),
    )


def _is_not_installed(error: ImportError) -> bool:
    # Imported here: a warm apply() raises no error, and loading them costs (see _targets).
    from ._errors import TargetNotFoundError

    return isinstance(error, TargetNotFoundError)


def _not_installed(target: str, wanted: frozenset[str]) -> Report:
    module = get_target(target).module
    message = f"{module} cannot be imported; nothing to repair"
    outcomes = [
        FixOutcome(fix.name, Outcome.NOT_INSTALLED, message)
        for fix in _fixes.select(sorted(wanted))
    ]
    return Report(target=target, module=module, version="", file="", fixes=tuple(outcomes))


def _as_already_applied(outcomes: tuple[FixOutcome, ...]) -> tuple[FixOutcome, ...]:
    return tuple(
        replace(o, outcome=Outcome.ALREADY_APPLIED) if o.outcome is Outcome.APPLIED else o
        for o in outcomes
    )


def _handle_refusals(refusals: tuple[H2FixError, ...], strict: bool) -> None:
    if refusals and strict:
        raise refusals[0]
    for error in refusals:
        logger.warning("h2fix: %s", error)


def _rebuild(original: types.FunctionType, code: types.CodeType) -> types.FunctionType:
    """A new function running `code`, otherwise indistinguishable from `original`."""
    function = types.FunctionType(
        code, original.__globals__, original.__name__, original.__defaults__, original.__closure__
    )
    function.__kwdefaults__ = (
        dict(original.__kwdefaults__) if original.__kwdefaults__ is not None else None
    )
    function.__annotations__ = dict(original.__annotations__)
    function.__doc__ = original.__doc__
    function.__qualname__ = original.__qualname__
    function.__module__ = original.__module__
    function.__dict__.update(original.__dict__)
    if hasattr(original, "__type_params__"):  # Python 3.12+
        setattr(function, "__type_params__", original.__type_params__)  # noqa: B010
    return function


def _swap(assignments: list[tuple[Any, str, types.FunctionType]]) -> None:
    done: list[tuple[Any, str, Any]] = []
    try:
        for owner, name, function in assignments:
            done.append((owner, name, vars(owner)[name]))
            setattr(owner, name, function)
    except BaseException:
        for owner, name, previous in reversed(done):
            setattr(owner, name, previous)
        raise


def _register_source(filename: str, source: str) -> None:
    # mtime None: linecache.checkcache() keeps the entry, as for sources it cannot stat.
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
