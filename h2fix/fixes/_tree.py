"""Walking and editing LibCST trees without rebuilding them, shared by the fixes.

LibCST answers `node.children` by running its visitor machinery over the node,
which constructs (and validates) a copy of the node on every call; `tree.visit`
constructs a copy of every node of the tree, even for a visitor that changes
nothing. On a protocol module (7,000+ nodes) each whole-tree pass costs about a
third of parsing it, and the fixes' proofs walk subtrees many times over. Here:

- `children` reads a node's fields directly. The order LibCST gives children in
  (lexical order, which is not the order the fields are declared in) is read off
  LibCST's own visiting code, checked against LibCST's `children` once for each
  node class and classes of field values, and used only when it reproduces that
  answer exactly; otherwise LibCST is asked for such nodes every time.
- `replace` rebuilds only the nodes on the path from the root to the node it
  replaces, and `transform` only the nodes a transformer changed something below;
  every other node is shared with the old tree, unchanged.
- `indexed` collects a tree's nodes once, so that each later walk of an unchanged
  subtree is a slice of one list.

LibCST's node classes are ABCs: an isinstance() that fails goes through the ABC
machinery (for a base class, through its subclasses) instead of comparing one
pointer, and the first time for each pair of classes in a process, it costs
microseconds. The parser and the fixes make nodes of the concrete classes only,
never of subclasses of them, so loops over every node of a tree compare
`type(node)` with `is` or look it up in a set.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import libcst as cst

#: Where a kind of node keeps its children, in lexical order: for each field that
#: holds any, its index among the node's field values and whether it holds a
#: sequence of nodes (else one node).
_Plan = tuple[tuple[int, bool], ...]
_FieldValues = Callable[[cst.CSTNode], tuple[Any, ...]]
_Node = TypeVar("_Node", bound=cst.CSTNode)

#: Node class -> the names of the fields LibCST visits, in the order it visits them.
_FIELDS: dict[type, tuple[str, ...]] = {}
#: Node class -> a function returning the values of those fields, as a tuple.
_VALUES: dict[type, _FieldValues] = {}
#: (node class, then the type of each field's value) -> the plan for such nodes,
#: or None where it does not reproduce LibCST's own `children`.
_PLANS: dict[tuple[type, ...], _Plan | None] = {}


def children(node: cst.CSTNode) -> Sequence[cst.CSTNode]:
    """What `node.children` returns (the same objects, in the same order), without
    constructing a copy of `node`."""
    kind = type(node)
    values_of = _VALUES.get(kind) or _learn_fields(kind)
    if values_of is _no_values:
        return ()
    if values_of is _unreadable:
        return node.children
    values = values_of(node)
    key = (kind, *map(type, values))
    plan = _PLANS.get(key, _UNLEARNT)
    if plan is _UNLEARNT:
        plan = _learn_plan(key, node, values)
    if plan is None:
        return node.children
    found: list[cst.CSTNode] = []
    for index, many in plan:
        if many:
            found.extend(values[index])
        else:
            found.append(values[index])
    return found


_UNLEARNT: _Plan = ((-1, False),)


def _no_values(node: cst.CSTNode) -> tuple[Any, ...]:
    return ()


def _unreadable(node: cst.CSTNode) -> tuple[Any, ...]:
    return ()


def _learn_fields(kind: type[cst.CSTNode]) -> _FieldValues:
    declared = getattr(kind, "__dataclass_fields__", {})  # by name: cheaper than fields()
    code = getattr(kind._visit_and_replace_children, "__code__", None)
    if code is None:  # not Python code (a compiled LibCST): ask LibCST for these nodes
        _FIELDS[kind], _VALUES[kind] = tuple(declared), _unreadable
        return _unreadable
    # LibCST's `_visit_and_replace_children` visits a field with
    # `visit_<how>(self, "<field>", self.<field>, visitor)`, one after the other in
    # lexical order, so the field names among its constants, in order of first use,
    # are the fields that can hold children, in that order (`_learn_plan` checks).
    names = tuple(name for name in code.co_consts if isinstance(name, str) and name in declared)
    values_of: _FieldValues
    if not any("visit" in name for name in code.co_names):
        values_of = _no_values  # whitespace, comments: LibCST visits nothing below them
    elif len(names) == 1:
        [name] = names
        values_of = _one_value(name)
    else:
        values_of = operator.attrgetter(*names)
    _FIELDS[kind], _VALUES[kind] = names, values_of
    return values_of


def _one_value(name: str) -> _FieldValues:
    # attrgetter of one name returns the value itself, not a tuple of one.
    def values_of(node: cst.CSTNode) -> tuple[Any, ...]:
        return (getattr(node, name),)

    return values_of


def _learn_plan(key: tuple[type, ...], node: cst.CSTNode, values: tuple[Any, ...]) -> _Plan | None:
    """The plan for nodes like `node`, kept only if it gives exactly LibCST's
    `children` of `node`. Where LibCST's visiting code branches, it branches on a
    field's value being None or of another class, so nodes of one class whose
    fields hold values of the same classes share their plan."""
    plan = tuple(
        (index, isinstance(value, (tuple, list)))
        for index, value in enumerate(values)
        # Not isinstance(value, cst.CSTNode): for a str or None, the ABC machinery
        # would ask every one of LibCST's ~200 node classes first.
        if isinstance(value, (tuple, list)) or cst.CSTNode in type(value).__mro__
    )
    found: list[object] = []
    for index, many in plan:
        found.extend(values[index] if many else [values[index]])
    expected = node.children
    same = len(found) == len(expected) and all(a is b for a, b in zip(found, expected))
    _PLANS[key] = plan if same else None
    return _PLANS[key]


class _Index:
    """One tree's nodes in walk order, and where each node's subtree ends."""

    __slots__ = ("ends", "nodes", "positions")

    def __init__(self, root: cst.CSTNode) -> None:
        self.nodes: list[cst.CSTNode] = []
        self.ends: list[int] = []
        self._collect(root)
        self.positions = {id(node): position for position, node in enumerate(self.nodes)}

    def _collect(self, node: cst.CSTNode) -> None:
        # Recursive: as deep as LibCST's own visits of the same tree, which recurse
        # three frames a level.
        position = len(self.nodes)
        self.nodes.append(node)
        self.ends.append(0)
        for child in children(node):
            self._collect(child)
        self.ends[position] = len(self.nodes)

    def position(self, node: cst.CSTNode) -> int | None:
        # The index holds its nodes, so no other node has one of their ids meanwhile.
        return self.positions.get(id(node))


#: The indexes of the trees being rewritten (one, unless rewrites run in threads).
_INDEXES: list[_Index] = []


@contextlib.contextmanager
def indexed(tree: cst.CSTNode) -> Iterator[None]:
    """While it lasts, walks of `tree` and of any subtree of it (also as part of a
    tree a fix built from it) read the nodes from one list, collected once.

    The fixes' proofs walk the same methods over and over; this makes each walk of
    an unchanged subtree a slice of that list."""
    index = _Index(tree)
    _INDEXES.append(index)
    try:
        yield
    finally:
        _INDEXES.remove(index)


def _span(node: cst.CSTNode) -> tuple[_Index, int] | None:
    for index in _INDEXES:
        position = index.position(node)
        if position is not None:
            return index, position
    return None


def walk(node: cst.CSTNode) -> Iterator[cst.CSTNode]:
    """Every node below `node`, `node` included, parents first, in lexical order."""
    span = _span(node) if _INDEXES else None
    if span is not None:
        index, start = span
        return iter(index.nodes[start : index.ends[start]])
    return _walk(node)


def _walk(node: cst.CSTNode) -> Iterator[cst.CSTNode]:
    stack = [node]
    while stack:
        current = stack.pop()
        span = _span(current) if _INDEXES else None
        if span is not None:
            index, start = span
            yield from index.nodes[start : index.ends[start]]
            continue
        yield current
        stack.extend(reversed(children(current)))


def walk_with_ancestors(node: cst.CSTNode) -> Iterator[tuple[cst.CSTNode, list[cst.CSTNode]]]:
    """`walk`, each node with its ancestors from `node` down (its parent last).

    The list is reused as the walk goes on: copy it to keep it."""
    ancestors: list[cst.CSTNode] = []
    stack: list[tuple[cst.CSTNode, int]] = [(node, 0)]
    while stack:
        current, depth = stack.pop()
        del ancestors[depth:]
        span = _span(current) if _INDEXES else None
        if span is None:
            yield current, ancestors
            ancestors.append(current)
            stack.extend((child, depth + 1) for child in reversed(children(current)))
            continue
        index, start = span
        nodes, ends = index.nodes, index.ends
        open_ends: list[int] = []  # where the subtrees of the indexed ancestors end
        for position in range(start, ends[start]):
            while open_ends and open_ends[-1] <= position:
                open_ends.pop()
                ancestors.pop()
            yield nodes[position], ancestors
            ancestors.append(nodes[position])
            open_ends.append(ends[position])
        del ancestors[depth:]


def path_to(root: cst.CSTNode, target: cst.CSTNode) -> list[cst.CSTNode] | None:
    """The nodes from `root` down to `target` (this very object), both included."""
    for node, ancestors in walk_with_ancestors(root):
        if node is target:
            return [*ancestors, node]
    return None


def transform(node: _Node, visitor: cst.CSTVisitor | cst.CSTTransformer) -> _Node:
    """`node.visit(visitor)`, except that a node is rebuilt only when the transformer
    changed something below it (LibCST rebuilds every node it visits).

    The visitor's hooks run in the same order, with the same `original_node`s; a hook
    that changes nothing gets the original node itself as `updated_node`. Only the
    node-for-node replacements the fixes make are supported: a `leave_*` hook returning
    a removal or a flattened sequence is a bug (AssertionError), and so is a
    different kind of node in place of `node` itself.
    """
    result = _transform(node, visitor)
    if not isinstance(result, type(node)):
        raise AssertionError(f"transform() of a {type(node).__name__} gave {result!r}")
    return result


def _transform(node: cst.CSTNode, visitor: cst.CSTVisitor | cst.CSTTransformer) -> cst.CSTNode:
    updated = _with_children_transformed(node, visitor) if visitor.on_visit(node) else node
    if isinstance(visitor, cst.CSTTransformer):
        result = visitor.on_leave(node, updated)
        if not isinstance(result, cst.CSTNode):
            raise AssertionError(f"transform() replaces nodes only, not with {result!r}")
        return result
    visitor.on_leave(node)
    return node


def _with_children_transformed(
    node: cst.CSTNode, visitor: cst.CSTVisitor | cst.CSTTransformer
) -> cst.CSTNode:
    kind = type(node)
    values_of = _VALUES.get(kind) or _learn_fields(kind)
    if values_of is _no_values:
        return node
    if values_of is _unreadable:
        return node._visit_and_replace_children(visitor)
    values = values_of(node)
    key = (kind, *map(type, values))
    plan = _PLANS.get(key, _UNLEARNT)
    if plan is _UNLEARNT:
        plan = _learn_plan(key, node, values)
    if plan is None:  # LibCST's own machinery, for a kind of node this one cannot read
        return node._visit_and_replace_children(visitor)
    names = _FIELDS[kind]
    changes: dict[str, object] = {}
    for index, many in plan:
        value = values[index]
        if many:
            items = tuple(_transform(item, visitor) for item in value)
            if any(new is not old for new, old in zip(items, value)):
                changes[names[index]] = items
        else:
            new = _transform(value, visitor)
            if new is not value:
                changes[names[index]] = new
    return node.with_changes(**changes) if changes else node


def may_hold_blocks(node: cst.CSTNode) -> bool:
    """False for a node below which Python's grammar allows no indented block (a line
    of simple statements, an expression): a transformer that changes blocks only
    need not enter it (return this from `on_visit`)."""
    kind = type(node)
    return kind is not cst.SimpleStatementLine and cst.BaseExpression not in kind.__mro__


def replace(path: Sequence[cst.CSTNode], new: cst.CSTNode) -> cst.CSTNode:
    """The root of `path` (a chain of parent to child) with the last node of `path`
    replaced by `new`: only the nodes on the path are rebuilt."""
    old = path[-1]
    for parent in reversed(path[:-1]):
        new, old = _with_child(parent, old, new), parent
    return new


def _with_child(parent: cst.CSTNode, old: cst.CSTNode, new: cst.CSTNode) -> cst.CSTNode:
    _VALUES.get(type(parent)) or _learn_fields(type(parent))
    for name in _FIELDS[type(parent)]:
        value = getattr(parent, name)
        if value is old:
            return parent.with_changes(**{name: new})
        if isinstance(value, (tuple, list)) and any(item is old for item in value):
            items = tuple(new if item is old else item for item in value)
            return parent.with_changes(**{name: items})
    # A path built by walking the tree always links each node to its parent.
    raise AssertionError(f"{type(old).__name__} is not a child of {type(parent).__name__}")


class PathTransformer(cst.CSTTransformer):
    """A transformer that enters only the nodes on `paths` (those that lead to what it
    changes): the rest of the module is kept as it is, object for object, unvisited."""

    def __init__(self, paths: Sequence[cst.CSTNode]) -> None:
        super().__init__()
        self.on_paths = {id(node) for node in paths}

    def on_visit(self, node: cst.CSTNode) -> bool:
        return id(node) in self.on_paths
