"""The fixes' fast tree walk and path edit give what LibCST's own machinery gives.

`h2fix.fixes._tree.children` reads fields instead of asking LibCST (which rebuilds
the node to answer); every proof walks with it, so it must return the very same
children in the very same order, for every kind of node, or rewrites (and refusal
messages, which list what they found in walk order) would change.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import libcst as cst
import pytest

from h2fix.fixes import _tree
from support.releases import h2_source
from support.versions import needs_match_statement

RELEASES = [
    ("hypercorn", "0.14.4"),
    ("hypercorn", "0.16.0"),
    ("hypercorn", "0.17.3"),
    ("hypercorn", "0.18.0"),
    ("anycorn", "0.18.7"),
    ("anycorn", "0.20.1"),
]

# Syntax the release files do not use, one construct or more a line.
VARIETY = '''\
from __future__ import annotations
from . import a as b, c
from .. x import (y, z as w,)
from m import *
import p.q as r, s
@decorator(arg)
@other
async def f(a, /, b: int = 1, *args: str, c, d=2, **kwargs) -> None:
    """Doc."""
    global g
    x = y = [1, 2, *z]
    x += 1; y: int = 2
    del x, y[0], z.w
    async with a as (b, c), d:
        async for i, j in k:
            await l
            continue
        else:
            break
    try:
        pass
    except (A, B) as e:
        raise C from e
    else:
        pass
    finally:
        return
    try:
        pass
    except* D:
        pass
    while not a and b or c is not d:
        yield from e
    lambda x, *y, z=1, **w: (x, y)
    s = f"{a!r:>{b}} {c=}" r'x' 'y' """z"""; by = rb'x' b'y'
    t = a[1:2, ::3, b] if c else {d: e for d, e in f if g} | {*h} ^ {**i}
    u = [j async for j in k] + list(m for m in n)
    v = (o := p) @ q // r ** -s >> t << ~u % v
    assert w, "message"
    nonlocal_free = ...
class K(Base, metaclass=Meta):
    x: int
    def m(self): return 1  # comment
if a:  # trailing
    pass
elif b:
    pass
else:
    pass
with (open(a) as b, open(c) as d):
    print(b, d, sep="")
'''

VARIETY_MATCH = """\
match command:
    case [Point(x=0, y=0), *rest] if rest:
        pass
    case {"key": value, **others} | (1 | 2 as number):
        pass
    case str() | None | -1 | 1.5 | a.b:
        pass
    case _:
        pass
"""


def libcst_walk(node: cst.CSTNode) -> Iterator[cst.CSTNode]:
    """Every node below `node`, parents first, by LibCST's own `children`."""
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        stack.extend(reversed(current.children))


def assert_same_walk(source: str) -> None:
    tree = cst.parse_module(source)
    expected = list(libcst_walk(tree))
    found = list(_tree.walk(tree))
    assert len(found) == len(expected)
    for mine, theirs in zip(found, expected):
        assert mine is theirs, f"{type(mine).__name__} where LibCST has {type(theirs).__name__}"
    for node in expected:
        assert list(_tree.children(node)) == list(node.children)


@pytest.mark.network
@pytest.mark.parametrize(("distribution", "version"), RELEASES, ids=[" ".join(r) for r in RELEASES])
def test_walk_of_a_release_file(distribution: str, version: str) -> None:
    assert_same_walk(h2_source(distribution, version))


@pytest.mark.skipif(sys.version_info < (3, 11), reason="except* needs Python 3.11's grammar")
def test_walk_of_varied_syntax() -> None:
    assert_same_walk(VARIETY)


@needs_match_statement
def test_walk_of_match_statements() -> None:
    assert_same_walk(VARIETY_MATCH)


def test_walk_of_libcst_itself() -> None:
    """LibCST's own sources: thousands of lines of every everyday construct."""
    for path in sorted(Path(cst.__file__).parent.glob("_nodes/*.py"))[:4]:
        assert_same_walk(path.read_text(encoding="utf-8"))


def test_walk_with_ancestors_gives_each_node_its_parents() -> None:
    tree = cst.parse_module(VARIETY_MATCH if sys.version_info >= (3, 10) else "x = [a, (b,)]\n")
    seen = 0
    for node, ancestors in _tree.walk_with_ancestors(tree):
        if ancestors:
            assert any(child is node for child in ancestors[-1].children)
        else:
            assert node is tree
        seen += 1
    assert seen == len(list(libcst_walk(tree)))


class _Swap(cst.CSTTransformer):
    def __init__(self, old: cst.CSTNode, new: cst.CSTNode) -> None:
        super().__init__()
        self.old, self.new = old, new

    def on_leave(self, original_node: cst.CSTNode, updated_node: cst.CSTNode) -> cst.CSTNode:
        return self.new if original_node is self.old else updated_node


@pytest.mark.parametrize(
    "pick",
    [
        pytest.param(lambda n: isinstance(n, cst.IndentedBlock), id="a block"),
        pytest.param(lambda n: isinstance(n, cst.Name) and n.value == "kwargs", id="a parameter"),
        pytest.param(lambda n: isinstance(n, cst.Integer) and n.value == "3", id="in a slice"),
        pytest.param(lambda n: isinstance(n, cst.SimpleStatementLine), id="a statement"),
    ],
)
def test_replace_rebuilds_the_path_only(pick: object) -> None:
    tree = cst.parse_module(VARIETY.replace("except* D", "except D"))
    assert "except D" in tree.code
    old = next(node for node in _tree.walk(tree) if pick(node))  # type: ignore[operator]
    new = cst.parse_statement("pass\n") if isinstance(old, cst.BaseStatement) else cst.Name("q")
    if isinstance(old, cst.IndentedBlock):
        new = old.with_changes(body=[cst.parse_statement("replaced()\n")])
    path = _tree.path_to(tree, old)
    assert path is not None
    assert path[0] is tree
    assert path[-1] is old
    changed = _tree.replace(path, new)
    assert isinstance(changed, cst.Module)
    assert changed.code == tree.visit(_Swap(old, new)).code
    assert changed.code != tree.code
    # Nodes off the path are the very same objects.
    assert changed.body[-1] is tree.body[-1]


def test_path_to_a_node_elsewhere_is_none() -> None:
    assert _tree.path_to(cst.parse_module("a = 1\n"), cst.Name("a")) is None


class _Rename(cst.CSTTransformer):
    """Renames `a` to `renamed` and notes every hook it runs, with the node's class."""

    def __init__(self) -> None:
        super().__init__()
        self.hooks: list[str] = []

    def on_visit(self, node: cst.CSTNode) -> bool:
        self.hooks.append(f"visit {type(node).__name__}")
        return not isinstance(node, cst.ClassDef)  # its body is not entered

    def on_leave(self, original_node: cst.CSTNode, updated_node: cst.CSTNode) -> cst.CSTNode:
        self.hooks.append(f"leave {type(original_node).__name__}")
        if isinstance(updated_node, cst.Name) and updated_node.value == "a":
            return updated_node.with_changes(value="renamed")
        return updated_node


def test_transform_runs_the_hooks_libcst_runs_and_gives_its_result() -> None:
    tree = cst.parse_module(VARIETY.replace("except* D", "except D"))
    ours, theirs = _Rename(), _Rename()
    changed = _tree.transform(tree, ours)
    assert changed.code == tree.visit(theirs).code
    assert "renamed" in changed.code
    assert ours.hooks == theirs.hooks
    # A statement not entered is the very same object.
    [before] = [s for s in tree.body if isinstance(s, cst.ClassDef)]
    [after] = [s for s in changed.body if isinstance(s, cst.ClassDef)]
    assert after is before


def test_transform_with_a_visitor_changes_nothing() -> None:
    tree = cst.parse_module(VARIETY.replace("except* D", "except D"))

    class Count(cst.CSTVisitor):
        seen = 0

        def on_visit(self, node: cst.CSTNode) -> bool:
            self.seen += 1
            return True

    ours, theirs = Count(), Count()
    assert _tree.transform(tree, ours) is tree
    tree.visit(theirs)
    assert ours.seen == theirs.seen == len(list(libcst_walk(tree)))


def test_walks_read_the_index_of_a_tree_and_of_trees_built_from_it() -> None:
    tree = cst.parse_module(VARIETY.replace("except* D", "except D"))
    with _tree.indexed(tree):
        changed = _tree.transform(tree, _Rename())
        for root in (tree, changed, tree.body[5], changed.body[5]):
            expected = list(libcst_walk(root))
            assert [id(n) for n in _tree.walk(root)] == [id(n) for n in expected]
            pairs = [(node, list(ancestors)) for node, ancestors in _tree.walk_with_ancestors(root)]
            assert [id(node) for node, _ in pairs] == [id(n) for n in expected]
            for node, ancestors in pairs:
                if ancestors:
                    assert any(child is node for child in ancestors[-1].children)
                    assert ancestors[0] is root
                else:
                    assert node is root
    assert not _tree._INDEXES  # nothing kept once the rewrite is over


class _Opaque:
    """A method without Python code, as a LibCST compiled to C would have."""

    def __init__(self, function: Callable[..., cst.CSTNode]) -> None:
        self.function = function

    def __get__(self, node: object, kind: object) -> Callable[..., cst.CSTNode]:
        return functools.partial(self.function, node)


class _CompiledCall(cst.Call):
    _visit_and_replace_children = _Opaque(cst.Call._visit_and_replace_children)  # type: ignore[assignment]


def test_nodes_whose_visiting_code_cannot_be_read_are_asked() -> None:
    tree = cst.parse_module("print(a, f(b))\nx = 1\n")
    [call] = [node for node in libcst_walk(tree) if isinstance(node, cst.Call)][:1]
    compiled = _CompiledCall(func=call.func, args=call.args)
    tree = _tree.replace(
        [*next(p for n, p in _tree.walk_with_ancestors(tree) if n is call), call], compiled
    )
    assert [id(n) for n in _tree.walk(tree)] == [id(n) for n in libcst_walk(tree)]
    ours, theirs = _Rename(), _Rename()
    assert _tree.transform(tree, ours).code == tree.visit(theirs).code
    assert ours.hooks == theirs.hooks
