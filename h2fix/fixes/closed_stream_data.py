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
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NoReturn, Union

import libcst as cst

from .._environment import Environment
from .._errors import UnrecognisedStructureError
from .._results import FixOutcome, Outcome
from ._scopes import ScopeTracker, self_name

NAME = "closed_stream_data"

DATA = "DataReceived"
#: h2 events of the client's half of a stream: h2 still delivers them after the
#: server has finished its own half, so they may name a stream the server forgot.
CLIENT_HALF_EVENTS = (DATA, "StreamEnded", "TrailersReceived")
_ACKNOWLEDGE = "acknowledge_received_data"
#: Exceptions whose handler already keeps a missing stream from escaping.
_CATCHES_KEY_ERROR = ("KeyError", "LookupError", "Exception", "BaseException")

_Lookup = Union[cst.Subscript, cst.Call]


@dataclass
class _Branch:
    """One `if isinstance(<event>, <client-half event>):` branch."""

    event: str
    where: str
    method: cst.FunctionDef
    code: str
    changed: bool = False


@dataclass
class _Guards:
    """What encloses a node inside the branch: handlers that swallow a KeyError,
    and `<key> in <dict>` tests (as code) whose body it is in."""

    catches: bool = False
    memberships: frozenset[tuple[str, str]] = field(default_factory=frozenset)


class _Transformer(ScopeTracker):
    def __init__(self, module: cst.Module) -> None:
        super().__init__()
        self.module = module
        self.branches: list[_Branch] = []
        # Walking a class's methods is the costly part: once per class.
        self._assignments: dict[int, dict[str, list[cst.BaseExpression]]] = {}
        self._rebound: dict[int, bool] = {}

    def _assigned(self, cls: cst.ClassDef) -> dict[str, list[cst.BaseExpression]]:
        if id(cls) not in self._assignments:
            self._assignments[id(cls)] = _self_assignments(cls)
        return self._assignments[id(cls)]

    def leave_If(self, original_node: cst.If, updated_node: cst.If) -> cst.If:
        event = self._event_class(original_node.test)
        if event is None:
            return updated_node
        body = self._fixed_body(event, updated_node)
        return updated_node if body is None else updated_node.with_changes(body=body)

    def leave_MatchCase(
        self, original_node: cst.MatchCase, updated_node: cst.MatchCase
    ) -> cst.MatchCase:
        if _names_any(original_node.pattern, CLIENT_HALF_EVENTS):
            self._refuse(
                "`if isinstance(<event>, <h2 event>):` branches (not match/case)", original_node
            )
        return updated_node

    # --- which branch ------------------------------------------------------

    def _event_class(self, test: cst.BaseExpression) -> str | None:
        """The client-half event a test selects alone; refuses a test that shares it."""
        if not (isinstance(test, cst.Call) and _dotted(test.func) == "isinstance"):
            return None
        if len(test.args) != 2 or any(arg.keyword or arg.star for arg in test.args):
            return None
        classes = test.args[1].value
        if isinstance(classes, cst.Tuple):
            if _names_any(classes, CLIENT_HALF_EVENTS):
                self._refuse_test(test)
            return None
        name = _last_name(classes)
        return name if name in CLIENT_HALF_EVENTS else None

    def _refuse_test(self, test: cst.Call) -> NoReturn:
        raise UnrecognisedStructureError(
            NAME,
            self.where,
            "a branch for one h2 event class (a shared branch cannot be guarded for one of them)",
            self.module.code_for_node(test),
        )

    # --- the rewrite -------------------------------------------------------

    def _fixed_body(self, event: str, branch: cst.If) -> cst.BaseSuite | None:
        method, receiver = self._method(branch)
        record = _Branch(event, self.where, method, self._code(branch))
        self.branches.append(record)
        body = branch.body
        if not isinstance(body, cst.IndentedBlock):
            self._refuse("the branch body on its own lines", branch)
        cls = self.cls
        assert cls is not None  # _method() checked
        lookups = list(_lookups(body, receiver, _Guards()))
        if not lookups:
            self._refuse(
                f"the branch to look the stream up itself (`{receiver}.<streams>[...]`)", branch
            )
        for node, _ in lookups:
            self._check_dict(_dict_attr(node), cls, branch)
        if event == DATA:
            self._check_acknowledgement(body, receiver, _subject(branch), cls, branch)
        unguarded = [node for node, guarded in lookups if not guarded]
        if not unguarded:
            return None  # fixed upstream: leave it byte for byte
        if len(unguarded) > 1 or not isinstance(unguarded[0], cst.Subscript):
            self._refuse("one unguarded `<self>.<streams>[<key>]` lookup", branch)
        lookup = unguarded[0]
        index = self._statement_of(body, lookup, branch)
        statement = body.body[index]
        assert isinstance(statement, cst.SimpleStatementLine)
        key = _key(lookup)
        if key is None:
            self._refuse(
                "the key as a name or attribute chain (it is evaluated twice)",
                branch,
            )
        guard = cst.If(
            test=cst.Comparison(
                left=key.deep_clone(),
                comparisons=[
                    cst.ComparisonTarget(operator=cst.In(), comparator=lookup.value.deep_clone())
                ],
            ),
            body=cst.IndentedBlock(body=[statement.with_changes(leading_lines=())]),
            leading_lines=statement.leading_lines,
        )
        statements = list(body.body)
        statements[index] = guard
        record.changed = True
        return body.with_changes(body=statements)

    def _statement_of(self, body: cst.IndentedBlock, lookup: cst.Subscript, branch: cst.If) -> int:
        """The index of the statement `[await] <lookup>.<method>(...)` directly in the branch.

        In that shape the lookup is the first thing the statement evaluates, so a
        membership test right before it sees the same dict with nothing in between.
        """
        found = [index for index, statement in enumerate(body.body) if _looks_up(statement, lookup)]
        if not found:
            self._refuse(
                "the stream lookup as a statement of its own directly in the branch: "
                "`await <self>.<streams>[<key>].handle(...)`",
                branch,
            )
        return found[0]

    # --- proofs ------------------------------------------------------------

    def _method(self, branch: cst.If) -> tuple[cst.FunctionDef, str]:
        """The method the branch is in, proven to be the one its class keeps."""
        method, cls = self.function, self.cls
        if method is None or cls is None or self.scopes[-2:] != [cls, method]:
            self._refuse("the branch directly inside a method of a class", branch)
        if self.scopes[0] is not cls:
            self._refuse("the class at the top level of the module", branch)
        if _definitions(cls.body.body, method.name.value) != [method]:
            self._refuse(f"one definition of {method.name.value} in its class", branch)
        if _definitions(self.module.body, cls.name.value) != [cls]:
            self._refuse(f"one definition of class {cls.name.value} in the module", branch)
        # Another class with a method of that name may be a subclass that overrides it:
        # then the server could run that one, and this branch would be dead.
        owners = [
            other.name.value
            for other in self.module.body
            if isinstance(other, cst.ClassDef) and _definitions(other.body.body, method.name.value)
        ]
        if owners != [cls.name.value]:
            self._refuse(
                f"{method.name.value} defined in one class of the module",
                branch,
                found=f"defined in {', '.join(owners)}",
            )
        receiver = self_name(method)
        if receiver is None or _is_static(method):
            self._refuse("a method with a `self` parameter", branch)
        if id(method) not in self._rebound:
            self._rebound[id(method)] = _rebinds(method.body, receiver)
        if self._rebound[id(method)]:
            self._refuse(f"`{receiver}` never rebound in {method.name.value}", branch)
        return method, receiver

    def _check_dict(self, attr: str, cls: cst.ClassDef, branch: cst.If) -> None:
        """`self.<attr>` is a dict: every assignment to it in the class is `{}` or `dict()`,
        so `key in` it is True exactly when looking the key up does not raise."""
        values = self._assigned(cls).get(attr, [])
        if not values or not all(_is_empty_dict(v) for v in values):
            found = ", ".join(self.module.code_for_node(v) for v in values) or "no assignment"
            self._refuse(
                f"`self.{attr}` assigned only `{{}}` or `dict()` in class {cls.name.value}",
                branch,
                found=f"self.{attr} = {found}",
            )

    def _check_acknowledgement(
        self,
        body: cst.IndentedBlock,
        receiver: str,
        subject: str,
        cls: cst.ClassDef,
        branch: cst.If,
    ) -> None:
        """The DATA branch acknowledges the bytes on the h2 connection, whatever the lookup does."""
        for statement in body.body:
            call = _call_statement(statement)
            if call is None or not isinstance(call.func, cst.Attribute):
                if _leaves_early(statement):
                    # e.g. `if <key> not in self.streams: continue`: it skips the
                    # acknowledgement for exactly the DATA this fix is about.
                    self._refuse(
                        f"no continue/break/return/raise before {_ACKNOWLEDGE} in the "
                        "DataReceived branch (the discarded bytes must be acknowledged too)",
                        branch,
                    )
                continue
            if call.func.attr.value != _ACKNOWLEDGE:
                continue
            connection = call.func.value
            if not (
                isinstance(connection, cst.Attribute)
                and isinstance(connection.value, cst.Name)
                and connection.value.value == receiver
            ):
                break
            values = self._assigned(cls).get(connection.attr.value, [])
            if len(values) != 1 or not _is_h2_connection(values[0]):
                self._refuse(
                    f"`self.{connection.attr.value}` assigned once, an h2 H2Connection",
                    branch,
                )
            size = _argument(call, 0, "acknowledged_size")
            if size is None or _dotted(size) != f"{subject}.flow_controlled_length":
                self._refuse(
                    f"{_ACKNOWLEDGE}({subject}.flow_controlled_length, ...)",
                    branch,
                )
            return
        self._refuse(
            f"`{receiver}.<connection>.{_ACKNOWLEDGE}(...)` as a statement directly in the "
            "DataReceived branch, so that it runs for a stream that is gone too "
            "(the connection's receive window stalls otherwise)",
            branch,
        )

    def _code(self, branch: cst.If) -> str:
        return self.module.code_for_node(branch.with_changes(orelse=None)).strip("\n")

    def _refuse(self, expected: str, node: cst.If | cst.MatchCase, found: str = "") -> NoReturn:
        if not found:
            if isinstance(node, cst.If):
                found = self._code(node)
            else:
                found = self.module.code_for_node(node).strip("\n")
        raise UnrecognisedStructureError(NAME, self.where, expected, found)


# --- helpers on nodes ------------------------------------------------------------


def _dotted(node: cst.BaseExpression) -> str | None:
    """`a.b.c` for a chain of names and attributes, None for anything else."""
    if isinstance(node, cst.Name):
        return node.value
    if isinstance(node, cst.Attribute):
        base = _dotted(node.value)
        return None if base is None else f"{base}.{node.attr.value}"
    return None


def _last_name(node: cst.BaseExpression) -> str | None:
    if isinstance(node, cst.Name):
        return node.value
    if isinstance(node, cst.Attribute):
        return node.attr.value
    return None


def _names_any(node: cst.CSTNode, names: tuple[str, ...]) -> bool:
    if isinstance(node, cst.Name) and node.value in names:
        return True
    return any(_names_any(child, names) for child in node.children)


def _subject(branch: cst.If) -> str:
    test = branch.test
    assert isinstance(test, cst.Call)
    return _dotted(test.args[0].value) or "<event>"


def _definitions(body: object, name: str) -> list[cst.CSTNode]:
    """Statements of a body that bind `name` as a def or class."""
    assert isinstance(body, (list, tuple))
    return [
        node
        for node in body
        if isinstance(node, (cst.FunctionDef, cst.ClassDef)) and node.name.value == name
    ]


def _is_static(method: cst.FunctionDef) -> bool:
    return any(_dotted(d.decorator) in ("staticmethod", "classmethod") for d in method.decorators)


def _self_attr(node: cst.BaseExpression, receiver: str) -> str | None:
    """`attr` for `<receiver>.attr`."""
    if (
        isinstance(node, cst.Attribute)
        and isinstance(node.value, cst.Name)
        and node.value.value == receiver
    ):
        return node.attr.value
    return None


def _dict_attr(lookup: _Lookup) -> str:
    value = lookup.value if isinstance(lookup, cst.Subscript) else lookup.func
    if isinstance(value, cst.Attribute) and isinstance(lookup, cst.Call):
        value = value.value  # <self>.<dict>.get
    assert isinstance(value, cst.Attribute)
    return value.attr.value


def _key(lookup: cst.Subscript) -> cst.BaseExpression | None:
    """The subscript's key when it is a name or attribute chain (free of side effects)."""
    if len(lookup.slice) != 1:
        return None
    index = lookup.slice[0].slice
    if not isinstance(index, cst.Index) or index.star is not None:
        return None
    return index.value if _dotted(index.value) is not None else None


def _lookups(node: cst.CSTNode, receiver: str, guards: _Guards) -> Iterator[tuple[_Lookup, bool]]:
    """Every `<receiver>.<attr>[...]` and `<receiver>.<attr>.get(...)` under `node`,
    with whether a handler or a membership test already keeps it from raising."""
    if isinstance(node, cst.Subscript) and _self_attr(node.value, receiver) is not None:
        key = _key(node)
        membership = (
            (_dotted(node.value), _dotted(key)) if key is not None else None
        ) in guards.memberships
        yield node, guards.catches or membership
    if (
        isinstance(node, cst.Call)
        and isinstance(node.func, cst.Attribute)
        and node.func.attr.value == "get"
        and _self_attr(node.func.value, receiver) is not None
    ):
        yield node, True
    if isinstance(node, cst.Try):
        inner = _Guards(guards.catches or _catches_key_error(node), guards.memberships)
        yield from _lookups(node.body, receiver, inner)
        for part in (*node.handlers, node.orelse, node.finalbody):
            if part is not None:
                yield from _lookups(part, receiver, guards)
        return
    if isinstance(node, cst.With) and _suppresses_key_error(node):
        yield from _lookups(node.body, receiver, _Guards(True, guards.memberships))
        for item in node.items:
            yield from _lookups(item, receiver, guards)
        return
    if isinstance(node, cst.If):
        tested = _membership(node.test)
        yield from _lookups(node.test, receiver, guards)
        inner = guards if tested is None else _Guards(guards.catches, guards.memberships | {tested})
        yield from _lookups(node.body, receiver, inner)
        if node.orelse is not None:
            yield from _lookups(node.orelse, receiver, guards)
        return
    for child in node.children:
        yield from _lookups(child, receiver, guards)


def _membership(test: cst.BaseExpression) -> tuple[str, str] | None:
    """(dict, key) as code for `if <key> in <dict>:`."""
    if not isinstance(test, cst.Comparison) or len(test.comparisons) != 1:
        return None
    target = test.comparisons[0]
    if not isinstance(target.operator, cst.In):
        return None
    container, key = _dotted(target.comparator), _dotted(test.left)
    return None if container is None or key is None else (container, key)


def _catches_key_error(node: cst.Try) -> bool:
    for handler in node.handlers:
        caught = handler.type
        if caught is None:
            return True
        if isinstance(caught, cst.Tuple):
            names = [_last_name(element.value) for element in caught.elements]
        else:
            names = [_last_name(caught)]
        if any(name in _CATCHES_KEY_ERROR for name in names):
            return True
    return False


def _suppresses_key_error(node: cst.With) -> bool:
    for item in node.items:
        call = item.item
        if isinstance(call, cst.Call) and _dotted(call.func) in ("suppress", "contextlib.suppress"):
            names = [_last_name(arg.value) for arg in call.args if arg.keyword is None]
            if any(name in _CATCHES_KEY_ERROR for name in names):
                return True
    return False


def _looks_up(statement: cst.BaseStatement, lookup: cst.Subscript) -> bool:
    """Whether the statement is `[await] <lookup>.<method>(...)`."""
    if not isinstance(statement, cst.SimpleStatementLine) or len(statement.body) != 1:
        return False
    expression = statement.body[0]
    if not isinstance(expression, cst.Expr):
        return False
    value = expression.value
    if isinstance(value, cst.Await):
        value = value.expression
    return (
        isinstance(value, cst.Call)
        and isinstance(value.func, cst.Attribute)
        and value.func.value is lookup
    )


def _rebinds(node: cst.CSTNode, name: str) -> bool:
    """Whether `name` is assigned anywhere under `node` (then it may not be the instance)."""
    target: cst.CSTNode | None = None
    if isinstance(node, (cst.AssignTarget, cst.AnnAssign, cst.AugAssign, cst.For, cst.NamedExpr)):
        target = node.target
    elif isinstance(node, cst.AsName):
        target = node.name
    if target is not None and name in _bound_names(target):
        return True
    return any(_rebinds(child, name) for child in node.children)


def _bound_names(target: cst.CSTNode) -> list[str]:
    """Names a target binds: `a`, `(a, *b)`; not `a.x` or `a[i]`, which bind no name."""
    if isinstance(target, cst.Name):
        return [target.value]
    if isinstance(target, (cst.Tuple, cst.List)):
        return [n for element in target.elements for n in _bound_names(element.value)]
    if isinstance(target, cst.StarredElement):
        return _bound_names(target.value)
    return []


def _leaves_early(node: cst.CSTNode) -> bool:
    """Whether a statement can leave the branch before the next one (nested defs aside)."""
    if isinstance(node, (cst.Continue, cst.Break, cst.Return, cst.Raise)):
        return True
    if isinstance(node, (cst.FunctionDef, cst.ClassDef, cst.Lambda)):
        return False
    return any(_leaves_early(child) for child in node.children)


def _call_statement(statement: cst.BaseStatement) -> cst.Call | None:
    if not isinstance(statement, cst.SimpleStatementLine) or len(statement.body) != 1:
        return None
    expression = statement.body[0]
    if isinstance(expression, cst.Expr) and isinstance(expression.value, cst.Call):
        return expression.value
    return None


def _argument(call: cst.Call, position: int, keyword: str) -> cst.BaseExpression | None:
    for arg in call.args:
        if arg.keyword is not None and arg.keyword.value == keyword:
            return arg.value
    positional = [arg for arg in call.args if arg.keyword is None and not arg.star]
    return positional[position].value if len(positional) > position else None


def _self_assignments(cls: cst.ClassDef) -> dict[str, list[cst.BaseExpression]]:
    """attr -> the values assigned to `self.<attr>` anywhere in the class's methods."""
    found: dict[str, list[cst.BaseExpression]] = {}
    for method in cls.body.body:
        if not isinstance(method, cst.FunctionDef):
            continue
        receiver = self_name(method)
        if receiver is None:
            continue
        for attr, value in _assignments(method.body, receiver):
            found.setdefault(attr, []).append(value)
    return found


def _assignments(node: cst.CSTNode, receiver: str) -> Iterator[tuple[str, cst.BaseExpression]]:
    if isinstance(node, cst.Assign):
        for target in node.targets:
            attr = _self_attr(target.target, receiver)
            if attr is not None:
                yield attr, node.value
    elif isinstance(node, (cst.AnnAssign, cst.AugAssign)):
        attr = _self_attr(node.target, receiver)
        if attr is not None:
            # An annotation alone binds nothing; `+=` and friends make no fresh dict.
            yield attr, node.value if node.value is not None else cst.Name("...")
    for child in node.children:
        yield from _assignments(child, receiver)


def _is_empty_dict(value: cst.BaseExpression) -> bool:
    if isinstance(value, cst.Dict):
        return not value.elements
    return isinstance(value, cst.Call) and _dotted(value.func) == "dict" and not value.args


def _is_h2_connection(value: cst.BaseExpression) -> bool:
    return isinstance(value, cst.Call) and _last_name(value.func) == "H2Connection"


# --- the fix -----------------------------------------------------------------------


def fix(tree: cst.Module, environment: Environment) -> tuple[cst.Module, FixOutcome]:
    transformer = _Transformer(tree)
    new_tree = tree.visit(transformer)
    branches = transformer.branches
    data = [b for b in branches if b.event == DATA]
    if not data:
        if _names_any(tree, (DATA,)):
            raise UnrecognisedStructureError(
                NAME,
                "<module>",
                f"an `if isinstance(<event>, h2.events.{DATA}):` branch",
                f"{DATA} is named, but no such branch exists",
            )
        return tree, FixOutcome(NAME, Outcome.NOT_APPLICABLE, "this module handles no h2 DATA")
    if len(data) > 1:
        raise UnrecognisedStructureError(
            NAME,
            "<module>",
            f"one {DATA} branch",
            f"{len(data)}: in {', '.join(b.where for b in data)}",
        )
    dispatch = data[0]
    elsewhere = [b for b in branches if b.method is not dispatch.method]
    if elsewhere:
        raise UnrecognisedStructureError(
            NAME,
            elsewhere[0].where,
            f"the branches for the client's events in {dispatch.where}, with the {DATA} branch",
            elsewhere[0].code,
        )
    changed = [e for e in CLIENT_HALF_EVENTS if any(b.changed and b.event == e for b in branches)]
    if not changed:
        return tree, FixOutcome(
            NAME,
            Outcome.FIXED_UPSTREAM,
            f"{dispatch.where} already skips events for a stream it finished",
        )
    return new_tree, FixOutcome(
        NAME,
        Outcome.REWRITTEN,
        f"{dispatch.where} now skips {', '.join(changed)} for a stream it already "
        "finished, still acknowledging the DATA",
        functions=(dispatch.where,),
    )
