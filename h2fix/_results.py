"""The values h2fix hands back: per-fix outcomes, a rewrite, a runtime report."""

from __future__ import annotations

import enum

from ._record import Record, initialise

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._errors import H2FixError


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
