"""Walking and editing LibCST trees without rebuilding them, shared by the fixes.

LibCST answers `node.children` by running its visitor machinery over the node,
which constructs (and validates) a copy of the node on every call; `tree.visit`
constructs a copy of every node of the tree, even for a visitor that changes
nothing. On a protocol module (7,000+ nodes) each whole-tree pass costs about a
third of parsing it, and the fixes' proofs walk subtrees many times over. Here:

- `children` reads a node's fields directly. The order LibCST gives children in
  (lexical order, which is not the order the fields are declared in) is learnt
  once per node class and set of filled fields, from LibCST's own `children`,
  and used only when it reproduces that answer exactly; otherwise LibCST's
  answer is used for that kind of node every time.
- `replace` rebuilds only the nodes on the path from the root to the node it
  replaces; every other node is shared with the old tree, unchanged.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import libcst as cst

#: Where a kind of node keeps its children, in lexical order: for each field that
#: holds any, its index among the node's field values and whether it holds a
#: sequence of nodes (else one node).
_Plan = tuple[tuple[int, bool], ...]
_FieldValues = Callable[[cst.CSTNode], tuple[Any, ...]]

#: Node class -> the names of its fields, in the order LibCST visits them.
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
    values = values_of(node)
    key = (kind, *map(type, values))
    plan = _PLANS[key] if key in _PLANS else _learn_plan(key, node, values)
    if plan is None:
        return node.children
    found: list[cst.CSTNode] = []
    for index, many in plan:
        if many:
            found.extend(values[index])
        else:
            found.append(values[index])
    return found


def _no_values(node: cst.CSTNode) -> tuple[Any, ...]:
    return ()


def _learn_fields(kind: type[cst.CSTNode]) -> _FieldValues:
    declared = {field.name for field in dataclasses.fields(kind)}
    # LibCST visits a node's fields one `self.<field>` after the other in its
    # `_visit_and_replace_children`, so the order of first use of the names in that
    # code is the lexical order (`_learn_plan` checks the result against LibCST).
    used = kind._visit_and_replace_children.__code__.co_names
    names = tuple(name for name in used if name in declared)
    values_of: _FieldValues
    if not any("visit" in name for name in used):
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
        if isinstance(value, (cst.CSTNode, tuple, list))
    )
    found: list[object] = []
    for index, many in plan:
        found.extend(values[index] if many else [values[index]])
    expected = node.children
    same = len(found) == len(expected) and all(a is b for a, b in zip(found, expected))
    _PLANS[key] = plan if same else None
    return _PLANS[key]


def walk(node: cst.CSTNode) -> Iterator[cst.CSTNode]:
    """Every node below `node`, `node` included, parents first, in lexical order."""
    stack = [node]
    while stack:
        current = stack.pop()
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
        yield current, ancestors
        ancestors.append(current)
        stack.extend((child, depth + 1) for child in reversed(children(current)))


def path_to(root: cst.CSTNode, target: cst.CSTNode) -> list[cst.CSTNode] | None:
    """The nodes from `root` down to `target` (this very object), both included."""
    for node, ancestors in walk_with_ancestors(root):
        if node is target:
            return [*ancestors, node]
    return None


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
