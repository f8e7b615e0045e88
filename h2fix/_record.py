"""The base of h2fix's immutable value types (Report, FixOutcome, Rewrite, ...).

`import h2fix` runs at every worker's start. `@dataclass(frozen=True)` builds each
class by generating and compiling the source of five methods, about 0.7 ms a
class, so the dozen on the start-up path cost several times what a warm apply()
does. A Record behaves as those frozen dataclasses did (== and hash over the
compared fields, the same repr, assignment raises FrozenInstanceError, copy and
pickle) with methods written once, here.

A subclass lists its fields in `__slots__`, takes them as the parameters of
its `__init__` (whose order is the fields' order, as in a dataclass) and hands
them to `initialise` in that order.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs milliseconds to import and is needed only by mypy
if TYPE_CHECKING:
    from typing import Any, ClassVar, TypeVar

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
