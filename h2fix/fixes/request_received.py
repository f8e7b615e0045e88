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
imports it from h2, and binds the name it is called by nowhere else, no function
included), no alias hides a construction from the fix, no subclass relying on
h2's constructor is built in a form the installed h2 rejects, and no value moved
across the construction refers to the event itself, so evaluating it before or
after the construction is the same.
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
    bindings_of,
    dotted,
    identifier,
    imported_as,
    imports_name,
    imports_package,
    keyword,
    module_bindings,
    walk,
)
from ._tree import may_hold_blocks, transform

NAME = "request_received"
EVENT = "RequestReceived"


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
        #: Each binding of a name anywhere in the module, functions and their parameters
        #: included.
        self.every_binding = bindings_of(module) + [
            identifier(node.name) for node in walk(module) if isinstance(node, cst.Param)
        ]
        self.subclasses = _subclasses_without_init(module)
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
            self._expect_no_rejected_subclass(statement)
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
            # Every binding of `h2` anywhere (a local `h2 = legacy` in the method included)
            # is a plain `import h2...`: then the call reaches h2's own class.
            imports = [
                alias
                for node in walk(self.module)
                if isinstance(node, cst.Import)
                for alias in node.names
                if imported_as(alias) == "h2"
            ]
            proven = all(imports_package(node, "h2") for node in self.bindings.get("h2", [None]))
            proven = proven and self.every_binding.count("h2") == len(imports)
        elif "." not in name:
            [binding, *more] = self.bindings.get(name, [None])
            proven = not more and imports_name(binding, "h2.events", EVENT, name)
            proven = proven and self.every_binding.count(name) == 1
        else:
            proven = False
        if not proven:
            self._refuse(
                "h2.events.RequestReceived, imported from h2 (`import h2.events` or "
                "`from h2.events import RequestReceived`)",
                statement,
            )

    def _expect_no_rejected_subclass(self, statement: cst.BaseStatement) -> None:
        """A module class deriving from RequestReceived without an `__init__` of its own
        takes h2's constructor: built in the form the installed h2 rejects, it raises the
        TypeError this fix is about, and the fix does not rewrite it."""
        if not self.subclasses or not isinstance(statement, cst.SimpleStatementLine):
            return
        for node in walk(statement):
            if not (isinstance(node, cst.Call) and dotted(node.func) in self.subclasses):
                continue
            keywords = {keyword(arg) for arg in node.args}
            accepted = (
                None not in keywords and set(self.required) <= keywords
                if self.keywords
                else not node.args
            )
            if not accepted:
                self._refuse(
                    f"no subclass of {EVENT} without an __init__ of its own built the way "
                    "the installed h2 rejects (the fix rewrites only h2's own class)",
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


def _subclasses_without_init(module: cst.Module) -> set[str]:
    """Names of the module's classes that derive from RequestReceived (h2's or a class
    deriving from it here) and define no `__init__`: they are built by h2's constructor."""
    classes = [node for node in walk(module) if isinstance(node, cst.ClassDef)]
    derived: set[str] = set()
    without_init: set[str] = set()
    grown = True
    while grown:
        grown = False
        for cls in classes:
            name = identifier(cls.name)
            bases = {(dotted(base.value) or "").rsplit(".", 1)[-1] for base in cls.bases}
            if name not in derived and (EVENT in bases or bases & derived):
                derived.add(name)
                grown = True
                if not any(
                    isinstance(s, cst.FunctionDef) and identifier(s.name) in ("__init__", "__new__")
                    for s in cls.body.body
                ):
                    without_init.add(name)
    return without_init


def _alias(module: cst.Module) -> cst.CSTNode | None:
    """A binding of h2's RequestReceived under another name (`from h2.events import
    RequestReceived as Received`, `Received = h2.events.RequestReceived`): calls of the
    alias are constructions the fix would not see."""
    for node in walk(module):
        if isinstance(node, cst.ImportFrom) and not isinstance(node.names, cst.ImportStar):
            for alias in node.names:
                if dotted(alias.name) == EVENT and imported_as(alias) != EVENT:
                    return node
        elif isinstance(node, (cst.Assign, cst.AnnAssign)) and node.value is not None:
            value = dotted(node.value)
            if value is not None and value.rsplit(".", 1)[-1] == EVENT:
                return node
    return None


def fix(tree: cst.Module, environment: Environment) -> tuple[cst.Module, FixOutcome]:
    if environment.request_received_parameters is None:
        return tree, FixOutcome(NAME, Outcome.NOT_NEEDED, "h2 is not installed")
    alias = _alias(tree)
    if alias is not None:
        raise UnrecognisedStructureError(
            NAME,
            "<module>",
            f"{EVENT} called by its own name (an alias hides its constructions from the fix)",
            tree.code_for_node(alias).strip(),
        )
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
