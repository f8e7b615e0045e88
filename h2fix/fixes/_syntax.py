"""Small structural questions about LibCST trees, shared by the fixes.

Plain `isinstance` checks on nodes: importing `libcst.matchers` alone costs about
twice the Hypercorn import, and these questions are simple.
"""

from __future__ import annotations

import ast
import unicodedata
from collections.abc import Iterator, Sequence

import libcst as cst

from ._tree import walk as walk  # the fixes import it from here


def identifier(name: cst.Name) -> str:
    """A name as Python sees it: NFKC-normalised (fullwidth letters fold to ASCII)."""
    return unicodedata.normalize("NFKC", name.value)


def dotted(node: cst.BaseExpression) -> str | None:
    """`a.b.c` for a chain of names and attributes, None for anything else."""
    if isinstance(node, cst.Name):
        return identifier(node)
    if isinstance(node, cst.Attribute):
        base = dotted(node.value)
        return None if base is None else f"{base}.{identifier(node.attr)}"
    return None


def is_pure(node: cst.BaseExpression) -> bool:
    """An expression that may be evaluated again with no effect: a name or attribute chain."""
    return dotted(node) is not None


def same_expression(module: cst.Module, a: cst.CSTNode, b: cst.CSTNode) -> bool:
    """Equal as Python parses them (layout, comments and identifier spelling ignored)."""

    def dump(node: cst.CSTNode) -> str:
        return ast.dump(ast.parse("(" + module.code_for_node(node).strip() + ")", mode="eval"))

    return dump(a) == dump(b)


def self_attribute(node: cst.CSTNode, receiver: str) -> str | None:
    """`attr` for `<receiver>.attr`, else None."""
    if (
        isinstance(node, cst.Attribute)
        and isinstance(node.value, cst.Name)
        and identifier(node.value) == receiver
    ):
        return identifier(node.attr)
    return None


def method_call(node: cst.BaseExpression) -> tuple[cst.BaseExpression, str, cst.Call] | None:
    """(object, method name, call) for `<object>.<method>(...)`, else None."""
    if isinstance(node, cst.Call) and isinstance(node.func, cst.Attribute):
        return node.func.value, identifier(node.func.attr), node
    return None


def statement_expression(statement: cst.CSTNode) -> cst.BaseExpression | None:
    """The expression of a line holding one expression statement, else None."""
    if (
        isinstance(statement, cst.SimpleStatementLine)
        and len(statement.body) == 1
        and isinstance(statement.body[0], cst.Expr)
    ):
        return statement.body[0].value
    return None


def first_parameter(function: cst.FunctionDef) -> str | None:
    """The name of a function's first positional parameter (a method's `self`)."""
    params = [*function.params.posonly_params, *function.params.params]
    return identifier(params[0].name) if params else None


def keyword(arg: cst.Arg) -> str | None:
    return None if arg.keyword is None else identifier(arg.keyword)


def argument(call: cst.Call, position: int, name: str) -> cst.BaseExpression | None:
    """The value passed for a parameter by keyword `name` or at `position` (None if absent)."""
    for arg in call.args:
        if keyword(arg) == name:
            return arg.value
    positional = [arg for arg in call.args if arg.keyword is None and not arg.star]
    return positional[position].value if len(positional) > position else None


def calls_named(node: cst.CSTNode, method: str) -> list[cst.Call]:
    """Every `<object>.<method>(...)` call below `node`."""
    return [
        child
        for child in walk(node)
        if isinstance(child, cst.Call)
        and (call := method_call(child)) is not None
        and call[1] == method
    ]


def target_names(target: cst.BaseExpression) -> list[str]:
    """Names bound by an assignment target (`a`, `a, *b`, `[a, (b, c)]`)."""
    if isinstance(target, cst.Name):
        return [identifier(target)]
    if isinstance(target, (cst.Tuple, cst.List)):
        return [name for element in target.elements for name in target_names(element.value)]
    if isinstance(target, cst.StarredElement):
        return target_names(target.value)
    return []


def bound_names(node: cst.CSTNode) -> set[str]:
    """Every name something below `node` binds, nested scopes included (so: conservative)."""
    return set(bindings_of(node))


# Every class of node `bindings_of` reads a binding from. LibCST's node classes are
# ABCs, so a failing isinstance() costs far more than a set lookup; the parser (and
# every fix) makes nodes of exactly these classes, never of subclasses.
_BINDERS = frozenset(
    {
        cst.AssignTarget, cst.AnnAssign, cst.AugAssign, cst.NamedExpr, cst.For, cst.CompFor,
        cst.Del, cst.WithItem, cst.ExceptHandler, cst.Import, cst.ImportFrom, cst.FunctionDef,
        cst.ClassDef, cst.Global, cst.Nonlocal, cst.MatchAs, cst.MatchStar, cst.MatchMapping,
    }
)  # fmt: skip


def bindings_of(node: cst.CSTNode) -> list[str]:
    """Each binding of a name below `node`, one entry per binding (nested scopes included)."""
    names: list[str] = []
    for child in walk(node):
        if type(child) not in _BINDERS:  # most nodes: one set lookup instead of ten ABC checks
            continue
        if isinstance(
            child,
            (cst.AssignTarget, cst.AnnAssign, cst.AugAssign, cst.NamedExpr, cst.For, cst.CompFor,
             cst.Del),
        ):  # fmt: skip
            names += target_names(child.target)
        elif isinstance(child, (cst.WithItem, cst.ExceptHandler)):
            asname = child.asname if isinstance(child, cst.WithItem) else child.name
            if asname is not None and isinstance(asname.name, cst.BaseExpression):
                names += target_names(asname.name)
        elif isinstance(child, (cst.Import, cst.ImportFrom)) and not isinstance(
            child.names, cst.ImportStar
        ):
            names += [imported_as(alias) for alias in child.names]
        elif isinstance(child, (cst.FunctionDef, cst.ClassDef)) and child is not node:
            names.append(identifier(child.name))
        elif isinstance(child, (cst.Global, cst.Nonlocal)):
            names += [identifier(item.name) for item in child.names]
        elif isinstance(child, (cst.MatchAs, cst.MatchStar)) and child.name is not None:
            names.append(identifier(child.name))
        elif isinstance(child, cst.MatchMapping) and child.rest is not None:
            names.append(identifier(child.rest))
    return names


def imported_as(alias: cst.ImportAlias) -> str:
    """The name an import binds: `import a.b` binds `a`; `import a.b as c` binds `c`."""
    if alias.asname is not None and isinstance(alias.asname.name, cst.Name):
        return identifier(alias.asname.name)
    name = dotted(alias.name)
    assert name is not None  # an import's name is always a dotted name
    return name.split(".")[0]


def module_statements(module: cst.Module) -> Iterator[cst.BaseStatement]:
    """Statements that run at module level: the body, and inside its if/try/with blocks."""
    stack: list[cst.BaseStatement] = list(reversed(module.body))
    while stack:
        statement = stack.pop()
        yield statement
        if isinstance(statement, (cst.If, cst.Try, cst.With)):
            stack.extend(reversed(_blocks_of(statement)))


def _blocks_of(statement: cst.CSTNode) -> list[cst.BaseStatement]:
    inner: list[cst.BaseStatement] = []
    body = getattr(statement, "body", None)
    if isinstance(body, cst.IndentedBlock):
        inner.extend(body.body)
    for name in ("orelse", "finalbody"):
        part = getattr(statement, name, None)
        if isinstance(part, cst.If):
            inner.append(part)
        elif part is not None:
            inner.extend(_blocks_of(part))
    for handler in getattr(statement, "handlers", ()):
        inner.extend(_blocks_of(handler))
    return inner


def module_bindings(module: cst.Module) -> dict[str, list[cst.CSTNode]]:
    """Module-level name -> the statements that bind it (imports, defs, classes, assignments)."""
    bindings: dict[str, list[cst.CSTNode]] = {}
    for statement in module_statements(module):
        if isinstance(statement, (cst.FunctionDef, cst.ClassDef)):
            bindings.setdefault(identifier(statement.name), []).append(statement)
        elif isinstance(statement, cst.SimpleStatementLine):
            for small in statement.body:
                for name in _small_statement_names(small):
                    bindings.setdefault(name, []).append(small)
    return bindings


def _small_statement_names(small: cst.BaseSmallStatement) -> list[str]:
    if isinstance(small, cst.Assign):
        return [name for target in small.targets for name in target_names(target.target)]
    if isinstance(small, (cst.AnnAssign, cst.AugAssign)):
        return target_names(small.target)
    if isinstance(small, (cst.Import, cst.ImportFrom)) and not isinstance(
        small.names, cst.ImportStar
    ):
        return [imported_as(alias) for alias in small.names]
    return []


def class_methods(cls: cst.ClassDef) -> dict[str, cst.FunctionDef]:
    """The methods a class body defines, the last definition of each name (the one kept)."""
    return {
        identifier(statement.name): statement
        for statement in cls.body.body
        if isinstance(statement, cst.FunctionDef)
    }


def class_names(cls: cst.ClassDef) -> Sequence[str]:
    """Every name the class body binds, in order (defs, classes, assignments, repeats kept)."""
    return statement_names(cls.body.body)


def statement_names(statements: Sequence[cst.CSTNode]) -> Sequence[str]:
    """Every name these statements bind in their own scope, in order, repeats kept."""
    names: list[str] = []
    for statement in statements:
        if isinstance(statement, (cst.FunctionDef, cst.ClassDef)):
            names.append(identifier(statement.name))
        elif isinstance(statement, cst.SimpleStatementLine):
            for small in statement.body:
                names.extend(_small_statement_names(small))
        else:
            names.extend(bindings_of(statement))
    return names


def imports_package(node: cst.CSTNode | None, package: str) -> bool:
    """`node` is `import <package>[.sub]` binding the name `package` (no alias)."""
    if not isinstance(node, cst.Import):
        return False
    return all(
        alias.asname is None and (dotted(alias.name) or "").split(".")[0] == package
        for alias in node.names
        if imported_as(alias) == package
    )


def imports_name(node: cst.CSTNode | None, module: str, name: str, bound: str) -> bool:
    """`node` is `from <module> import <name>` binding `bound` (`... as <bound>`)."""
    if not isinstance(node, cst.ImportFrom) or node.relative or node.module is None:
        return False
    if dotted(node.module) != module or isinstance(node.names, cst.ImportStar):
        return False
    return any(dotted(alias.name) == name and imported_as(alias) == bound for alias in node.names)


def module_classes(module: cst.Module) -> dict[str, cst.ClassDef]:
    """The module's classes whose name nothing else in the module binds (so: which run)."""
    return {
        name: nodes[0]
        for name, nodes in module_bindings(module).items()
        if len(nodes) == 1 and isinstance(nodes[0], cst.ClassDef)
    }


def subclasses(classes: dict[str, cst.ClassDef], cls: cst.ClassDef) -> list[cst.ClassDef]:
    """The classes of `classes` that derive from `cls`, directly or through one another."""
    found: list[cst.ClassDef] = []
    names = {identifier(cls.name)}
    grew = True
    while grew:
        grew = False
        for name, candidate in classes.items():
            if candidate is cls or candidate in found:
                continue
            if any((dotted(base.value) or "") in names for base in candidate.bases):
                found.append(candidate)
                names.add(name)
                grew = True
    return found


def base_classes(classes: dict[str, cst.ClassDef], cls: cst.ClassDef) -> list[cst.ClassDef]:
    """The classes of `classes` that `cls` derives from, directly or through one another."""
    found: list[cst.ClassDef] = []
    pending = [cls]
    while pending:
        for base in pending.pop().bases:
            shown = classes.get(dotted(base.value) or "")
            if shown is not None and shown is not cls and shown not in found:
                found.append(shown)
                pending.append(shown)
    return found


def constructs(
    bindings: dict[str, list[cst.CSTNode]], value: cst.BaseExpression, module: str, name: str
) -> bool:
    """`value` calls the class `<module>.<name>`, as the module's own imports show:
    `pkg.mod.Name(...)` under a plain `import pkg...`, or `Name(...)` under
    `from pkg.mod import Name`, with nothing else binding that name."""
    if not isinstance(value, cst.Call):
        return False
    called = dotted(value.func)
    if called == f"{module}.{name}":
        package = module.split(".")[0]
        return all(imports_package(node, package) for node in bindings.get(package, [None]))
    if called is not None and "." not in called:
        found = bindings.get(called, [])
        return len(found) == 1 and imports_name(found[0], module, name, called)
    return False


def jump_before(path: Sequence[cst.CSTNode], start: int = 0) -> cst.CSTNode | None:
    """A return, raise, break or continue that always runs before the last node of `path`
    (a chain of parent to child from `path[start]` down), if any: after it, that node is dead."""
    for statement in statements_before(path, start):
        if isinstance(statement, cst.SimpleStatementLine) and any(
            isinstance(small, (cst.Return, cst.Raise, cst.Continue, cst.Break))
            for small in statement.body
        ):
            return statement
    return None


def statements_before(path: Sequence[cst.CSTNode], start: int = 0) -> Iterator[cst.CSTNode]:
    """The statements that run before the last node of `path` (a chain of parent to
    child from `path[start]` down) in the blocks along it, outermost first."""
    for parent, child in zip(path[start:], path[start + 1 :]):
        if not isinstance(parent, cst.IndentedBlock):
            continue
        for statement in parent.body:
            if statement is child:
                break
            yield statement


def binds_to(bindings: dict[str, list[cst.CSTNode]], name: str, classes: set[str]) -> bool:
    """The module binds `name` once, to one of `classes`: that class itself, or
    `name = <class>`."""
    found = bindings.get(name, [])
    if len(found) != 1:
        return False
    [binding] = found
    if isinstance(binding, cst.ClassDef):
        return identifier(binding.name) in classes
    return (
        isinstance(binding, cst.Assign)
        and len(binding.targets) == 1
        and dotted(binding.value) in classes
    )


def name_uses(node: cst.CSTNode, name: str) -> list[cst.Name]:
    """Every `Name` node spelling `name` under `node` that is a variable, bound or read
    (not an attribute, a keyword argument or a definition's own name)."""
    skipped: set[int] = set()
    found: list[cst.Name] = []
    for child in walk(node):
        if isinstance(child, cst.Attribute):
            skipped.add(id(child.attr))
        elif isinstance(child, cst.Arg) and child.keyword is not None:
            skipped.add(id(child.keyword))
        elif isinstance(child, cst.Name) and id(child) not in skipped and identifier(child) == name:
            found.append(child)
    return found


def touched_beyond_a_size_test(
    node: cst.CSTNode, name: str, allowed: cst.Name
) -> cst.CSTNode | None:
    """A use of the variable `name` under `node` other than `allowed` and a plain test of
    its size (`if not <name>:`, `if <name>:`, `len(<name>)`): one that may rebind, filter
    or mutate it. Returns the enclosing node of the first such use, or None."""
    harmless: set[int] = {id(allowed)}
    for child in walk(node):
        if isinstance(child, (cst.If, cst.While)):
            test = child.test
            if isinstance(test, cst.UnaryOperation) and isinstance(test.operator, cst.Not):
                test = test.expression
            if isinstance(test, cst.Name):
                harmless.add(id(test))
        elif (
            isinstance(child, cst.Call)
            and dotted(child.func) == "len"
            and len(child.args) == 1
            and isinstance(child.args[0].value, cst.Name)
        ):
            harmless.add(id(child.args[0].value))
    for use in name_uses(node, name):
        if id(use) not in harmless:
            return next(
                (
                    statement
                    for statement in walk(node)
                    if isinstance(statement, (cst.SimpleStatementLine, cst.BaseCompoundStatement))
                    and any(n is use for n in walk(statement))
                    and not isinstance(statement, (cst.For, cst.If, cst.While, cst.With, cst.Try))
                ),
                use,
            )
    return None
