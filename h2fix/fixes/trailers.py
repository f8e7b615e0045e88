"""Fix `trailers`: end the stream with the trailers, after the buffered DATA.

Hypercorn 0.17.0-0.17.3 and anycorn 0.18.x send trailers with a bare
`send_headers(stream_id, headers)`. h2 encodes the header block (so the HPACK
encoder table moves on), then raises because trailers must carry END_STREAM;
the server swallows the error and the connection's HPACK state is now out of
sync with the client. Even with END_STREAM, the trailers would overtake DATA
still waiting in the stream's send buffer.

The repaired branch first does what the end-of-body branch does (unblock the
stream in the priority tree, wake the sending task, wait for the buffer to
drain) and then sends the trailers with `end_stream=True`.

Everything is located by structure. The attribute names used by the inserted
statements are learned from the same class, never assumed.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn, Union

import libcst as cst
import libcst.matchers as m

from .._environment import Environment
from .._errors import UnrecognisedStructureError
from .._results import FixOutcome, Outcome
from ._scopes import ScopeTracker, self_name

NAME = "trailers"

_TRAILERS_CLASS = m.Name("Trailers") | m.Attribute(attr=m.Name("Trailers"))
_ISINSTANCE_TRAILERS = m.Call(
    func=m.Name("isinstance"),
    args=[
        m.Arg(keyword=None, star=""),
        m.Arg(
            value=_TRAILERS_CLASS | m.Tuple(elements=[m.Element(_TRAILERS_CLASS)]),
            keyword=None,
            star="",
        ),
    ],
)
# `isinstance(event, (Trailers, Other))`: a branch shared with other events.
_ISINSTANCE_TRAILERS_AMONG_OTHERS = m.Call(
    func=m.Name("isinstance"),
    args=[
        m.Arg(),
        m.Arg(value=m.Tuple(elements=[m.ZeroOrMore(), m.Element(_TRAILERS_CLASS), m.ZeroOrMore()])),
    ],
)
_CASE_TRAILERS = m.MatchClass(cls=_TRAILERS_CLASS, patterns=[], kwds=[])
_ALONE = "a branch for Trailers alone (it must end the stream, other events must not)"
_SEND_HEADERS = m.Call(func=m.Attribute(attr=m.Name("send_headers")))
# Attributes that, assigned in __init__, confirm the default names on their own.
_DEFAULT_NAMES = ("priority", "has_data", "stream_buffers")


class _Step(enum.Enum):
    """The statements the end-of-body branch runs before the stream may end."""

    UNBLOCK = "{self}.{attr}.unblock({stream_id})"
    WAKE = "await {self}.{attr}.set()"
    DRAIN = "await {self}.{attr}[{stream_id}].drain()"

    def matcher(self, self_name: str) -> m.SimpleStatementLine:
        owner = m.Attribute(value=m.Name(self_name), attr=m.SaveMatchedNode(m.Name(), "attr"))
        call: m.Call
        if self is _Step.UNBLOCK:
            return m.SimpleStatementLine(
                body=[m.Expr(m.Call(func=m.Attribute(value=owner, attr=m.Name("unblock"))))]
            )
        if self is _Step.WAKE:
            call = m.Call(func=m.Attribute(value=owner, attr=m.Name("set")), args=[])
        else:
            call = m.Call(
                func=m.Attribute(value=m.Subscript(value=owner), attr=m.Name("drain")),
                args=[],
            )
        return m.SimpleStatementLine(body=[m.Expr(m.Await(call))])

    def attribute_in(self, statement: cst.CSTNode, self_name: str) -> str | None:
        """The attribute name this statement uses for this step, if it is this step."""
        found = m.extract(statement, self.matcher(self_name))
        if found is None:
            return None
        name = found["attr"]
        assert isinstance(name, cst.Name)
        return name.value


_STEPS = tuple(_Step)


@dataclass
class _Branch:
    """One `isinstance(<event>, Trailers)` (or `case Trailers():`) branch seen in the module."""

    where: str
    code: str
    sends: bool
    changed: bool = False


_BranchNode = Union[cst.If, cst.MatchCase]


class _TrailersTransformer(ScopeTracker):
    def __init__(self, module: cst.Module) -> None:
        super().__init__()
        self.module = module
        self.branches: list[_Branch] = []
        # Per class: the attribute names learned for the steps (None: not confirmed).
        self._names: dict[int, dict[_Step, str] | None] = {}

    def leave_If(self, original_node: cst.If, updated_node: cst.If) -> cst.If:
        test = original_node.test
        if m.matches(test, _ISINSTANCE_TRAILERS):
            body = self._fixed_body(updated_node)
            return updated_node if body is None else updated_node.with_changes(body=body)
        if m.matches(test, _ISINSTANCE_TRAILERS_AMONG_OTHERS) and m.findall(
            original_node.body, _SEND_HEADERS
        ):
            self._refuse(_ALONE, original_node)
        return updated_node

    def leave_MatchCase(
        self, original_node: cst.MatchCase, updated_node: cst.MatchCase
    ) -> cst.MatchCase:
        pattern = original_node.pattern
        if m.matches(pattern, _CASE_TRAILERS) and original_node.guard is None:
            body = self._fixed_body(updated_node)
            return updated_node if body is None else updated_node.with_changes(body=body)
        if m.findall(pattern, m.MatchClass(cls=_TRAILERS_CLASS)) and m.findall(
            original_node.body, _SEND_HEADERS
        ):
            self._refuse(_ALONE + ", with no guard", original_node)
        return updated_node

    def _fixed_body(self, branch: _BranchNode) -> cst.BaseSuite | None:
        """The branch body with the fix in place, or None when it must not change."""
        body = branch.body
        sends = bool(m.findall(body, _SEND_HEADERS))
        record = _Branch(self.where, self._code(branch), sends)
        self.branches.append(record)
        if not sends:
            return None  # decides later: a decoy, or a delegation to refuse
        if not isinstance(body, cst.IndentedBlock):
            self._refuse("the branch body on its own lines", branch)
        statements = list(body.body)
        send_index = self._send_headers_index(statements, branch)
        _, receiver = self._method(branch)
        present = self._present_steps(statements, receiver)
        self._check_order(present, send_index, branch)

        send_line = statements[send_index]
        assert isinstance(send_line, cst.SimpleStatementLine)
        send_expr = send_line.body[0]
        assert isinstance(send_expr, cst.Expr)
        assert isinstance(send_expr.value, cst.Call)
        call = send_expr.value
        new_call = self._with_end_stream(call, branch)
        missing = [step for step in _STEPS if step not in present]
        if not missing and new_call is call:
            return None  # already fixed upstream: leave it byte for byte

        stream_id = self.module.code_for_node(self._stream_id(call, branch))
        names = self._class_names(branch) if missing else {}
        inserted: dict[int, list[cst.BaseStatement]] = {}
        for index, step in enumerate(_STEPS):
            if step in present:
                continue
            anchor = next(
                (present[later] for later in _STEPS[index + 1 :] if later in present),
                send_index,
            )
            code = step.value.format(self=receiver, attr=names[step], stream_id=stream_id)
            inserted.setdefault(anchor, []).append(
                cst.parse_statement(code + "\n", config=self.module.config_for_parsing)
            )
        new_statements: list[cst.BaseStatement] = []
        for index, statement in enumerate(statements):
            new_statements.extend(inserted.get(index, []))
            if index == send_index:
                statement = send_line.with_changes(body=[send_expr.with_changes(value=new_call)])
            new_statements.append(statement)
        record.changed = True
        return body.with_changes(body=new_statements)

    def _send_headers_index(
        self, statements: Sequence[cst.BaseStatement], branch: _BranchNode
    ) -> int:
        direct = [
            index
            for index, statement in enumerate(statements)
            if m.matches(statement, m.SimpleStatementLine(body=[m.Expr(_SEND_HEADERS)]))
        ]
        if len(direct) != 1:
            self._refuse(
                "exactly one `<connection>.send_headers(...)` statement directly in the branch",
                branch,
            )
        return direct[0]

    def _method(self, branch: _BranchNode) -> tuple[cst.FunctionDef, str]:
        """The enclosing method and the name of its first parameter (`self`)."""
        method, cls = self.function, self.cls
        if method is None or cls is None or cls not in self.scopes[: self.scopes.index(method)]:
            self._refuse("the branch inside a method of a class", branch)
        if method.asynchronous is None:
            self._refuse("the branch inside an `async def` method (it awaits the drain)", branch)
        name = self_name(method)
        if name is None:
            self._refuse("a method with a `self` parameter", branch)
        return method, name

    @staticmethod
    def _present_steps(statements: Sequence[cst.BaseStatement], self_name: str) -> dict[_Step, int]:
        present: dict[_Step, int] = {}
        for index, statement in enumerate(statements):
            for step in _STEPS:
                if step not in present and step.attribute_in(statement, self_name):
                    present[step] = index
        return present

    def _check_order(self, present: dict[_Step, int], send_index: int, branch: _BranchNode) -> None:
        positions = [present[step] for step in _STEPS if step in present] + [send_index]
        if positions != sorted(positions):
            self._refuse("unblock, then set, then drain, all before send_headers", branch)

    def _stream_id(self, call: cst.Call, branch: _BranchNode) -> cst.BaseExpression:
        for arg in call.args:
            if arg.keyword is not None and arg.keyword.value == "stream_id":
                return arg.value
        positional = [arg for arg in call.args if arg.keyword is None]
        if not positional or positional[0].star:
            self._refuse("the stream id as the first argument of send_headers", branch)
        return positional[0].value

    def _with_end_stream(self, call: cst.Call, branch: _BranchNode) -> cst.Call:
        """`call` with end_stream=True; the same object when it already has it."""
        args = list(call.args)
        if any(arg.star for arg in args):
            self._refuse("send_headers called without *args or **kwargs", branch)
        # h2: send_headers(stream_id, headers, end_stream=False, ...)
        positional = [i for i, arg in enumerate(args) if arg.keyword is None]
        keyword = [
            i for i, arg in enumerate(args) if arg.keyword and arg.keyword.value == "end_stream"
        ]
        slot = keyword or positional[2:3]
        if slot:
            value = args[slot[0]].value
            if m.matches(value, m.Name("True")):
                return call
            if not m.matches(value, m.Name("False")):
                self._refuse("end_stream given as the literal True or False", branch)
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

    def _class_names(self, branch: _BranchNode) -> dict[_Step, str]:
        """Attribute names of the priority tree, the wake-up event and the buffers.

        Learned from a block of the same class that already runs all three steps
        (the end-of-body branch), or confirmed by `__init__` for the default names.
        """
        cls = self.cls
        assert cls is not None  # _method() checked
        if id(cls) not in self._names:
            self._names[id(cls)] = _names_from_class(cls)
        names = self._names[id(cls)]
        if names is None:
            self._refuse(
                f"class {cls.name.value} to confirm the attributes the fix uses: a block that "
                "already runs unblock/set/drain (the end-of-body branch), or __init__ "
                f"assigning {', '.join(_DEFAULT_NAMES)}",
                branch,
            )
        return names

    def _code(self, branch: _BranchNode) -> str:
        # An if branch alone, without the elif/else chain that follows it.
        node = branch.with_changes(orelse=None) if isinstance(branch, cst.If) else branch
        return self.module.code_for_node(node).strip("\n")

    def _refuse(self, expected: str, branch: _BranchNode) -> NoReturn:
        raise UnrecognisedStructureError(NAME, self.where, expected, self._code(branch))


def _names_from_class(cls: cst.ClassDef) -> dict[_Step, str] | None:
    methods = [n for n in cls.body.body if isinstance(n, cst.FunctionDef)]
    for method in methods:
        receiver = self_name(method)
        if receiver is None:
            continue
        for block in m.findall(method, m.IndentedBlock()):
            assert isinstance(block, cst.IndentedBlock)
            names: dict[_Step, str] = {}
            for statement in block.body:
                for step in _STEPS:
                    attr = step.attribute_in(statement, receiver)
                    if attr is not None:
                        names.setdefault(step, attr)
            if len(names) == len(_STEPS):
                return names
    for method in methods:
        receiver = self_name(method)
        if method.name.value != "__init__" or receiver is None:
            continue
        target = m.Attribute(value=m.Name(receiver))
        assigned = set()
        for node in m.findall(method, m.AssignTarget(target=target) | m.AnnAssign(target=target)):
            assert isinstance(node, (cst.AssignTarget, cst.AnnAssign))
            assert isinstance(node.target, cst.Attribute)
            assigned.add(node.target.attr.value)
        if set(_DEFAULT_NAMES) <= assigned:
            return dict(zip(_STEPS, _DEFAULT_NAMES))
    return None


def fix(tree: cst.Module, environment: Environment) -> tuple[cst.Module, FixOutcome]:
    transformer = _TrailersTransformer(tree)
    new_tree = tree.visit(transformer)
    senders = [b for b in transformer.branches if b.sends]
    if not senders:
        if transformer.branches:
            branch = transformer.branches[0]
            raise UnrecognisedStructureError(
                NAME,
                branch.where,
                "the isinstance(..., Trailers) branch to call <connection>.send_headers itself",
                branch.code,
            )
        if m.findall(tree, _TRAILERS_CLASS):
            raise UnrecognisedStructureError(
                NAME,
                "<module>",
                "an `if isinstance(<event>, Trailers):` branch that sends the trailers",
                "Trailers is named, but no such branch exists",
            )
        return tree, FixOutcome(
            NAME, Outcome.NOT_APPLICABLE, "this version has no trailers support"
        )
    if len(senders) > 1:
        raise UnrecognisedStructureError(
            NAME,
            "<module>",
            "one branch that sends trailers",
            f"{len(senders)}: in {', '.join(b.where for b in senders)}",
        )
    branch = senders[0]
    if not branch.changed:
        return tree, FixOutcome(
            NAME,
            Outcome.FIXED_UPSTREAM,
            f"{branch.where} already drains the stream and ends it with the trailers",
        )
    return new_tree, FixOutcome(
        NAME,
        Outcome.REWRITTEN,
        f"{branch.where} now drains the stream's buffer, then sends the trailers with END_STREAM",
        functions=(branch.where,),
    )
