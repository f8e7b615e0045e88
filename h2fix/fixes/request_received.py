"""Fix `request_received`: build h2's RequestReceived the way the installed h2 accepts.

h2 4.3 made its events keyword-only dataclasses: `RequestReceived()` with no
arguments raises TypeError. Hypercorn <= 0.17.3 builds the event with no
arguments and sets attributes afterwards (the h2c Upgrade path in `initiate()`
and server push in `_create_server_push()`); anycorn 0.18.2+ passes
`stream_id=` and so breaks the other way, with h2 <= 4.2. Which form is right
is read from the installed h2 (the `Environment`), never from version numbers.

    event = h2.events.RequestReceived()        event = h2.events.RequestReceived(
    event.stream_id = 1                 <->        stream_id=1, headers=headers
    event.headers = headers                    )

Proven before rewriting: the call is h2's own `RequestReceived` (the module
imports it from h2), and no value moved across the construction refers to the
event itself, so evaluating it before or after the construction is the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

import libcst as cst

from .._environment import Environment
from .._errors import UnrecognisedStructureError
from .._results import FixOutcome, Outcome
from ._scopes import ScopeTracker
from ._syntax import (
    dotted,
    identifier,
    imports_name,
    imports_package,
    keyword,
    module_bindings,
    walk,
)
from ._tree import may_hold_blocks, transform

NAME = "request_received"


def _is_construction(node: cst.CSTNode) -> bool:
    """A call of something named RequestReceived (h2's, or not: that is proven apart)."""
    if not isinstance(node, cst.Call):
        return False
    name = dotted(node.func)
    return name is not None and name.rsplit(".", 1)[-1] == "RequestReceived"


def _assigned_construction(statement: cst.CSTNode) -> tuple[str, cst.Call] | None:
    """(name, call) for the line `<name> = ...RequestReceived(...)`."""
    if not (
        isinstance(statement, cst.SimpleStatementLine)
        and len(statement.body) == 1
        and isinstance(statement.body[0], cst.Assign)
    ):
        return None
    assign = statement.body[0]
    if (
        len(assign.targets) == 1
        and isinstance(assign.targets[0].target, cst.Name)
        and _is_construction(assign.value)
    ):
        assert isinstance(assign.value, cst.Call)
        return identifier(assign.targets[0].target), assign.value
    return None


class _Transformer(ScopeTracker):
    def __init__(self, module: cst.Module, environment: Environment) -> None:
        super().__init__()
        self.module = module
        self.parameters = environment.request_received_parameters or ()
        self.required = environment.request_received_required
        self.keywords = bool(self.parameters)
        self.bindings = module_bindings(module)
        self.seen = 0
        self.changed: dict[str, None] = {}  # qualnames, in order

    def on_visit(self, node: cst.CSTNode) -> bool:
        # Only blocks change: lines and expressions, most of the module, are not entered.
        return super().on_visit(node) and may_hold_blocks(node)

    def leave_IndentedBlock(
        self, original_node: cst.IndentedBlock, updated_node: cst.IndentedBlock
    ) -> cst.IndentedBlock:
        statements = list(updated_node.body)
        result: list[cst.BaseStatement] = []
        index = 0
        while index < len(statements):
            statement = statements[index]
            index += 1
            found = _assigned_construction(statement)
            if found is None:
                if isinstance(statement, cst.SimpleStatementLine) and any(
                    _is_construction(node) for node in walk(statement)
                ):
                    self._refuse("`<name> = RequestReceived(...)` as a statement", statement)
                result.append(statement)
                continue
            assert isinstance(statement, cst.SimpleStatementLine)
            self.seen += 1
            self._expect_h2_event(found[1], statement)
            if self.keywords:
                replacement, consumed = self._with_keywords(statement, statements[index:])
                index += consumed
            else:
                replacement = self._without_arguments(statement)
            if replacement != [statement]:
                self.changed[self.where] = None
            result.extend(replacement)
        if len(result) == len(statements) and all(a is b for a, b in zip(result, statements)):
            return updated_node
        return updated_node.with_changes(body=result)

    def _expect_h2_event(self, call: cst.Call, statement: cst.SimpleStatementLine) -> None:
        """The class called is h2.events.RequestReceived, as the module's imports show."""
        name = dotted(call.func) or ""
        if name == "h2.events.RequestReceived":
            proven = all(imports_package(node, "h2") for node in self.bindings.get("h2", [None]))
        elif "." not in name:
            [binding, *more] = self.bindings.get(name, [None])
            proven = not more and imports_name(binding, "h2.events", "RequestReceived", name)
        else:
            proven = False
        if not proven:
            self._refuse(
                "h2.events.RequestReceived, imported from h2 (`import h2.events` or "
                "`from h2.events import RequestReceived`)",
                statement,
            )

    def _with_keywords(
        self, statement: cst.SimpleStatementLine, following: Sequence[cst.BaseStatement]
    ) -> tuple[list[cst.BaseStatement], int]:
        """Fold the attribute assignments after a no-argument construction into keywords."""
        name, call = _parts(statement)
        if call.args:
            keywords = {keyword(arg) for arg in call.args if arg.keyword is not None}
            if len(keywords) != len(call.args) or not set(self.required) <= keywords:
                self._refuse(f"keyword arguments including {', '.join(self.required)}", statement)
            return [statement], 0
        folded: list[tuple[str, cst.BaseExpression]] = []
        for line in following:
            attribute = _attribute_assignment(line, name)
            if attribute is None or attribute[0] not in self.parameters:
                break
            if attribute[0] in dict(folded) or _mentions(attribute[1], name):
                break  # a value that reads the event must stay after the construction
            folded.append(attribute)
        if not set(self.required) <= {attr for attr, _ in folded}:
            self._refuse(
                f"`{name}.{self.required[0]} = ...` right after `{name} = RequestReceived()`",
                statement,
            )
        arguments = [
            cst.Arg(
                keyword=cst.Name(attr),
                value=value,
                equal=cst.AssignEqual(
                    whitespace_before=cst.SimpleWhitespace(""),
                    whitespace_after=cst.SimpleWhitespace(""),
                ),
                comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))
                if position < len(folded) - 1
                else cst.MaybeSentinel.DEFAULT,
            )
            for position, (attr, value) in enumerate(folded)
        ]
        return [_replace_call(statement, call.with_changes(args=arguments))], len(folded)

    def _without_arguments(self, statement: cst.SimpleStatementLine) -> list[cst.BaseStatement]:
        """Split a keyword construction into a bare one and attribute assignments."""
        name, call = _parts(statement)
        if not call.args:
            return [statement]
        if any(arg.keyword is None or arg.star for arg in call.args):
            self._refuse("keyword arguments only", statement)
        if any(_mentions(arg.value, name) for arg in call.args):
            self._refuse(f"arguments that do not read `{name}` itself", statement)
        assignments = [
            cst.parse_statement(
                f"{name}.{keyword(arg)} = {self.module.code_for_node(arg.value)}\n",
                config=self.module.config_for_parsing,
            )
            for arg in call.args
        ]
        return [_replace_call(statement, call.with_changes(args=[])), *assignments]

    def _refuse(self, expected: str, statement: cst.CSTNode) -> NoReturn:
        found = self.module.code_for_node(statement).strip()
        raise UnrecognisedStructureError(NAME, self.where, expected, found)


def _mentions(node: cst.CSTNode, name: str) -> bool:
    return any(isinstance(child, cst.Name) and identifier(child) == name for child in walk(node))


def _parts(statement: cst.SimpleStatementLine) -> tuple[str, cst.Call]:
    found = _assigned_construction(statement)
    assert found is not None
    return found


def _replace_call(statement: cst.SimpleStatementLine, call: cst.Call) -> cst.SimpleStatementLine:
    assign = statement.body[0]
    assert isinstance(assign, cst.Assign)
    return statement.with_changes(body=[assign.with_changes(value=call)])


def _attribute_assignment(
    statement: cst.BaseStatement, name: str
) -> tuple[str, cst.BaseExpression] | None:
    """(attr, value) for a plain, uncommented `<name>.<attr> = <value>` line."""
    if not (
        isinstance(statement, cst.SimpleStatementLine)
        and len(statement.body) == 1
        and isinstance(statement.body[0], cst.Assign)
        and len(statement.body[0].targets) == 1
        and statement.trailing_whitespace.comment is None
        and all(line.comment is None for line in statement.leading_lines)
    ):
        return None
    assign = statement.body[0]
    target = assign.targets[0].target
    if (
        isinstance(target, cst.Attribute)
        and isinstance(target.value, cst.Name)
        and identifier(target.value) == name
    ):
        return identifier(target.attr), assign.value
    return None


def fix(tree: cst.Module, environment: Environment) -> tuple[cst.Module, FixOutcome]:
    if environment.request_received_parameters is None:
        return tree, FixOutcome(NAME, Outcome.NOT_NEEDED, "h2 is not installed")
    transformer = _Transformer(tree, environment)
    new_tree = transform(tree, transformer)
    h2 = f"h2 {environment.h2_version}"
    if not transformer.seen:
        return tree, FixOutcome(
            NAME, Outcome.NOT_APPLICABLE, "this version builds no RequestReceived events"
        )
    if transformer.changed:
        form = "with keywords" if transformer.keywords else "without arguments"
        where = ", ".join(transformer.changed)
        return new_tree, FixOutcome(
            NAME,
            Outcome.REWRITTEN,
            f"{where} now build RequestReceived {form}, as {h2} requires",
            functions=tuple(transformer.changed),
        )
    if transformer.keywords:
        return tree, FixOutcome(
            NAME,
            Outcome.FIXED_UPSTREAM,
            f"RequestReceived is already built with keywords, as {h2} requires",
        )
    return tree, FixOutcome(
        NAME,
        Outcome.NOT_NEEDED,
        f"{h2} builds RequestReceived() without arguments, as this code does",
    )
