"""Fix `trailers`: end the stream with the trailers, after the buffered DATA.

Hypercorn 0.17.0-0.17.3 and anycorn 0.17.3-0.18.x send trailers with a bare
`send_headers(stream_id, headers)`. h2 encodes the header block (so the HPACK
encoder table moves on), then raises because trailers must carry END_STREAM;
the server swallows the error and the connection's HPACK state is now out of
sync with the client. Even with END_STREAM, the trailers would overtake DATA
still waiting in the stream's send buffer.

The repaired branch first does what the end-of-body branch of the same dispatch
does (unblock the stream in the priority tree, wake the sending task, wait for
the stream's buffer to drain) and then sends the trailers with `end_stream=True`.

The fix reads as: find the one branch that sends trailers, prove every
assumption the rewrite makes (each check below raises with what it expected and
what it found), then rewrite. Nothing is assumed from names alone: the objects
the inserted statements act on are the ones the end-of-body branch acts on, with
the same receiver and the same stream key, and the call it changes is shown to
be h2's `H2Connection.send_headers`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import NoReturn, Union

import libcst as cst

from .._environment import Environment
from .._errors import UnrecognisedStructureError
from .._results import FixOutcome, Outcome
from ._live_method import (
    LiveMethods,
    Refusal,
    not_overridden_in,
    not_replaced_later,
    rebound_later,
    receiver_never_reassigned,
)
from ._syntax import (
    base_classes,
    bindings_of,
    bound_names,
    class_methods,
    class_names,
    constructs,
    dotted,
    first_parameter,
    identifier,
    is_pure,
    jump_before,
    keyword,
    method_call,
    same_expression,
    self_attribute,
    statement_expression,
    subclasses,
    walk,
)
from ._tree import path_to, replace, walk_with_ancestors

NAME = "trailers"

_Branch = Union[cst.If, cst.MatchCase]
# Calls that end a stream or the connection; seen after the send, they would undo the fix.
_ENDING_CALLS = frozenset({"end_stream", "reset_stream", "close_connection"})


class _Refusal(Exception):
    """A proof obligation failed: what was expected, and the code found instead."""

    def __init__(self, expected: str, found: cst.CSTNode | str | None = None) -> None:
        super().__init__(expected)
        self.expected = expected
        self.found = found


# --- find ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Arm:
    """One branch of a dispatch on the event's class."""

    node: _Branch
    #: The dispatched variable (`event`), when the test is `isinstance(<name>, ...)`.
    subject: str | None
    #: The event class names tested, or None when the test is not a plain class test.
    classes: tuple[str, ...] | None
    guarded: bool

    @property
    def mentions_trailers(self) -> bool:
        test = self.node.test if isinstance(self.node, cst.If) else self.node.pattern
        return any(_is_class_reference(node, "Trailers") for node in walk(test))

    @property
    def for_trailers_alone(self) -> bool:
        return self.classes == ("Trailers",) and not self.guarded

    @property
    def body(self) -> cst.BaseSuite:
        return self.node.body


@dataclass(frozen=True)
class _Dispatch:
    """An if/elif chain or a match statement, and the nodes that enclose it."""

    arms: tuple[_Arm, ...]
    #: From the module down to (not including) the dispatch's first statement.
    ancestors: tuple[cst.CSTNode, ...]
    statement: cst.CSTNode

    @property
    def where(self) -> str:
        names = [
            identifier(node.name)
            for node in self.ancestors
            if isinstance(node, (cst.ClassDef, cst.FunctionDef))
        ]
        return ".".join(names) or "<module>"


class _Finder:
    """Collects every dispatch on an event's class (if/elif chains and match statements)."""

    def __init__(self) -> None:
        self.dispatches: list[_Dispatch] = []
        self._in_chain: set[int] = set()

    def find(self, tree: cst.Module) -> list[_Dispatch]:
        # One walk over shared nodes: `tree.visit` would rebuild the whole tree.
        for node, ancestors in walk_with_ancestors(tree):
            kind = type(node)  # `is`, not isinstance: see _tree.py on LibCST's classes
            if kind is cst.If and id(node) not in self._in_chain:
                assert isinstance(node, cst.If)
                arms = tuple(_if_arm(branch) for branch in self._chain(node))
                self.dispatches.append(_Dispatch(arms, tuple(ancestors), node))
            elif kind is cst.Match:
                assert isinstance(node, cst.Match)
                subject = identifier(node.subject) if isinstance(node.subject, cst.Name) else None
                arms = tuple(_case_arm(case, subject) for case in node.cases)
                self.dispatches.append(_Dispatch(arms, tuple(ancestors), node))
        return self.dispatches

    def _chain(self, head: cst.If) -> Iterator[cst.If]:
        """`if`, its `elif`s, and an `else:` holding nothing but another `if` (drifted elif)."""
        branch: cst.If | None = head
        while branch is not None:
            self._in_chain.add(id(branch))
            yield branch
            orelse = branch.orelse
            branch = None
            if isinstance(orelse, cst.If):
                branch = orelse
            elif (
                isinstance(orelse, cst.Else)
                and isinstance(orelse.body, cst.IndentedBlock)
                and len(orelse.body.body) == 1
                and isinstance(orelse.body.body[0], cst.If)
            ):
                branch = orelse.body.body[0]


def _if_arm(branch: cst.If) -> _Arm:
    test = branch.test
    if (
        isinstance(test, cst.Call)
        and isinstance(test.func, cst.Name)
        and identifier(test.func) == "isinstance"
        and len(test.args) == 2
        and all(arg.keyword is None and not arg.star for arg in test.args)
        and isinstance(test.args[0].value, cst.Name)
    ):
        subject = identifier(test.args[0].value)
        return _Arm(branch, subject, _class_names(test.args[1].value), guarded=False)
    return _Arm(branch, None, None, guarded=False)


def _class_names(node: cst.BaseExpression) -> tuple[str, ...] | None:
    """`Trailers`, `events.Trailers`, `(A, b.B)` -> the class names; None for anything else."""
    name = dotted(node)
    if name is not None:
        return (name.rsplit(".", 1)[-1],)
    if isinstance(node, cst.Tuple) and node.elements:
        names: list[str] = []
        for element in node.elements:
            inner = dotted(element.value) if isinstance(element, cst.Element) else None
            if inner is None:
                return None
            names.append(inner.rsplit(".", 1)[-1])
        return tuple(names)
    return None


def _case_arm(case: cst.MatchCase, subject: str | None) -> _Arm:
    patterns: Sequence[cst.MatchPattern] = [case.pattern]
    if isinstance(case.pattern, cst.MatchOr):
        patterns = [element.pattern for element in case.pattern.patterns]
    names: list[str] = []
    for pattern in patterns:
        name = dotted(pattern.cls) if isinstance(pattern, cst.MatchClass) else None
        if (
            name is None
            or not isinstance(pattern, cst.MatchClass)
            or (pattern.patterns or pattern.kwds)
        ):
            return _Arm(case, subject, None, case.guard is not None)
        names.append(name.rsplit(".", 1)[-1])
    return _Arm(case, subject, tuple(names), case.guard is not None)


def _is_class_reference(node: cst.CSTNode, name: str) -> bool:
    if isinstance(node, cst.Name):
        return identifier(node) == name
    return isinstance(node, cst.Attribute) and identifier(node.attr) == name


def _sends(node: cst.CSTNode) -> bool:
    return any(_is_send_headers(child) for child in walk(node))


def _is_send_headers(node: cst.CSTNode) -> bool:
    call = method_call(node) if isinstance(node, cst.BaseExpression) else None
    return call is not None and call[1] == "send_headers"


# --- prove ---------------------------------------------------------------------


class _Step(enum.Enum):
    """What the end-of-body branch does before a stream may end, in this order."""

    UNBLOCK = "{self}.{attr}.unblock({stream_id})"
    WAKE = "await {self}.{attr}.set()"
    DRAIN = "await {self}.{attr}[{stream_id}].drain()"


_STEPS = tuple(_Step)


@dataclass(frozen=True)
class _StepCall:
    """A statement that is one of the steps: which, on which attribute, for which key."""

    step: _Step
    attribute: str
    key: cst.BaseExpression | None  # the stream key (UNBLOCK, DRAIN)
    #: For a drain through a local (`buffer = self.b[key]; await buffer.drain()`): the local.
    local: str | None = None


def _step_call(statement: cst.CSTNode, receiver: str) -> _StepCall | None:
    """The step this statement is, read off the objects it acts on; None if none."""
    expression = statement_expression(statement)
    awaited = isinstance(expression, cst.Await)
    if isinstance(expression, cst.Await):
        expression = expression.expression
    call = method_call(expression) if expression is not None else None
    if call is None:
        return None
    owner, method, node = call
    if method == "unblock" and not awaited:
        attribute = self_attribute(owner, receiver)
        if attribute and len(node.args) == 1 and _plain_positional(node.args[0]):
            return _StepCall(_Step.UNBLOCK, attribute, node.args[0].value)
    elif method == "set" and awaited and not node.args:
        attribute = self_attribute(owner, receiver)
        if attribute:
            return _StepCall(_Step.WAKE, attribute, None)
    elif method == "drain" and awaited and not node.args:
        item = _self_item(owner, receiver)
        if item is not None:
            return _StepCall(_Step.DRAIN, item[0], item[1])
        if isinstance(owner, cst.Name):
            return _StepCall(_Step.DRAIN, "", None, local=identifier(owner))
    return None


def _self_item(node: cst.BaseExpression, receiver: str) -> tuple[str, cst.BaseExpression] | None:
    """(attr, key) for `<receiver>.attr[key]`."""
    if (
        isinstance(node, cst.Subscript)
        and len(node.slice) == 1
        and isinstance(node.slice[0].slice, cst.Index)
        and node.slice[0].slice.star is None
    ):
        attribute = self_attribute(node.value, receiver)
        if attribute:
            return attribute, node.slice[0].slice.value
    return None


def _plain_positional(arg: cst.Arg) -> bool:
    return arg.keyword is None and not arg.star


@dataclass
class _Objects:
    """What the end-of-body branch shows: the attribute of each step and the stream key."""

    attributes: dict[_Step, str]
    key: cst.BaseExpression


@dataclass
class _Plan:
    """Everything the rewrite needs, each part proven."""

    where: str
    receiver: str
    objects: _Objects
    body: cst.IndentedBlock
    send_index: int
    send_call: cst.Call
    stream_id: cst.BaseExpression
    present: dict[_Step, int] = field(default_factory=dict)


class _Proof:
    """The proof obligations for the one branch that sends trailers."""

    def __init__(self, module: cst.Module, dispatch: _Dispatch, arm: _Arm) -> None:
        self.module = module
        self.dispatch = dispatch
        self.arm = arm
        self.live = LiveMethods(module)
        self.bindings = self.live.bindings
        self.classes = self.live.classes
        self._assignments: dict[int, dict[str, list[tuple[bool, cst.BaseExpression]]]] = {}

    def plan(self) -> _Plan:
        cls, method = self.method_of_module_class()
        receiver = receiver_never_reassigned(method, self.dispatch.where)
        not_replaced_later(cls, method)
        not_overridden_in(self.subclasses(cls), cls, method)
        self.branch_is_reachable(method)
        self.live.served_class_uses_it(cls)
        self.no_earlier_branch_takes_trailers()
        objects = self.end_of_body_objects(receiver)
        body = self.branch_body()
        send_index, call = self.one_direct_send(body)
        connection_names = self.sent_on_h2_connection(cls, method, receiver, call)
        self.objects_are_the_send_tasks(cls, objects, receiver)
        self.flushed_after_the_send(cls, body, send_index, receiver, connection_names)
        stream_id = self.on_the_drained_stream(method, call, objects, body, send_index)
        present = self.steps_present(body, send_index, receiver, objects)
        self.nothing_else_touches(body, send_index, present, receiver, objects, connection_names)
        self.nothing_after_ends_the_stream(cls, body, send_index, receiver)
        self.methods_exist(cls, objects)
        return _Plan(
            self.dispatch.where, receiver, objects, body, send_index, call, stream_id, present
        )

    # Each check: one obligation, its refusal beside it.

    def method_of_module_class(self) -> tuple[cst.ClassDef, cst.FunctionDef]:
        cls, method = self.live.method_of_module_class(self.dispatch.ancestors)
        self.live.undecorated(method)
        if method.asynchronous is None:
            raise _Refusal("an `async def` method (the fix awaits the drain)")
        self.live.class_defined_once(cls)
        return cls, method

    # Not LiveMethods.branch_is_reachable: that one takes an if/elif Branch, and this
    # dispatch may be a match statement.
    def branch_is_reachable(self, method: cst.FunctionDef) -> None:
        jump = _jump_before(self.dispatch, method)
        if jump is not None:
            raise _Refusal(
                "the branch reachable: no return, raise, break or continue before it", jump
            )

    # Not LiveMethods.first_arm_for_the_event: this one also reads match/case arms and
    # arms testing a tuple of classes, which the shared finder refuses outright.
    def no_earlier_branch_takes_trailers(self) -> None:
        for arm in self.dispatch.arms:
            if arm is self.arm:
                return
            if isinstance(arm.node, cst.MatchCase) and arm.classes is None:
                raise _Refusal(
                    "only class patterns before `case Trailers():` (anything else may "
                    "take the trailers first)",
                    self.module.code_for_node(arm.node.pattern),
                )
            if isinstance(arm.node, cst.If) and (
                arm.classes is None or arm.subject != self.arm.subject
            ):
                raise _Refusal(
                    f"only isinstance({self.arm.subject}, ...) tests before the trailers "
                    "branch (anything else may take the trailers first)",
                    self.module.code_for_node(arm.node.test),
                )
            if arm.classes is not None and "Trailers" in arm.classes:
                raise _Refusal("no earlier branch for Trailers", _arm_code(self.module, arm))

    def end_of_body_objects(self, receiver: str) -> _Objects:
        references = [
            arm
            for arm in self.dispatch.arms
            if arm.classes is not None
            and "EndBody" in arm.classes
            and arm.subject == self.arm.subject
            and not arm.guarded
        ]
        if len(references) != 1 or not isinstance(references[0].body, cst.IndentedBlock):
            raise _Refusal(
                f"one end-of-body branch (isinstance({self.arm.subject}, EndBody)) in the same "
                "dispatch, to show which objects hold the priority tree, the wake-up event "
                "and the stream buffers (the fix acts on exactly those)",
                f"{len(references)} such branches",
            )
        reference = references[0].body
        found: dict[_Step, list[tuple[int, _StepCall]]] = {step: [] for step in _STEPS}
        for index, statement in enumerate(reference.body):
            call = _step_call(statement, receiver)
            if call is not None and call.local is None:
                found[call.step].append((index, call))
        expected = (
            f"the end-of-body branch to run, once each and in this order, "
            f"{receiver}.<priority>.unblock(<stream>), await {receiver}.<event>.set() and "
            f"await {receiver}.<buffers>[<stream>].drain()"
        )
        if any(len(calls) != 1 for calls in found.values()):
            raise _Refusal(expected, _arm_code(self.module, references[0]))
        (unblock_at, unblock), (wake_at, wake), (drain_at, drain) = (
            found[step][0] for step in _STEPS
        )
        if not unblock_at < wake_at < drain_at:
            raise _Refusal(expected, _arm_code(self.module, references[0]))
        assert unblock.key is not None
        assert drain.key is not None
        if not is_pure(unblock.key) or not same_expression(self.module, unblock.key, drain.key):
            raise _Refusal(
                "the end-of-body branch to unblock and drain the same stream, named by a "
                "plain name or attribute (the fix repeats it)",
                _arm_code(self.module, references[0]),
            )
        return _Objects(
            {step: call.attribute for step, call in zip(_STEPS, (unblock, wake, drain))},
            unblock.key,
        )

    def branch_body(self) -> cst.IndentedBlock:
        body = self.arm.body
        if not isinstance(body, cst.IndentedBlock):
            raise _Refusal("the branch body on its own lines")
        return body

    def one_direct_send(self, body: cst.IndentedBlock) -> tuple[int, cst.Call]:
        direct = [
            index
            for index, statement in enumerate(body.body)
            if _is_send_headers_expression(statement_expression(statement))
        ]
        total = sum(1 for node in walk(body) if _is_send_headers(node))
        if len(direct) != 1 or total != 1:
            raise _Refusal(
                "exactly one `<connection>.send_headers(...)` statement directly in the branch"
            )
        call = statement_expression(body.body[direct[0]])
        assert isinstance(call, cst.Call)
        if any(arg.star for arg in call.args):
            raise _Refusal("send_headers called without *args or **kwargs")
        return direct[0], call

    def sent_on_h2_connection(
        self, cls: cst.ClassDef, method: cst.FunctionDef, receiver: str, call: cst.Call
    ) -> set[str]:
        """The send is h2's H2Connection.send_headers: returns the names of that connection."""
        assert isinstance(call.func, cst.Attribute)
        owner = call.func.value
        attribute = self_attribute(owner, receiver)
        local = None
        if attribute is None and isinstance(owner, cst.Name):
            local = identifier(owner)
            attribute = self.local_alias(method, local, receiver)
        if attribute is None:
            raise _Refusal(
                f"send_headers called on {receiver}.<connection> or a local bound once to it",
                self.module.code_for_node(call),
            )
        values = [value for _, value in self.assignments(cls, attribute)]
        if not values or not all(self.is_h2_connection(value) for value in values):
            raise _Refusal(
                f"{receiver}.{attribute} assigned only h2.connection.H2Connection(...) in the "
                "class, so send_headers is h2's (stream_id, headers, end_stream=False, ...)",
                "; ".join(self.module.code_for_node(value) for value in values)
                or f"no assignment to {receiver}.{attribute}",
            )
        names = {f"{receiver}.{attribute}"}
        if local is not None:
            names.add(local)
        return names

    def objects_are_the_send_tasks(
        self, cls: cst.ClassDef, objects: _Objects, receiver: str
    ) -> None:
        """The objects learnt from the end-of-body branch are the ones the send task uses:
        streams are put in that tree (`insert_stream`) and given buffers in that dict, and
        someone waits on that event. An end-of-body branch that acts on others (a second
        tree, a dict nobody fills) is itself broken, and copying it breaks the trailers."""
        uses = self.self_calls(cls)
        tree = objects.attributes[_Step.UNBLOCK]
        if (tree, "insert_stream") not in uses:
            raise _Refusal(
                f"streams inserted in {receiver}.{tree} somewhere in the class (`insert_stream`):"
                " the tree the end-of-body branch unblocks must be the send task's",
                f"no {receiver}.{tree}.insert_stream(...)",
            )
        event = objects.attributes[_Step.WAKE]
        if (event, "wait") not in uses:
            raise _Refusal(
                f"{receiver}.{event}.wait() somewhere in the class: the event the end-of-body "
                "branch sets must be the one the send task waits on",
                f"no {receiver}.{event}.wait()",
            )
        buffers = objects.attributes[_Step.DRAIN]
        if not any(item for item, _ in self.assignments(cls, buffers)):
            raise _Refusal(
                f"`{receiver}.{buffers}[<stream>] = ...` somewhere in the class: the buffers the "
                "end-of-body branch drains must be the ones streams are given",
                f"no item of {receiver}.{buffers} assigned",
            )

    def self_calls(self, cls: cst.ClassDef) -> set[tuple[str, str]]:
        """(attribute, method) for each `<self>.<attribute>.<method>(...)` in the family."""
        return {
            found
            for member in self.family(cls)
            for method in class_methods(member).values()
            for found in _self_calls_in(method)
        }

    def flushed_after_the_send(
        self,
        cls: cst.ClassDef,
        body: cst.IndentedBlock,
        send_index: int,
        receiver: str,
        connection_names: set[str],
    ) -> None:
        """After the send, the branch awaits a method of the class that sends the same
        connection's `data_to_send()`: otherwise the trailers, END_STREAM with them, stay in
        h2's buffer (a second H2Connection the protocol never flushes, or no flush at all)."""
        attribute = next(n for n in connection_names if n.startswith(f"{receiver}."))
        attribute = attribute[len(receiver) + 1 :]
        flushes = {
            name
            for member in self.family(cls)
            for name, method in class_methods(member).items()
            if (attribute, "data_to_send") in _self_calls_in(method)
        }
        for statement in body.body[send_index + 1 :]:
            expression = statement_expression(statement)
            if isinstance(expression, cst.Await):
                expression = expression.expression
            call = method_call(expression) if expression is not None else None
            if call is not None and dotted(call[0]) == receiver and call[1] in flushes:
                return
        raise _Refusal(
            f"`await {receiver}.<flush>()` after the send in the branch, a method of the class "
            f"that sends {receiver}.{attribute}.data_to_send() (the trailers stay in h2's "
            "buffer otherwise)",
            _arm_code(self.module, self.arm),
        )

    def local_alias(self, method: cst.FunctionDef, local: str, receiver: str) -> str | None:
        """`attr` when `local` is bound exactly once in the method, by `local = self.attr`."""
        if bindings_of(method.body).count(local) != 1:
            return None
        for node in walk(method.body):
            if (
                isinstance(node, cst.Assign)
                and len(node.targets) == 1
                and isinstance(node.targets[0].target, cst.Name)
                and identifier(node.targets[0].target) == local
            ):
                return self_attribute(node.value, receiver)
        return None

    # Not LiveMethods.h2_connection, which is stricter: it wants exactly one write to the
    # attribute and counts writes this fix's assignments() does not see (tuple targets,
    # `for`, `with ... as`, `del`); this one accepts several H2Connection(...) assignments.
    # Switching would change trailers' verdicts.
    def is_h2_connection(self, value: cst.BaseExpression) -> bool:
        return constructs(self.bindings, value, "h2.connection", "H2Connection")

    def on_the_drained_stream(
        self,
        method: cst.FunctionDef,
        call: cst.Call,
        objects: _Objects,
        body: cst.IndentedBlock,
        send_index: int,
    ) -> cst.BaseExpression:
        """The trailers go to the stream the end-of-body branch drains: returns its key,
        which the inserted statements use (a plain name or attribute: safe to repeat)."""
        by_keyword = [arg for arg in call.args if keyword(arg) == "stream_id"]
        positional = [arg for arg in call.args if arg.keyword is None]
        arg = by_keyword[0] if by_keyword else positional[0] if positional else None
        value = None if arg is None else arg.value
        if isinstance(value, cst.Name):  # `stream_id = event.stream_id` earlier in the branch
            value = _local_value(method, body.body[:send_index], identifier(value)) or value
        if value is None or not same_expression(self.module, value, objects.key):
            raise _Refusal(
                "the trailers sent on the stream the end-of-body branch unblocks and drains "
                f"({self.module.code_for_node(objects.key)})",
                self.module.code_for_node(call),
            )
        root = (dotted(objects.key) or "").split(".")[0]
        rebound = set().union(*(bound_names(s) for s in body.body[:send_index]))
        if root in rebound:
            raise _Refusal(f"`{root}` not reassigned in the branch before the send")
        return objects.key

    def steps_present(
        self, body: cst.IndentedBlock, send_index: int, receiver: str, objects: _Objects
    ) -> dict[_Step, int]:
        """The steps the branch already runs, recognised by the objects they act on."""
        present: dict[_Step, int] = {}
        buffer_locals = self.buffer_locals(body, receiver, objects)
        for index, statement in enumerate(body.body):
            call = _step_call(statement, receiver)
            if call is None or not self.acts_on(call, objects, buffer_locals):
                continue
            if index > send_index or call.step in present:
                raise _Refusal(
                    "unblock, then set, then drain, each once, all before send_headers",
                    statement,
                )
            present[call.step] = index
        positions = [present[step] for step in _STEPS if step in present]
        if positions != sorted(positions):
            raise _Refusal("unblock, then set, then drain, all before send_headers")
        return present

    def buffer_locals(
        self, body: cst.IndentedBlock, receiver: str, objects: _Objects
    ) -> dict[str, int]:
        """Locals bound once in the branch to the stream's buffer: name -> statement index."""
        found: dict[str, int] = {}
        for index, statement in enumerate(body.body):
            if not (
                isinstance(statement, cst.SimpleStatementLine)
                and len(statement.body) == 1
                and isinstance(statement.body[0], cst.Assign)
            ):
                continue
            assign = statement.body[0]
            item = _self_item(assign.value, receiver)
            if (
                len(assign.targets) == 1
                and isinstance(assign.targets[0].target, cst.Name)
                and item is not None
                and item[0] == objects.attributes[_Step.DRAIN]
                and same_expression(self.module, item[1], objects.key)
            ):
                name = identifier(assign.targets[0].target)
                if bindings_of(body).count(name) == 1:
                    found[name] = index
        return found

    def acts_on(self, call: _StepCall, objects: _Objects, locals_: dict[str, int]) -> bool:
        if call.local is not None:
            return call.local in locals_
        if call.attribute != objects.attributes[call.step]:
            return False
        return call.key is None or same_expression(self.module, call.key, objects.key)

    def nothing_else_touches(
        self,
        body: cst.IndentedBlock,
        send_index: int,
        present: dict[_Step, int],
        receiver: str,
        objects: _Objects,
        connection: set[str],
    ) -> None:
        """Other statements leave the connection alone, and before the send, the stream's
        send state too: the inserted drain needs the buffer the end-of-body branch drains.
        After the send the stream is over, and releasing its send state is fine."""
        buffer_locals = self.buffer_locals(body, receiver, objects)
        send_state = {f"{receiver}.{attr}" for attr in objects.attributes.values()}
        send_state |= set(buffer_locals)
        allowed = {*present.values(), send_index, *buffer_locals.values()}
        for index, statement in enumerate(body.body):
            if index in allowed or self.is_connection_alias(statement, connection):
                continue
            guarded = connection | send_state if index < send_index else connection
            for node in walk(statement):
                if isinstance(node, (cst.Name, cst.Attribute)) and dotted(node) in guarded:
                    raise _Refusal(
                        "the branch to touch the priority tree, the wake-up event and the "
                        "stream buffers only in the steps before the send, and the connection "
                        "only in the send",
                        statement,
                    )

    @staticmethod
    def is_connection_alias(statement: cst.BaseStatement, connection: set[str]) -> bool:
        """`conn = self.connection`, the binding of the local the send goes through."""
        return (
            isinstance(statement, cst.SimpleStatementLine)
            and len(statement.body) == 1
            and isinstance(statement.body[0], cst.Assign)
            and len(statement.body[0].targets) == 1
            and isinstance(statement.body[0].targets[0].target, cst.Name)
            and identifier(statement.body[0].targets[0].target) in connection
            and dotted(statement.body[0].value) in connection
        )

    def nothing_after_ends_the_stream(
        self, cls: cst.ClassDef, body: cst.IndentedBlock, send_index: int, receiver: str
    ) -> None:
        methods = class_methods(cls)
        for statement in body.body[send_index + 1 :]:
            for node in walk(statement):
                call = method_call(node) if isinstance(node, cst.BaseExpression) else None
                if call is None or self_attribute(call[2].func, receiver) is None:
                    continue
                helper = methods.get(call[1])
                if helper is not None and _ends_streams(helper):
                    raise _Refusal(
                        "nothing after the send that ends the stream again (it would now fail)",
                        statement,
                    )

    def methods_exist(self, cls: cst.ClassDef, objects: _Objects) -> None:
        """Where the module shows an object's class, it has the method the fix calls."""
        needed = {_Step.UNBLOCK: "unblock", _Step.WAKE: "set", _Step.DRAIN: "drain"}
        for step, attribute in objects.attributes.items():
            for item, value in self.assignments(cls, attribute):
                if item != (step is _Step.DRAIN):
                    continue
                shown = self.module_class_of(value)
                if shown is not None and not self.defines(shown, needed[step]):
                    raise _Refusal(
                        f"the objects in .{attribute} to have {needed[step]}() (the end-of-body "
                        "branch and the fix call it)",
                        f"{self.module.code_for_node(value)}: class {identifier(shown.name)} "
                        f"has no {needed[step]}()",
                    )

    # Helpers of the checks.

    def family(self, cls: cst.ClassDef) -> list[cst.ClassDef]:
        """The class, its base classes in the module, and its subclasses in the module."""
        return [cls, *base_classes(self.classes, cls), *self.subclasses(cls)]

    def subclasses(self, cls: cst.ClassDef) -> list[cst.ClassDef]:
        return subclasses(self.classes, cls)

    def assignments(
        self, cls: cst.ClassDef, attribute: str
    ) -> list[tuple[bool, cst.BaseExpression]]:
        """Values assigned to `self.<attribute>` (False) or `self.<attribute>[...]` (True)."""
        if id(cls) not in self._assignments:  # one walk of the family serves every attribute
            self._assignments[id(cls)] = self._assignments_in(cls)
        return self._assignments[id(cls)].get(attribute, [])

    def _assignments_in(
        self, cls: cst.ClassDef
    ) -> dict[str, list[tuple[bool, cst.BaseExpression]]]:
        table: dict[str, list[tuple[bool, cst.BaseExpression]]] = {}
        for member in self.family(cls):
            for method in class_methods(member).values():
                receiver = first_parameter(method)
                if receiver is None:
                    continue
                for node in walk(method):
                    targets: list[cst.BaseExpression] = []
                    value: cst.BaseExpression | None = None
                    kind = type(node)  # `is`, not isinstance: see _tree.py on LibCST's classes
                    if kind is cst.Assign:
                        assert isinstance(node, cst.Assign)
                        targets, value = [t.target for t in node.targets], node.value
                    elif kind is cst.AnnAssign or kind is cst.AugAssign:
                        assert isinstance(node, (cst.AnnAssign, cst.AugAssign))
                        targets, value = [node.target], node.value
                    for target in targets:
                        attribute = self_attribute(target, receiver)
                        if attribute is not None:
                            table.setdefault(attribute, []).append(
                                (False, value or cst.Name("None"))
                            )
                        item = _self_item(target, receiver)
                        if item is not None and value is not None:
                            table.setdefault(item[0], []).append((True, value))
        return table

    def module_class_of(self, value: cst.BaseExpression) -> cst.ClassDef | None:
        """The module's own class that `value` constructs, if it visibly does."""
        if isinstance(value, cst.Call):
            return self.classes.get(dotted(value.func) or "")
        return None

    def defines(self, cls: cst.ClassDef, method: str) -> bool:
        """True unless the module shows the whole class and it lacks `method`."""
        if method in class_names(cls):
            return True
        for base in cls.bases:
            shown = self.classes.get(dotted(base.value) or "")
            if shown is None or self.defines(shown, method):
                return True  # a base the module does not show may define it
        return False


def _self_calls_in(method: cst.FunctionDef) -> set[tuple[str, str]]:
    """(attribute, method) for each `<self>.<attribute>.<method>(...)` in `method`."""
    receiver = first_parameter(method) or ""
    calls = set()
    for node in walk(method):
        call = method_call(node) if isinstance(node, cst.BaseExpression) else None
        attribute = self_attribute(call[0], receiver) if call is not None else None
        if call is not None and attribute is not None:
            calls.add((attribute, call[1]))
    return calls


def _local_value(
    method: cst.FunctionDef, statements: Sequence[cst.BaseStatement], name: str
) -> cst.BaseExpression | None:
    """The value of `name` when one of `statements` binds it, and nothing else in the
    method does, to a plain name or attribute (`stream_id: int = event.stream_id`)."""
    if bindings_of(method.body).count(name) != 1:
        return None
    for statement in statements:
        if not (isinstance(statement, cst.SimpleStatementLine) and len(statement.body) == 1):
            continue
        small = statement.body[0]
        if isinstance(small, cst.Assign) and len(small.targets) == 1:
            target, value = small.targets[0].target, small.value
        elif isinstance(small, cst.AnnAssign) and small.value is not None:
            target, value = small.target, small.value
        else:
            continue
        if isinstance(target, cst.Name) and identifier(target) == name and is_pure(value):
            return value
    return None


def _jump_before(dispatch: _Dispatch, method: cst.FunctionDef) -> cst.CSTNode | None:
    """A return/raise/break/continue that runs before the dispatch in `method`, if any."""
    path = [*dispatch.ancestors, dispatch.statement]
    return jump_before(path, _position(path, method))


def _provably_dead(dispatch: _Dispatch) -> bool:
    """The dispatch is in a method a later definition replaces, or after a jump: never runs."""
    ancestors = dispatch.ancestors
    for index, node in enumerate(ancestors):
        if not isinstance(node, cst.FunctionDef):
            continue
        owner = ancestors[index - 2] if index >= 2 else None
        if isinstance(owner, cst.ClassDef) and rebound_later(owner, node):
            return True
        if _jump_before(dispatch, node) is not None:
            return True
    return False


def _position(nodes: Sequence[cst.CSTNode], node: cst.CSTNode) -> int:
    """Where `node` (this very object) is in `nodes`; len(nodes) when it is not there."""
    return next((i for i, candidate in enumerate(nodes) if candidate is node), len(nodes))


def _is_send_headers_expression(expression: cst.BaseExpression | None) -> bool:
    return expression is not None and _is_send_headers(expression)


def _ends_streams(method: cst.FunctionDef) -> bool:
    for node in walk(method):
        call = method_call(node) if isinstance(node, cst.BaseExpression) else None
        if call is None:
            continue
        if call[1] in _ENDING_CALLS:
            return True
        if any(keyword(arg) == "end_stream" for arg in call[2].args):
            return True
    return False


def _arm_code(module: cst.Module, arm: _Arm) -> str:
    node = arm.node.with_changes(orelse=None) if isinstance(arm.node, cst.If) else arm.node
    return module.code_for_node(node).strip("\n")


# --- rewrite -------------------------------------------------------------------


def _rewritten_body(module: cst.Module, plan: _Plan) -> cst.IndentedBlock | None:
    """The branch body with the fix in place; None when it is already right."""
    send_line = plan.body.body[plan.send_index]
    assert isinstance(send_line, cst.SimpleStatementLine)
    send_expr = send_line.body[0]
    assert isinstance(send_expr, cst.Expr)
    new_call = _with_end_stream(module, plan.send_call)
    missing = [step for step in _STEPS if step not in plan.present]
    if not missing and new_call is plan.send_call:
        return None
    stream_id = module.code_for_node(plan.stream_id)
    inserted: dict[int, list[cst.BaseStatement]] = {}
    for index, step in enumerate(_STEPS):
        if step in plan.present:
            continue
        # Before the next step already there, else right before the send.
        anchor = next(
            (plan.present[later] for later in _STEPS[index + 1 :] if later in plan.present),
            plan.send_index,
        )
        code = step.value.format(
            self=plan.receiver, attr=plan.objects.attributes[step], stream_id=stream_id
        )
        inserted.setdefault(anchor, []).append(
            cst.parse_statement(code + "\n", config=module.config_for_parsing)
        )
    statements: list[cst.BaseStatement] = []
    for index, statement in enumerate(plan.body.body):
        statements.extend(inserted.get(index, []))
        if index == plan.send_index:
            statement = send_line.with_changes(body=[send_expr.with_changes(value=new_call)])
        statements.append(statement)
    return plan.body.with_changes(body=statements)


def _with_end_stream(module: cst.Module, call: cst.Call) -> cst.Call:
    """`call` with end_stream=True; the same object when it already has it."""
    args = list(call.args)
    # h2: H2Connection.send_headers(stream_id, headers, end_stream=False, ...)
    positional = [i for i, arg in enumerate(args) if arg.keyword is None]
    by_keyword = [i for i, arg in enumerate(args) if keyword(arg) == "end_stream"]
    slot = by_keyword or positional[2:3]
    if slot:
        value = args[slot[0]].value
        if dotted(value) == "True":
            return call
        if dotted(value) != "False":
            raise _Refusal("end_stream given as the literal True or False", call)
        args[slot[0]] = args[slot[0]].with_changes(value=cst.Name("True"))
        return call.with_changes(args=args)
    # The new argument takes the last one's place at the end of the call (its
    # trailing comma and the white space before ")"); the last one gets the
    # separator the call already uses between arguments.
    last = args[-1]
    separator = args[-2].comma if len(args) > 1 else cst.MaybeSentinel.DEFAULT
    if not isinstance(separator, cst.Comma):
        separator = cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))
    new_arg = cst.Arg(
        keyword=cst.Name("end_stream"),
        value=cst.Name("True"),
        equal=cst.AssignEqual(
            whitespace_before=cst.SimpleWhitespace(""),
            whitespace_after=cst.SimpleWhitespace(""),
        ),
        comma=last.comma,
        whitespace_after_arg=last.whitespace_after_arg,
    )
    args[-1] = last.with_changes(comma=separator, whitespace_after_arg=cst.SimpleWhitespace(""))
    return call.with_changes(args=[*args, new_arg])


# --- the fix -------------------------------------------------------------------


def fix(tree: cst.Module, environment: Environment) -> tuple[cst.Module, FixOutcome]:
    every = [(d, arm) for d in _Finder().find(tree) for arm in d.arms if arm.mentions_trailers]
    # Code that never runs is neither the candidate nor a decoy.
    arms = [(d, arm) for d, arm in every if not _provably_dead(d)]
    if every and not arms:
        dispatch, arm = every[0]
        _refuse(
            tree,
            dispatch,
            arm,
            "an isinstance(<event>, Trailers) branch in code that runs (this one never does: "
            "a later definition replaces its method, or a return or raise comes first)",
        )
    if not arms:
        if any(_is_class_reference(node, "Trailers") for node in walk(tree)):
            raise UnrecognisedStructureError(
                NAME,
                "<module>",
                "an `if isinstance(<event>, Trailers):` branch that sends the trailers",
                "Trailers is named, but no such branch exists",
            )
        return tree, FixOutcome(
            NAME, Outcome.NOT_APPLICABLE, "this version has no trailers support"
        )
    for dispatch, arm in arms:
        if _sends(arm.body) and not arm.for_trailers_alone:
            guard = ", with no guard" if isinstance(arm.node, cst.MatchCase) else ""
            _refuse(
                tree,
                dispatch,
                arm,
                "a branch for Trailers alone (it must end the stream, other events must not)"
                + guard,
            )
    senders = [(d, arm) for d, arm in arms if _sends(arm.body)]
    if len(senders) > 1:
        raise UnrecognisedStructureError(
            NAME,
            "<module>",
            "one branch that sends trailers",
            f"{len(senders)}: in {', '.join(d.where for d, _ in senders)}",
        )
    if not senders:
        dispatch, arm = arms[0]
        _refuse(
            tree,
            dispatch,
            arm,
            "the isinstance(..., Trailers) branch to call <connection>.send_headers itself",
        )
    dispatch, sender = senders[0]
    for other_dispatch, other in arms:
        if other is not sender and _in_class(other_dispatch) and _calls(other.body):
            _refuse(
                tree,
                other_dispatch,
                other,
                "one branch that handles Trailers (this one calls code h2fix cannot see, "
                "and may be the one that runs)",
            )
    try:
        plan = _Proof(tree, dispatch, sender).plan()
        new_body = _rewritten_body(tree, plan)
    except (_Refusal, Refusal) as refusal:
        # A shared check's Refusal without code found shows the branch, as _Refusal's does.
        _refuse(tree, dispatch, sender, refusal.expected, refusal.found or None)
    if new_body is None:
        return tree, FixOutcome(
            NAME,
            Outcome.FIXED_UPSTREAM,
            f"{plan.where} already drains the stream and ends it with the trailers",
        )
    return _replaced(dispatch, plan.body, new_body), FixOutcome(
        NAME,
        Outcome.REWRITTEN,
        f"{plan.where} now drains the stream's buffer, then sends the trailers with END_STREAM",
        functions=(plan.where,),
    )


def _replaced(dispatch: _Dispatch, old: cst.IndentedBlock, new: cst.IndentedBlock) -> cst.Module:
    """The module with `old` (a block in the dispatch) swapped for `new`: only the
    nodes from the module down to it are rebuilt."""
    below = path_to(dispatch.statement, old)
    assert below is not None  # the branch body is part of its dispatch
    module = replace([*dispatch.ancestors, *below], new)
    assert isinstance(module, cst.Module)
    return module


def _in_class(dispatch: _Dispatch) -> bool:
    return any(isinstance(node, cst.ClassDef) for node in dispatch.ancestors)


def _calls(node: cst.CSTNode) -> bool:
    return any(isinstance(child, (cst.Call, cst.Await)) for child in walk(node))


def _refuse(
    module: cst.Module,
    dispatch: _Dispatch,
    arm: _Arm,
    expected: str,
    found: cst.CSTNode | str | None = None,
) -> NoReturn:
    if found is None:
        text = _arm_code(module, arm)
    elif isinstance(found, str):
        text = f"{found}, in:\n{_arm_code(module, arm)}"
    else:
        text = module.code_for_node(found).strip("\n")
        if "Trailers" not in text:
            text = f"{text.strip()}\nin:\n{_arm_code(module, arm)}"
    raise UnrecognisedStructureError(NAME, dispatch.where, expected, text)
