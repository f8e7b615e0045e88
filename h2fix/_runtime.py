"""The runtime shell: compile the rewritten source and swap the changed functions in.

All or nothing: every check and every compile happens before the first swap,
and the swaps of one call happen under one lock.
"""

from __future__ import annotations

import contextlib
import importlib
import linecache
import logging
import threading
import types
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from . import fixes as _fixes
from ._environment import Environment
from ._errors import FunctionReplacedError, H2FixError, SourceChangedError
from ._prepare import Prepared, patched_filename, prepare
from ._results import FixOutcome, Outcome, Report
from ._targets import Located, get_target, import_failure, locate

logger = logging.getLogger("h2fix")

# One lock for all targets: apply() is rare and fast, simplicity wins.
_lock = threading.RLock()


@dataclass(frozen=True)
class _Applied:
    #: The patched module and its file, so revert() needs neither the source nor an import.
    module: types.ModuleType
    file: str
    fixes: frozenset[str]
    #: qualname -> the function that was there before h2fix touched it
    originals: dict[str, types.FunctionType]
    #: qualname -> the function h2fix put there
    patched: dict[str, types.FunctionType]
    #: The linecache key holding the rewritten source.
    filename: str
    outcomes: tuple[FixOutcome, ...]


_applied: dict[str, _Applied] = {}


def apply(
    target: str = "hypercorn", fixes: Iterable[str] | None = None, strict: bool = True
) -> Report:
    """Repair the installed target in this process. Idempotent and thread-safe.

    With strict=True a fix that does not recognise the code raises and nothing
    changes; with strict=False it is logged, reported as refused, and the
    other fixes are applied.
    """
    wanted = frozenset(fix.name for fix in _fixes.select(fixes))
    with _lock:
        located = locate(target)
        module = _import(located)
        state = _applied.get(target)
        if state is not None:
            for qualname, function in state.patched.items():
                _expect_ours(module, qualname, function, located.file)
            if wanted <= state.fixes:
                return _report(located, _previously_applied(state.outcomes, wanted))
            # A wider set than before: rewrite the original with both sets.
            wanted |= state.fixes

        prepared = prepare(located, wanted, Environment.detect())
        _handle_refusals(prepared.refusals, strict)
        if not prepared.new_code:
            return _report(located, prepared.outcomes)

        pairs = _replacements(prepared, located, module, state)
        replacements = {qualname: new for qualname, (_, new) in pairs.items()}
        originals = dict(state.originals) if state else {}
        originals.update((qualname, original) for qualname, (original, _) in pairs.items())
        _swap(module, replacements)
        before = state.fixes if state else frozenset()
        outcomes = tuple(
            replace(o, outcome=Outcome.ALREADY_APPLIED if o.fix in before else Outcome.APPLIED)
            if o.outcome is Outcome.REWRITTEN
            else o
            for o in prepared.outcomes
        )
        # Forget the previous text only after the new one is in place.
        if state is not None:
            linecache.cache.pop(state.filename, None)
        filename = patched_filename(located)
        _register_source(filename, prepared.source)
        _applied[target] = _Applied(
            module=module,
            file=located.file,
            fixes=frozenset(o.fix for o in prepared.outcomes if o.outcome is Outcome.REWRITTEN),
            originals=originals,
            patched=replacements,
            filename=filename,
            outcomes=outcomes,
        )
        logger.debug("h2fix applied to %s %s: %s", target, located.version, outcomes)
        return _report(located, outcomes)


def revert(target: str = "hypercorn") -> None:
    """Put back the exact function objects apply() replaced. A no-op if none were."""
    get_target(target)  # a misspelt name must not pass for "nothing to revert"
    with _lock:
        state = _applied.get(target)
        if state is None:
            return
        for qualname, function in state.patched.items():
            _expect_ours(state.module, qualname, function, state.file)
        _swap(state.module, state.originals)
        linecache.cache.pop(state.filename, None)
        del _applied[target]


def status(target: str = "hypercorn", fixes: Iterable[str] | None = None) -> Report:
    """What apply() would do now. Changes nothing and never raises for a refusal."""
    wanted = [fix.name for fix in _fixes.select(fixes)]
    with _lock:
        located = locate(target)
        state = _applied.get(target)
        prepared = prepare(located, frozenset(wanted), Environment.detect())
    done = state.fixes if state else frozenset()
    outcomes = tuple(
        replace(o, outcome=Outcome.ALREADY_APPLIED if o.fix in done else Outcome.PENDING)
        if o.outcome is Outcome.REWRITTEN
        else o
        for o in prepared.outcomes
    )
    return _report(located, outcomes)


@contextlib.contextmanager
def patched(target: str = "hypercorn", fixes: Iterable[str] | None = None) -> Iterator[Report]:
    """Apply on entry; on exit revert, unless it had been applied before entry."""
    report = apply(target, fixes)
    try:
        yield report
    finally:
        if report.changed:
            revert(target)


def patch_h2_protocol_minimal(target: str = "hypercorn") -> Report:
    """The trailers fix only."""
    return apply(target, fixes=["trailers"])


def patch_h2_protocol(target: str = "hypercorn") -> Report:
    """Every fix the installed versions need."""
    return apply(target)


# --- helpers -----------------------------------------------------------------


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


def _previously_applied(
    outcomes: tuple[FixOutcome, ...], wanted: frozenset[str]
) -> tuple[FixOutcome, ...]:
    return tuple(
        replace(o, outcome=Outcome.ALREADY_APPLIED) if o.outcome is Outcome.APPLIED else o
        for o in outcomes
        if o.fix in wanted
    )


def _handle_refusals(refusals: tuple[H2FixError, ...], strict: bool) -> None:
    if refusals and strict:
        raise refusals[0]
    for error in refusals:
        logger.warning("h2fix: %s", error)


def _owner_and_name(module: types.ModuleType, qualname: str) -> tuple[Any, str]:
    *path, name = qualname.split(".")
    owner: Any = module
    for part in path:
        owner = getattr(owner, part)
    return owner, name


def _live(module: types.ModuleType, qualname: str, file: str) -> types.FunctionType:
    """The function object currently stored under `qualname` (not inherited)."""
    owner, name = _owner_and_name(module, qualname)
    function = vars(owner).get(name)
    if not isinstance(function, types.FunctionType):
        raise FunctionReplacedError(qualname, file, f"{function!r} in its place")
    return function


def _expect_ours(
    module: types.ModuleType, qualname: str, ours: types.FunctionType, file: str
) -> None:
    live = _live(module, qualname, file)
    if live is not ours:
        raise FunctionReplacedError(qualname, f"{file} as patched by h2fix", _describe(live))


def _describe(function: types.FunctionType) -> str:
    code = function.__code__
    where = f"{code.co_filename}:{code.co_firstlineno}"
    return f"{function.__module__}.{function.__qualname__} from {where}"


def _replacements(
    prepared: Prepared, located: Located, module: types.ModuleType, state: _Applied | None
) -> dict[str, tuple[types.FunctionType, types.FunctionType]]:
    """qualname -> (the original function, the one to swap in) for each changed function."""
    pairs = {}
    for qualname, code in prepared.new_code.items():
        if state is not None and qualname in state.originals:
            original = state.originals[qualname]  # checked when it was first replaced
        else:
            original = _live(module, qualname, located.file)
            _expect_defined_in_file(original, prepared.original_code[qualname], qualname, located)
        pairs[qualname] = (original, _rebuild(original, code))
    return pairs


def _expect_defined_in_file(
    live: types.FunctionType, disk: types.CodeType, qualname: str, located: Located
) -> None:
    """Refuse unless `live` is what the file on disk defines, so we never patch a stranger."""
    if live.__code__ == disk:
        return
    if live.__code__.co_filename != located.file or live.__qualname__ != qualname:
        raise FunctionReplacedError(qualname, located.file, _describe(live))
    raise SourceChangedError(located.target.module, located.file, qualname)


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


def _swap(module: types.ModuleType, functions: dict[str, types.FunctionType]) -> None:
    done: list[tuple[Any, str, Any]] = []
    try:
        for qualname, function in functions.items():
            owner, name = _owner_and_name(module, qualname)
            done.append((owner, name, vars(owner)[name]))
            setattr(owner, name, function)
    except BaseException:
        for owner, name, previous in reversed(done):
            setattr(owner, name, previous)
        raise


def _register_source(filename: str, source: str) -> None:
    # mtime None: linecache.checkcache() keeps the entry, as for sources it cannot stat.
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
