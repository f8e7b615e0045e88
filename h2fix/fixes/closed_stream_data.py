"""Fix `closed_stream_data`: survive the client's DATA for a stream the server already finished.

When an app answers before reading the whole request body (a client-streaming
call that fails early, a size limit, an auth error), the server forgets the
stream once its response is complete, but the client may still be sending.
h2 delivers that DATA (the client's half is still open), and Hypercorn's
`_handle_events` looks the stream up with `self.streams[event.stream_id]`: the
KeyError ends the whole connection and every other call on it
(https://github.com/pgjones/hypercorn/issues/329). Hypercorn <= 0.16 does the
same for the client's END_STREAM.

The repair guards the lookup and nothing else:

    elif isinstance(event, h2.events.DataReceived):
        if event.stream_id in self.streams:
            await self.streams[event.stream_id].handle(Body(...))
        self.connection.acknowledge_received_data(...)

The acknowledgement must still run for the discarded bytes: they count against
the connection's receive window, which is shared by every stream, so skipping
it stalls every upload on the connection after 64 KiB of discarded DATA.

No RST_STREAM is sent: a stream leaves `self.streams` as soon as the app's last
body chunk has been drained, which can be before the sending task has ended it
in h2, and a reset then would cut the response short.

The fix reads as: find the branches for the client's events, prove every
assumption the guard makes (each check of `_Proof` raises with what it expected
and what it found), then rewrite. The proof shows the function the server runs
(a plain method of the module-level class `H2Protocol` is or derives from,
defined once, not overridden, its branch reachable and first in its dispatch),
the object the guard tests (`self.<streams>`, a plain dict wherever the class
family assigns it, `self` never rebound), the value it repeats (the key, a name
or attribute chain), and the call that must still run (the acknowledgement, on
h2's `H2Connection`). Names are compared as Python compares them (NFKC).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Union

import libcst as cst

from .._environment import Environment
from .._errors import UnrecognisedStructureError
from .._results import FixOutcome, Outcome
from ._live_method import (
    Branch,
    LiveMethods,
    Refusal,
    branch_code,
    class_name,
    find_branches,
    names_any,
    only_branch,
    writes,
)
from ._syntax import (
    argument,
    base_classes,
    bindings_of,
    bound_names,
    constructs,
    dotted,
    identifier,
    is_pure,
    method_call,
    name_uses,
    self_attribute,
    statement_expression,
    subclasses,
)
from ._tree import PathTransformer, children, transform, walk

NAME = "closed_stream_data"

DATA = "DataReceived"
#: h2 events of the client's half of a stream: h2 still delivers them after the
#: server has finished its own half, so they may name a stream the server forgot.
CLIENT_HALF_EVENTS = (DATA, "StreamEnded", "TrailersReceived")
_ACKNOWLEDGE = "acknowledge_received_data"
#: Exceptions whose handler already keeps a missing stream from escaping.
_CATCHES_KEY_ERROR = ("KeyError", "LookupError", "Exception", "BaseException")

_Lookup = Union[cst.Subscript, cst.Call]


# --- prove -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Guard:
    """What the rewrite needs for one branch, each part proven."""

    body: cst.IndentedBlock
    index: int
    lookup: cst.Subscript
    key: cst.BaseExpression


class _Proof:
    """The proof obligations for the client-half branches of one dispatch."""

    def __init__(self, module: cst.Module) -> None:
        self.module = module
        self.live = LiveMethods(module, "the protocol object whose streams the guard tests")
        self.bindings = self.live.bindings
        self.classes = self.live.classes
        # Walking a class's methods is the costly part: once per class.
        self._assigned: dict[int, list[tuple[str, cst.BaseExpression]]] = {}

    def guard(self, branch: Branch) -> _Guard | None:
        """What to guard in `branch`, or None when every lookup is already guarded."""
        live = self.live.prove(branch)
        cls, receiver = live.cls, live.receiver
        self.live.first_arm_for_the_event(branch)
        subject = self.subject_is_a_plain_name(branch)
        body = self.body_on_own_lines(branch)
        self.subject_not_rebound(body, subject)
        lookups = self.looks_the_stream_up(body, receiver)
        for node, _ in lookups:
            self.streams_is_a_dict(cls, _dict_attribute(node, receiver))
            if isinstance(node, cst.Call):
                self.get_result_tested_for_none(live.method, body, node)
        if branch.event == DATA:
            self.acknowledged_on_h2_connection(cls, body, receiver, subject)
        self.event_goes_nowhere_else(body, [node for node, _ in lookups], subject, receiver)
        self.live.events_reach_the_dispatch(branch, live)
        unguarded = [node for node, guarded in lookups if not guarded]
        if not unguarded:
            return None  # fixed upstream: leave it byte for byte
        lookup = self.one_unguarded_subscript(unguarded)
        index = self.lookup_is_a_statement(body, lookup)
        key = self.key_is_pure(lookup)
        self.key_is_the_events_stream(key, subject)
        return _Guard(body, index, lookup, key)

    # Each check: one obligation, its refusal beside it.

    def subject_is_a_plain_name(self, branch: Branch) -> str:
        """The event the branch tests is a local name (an attribute may change under an await)."""
        subject = branch.subject
        if subject is None or "." in subject:
            raise Refusal("`isinstance(<name>, ...)` on a plain name, the loop's event")
        return subject

    def subject_not_rebound(self, body: cst.IndentedBlock, subject: str) -> None:
        """Inside the branch the event's name still names the event tested, so that
        `<event>.stream_id` is its stream."""
        if subject in bound_names(body):
            raise Refusal(
                f"`{subject}` not assigned in the branch (it must stay the event tested)",
                f"{subject} bound in the branch",
            )

    def get_result_tested_for_none(
        self, method: cst.FunctionDef, body: cst.IndentedBlock, get: cst.Call
    ) -> None:
        """A `.get()` lookup guards only when its None is tested before any use:
        `<stream> = <self>.<streams>.get(<key>)` directly in the branch, then `<stream>`
        read only under `if <stream> is not None:` (or `if <stream>:`), nowhere else in
        the method. `None.handle(...)` raises AttributeError, as fatal as the KeyError."""
        expected = (
            "a `.get(<key>)` lookup assigned to a name directly in the branch, the name read "
            "only under `if <name> is not None:` after it"
        )
        index = next(i for i, st in enumerate(body.body) if any(n is get for n in walk(st)))
        statement = body.body[index]
        found = self.module.code_for_node(statement).strip()
        target = None
        if isinstance(statement, cst.SimpleStatementLine) and len(statement.body) == 1:
            assign = statement.body[0]
            if (
                isinstance(assign, cst.Assign)
                and assign.value is get
                and len(assign.targets) == 1
                and isinstance(assign.targets[0].target, cst.Name)
            ):
                target = identifier(assign.targets[0].target)
        if target is None or len(get.args) != 1 or get.args[0].keyword or get.args[0].star:
            raise Refusal(expected, found)
        tests = [
            st
            for st in body.body[index + 1 :]
            if isinstance(st, cst.If) and _tests_not_none(st.test, target) and st.orelse is None
        ]
        tested = sum(len(name_uses(st, target)) for st in tests)
        if (
            bindings_of(method.body).count(target) != 1
            or len(name_uses(method.body, target)) != 1 + tested
            or any(target in bound_names(st.body) for st in tests)
        ):
            raise Refusal(expected, found)

    def key_is_the_events_stream(self, key: cst.BaseExpression, subject: str) -> None:
        """The guard tests the event's own stream: on another key (an attribute, a local
        set by an earlier event) it would skip DATA of a live stream, or raise itself."""
        if dotted(key) != f"{subject}.stream_id":
            raise Refusal(
                f"the lookup keyed by `{subject}.stream_id` (the event's own stream)",
                self.module.code_for_node(key),
            )

    def event_goes_nowhere_else(
        self, body: cst.IndentedBlock, lookups: list[_Lookup], subject: str | None, receiver: str
    ) -> None:
        """Outside the statements that look the stream up, the event is handed to no method
        of the protocol object, nor with the protocol object to anything: such a helper
        (`await self._trace(event)`) may look the stream up itself, unguarded, and the
        KeyError would still end the connection. (Other calls, the stream's own handler,
        an event class, a logger, cannot reach the protocol's streams.)"""
        root = (subject or "").split(".")[0]
        for statement in body.body:
            if any(node is lookup for node in walk(statement) for lookup in lookups):
                continue
            for node in walk(statement):
                if not isinstance(node, cst.Call):
                    continue
                called = method_call(node)
                names = {
                    identifier(n)
                    for arg in node.args
                    for n in walk(arg.value)
                    if isinstance(n, cst.Name)
                }
                on_protocol = called is not None and dotted(called[0]) == receiver
                # A method of the protocol given the event, or anything given the protocol
                # object itself (`trace(self, event)`), can reach its streams.
                if root in names and (on_protocol or receiver in names):
                    raise Refusal(
                        "the event handed to no method of the protocol object (nor the object "
                        "with it) outside the stream's own lookup: it may look the stream up "
                        "unguarded",
                        self.module.code_for_node(node),
                    )

    def body_on_own_lines(self, branch: Branch) -> cst.IndentedBlock:
        body = branch.node.body
        if not isinstance(body, cst.IndentedBlock):
            raise Refusal("the branch body on its own lines")
        return body

    def looks_the_stream_up(
        self, body: cst.IndentedBlock, receiver: str
    ) -> list[tuple[_Lookup, bool]]:
        lookups = list(_lookups(body, receiver, _Enclosing()))
        if not lookups:
            raise Refusal(f"the branch to look the stream up itself (`{receiver}.<streams>[...]`)")
        return lookups

    def streams_is_a_dict(self, cls: cst.ClassDef, attribute: str) -> None:
        """`self.<attribute>` is a dict wherever the class, its bases and subclasses in the
        module assign it, so `key in` it is True exactly when the lookup does not raise."""
        values = self.assignments(cls, attribute)
        if not values or not all(_is_empty_dict(value) for value in values):
            found = ", ".join(self.module.code_for_node(v) for v in values) or "no assignment"
            raise Refusal(
                f"`self.{attribute}` assigned only `{{}}` or `dict()` in class "
                f"{identifier(cls.name)}",
                f"self.{attribute} = {found}",
            )

    def acknowledged_on_h2_connection(
        self, cls: cst.ClassDef, body: cst.IndentedBlock, receiver: str, subject: str
    ) -> None:
        """The DATA branch acknowledges the bytes on h2's connection, whatever the lookup does."""
        for statement in body.body:
            expression = statement_expression(statement)
            call = method_call(expression) if expression is not None else None
            if call is None:
                if _leaves_early(statement):
                    # e.g. `if <key> not in self.streams: continue`: it skips the
                    # acknowledgement for exactly the DATA this fix is about.
                    raise Refusal(
                        f"no continue/break/return/raise before {_ACKNOWLEDGE} in the "
                        "DataReceived branch (the discarded bytes must be acknowledged too)"
                    )
                continue
            owner, name, node = call
            if name != _ACKNOWLEDGE:
                continue
            attribute = self_attribute(owner, receiver)
            if attribute is None:
                break
            values = self.assignments(cls, attribute)
            if len(values) != 1 or not constructs(
                self.bindings, values[0], "h2.connection", "H2Connection"
            ):
                raise Refusal(
                    f"`self.{attribute}` assigned once, an h2 H2Connection "
                    "(h2.connection.H2Connection(...) as the module imports it)",
                    "; ".join(self.module.code_for_node(v) for v in values)
                    or f"no assignment to self.{attribute}",
                )
            size = argument(node, 0, "acknowledged_size")
            if size is None or dotted(size) != f"{subject}.flow_controlled_length":
                raise Refusal(f"{_ACKNOWLEDGE}({subject}.flow_controlled_length, ...)")
            return
        raise Refusal(
            f"`{receiver}.<connection>.{_ACKNOWLEDGE}(...)` as a statement directly in the "
            "DataReceived branch, so that it runs for a stream that is gone too "
            "(the connection's receive window stalls otherwise)"
        )

    def one_unguarded_subscript(self, unguarded: list[_Lookup]) -> cst.Subscript:
        lookup = unguarded[0]
        if len(unguarded) > 1 or not isinstance(lookup, cst.Subscript):
            raise Refusal("one unguarded `<self>.<streams>[<key>]` lookup")
        return lookup

    def lookup_is_a_statement(self, body: cst.IndentedBlock, lookup: cst.Subscript) -> int:
        """The index of the statement `[await] <lookup>.<method>(...)` directly in the branch.

        In that shape the lookup is the first thing the statement evaluates, so a
        membership test right before it sees the same dict with nothing in between.
        """
        for index, statement in enumerate(body.body):
            if _looks_up(statement, lookup):
                return index
        raise Refusal(
            "the stream lookup as a statement of its own directly in the branch: "
            "`await <self>.<streams>[<key>].handle(...)`"
        )

    def key_is_pure(self, lookup: cst.Subscript) -> cst.BaseExpression:
        key = _key(lookup)
        if key is None:
            raise Refusal("the key as a name or attribute chain (it is evaluated twice)")
        return key

    # Helpers of the checks.

    def assignments(self, cls: cst.ClassDef, attribute: str) -> list[cst.BaseExpression]:
        """The values assigned to `self.<attribute>` in the methods of the class, its
        bases and its subclasses in the module (the instance may be any of them)."""
        family = [cls, *base_classes(self.classes, cls), *subclasses(self.classes, cls)]
        for member in family:
            if id(member) not in self._assigned:
                self._assigned[id(member)] = list(_self_assignments(member))
        return [
            value
            for member in family
            for found, value in self._assigned[id(member)]
            if found == attribute
        ]


# --- rewrite ---------------------------------------------------------------------


def _guarded_body(guard: _Guard) -> cst.IndentedBlock:
    statement = guard.body.body[guard.index]
    assert isinstance(statement, cst.SimpleStatementLine)
    test = cst.Comparison(
        left=guard.key.deep_clone(),
        comparisons=[
            cst.ComparisonTarget(operator=cst.In(), comparator=guard.lookup.value.deep_clone())
        ],
    )
    wrapped = cst.If(
        test=test,
        body=cst.IndentedBlock(body=[statement.with_changes(leading_lines=())]),
        leading_lines=statement.leading_lines,
    )
    statements = list(guard.body.body)
    statements[guard.index] = wrapped
    return guard.body.with_changes(body=statements)


class _Replace(PathTransformer):
    """Swaps branch bodies (by identity) for their guarded versions."""

    def __init__(
        self, replacements: dict[int, cst.IndentedBlock], paths: Sequence[cst.CSTNode]
    ) -> None:
        super().__init__(paths)
        self.replacements = replacements

    def leave_IndentedBlock(
        self, original_node: cst.IndentedBlock, updated_node: cst.IndentedBlock
    ) -> cst.IndentedBlock:
        return self.replacements.get(id(original_node), updated_node)


# --- helpers on nodes ------------------------------------------------------------


@dataclass(frozen=True)
class _Enclosing:
    """What encloses a node inside the branch: handlers that swallow a KeyError,
    and `<key> in <dict>` tests (as dotted names) whose body it is in."""

    catches: bool = False
    memberships: frozenset[tuple[str, str]] = field(default_factory=frozenset)


def _dict_attribute(lookup: _Lookup, receiver: str) -> str:
    value = lookup.value if isinstance(lookup, cst.Subscript) else lookup.func
    if isinstance(lookup, cst.Call):
        assert isinstance(value, cst.Attribute)
        value = value.value  # <self>.<dict>.get
    attribute = self_attribute(value, receiver)
    assert attribute is not None  # _lookups() found it so
    return attribute


def _key(lookup: cst.Subscript) -> cst.BaseExpression | None:
    """The subscript's key when it is free of side effects (it is evaluated twice)."""
    if len(lookup.slice) != 1:
        return None
    index = lookup.slice[0].slice
    if not isinstance(index, cst.Index) or index.star is not None:
        return None
    return index.value if is_pure(index.value) else None


def _lookups(
    node: cst.CSTNode, receiver: str, enclosing: _Enclosing
) -> Iterator[tuple[_Lookup, bool]]:
    """Every `<receiver>.<attr>[...]` and `<receiver>.<attr>.get(...)` under `node`,
    with whether a handler or a membership test already keeps it from raising."""
    if isinstance(node, cst.Subscript) and self_attribute(node.value, receiver) is not None:
        key = _key(node)
        membership = None if key is None else (dotted(node.value), dotted(key))
        yield node, enclosing.catches or membership in enclosing.memberships
    call = method_call(node) if isinstance(node, cst.BaseExpression) else None
    if call is not None and call[1] == "get" and self_attribute(call[0], receiver) is not None:
        yield call[2], True
    if isinstance(node, cst.Try):
        inner = _Enclosing(enclosing.catches or _catches_key_error(node), enclosing.memberships)
        yield from _lookups(node.body, receiver, inner)
        for part in (*node.handlers, node.orelse, node.finalbody):
            if part is not None:
                yield from _lookups(part, receiver, enclosing)
        return
    if isinstance(node, cst.With) and _suppresses_key_error(node):
        yield from _lookups(node.body, receiver, _Enclosing(True, enclosing.memberships))
        for item in node.items:
            yield from _lookups(item, receiver, enclosing)
        return
    if isinstance(node, cst.If):
        tested = _membership(node.test)
        yield from _lookups(node.test, receiver, enclosing)
        inner = (
            enclosing
            if tested is None
            else _Enclosing(enclosing.catches, enclosing.memberships | {tested})
        )
        yield from _lookups(node.body, receiver, inner)
        if node.orelse is not None:
            yield from _lookups(node.orelse, receiver, enclosing)
        return
    for child in children(node):
        yield from _lookups(child, receiver, enclosing)


def _membership(test: cst.BaseExpression) -> tuple[str, str] | None:
    """(dict, key) as dotted names for `if <key> in <dict>:`."""
    if not isinstance(test, cst.Comparison) or len(test.comparisons) != 1:
        return None
    target = test.comparisons[0]
    if not isinstance(target.operator, cst.In):
        return None
    container, key = dotted(target.comparator), dotted(test.left)
    return None if container is None or key is None else (container, key)


def _catches_key_error(node: cst.Try) -> bool:
    """A handler that takes a KeyError and lets the loop go on: one that raises again,
    returns or breaks (dropping the batch's other events) keeps nothing from ending."""
    for handler in node.handlers:
        caught = handler.type
        if _leaves(handler.body):
            continue
        if caught is None:
            return True
        elements = caught.elements if isinstance(caught, cst.Tuple) else [cst.Element(caught)]
        if any(class_name(element.value) in _CATCHES_KEY_ERROR for element in elements):
            return True
    return False


def _leaves(node: cst.CSTNode) -> bool:
    """A raise, return or break in `node`, outside functions and classes it defines."""
    if isinstance(node, (cst.Raise, cst.Return, cst.Break)):
        return True
    if isinstance(node, (cst.FunctionDef, cst.ClassDef, cst.Lambda)):
        return False
    return any(_leaves(child) for child in children(node))


def _tests_not_none(test: cst.BaseExpression, name: str) -> bool:
    """`<name> is not None` or `<name>` itself."""
    if isinstance(test, cst.Name):
        return identifier(test) == name
    return (
        isinstance(test, cst.Comparison)
        and len(test.comparisons) == 1
        and isinstance(test.comparisons[0].operator, cst.IsNot)
        and isinstance(test.left, cst.Name)
        and identifier(test.left) == name
        and isinstance(test.comparisons[0].comparator, cst.Name)
        and identifier(test.comparisons[0].comparator) == "None"
    )


def _suppresses_key_error(node: cst.With) -> bool:
    for item in node.items:
        call = item.item
        if isinstance(call, cst.Call) and dotted(call.func) in ("suppress", "contextlib.suppress"):
            names = [class_name(arg.value) for arg in call.args if arg.keyword is None]
            if any(name in _CATCHES_KEY_ERROR for name in names):
                return True
    return False


def _looks_up(statement: cst.BaseStatement, lookup: cst.Subscript) -> bool:
    """Whether the statement is `[await] <lookup>.<method>(...)`."""
    value = statement_expression(statement)
    if isinstance(value, cst.Await):
        value = value.expression
    call = method_call(value) if value is not None else None
    return call is not None and call[0] is lookup


def _leaves_early(node: cst.CSTNode) -> bool:
    """Whether a statement can leave the branch before the next one (nested defs aside)."""
    if isinstance(node, (cst.Continue, cst.Break, cst.Return, cst.Raise)):
        return True
    if isinstance(node, (cst.FunctionDef, cst.ClassDef, cst.Lambda)):
        return False
    return any(_leaves_early(child) for child in children(node))


def _self_assignments(cls: cst.ClassDef) -> Iterator[tuple[str, cst.BaseExpression]]:
    """(attr, value) for each write to `self.<attr>` in the class's methods; a value
    the fix cannot see (`+=`, a bare annotation, a tuple or loop target, `del`) as `...`."""
    unseen = cst.Ellipsis()
    for write in writes(cls):
        seen = write.value is not None and not isinstance(write.node, cst.AugAssign)
        yield write.attribute, write.value if seen and write.value is not None else unseen


def _is_empty_dict(value: cst.BaseExpression) -> bool:
    if isinstance(value, cst.Dict):
        return not value.elements
    return isinstance(value, cst.Call) and dotted(value.func) == "dict" and not value.args


# --- the fix -----------------------------------------------------------------------


def fix(tree: cst.Module, environment: Environment) -> tuple[cst.Module, FixOutcome]:
    branches = find_branches(tree, NAME, CLIENT_HALF_EVENTS)
    data = [b for b in branches if b.event == DATA]
    if not data:
        if names_any(tree, (DATA,)):
            raise UnrecognisedStructureError(
                NAME,
                "<module>",
                f"an `if isinstance(<event>, h2.events.{DATA}):` branch",
                f"{DATA} is named, but no such branch exists",
            )
        return tree, FixOutcome(NAME, Outcome.NOT_APPLICABLE, "this module handles no h2 DATA")
    dispatch = only_branch(NAME, DATA, data)
    elsewhere = [b for b in branches if b.method is not dispatch.method]
    if elsewhere:
        raise UnrecognisedStructureError(
            NAME,
            elsewhere[0].where,
            f"the branches for the client's events in {dispatch.where}, with the {DATA} branch",
            branch_code(tree, elsewhere[0]),
        )
    proof = _Proof(tree)
    guards: dict[int, _Guard] = {}
    paths: list[cst.CSTNode] = []
    changed: set[str] = set()
    for branch in branches:
        try:
            guard = proof.guard(branch)
        except Refusal as refusal:
            raise UnrecognisedStructureError(
                NAME, branch.where, refusal.expected, refusal.found or branch_code(tree, branch)
            ) from None
        if guard is not None:
            guards[id(guard.body)] = guard
            paths += [*branch.ancestors, branch.node]
            changed.add(branch.event)
    if not changed:
        return tree, FixOutcome(
            NAME,
            Outcome.FIXED_UPSTREAM,
            f"{dispatch.where} already skips events for a stream it finished",
        )
    replacements = {key: _guarded_body(guard) for key, guard in guards.items()}
    events = [event for event in CLIENT_HALF_EVENTS if event in changed]
    return transform(tree, _Replace(replacements, paths)), FixOutcome(
        NAME,
        Outcome.REWRITTEN,
        f"{dispatch.where} now skips {', '.join(events)} for a stream it already "
        "finished, still acknowledging the DATA",
        functions=(dispatch.where,),
    )
