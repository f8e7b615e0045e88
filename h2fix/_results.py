"""The values h2fix hands back (per-fix outcomes, a rewrite, a runtime report), and
Record, the base of every immutable value type in h2fix.

`import h2fix` runs at every worker's start. `@dataclass(frozen=True)` builds each
class by generating and compiling the source of five methods, about 0.7 ms a
class, so the dozen on the start-up path cost several times what a warm apply()
does. A Record behaves as those frozen dataclasses did (== and hash over the
compared fields, the same repr, assignment raises FrozenInstanceError, copy and
pickle) with methods written once, here. It shares this module with the values
because each module a warm apply() loads adds about a tenth of a millisecond.

A subclass lists its fields in `__slots__`, takes them as the parameters of
its `__init__` (whose order is the fields' order, as in a dataclass) and hands
them to `initialise` in that order.
"""

from __future__ import annotations

import enum

TYPE_CHECKING = False  # typing costs milliseconds to import and is needed only by mypy
if TYPE_CHECKING:
    from typing import Any, ClassVar, TypeVar

    from ._errors import H2FixError

    R = TypeVar("R", bound="Record")


class Record:
    __slots__ = ()

    #: Fields left out of == and hash (a dataclass field's compare=False).
    _uncompared: ClassVar[frozenset[str]] = frozenset()
    #: Set for each subclass: every field, and the ones == and hash look at.
    _fields: ClassVar[tuple[str, ...]] = ()
    _compared: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        init = cls.__init__.__code__
        fields = init.co_varnames[1 : init.co_argcount + init.co_kwonlyargcount]
        # A mistake in h2fix's own class definitions, caught when the class is made.
        slots = cls.__dict__.get("__slots__", ())
        assert sorted(fields) == sorted(slots), f"{cls.__qualname__}: __init__ must take {slots}"
        cls._fields = fields
        cls._compared = tuple(name for name in fields if name not in cls._uncompared)
        setattr(cls, "__match_args__", fields)  # noqa: B010 (mypy treats it as read-only)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        values = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields)
        return f"{self.__class__.__qualname__}({values})"

    def __setattr__(self, name: str, value: object) -> None:
        raise _frozen(self, name, "an assignment")

    def __delattr__(self, name: str) -> None:
        raise _frozen(self, name, "a deletion")

    def __reduce__(self) -> tuple[type[Record], tuple[object, ...]]:
        # The default would restore the fields through __setattr__, which refuses.
        return self.__class__, tuple(getattr(self, name) for name in self._fields)

    def __replace__(self: R, **changes: Any) -> R:
        """copy.replace() (Python 3.13+)."""
        return replace(self, **changes)

    def _key(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self._compared)


def initialise(record: Record, *values: object) -> None:
    """Set a new record's fields, given in the order of its `__init__`'s parameters."""
    for name, value in zip(record._fields, values):
        object.__setattr__(record, name, value)


def replace(record: R, **changes: Any) -> R:
    """A copy of `record` with some fields changed, as dataclasses.replace() does."""
    values = {name: getattr(record, name) for name in record._fields}
    values.update(changes)
    return record.__class__(**values)


def _frozen(record: Record, name: str, found: str) -> AttributeError:
    from ._errors import frozen_record_error

    return frozen_record_error(record.__class__.__qualname__, name, found)


class Outcome(str, enum.Enum):
    """What happened to one fix. The value is the text shown to people."""

    REWRITTEN = "rewritten"  # rewrite(): the fix changed the source
    PENDING = "would be applied"  # status(): apply() would apply it
    APPLIED = "applied"  # apply(): swapped in just now
    ALREADY_APPLIED = "already applied"  # apply() ran before in this process
    FIXED_UPSTREAM = "already fixed upstream"
    NOT_APPLICABLE = "not applicable"
    NOT_NEEDED = "not needed with this h2"
    REFUSED = "refused"  # unrecognised structure; nothing changed for this fix
    NOT_INSTALLED = "target not installed"  # apply(missing_ok=True): nothing to repair

    def __str__(self) -> str:
        return self.value

    @property
    def changes_code(self) -> bool:
        return self in (Outcome.REWRITTEN, Outcome.PENDING, Outcome.APPLIED)


class FixOutcome(Record):
    """What one fix did (or would do), and why."""

    __slots__ = ("error", "fix", "functions", "message", "outcome")
    _uncompared = frozenset({"error"})

    fix: str
    outcome: Outcome
    message: str
    #: Qualified names of the functions this fix changed, e.g. "H2Protocol.stream_send".
    functions: tuple[str, ...]
    #: The refusal, when outcome is REFUSED; not compared.
    error: H2FixError | None

    def __init__(
        self,
        fix: str,
        outcome: Outcome,
        message: str,
        functions: tuple[str, ...] = (),
        error: H2FixError | None = None,
    ) -> None:
        initialise(self, fix, outcome, message, functions, error)

    def __str__(self) -> str:
        return f"{self.fix}: {self.outcome} ({self.message})"


class Rewrite(Record):
    """The result of `h2fix.rewrite`: the new source and what each fix did."""

    __slots__ = ("original", "outcomes", "source")

    original: str
    source: str
    outcomes: tuple[FixOutcome, ...]

    def __init__(self, original: str, source: str, outcomes: tuple[FixOutcome, ...]) -> None:
        initialise(self, original, source, outcomes)

    @property
    def changed(self) -> bool:
        return self.source != self.original

    @property
    def changed_functions(self) -> tuple[str, ...]:
        names: dict[str, None] = {}
        for outcome in self.outcomes:
            names.update(dict.fromkeys(outcome.functions))
        return tuple(names)

    @property
    def refusals(self) -> tuple[H2FixError, ...]:
        return tuple(o.error for o in self.outcomes if o.error is not None)

    def diff(self, fromfile: str = "a", tofile: str = "b") -> str:
        """A unified diff from the original to the rewritten source ("" if unchanged)."""
        import difflib  # deferred: not needed at start-up

        return "".join(
            difflib.unified_diff(
                self.original.splitlines(keepends=True),
                self.source.splitlines(keepends=True),
                fromfile,
                tofile,
            )
        )


class Report(Record):
    """What `apply()` did or what `status()` says it would do, for one target."""

    __slots__ = ("file", "fixes", "module", "target", "version")

    target: str
    module: str
    version: str
    file: str
    fixes: tuple[FixOutcome, ...]

    def __init__(
        self, target: str, module: str, version: str, file: str, fixes: tuple[FixOutcome, ...]
    ) -> None:
        initialise(self, target, module, version, file, fixes)

    @property
    def changed(self) -> bool:
        """True when this call swapped code in."""
        return any(f.outcome is Outcome.APPLIED for f in self.fixes)

    @property
    def pending(self) -> bool:
        """True when some fix would still change the running code."""
        return any(f.outcome is Outcome.PENDING for f in self.fixes)

    @property
    def installed(self) -> bool:
        """False when the target is not installed (only with missing_ok=True)."""
        return not any(f.outcome is Outcome.NOT_INSTALLED for f in self.fixes)

    def __str__(self) -> str:
        if not self.installed:
            head = f"{self.target} (not installed)"
        else:
            head = f"{self.target} {self.version} ({self.file})"
        lines = [head]
        lines += [f"  {fix}" for fix in self.fixes]
        return "\n".join(lines)
