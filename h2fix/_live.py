"""What the running process really uses, as opposed to what the file on disk says.

The file can define a method twice, bind it under a second name, or hold a class
the server does not serve (a reload, an override). Each question here is answered
from the live objects, so apply() patches what runs, and only that.
"""

from __future__ import annotations

import importlib
import sys
import types

from ._results import Record, initialise

# Errors are imported where they are raised: a warm apply() raises none (see _targets).

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from typing import Any

    from ._prepare import Prepared
    from ._targets import Located, Target


class Slot(Record):
    """One attribute h2fix replaces: a method's own name, or an alias of it."""

    __slots__ = ("code", "name", "original", "owner", "patched", "qualname")

    #: The function's qualified name as the fixes report it, e.g. "H2Protocol.stream_send".
    qualname: str
    owner: Any
    name: str
    #: patched.__code__ when h2fix installed it: someone may swap the code in place.
    code: types.CodeType

    def __init__(
        self,
        qualname: str,
        owner: Any,
        name: str,
        original: types.FunctionType,
        patched: types.FunctionType,
        code: types.CodeType,
    ) -> None:
        initialise(self, qualname, owner, name, original, patched, code)
        # Declared here, not in the class body, where mypy would read a function
        # type as a method (bound on access).
        self.original: types.FunctionType
        self.patched: types.FunctionType

    @property
    def where(self) -> str:
        owner = getattr(self.owner, "__qualname__", getattr(self.owner, "__name__", "?"))
        return f"{owner}.{self.name}"


def owner_and_name(module: types.ModuleType, qualname: str) -> tuple[Any, str]:
    """The object holding `qualname` in the module as it is now, and the attribute name."""
    *path, name = qualname.split(".")
    owner: Any = module
    for part in path:
        owner = getattr(owner, part)
    return owner, name


def live_function(owner: Any, name: str, qualname: str, file: str) -> types.FunctionType:
    """The function stored under `name` in `owner` itself (not inherited)."""
    function = vars(owner).get(name)
    if not isinstance(function, types.FunctionType):
        from ._errors import FunctionReplacedError

        raise FunctionReplacedError(qualname, file, f"{function!r} in its place")
    return function


def aliases(owner: Any, function: types.FunctionType, name: str) -> tuple[str, ...]:
    """Every name in `owner` bound to `function` (`stream_send = _send` in a class
    body): patching one name would leave the old code running under the others."""
    others = sorted(n for n, value in vars(owner).items() if value is function and n != name)
    return (name, *others)


def live_definition(
    function: types.FunctionType,
    candidates: Sequence[types.CodeType],
    qualname: str,
    located: Located,
) -> int:
    """Which of the file's definitions of `qualname` `function` runs; refuse a stranger
    (another file or name) or a file changed since import."""
    for index, code in enumerate(candidates):
        if function.__code__ == code:
            return index
    from ._errors import FunctionReplacedError, SourceChangedError

    if function.__code__.co_filename != located.file or function.__qualname__ != qualname:
        raise FunctionReplacedError(qualname, located.file, describe(function))
    raise SourceChangedError(located.target.module, located.file, qualname)


def expect_live_changed(prepared: Prepared, qualname: str, live: int, file: str) -> None:
    """The fixes must have rewritten the live definition of `qualname` and no other."""
    changed = prepared.changed_definitions(qualname)
    if changed == (live,):
        return
    from ._errors import DeadCodeChangedError

    fixes = ",".join(o.fix for o in prepared.outcomes if qualname in o.functions)
    candidates = prepared.original_code[qualname]
    dead = [candidates[i].co_firstlineno for i in changed if i != live]
    raise DeadCodeChangedError(fixes, qualname, file, candidates[live].co_firstlineno, dead)


def expect_ours(slot: Slot, file: str) -> None:
    """`slot` still holds the function h2fix put there, running the code it put in."""
    live = vars(slot.owner).get(slot.name)
    if live is slot.patched and live.__code__ is slot.code:
        return
    from ._errors import FunctionReplacedError

    ours = f"{file} as patched by h2fix"
    if live is not slot.patched:
        found = describe(live) if isinstance(live, types.FunctionType) else repr(live)
        raise FunctionReplacedError(slot.where, ours, found)
    if live.__code__ is not slot.code:
        raise FunctionReplacedError(slot.where, ours, describe_code(live.__code__), in_place=True)


def expect_same_class(module: types.ModuleType, slots: Iterable[Slot], target: Target) -> None:
    """After apply(), the module must still hold the classes h2fix patched."""
    for slot in slots:
        owner, _ = owner_and_name(module, slot.qualname)
        if owner is not slot.owner:
            from ._errors import ModuleReloadedError

            cls = slot.qualname.rsplit(".", 1)[0]
            raise ModuleReloadedError(module.__name__, cls, target.served_class, after_apply=True)


def reloaded_since(module: types.ModuleType, slots: Iterable[Slot]) -> bool:
    return any(owner_and_name(module, slot.qualname)[0] is not slot.owner for slot in slots)


def served_class(target: Target) -> Any:
    package, _, name = target.served_class.rpartition(".")
    served = getattr(sys.modules.get(package) or importlib.import_module(package), name, None)
    if not isinstance(served, type):
        from ._errors import UnreachablePatchError

        raise UnreachablePatchError(
            target.served_class, "the patched methods", f"{package} has no class {name}"
        )
    return served


def expect_reachable(target: Target, module: types.ModuleType, slots: Iterable[Slot]) -> None:
    """The served class must resolve every patched method name to what h2fix puts in.

    This concerns the protocol class: the one the module binds under the served name,
    and the classes in the served class's MRO. A helper class of the module (a
    buffer, say) is not served by name, so its methods are not checked here.
    """
    served = served_class(target)
    module_class: object = getattr(module, target.served_class.rpartition(".")[2], None)
    for slot in slots:
        owner = slot.owner
        if not isinstance(owner, type):
            continue  # a module-level function: there is no class to go through
        function = f"{owner.__module__}.{owner.__qualname__}.{slot.name}"
        if owner in served.__mro__:
            resolver = next(cls for cls in served.__mro__ if slot.name in vars(cls))
            if resolver is not owner:
                from ._errors import UnreachablePatchError

                found = f"{resolver.__module__}.{resolver.__qualname__} overrides {slot.name}"
                raise UnreachablePatchError(target.served_class, function, found)
        elif owner is module_class:
            from ._errors import ModuleReloadedError, UnreachablePatchError

            if (served.__module__, served.__qualname__) == (owner.__module__, owner.__qualname__):
                raise ModuleReloadedError(
                    owner.__module__, owner.__qualname__, target.served_class, after_apply=False
                )
            found = f"it is {served.__module__}.{served.__qualname__}, not {owner.__qualname__}"
            raise UnreachablePatchError(target.served_class, function, found + " or a subclass")


def describe(function: types.FunctionType) -> str:
    return f"{function.__module__}.{function.__qualname__} from {_where(function.__code__)}"


def describe_code(code: types.CodeType) -> str:
    return f"code from {_where(code)}"


def _where(code: types.CodeType) -> str:
    return f"{code.co_filename}:{code.co_firstlineno}"
