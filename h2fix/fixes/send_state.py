"""Fix `send_state`: release a stream's send buffer and priority node when the stream is over.

Hypercorn keeps two pieces of send state per stream, apart from the stream
itself: a buffer (`self.stream_buffers[stream_id]`) and a node in the priority
tree (`self.priority`). Only `_send_data()` releases them, when the sending
task schedules the stream once more after its last DATA and finds the buffer
complete, or when h2 refuses to send on it. Two kinds of stream are not
reached again:

- a response that ends with trailers (every gRPC call): the trailers carry
  END_STREAM and the end-of-body event after them leaves one last pass to
  `_send_data()`, but new streams enter the priority tree ahead of older ones,
  so under steady load that pass never comes (measured: every finished stream
  stays until the load stops);
- a stream the client resets (every gRPC deadline or cancellation) while its
  buffer is empty: `_send_data()` finds nothing to send, blocks it, and it
  stays for the life of the connection.

At 1001 live nodes `PriorityTree.insert_stream` raises TooManyStreamsError,
which kills the connection (and, under the trio worker, the server).

The rewrite releases the state at the two points where the stream provably
has nothing more to send: right after the trailers are sent with END_STREAM,
and at the end of the StreamReset branch. It cannot be done when the stream
is closed (`_close_stream`): that also runs right after the end-of-body branch
has drained the buffer, when `_send_data()` has yet to send END_STREAM.
Because the state can now go while `_send_data()` waits on a flush,
`_send_data()`'s own release tolerates state already released. Every release
is the same statement, which removes both synchronously, before any await:

    if <stream id> in self.stream_buffers:
        self.priority.remove_stream(<stream id>)
        await self.stream_buffers.pop(<stream id>).close()

Closing the buffer wakes a writer waiting in push() or drain(). Every name is
learned from `_send_data()`'s release and proven in `__init__`; the buffer
class must be one the module defines, with an async `close()`. Like the
module's own release, it takes a buffer to mean a node (both are added
together in `_create_stream` and, everywhere, removed together).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import NoReturn, Union

import libcst as cst

from .._environment import Environment
from .._errors import UnrecognisedStructureError
from .._results import FixOutcome, Outcome
from . import _live_method as live_method
from ._syntax import (
    bound_names,
    dotted,
    identifier,
    imported_as,
    imports_name,
    is_pure,
    module_bindings,
    self_attribute,
    walk,
)
from ._syntax import first_parameter as self_name
from ._tree import children, may_hold_blocks, path_to, transform

NAME = "send_state"

RELEASE = """\
if {sid} in {self}.{buffers}:
    {self}.{priority}.remove_stream({sid})
    await {self}.{buffers}.pop({sid}).close()
"""
# What a dispatch must catch for events that arrive after the release
# (the end-of-body branch indexes the buffers, then unblocks the node).
_AFTER_RELEASE = ("KeyError", "MissingStreamError")


class _Refusal(Exception):
    def __init__(self, where: str, expected: str, found: str) -> None:
        super().__init__(where, expected, found)
        self.where, self.expected, self.found = where, expected, found


@dataclass
class _Names:
    buffers: str
    priority: str
    #: Async methods of the class that release the send state of their one argument.
    releasers: frozenset[str] = frozenset()


@dataclass
class _Plan:
    """What to change: statement lists to replace, per method qualname."""

    changed: dict[str, None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: id(IndentedBlock) -> its new statements
    blocks: dict[int, list[cst.BaseStatement]] = field(default_factory=dict)


# ---------------------------------------------------------------- small shapes


def _only(line: cst.BaseStatement) -> cst.BaseSmallStatement | None:
    """The one small statement of a simple line, if it is one."""
    if isinstance(line, cst.SimpleStatementLine) and len(line.body) == 1:
        return line.body[0]
    return None


def _expression(line: cst.BaseStatement) -> cst.BaseExpression | None:
    small = _only(line)
    return small.value if isinstance(small, cst.Expr) else None


def _awaited(line: cst.BaseStatement) -> cst.BaseExpression | None:
    value = _expression(line)
    return value.expression if isinstance(value, cst.Await) else None


def _method_call(node: cst.CSTNode, method: str) -> tuple[cst.BaseExpression, list[cst.Arg]] | None:
    """(object, args) for `<object>.<method>(args)`."""
    if type(node) is not cst.Call:  # most nodes: see _tree.py on LibCST's classes
        return None
    if (
        isinstance(node, cst.Call)
        and isinstance(node.func, cst.Attribute)
        and identifier(node.func.attr) == method
    ):
        return node.func.value, list(node.args)
    return None


def _subscript_key(node: cst.CSTNode) -> tuple[cst.BaseExpression, cst.BaseExpression] | None:
    """(object, key) for `<object>[<key>]`."""
    if isinstance(node, cst.Subscript) and len(node.slice) == 1:
        index = node.slice[0].slice
        if isinstance(index, cst.Index) and index.star is None:
            return node.value, index.value
    return None


def _same(a: cst.CSTNode, b: cst.CSTNode) -> bool:
    """Names and attribute chains as Python compares them (NFKC); anything else exactly."""
    if isinstance(a, cst.BaseExpression) and isinstance(b, cst.BaseExpression):
        name_a, name_b = dotted(a), dotted(b)
        if name_a is not None or name_b is not None:
            return name_a == name_b
    return a.deep_equals(b)


def _one_argument(args: Sequence[cst.Arg], value: cst.BaseExpression) -> bool:
    return (
        len(args) == 1 and args[0].keyword is None and not args[0].star
        and _same(args[0].value, value)
    )  # fmt: skip


def _isinstance_of(test: cst.BaseExpression, names: tuple[str, ...]) -> cst.BaseExpression | None:
    """The subject of `isinstance(<subject>, <one of names>)` (also `mod.X`, `(X,)`)."""
    if not (
        isinstance(test, cst.Call)
        and isinstance(test.func, cst.Name)
        and identifier(test.func) == "isinstance"
        and len(test.args) == 2
        and all(arg.keyword is None and not arg.star for arg in test.args)
    ):
        return None
    kind = test.args[1].value
    if isinstance(kind, cst.Tuple) and len(kind.elements) == 1:
        kind = kind.elements[0].value
    name = (
        identifier(kind.attr) if isinstance(kind, cst.Attribute)
        else identifier(kind) if isinstance(kind, cst.Name) else None
    )  # fmt: skip
    return test.args[0].value if name in names else None


def _names_in(kind: cst.CSTNode) -> set[str]:
    """Class names an isinstance second argument or an except clause mentions."""
    found = set()
    for node in walk(kind):
        if isinstance(node, cst.Attribute):
            found.add(identifier(node.attr))
        elif isinstance(node, cst.Name):
            found.add(identifier(node))
    return found


# ------------------------------------------------------------- the releases


def _stock_release(
    lines: Sequence[cst.BaseStatement], receiver: str
) -> tuple[str, str, cst.BaseExpression] | None:
    """(buffers, priority, stream id) for `_send_data()`'s release as released:

    await self.<buffers>[<id>].close()
    del self.<buffers>[<id>]
    self.<priority>.remove_stream(<id>)
    """
    if len(lines) != 3:
        return None
    closing = _awaited(lines[0])
    call = _method_call(closing, "close") if closing is not None else None
    indexed = _subscript_key(call[0]) if call is not None and not call[1] else None
    deletion = _only(lines[1])
    removal = _expression(lines[2])
    removed = _method_call(removal, "remove_stream") if removal is not None else None
    if indexed is None or not isinstance(deletion, cst.Del) or removed is None:
        return None
    buffers = self_attribute(indexed[0], receiver)
    deleted = _subscript_key(deletion.target)
    priority = self_attribute(removed[0], receiver)
    stream_id = indexed[1]
    if (
        buffers is None
        or priority is None
        or deleted is None
        or self_attribute(deleted[0], receiver) != buffers
        or not _same(deleted[1], stream_id)
        or not _one_argument(removed[1], stream_id)
    ):
        return None
    return buffers, priority, stream_id


def _guarded_release(
    line: cst.BaseStatement, receiver: str
) -> tuple[str, str, cst.BaseExpression] | None:
    """(buffers, priority, stream id) for the release this fix writes (RELEASE)."""
    if not (isinstance(line, cst.If) and line.orelse is None):
        return None
    test = line.test
    if not (
        isinstance(test, cst.Comparison)
        and len(test.comparisons) == 1
        and isinstance(test.comparisons[0].operator, cst.In)
    ):
        return None
    stream_id = test.left
    buffers = self_attribute(test.comparisons[0].comparator, receiver)
    body = line.body.body if isinstance(line.body, cst.IndentedBlock) else ()
    if buffers is None or len(body) != 2:
        return None
    removal = _expression(body[0])
    removed = _method_call(removal, "remove_stream") if removal is not None else None
    closing = _awaited(body[1])
    closed = _method_call(closing, "close") if closing is not None else None
    popped = _method_call(closed[0], "pop") if closed is not None and not closed[1] else None
    if removed is None or popped is None:
        return None
    priority = self_attribute(removed[0], receiver)
    if (
        priority is None
        or self_attribute(popped[0], receiver) != buffers
        or not _one_argument(removed[1], stream_id)
        or not _one_argument(popped[1], stream_id)
    ):
        return None
    return buffers, priority, stream_id


def _releaser(method: cst.FunctionDef) -> tuple[str, str] | None:
    """(buffers, priority) when the method is `async def m(self, id)` releasing id's state.

    It must pop the buffer with a default (it may be gone already) and remove the node.
    """
    receiver = self_name(method)
    params = method.params.params
    if method.asynchronous is None or receiver is None or len(params) != 2:
        return None
    stream_id = cst.Name(identifier(params[1].name))
    buffers = priority = None
    for node in walk(method.body):
        popped = _method_call(node, "pop")
        if popped is not None and len(popped[1]) == 2 and _same(popped[1][0].value, stream_id):
            buffers = self_attribute(popped[0], receiver) or buffers
        removed = _method_call(node, "remove_stream")
        if removed is not None and _one_argument(removed[1], stream_id):
            priority = self_attribute(removed[0], receiver) or priority
    return (buffers, priority) if buffers and priority else None


def _releases(
    line: cst.BaseStatement, receiver: str, names: _Names, stream_id: cst.BaseExpression
) -> bool:
    """Whether the statement already releases the send state of `stream_id`."""
    guarded = _guarded_release(line, receiver)
    if guarded is not None:
        return guarded[:2] == (names.buffers, names.priority) and _same(guarded[2], stream_id)
    awaited = _awaited(line)
    if isinstance(awaited, cst.Call) and isinstance(awaited.func, cst.Attribute):
        method = self_attribute(awaited.func, receiver)
        return method in names.releasers and _one_argument(awaited.args, stream_id)
    return False


# ------------------------------------------------------------- the transformer


class _Fix:
    def __init__(self, module: cst.Module) -> None:
        self.module = module
        self.plan = _Plan()

    def code(self, node: cst.CSTNode) -> str:
        return self.module.code_for_node(node).strip("\n")

    def refuse(self, where: str, expected: str, node: cst.CSTNode | str) -> NoReturn:
        found = node if isinstance(node, str) else self.code(node)
        raise _Refusal(where, expected, found)

    def release(self, receiver: str, names: _Names, stream_id: cst.BaseExpression) -> cst.If:
        code = RELEASE.format(
            sid=self.module.code_for_node(stream_id),
            self=receiver,
            buffers=names.buffers,
            priority=names.priority,
        )
        statement = cst.parse_statement(code, config=self.module.config_for_parsing)
        assert isinstance(statement, cst.If)
        return statement

    # The class and the names: from _send_data()'s release

    def run(self) -> Outcome:
        senders = [
            (cls, method, handler)
            for cls in self.module.body
            if isinstance(cls, cst.ClassDef)
            for method in cls.body.body
            if isinstance(method, cst.FunctionDef)
            for handler in _handlers(method)
            if self._send_release(cls, method, handler) is not None
        ]
        if not senders:
            # A priority tree with streams taken out of it: send state this fix cannot see.
            if any(_method_call(n, "remove_stream") for n in walk(self.module)):
                self.refuse(
                    "<module>",
                    "a method whose except clause releases the stream's send state "
                    "(`await self.<buffers>[<id>].close()`, `del self.<buffers>[<id>]`, "
                    "`self.<priority>.remove_stream(<id>)`)",
                    "remove_stream is called, but no such release exists",
                )
            return Outcome.NOT_APPLICABLE
        if len(senders) > 1:
            where = ", ".join(f"{identifier(c.name)}.{identifier(m.name)}" for c, m, _ in senders)
            self.refuse(
                "<module>", "one method that releases send state", f"{len(senders)}: {where}"
            )
        cls, method, handler = senders[0]
        found = self._send_release(cls, method, handler)
        assert found is not None
        names, stock = found
        self._prove_live(cls, method)
        self._prove_names(cls, names)
        self._prove_one_tree_and_buffers(cls, names)
        self._prove_send_data_catches(cls, method, handler, names)
        if stock:
            self._rewrite_send_release(cls, method, handler, names)
        self._trailers(cls, names)
        self._reset(cls, names)
        return Outcome.REWRITTEN if self.plan.changed else Outcome.FIXED_UPSTREAM

    def _send_release(
        self, cls: cst.ClassDef, method: cst.FunctionDef, handler: cst.ExceptHandler
    ) -> tuple[_Names, bool] | None:
        """The names and whether it is the stock (intolerant) form, for a releasing handler."""
        receiver = self_name(method)
        if receiver is None or not isinstance(handler.body, cst.IndentedBlock):
            return None
        lines = handler.body.body
        stock = _stock_release(lines, receiver)
        if stock is not None:
            return _Names(stock[0], stock[1], _releasers(cls)), True
        if len(lines) != 1:
            return None
        guarded = _guarded_release(lines[0], receiver)
        if guarded is not None:
            return _Names(guarded[0], guarded[1], _releasers(cls)), False
        awaited = _awaited(lines[0])
        if isinstance(awaited, cst.Call) and isinstance(awaited.func, cst.Attribute):
            helper = self_attribute(awaited.func, receiver)
            for other in cls.body.body:
                if isinstance(other, cst.FunctionDef) and identifier(other.name) == helper:
                    pair = _releaser(other)
                    if pair is not None:
                        return _Names(pair[0], pair[1], _releasers(cls)), False
        return None

    def _prove_live(self, cls: cst.ClassDef, method: cst.FunctionDef) -> None:
        """The method is the one the server runs, and its first parameter is the protocol
        object: its class is bound once in the module, it is not decorated, not replaced
        by a later definition in the class body, not overridden by a subclass in the module,
        and its receiver is never reassigned in it."""
        where = f"{identifier(cls.name)}.{identifier(method.name)}"
        live = live_method.LiveMethods(self.module)
        try:
            live.class_defined_once(cls)
            live.undecorated(method)
            live_method.not_replaced_later(cls, method)
            live_method.not_overridden_in(self._subclasses(cls), cls, method)
            live_method.receiver_never_reassigned(method, where)
        except live_method.Refusal as refusal:
            self.refuse(where, refusal.expected, refusal.found)

    def _subclasses(self, cls: cst.ClassDef) -> list[cst.ClassDef]:
        """The module-level classes that derive from `cls`, directly or not.

        Not _syntax.subclasses, whose view differs both ways: it reads module_classes,
        which leaves out a class the module binds twice (counted here, so an override in
        it is refused), and takes in classes defined under a module-level if/try (not
        counted here). Unifying them would change this fix's verdicts."""
        found: list[cst.ClassDef] = []
        names = {identifier(cls.name)}
        changed = True
        while changed:
            changed = False
            for candidate in self.module.body:
                if not isinstance(candidate, cst.ClassDef) or candidate in (cls, *found):
                    continue
                if any(dotted(base.value) in names for base in candidate.bases):
                    found.append(candidate)
                    names.add(identifier(candidate.name))
                    changed = True
        return found

    def _family_methods(self, cls: cst.ClassDef) -> Iterator[cst.FunctionDef]:
        for member in (cls, *self._subclasses(cls)):
            for method in member.body.body:
                if isinstance(method, cst.FunctionDef):
                    yield method

    def _prove_one_tree_and_buffers(self, cls: cst.ClassDef, names: _Names) -> None:
        """The tree `_send_data` removes from is the one streams are inserted into, blocked
        and unblocked in; the buffers it deletes from are the ones every stream buffer is
        stored in and used from. A second tree or dict would keep the state the release
        misses (or lack the node it removes: MissingStreamError kills the server)."""
        where = identifier(cls.name)
        inserted = False
        for method in self._family_methods(cls):
            receiver = self_name(method)
            if receiver is None:
                continue
            for node in walk(method):
                call = _any_method_call(node)
                if call is None:
                    continue
                owner, called = call
                if called in _TREE_METHODS:
                    attribute = self_attribute(owner, receiver)
                    if attribute is not None and attribute != names.priority:
                        self.refuse(
                            where,
                            f"one priority tree: every {called}() on self.{names.priority}, "
                            "the tree _send_data removes streams from",
                            node,
                        )
                    inserted |= attribute == names.priority and called == "insert_stream"
                item = _subscript_key(owner)
                if called in _BUFFER_METHODS and item is not None:
                    attribute = self_attribute(item[0], receiver)
                    if attribute is not None and attribute != names.buffers:
                        self.refuse(
                            where,
                            f"one dict of stream buffers: every buffer used from "
                            f"self.{names.buffers}, the dict _send_data deletes from",
                            node,
                        )
        if not inserted:
            self.refuse(
                where,
                f"streams inserted into self.{names.priority} (the tree _send_data removes "
                "them from)",
                f"no self.{names.priority}.insert_stream(...) in class {where}",
            )

    def _prove_send_data_catches(
        self,
        cls: cst.ClassDef,
        method: cst.FunctionDef,
        handler: cst.ExceptHandler,
        names: _Names,
    ) -> None:
        """Once the state can be released while `_send_data` awaits (a flush, a buffer's
        pop), its next `self.<buffers>[id]` raises KeyError and `remove_stream` raises
        MissingStreamError (a KeyError): the try around every such access must catch it,
        or the send task dies, and with it the connection (trio: the server)."""
        where = f"{identifier(cls.name)}.{identifier(method.name)}"
        attempt = next(
            (n for n in walk(method) if isinstance(n, cst.Try) and handler in n.handlers), None
        )
        assert attempt is not None  # the handler came from this method
        caught = _names_in(handler.type) if handler.type is not None else {"BaseException"}
        if not caught & _CATCHES_KEY_ERROR:
            self.refuse(
                where,
                "the except clause that releases the send state to catch KeyError (the "
                "state may now be released while _send_data awaits)",
                f"except {self.code(handler.type) if handler.type is not None else ''}:",
            )
        receiver = self_name(method)
        assert receiver is not None
        state = {f"{receiver}.{names.buffers}", f"{receiver}.{names.priority}"}
        guarded = {id(n) for n in walk(attempt.body)} | {id(n) for n in walk(handler)}
        for node in walk(method.body):
            if (
                isinstance(node, cst.Attribute)
                and dotted(node) in state
                and id(node) not in guarded
            ):
                self.refuse(
                    where,
                    "every use of the send state in _send_data inside the try whose except "
                    "clause releases it (KeyError is caught there)",
                    f"{self.code(node)} outside it",
                )

    def _prove_names(self, cls: cst.ClassDef, names: _Names) -> None:
        """__init__ makes the tree a priority.PriorityTree and the buffers an empty dict of a
        buffer class this module defines with an async close(); nothing else rebinds them."""
        where = identifier(cls.name)
        buffer_classes = {
            identifier(node.name)
            for node in self.module.body
            if isinstance(node, cst.ClassDef)
            and any(
                isinstance(m, cst.FunctionDef) and identifier(m.name) == "close" and m.asynchronous
                for m in node.body.body
            )
        }
        tree = buffers = False
        stored: list[cst.CSTNode] = []
        for method in cls.body.body:
            if not isinstance(method, cst.FunctionDef):
                continue
            receiver = self_name(method)
            for node in walk(method):
                targets: list[tuple[cst.BaseExpression, cst.BaseExpression | None]] = []
                if isinstance(node, cst.Assign):
                    targets = [(t.target, node.value) for t in node.targets]
                elif isinstance(node, (cst.AnnAssign, cst.AugAssign)):
                    targets = [(node.target, node.value)]
                for target, value in targets:
                    attr = self_attribute(target, receiver) if receiver else None
                    in_init = identifier(method.name) == "__init__"
                    if attr == names.priority:
                        if not (in_init and value is not None and self._priority_tree(value)):
                            self.refuse(
                                where,
                                f"self.{attr} = priority.PriorityTree() in __init__ only",
                                node,
                            )
                        tree = True
                    elif attr == names.buffers:
                        if not (in_init and isinstance(value, cst.Dict) and not value.elements):
                            self.refuse(where, f"self.{attr} = {{}} in __init__ only", node)
                        buffers = True
                    key = _subscript_key(target)
                    into = self_attribute(key[0], receiver) if key and receiver else None
                    if into == names.buffers:
                        stored.append(node)
                        if not (
                            isinstance(value, cst.Call)
                            and isinstance(value.func, cst.Name)
                            and identifier(value.func) in buffer_classes
                        ):
                            self.refuse(
                                where,
                                f"self.{names.buffers}[...] = <a class defined in this module "
                                "with an async close()>(...)",
                                node,
                            )
        if not (tree and buffers and stored):
            self.refuse(
                where,
                f"__init__ to assign self.{names.priority} = priority.PriorityTree() and "
                f"self.{names.buffers} = {{}}, and a method to store buffers in it",
                f"priority tree assigned: {tree}; buffers assigned: {buffers}; "
                f"buffers stored: {bool(stored)}",
            )

    def _rewrite_send_release(
        self, cls: cst.ClassDef, method: cst.FunctionDef, handler: cst.ExceptHandler, names: _Names
    ) -> None:
        receiver = self_name(method)
        assert receiver is not None
        assert isinstance(handler.body, cst.IndentedBlock)
        lines = handler.body.body
        stock = _stock_release(lines, receiver)
        assert stock is not None
        first = lines[0]
        assert isinstance(first, cst.SimpleStatementLine)
        release = self.release(receiver, names, stock[2]).with_changes(
            leading_lines=first.leading_lines
        )
        self.plan.blocks[id(handler.body)] = [release]
        self.plan.changed[f"{identifier(cls.name)}.{identifier(method.name)}"] = None

    def _priority_tree(self, value: cst.BaseExpression) -> bool:
        """`<m>.PriorityTree()` after `import priority [as <m>]`, or `<n>()` after
        `from priority import PriorityTree [as <n>]`, each the one binding of its name in
        the module (its remove_stream is then the one called)."""
        if not (isinstance(value, cst.Call) and not value.args):
            return False
        bindings = module_bindings(self.module)
        if isinstance(value.func, cst.Attribute) and isinstance(value.func.value, cst.Name):
            if identifier(value.func.attr) != "PriorityTree":
                return False
            alias = identifier(value.func.value)
            found = bindings.get(alias, [])
            return len(found) == 1 and _imports_module_as(found[0], "priority", alias)
        if isinstance(value.func, cst.Name):
            bound = identifier(value.func)
            found = bindings.get(bound, [])
            return len(found) == 1 and imports_name(found[0], "priority", "PriorityTree", bound)
        return False

    # After the trailers, sent with END_STREAM

    def _trailers(self, cls: cst.ClassDef, names: _Names) -> None:
        branches: list[tuple[cst.FunctionDef, _Branch, tuple[cst.Try, ...]]] = []
        for method in _live_methods(cls):
            for branch, tries, dead in _branches(method.body, ()):
                if dead:
                    continue
                if isinstance(branch, cst.If):
                    if _isinstance_of(branch.test, ("Trailers",)) is not None:
                        branches.append((method, branch, tries))
                elif "Trailers" in _names_in(branch.pattern):
                    if not _case_of(branch.pattern, "Trailers") or branch.guard is not None:
                        self.refuse(
                            f"{identifier(cls.name)}.{identifier(method.name)}",
                            "`case Trailers():` alone, with no guard (END_STREAM is for "
                            "trailers only)",
                            _shown(branch),
                        )
                    branches.append((method, branch, tries))
        if not branches:
            self.plan.notes.append("no trailers support in this version")
            return
        if len(branches) > 1:
            where = ", ".join(identifier(m.name) for m, _, _ in branches)
            self.refuse(identifier(cls.name), "one Trailers branch", f"{len(branches)}: in {where}")
        method, branch, tries = branches[0]
        where = f"{identifier(cls.name)}.{identifier(method.name)}"
        receiver = self_name(method)
        if receiver is None or method.asynchronous is None:
            self.refuse(where, "the Trailers branch in an `async def` method", _shown(branch))
        body = branch.body
        sends = [n for n in walk(body) if _method_call(n, "send_headers") is not None]
        lines = body.body if isinstance(body, cst.IndentedBlock) else ()
        direct = [
            index
            for index, line in enumerate(lines)
            if (value := _expression(line)) is not None and _method_call(value, "send_headers")
        ]
        if not isinstance(body, cst.IndentedBlock) or len(sends) != 1 or len(direct) != 1:
            self.refuse(
                where,
                "exactly one `<connection>.send_headers(...)` statement, directly in the "
                "Trailers branch",
                _shown(branch),
            )
        send_index = direct[0]
        value = _expression(body.body[send_index])
        assert value is not None
        call = _method_call(value, "send_headers")
        assert call is not None
        ends = _end_stream(call[1])
        if ends is None:
            self.refuse(where, "end_stream given as the literal True or False", _shown(branch))
        if not ends:
            # The stream is not ended here: the end-of-body branch ends it through
            # _send_data(), which releases the state itself. Nothing to do.
            self.plan.notes.append(
                "the trailers do not end the stream in this code (the `trailers` fix does that)"
            )
            return
        stream_id = _stream_id(call[1])
        if stream_id is None or not is_pure(stream_id):
            self.refuse(
                where,
                "the stream id of send_headers as a name or attribute (it is repeated)",
                _shown(branch),
            )
        self._prove_live(cls, method)
        after = body.body[send_index + 1 :]
        mutators = self._mutators(cls, names)
        for line in after:
            if not _releases(line, receiver, names, stream_id) and self._touches(
                line, receiver, names, mutators
            ):
                self.refuse(
                    where,
                    "nothing after the trailers that uses the stream's send buffer or "
                    "priority node, but one recognised release",
                    line,
                )
        if any(_releases(line, receiver, names, stream_id) for line in after):
            return
        self._prove_catches(where, tries)
        lines = list(body.body)
        lines.insert(send_index + 1, self.release(receiver, names, stream_id))
        self.plan.blocks[id(body)] = lines
        self.plan.changed[where] = None

    def _prove_catches(self, where: str, tries: tuple[cst.Try, ...]) -> None:
        """Events for the stream after the release (the end-of-body branch) find no buffer or
        no node: the dispatch around the branch must already catch what that raises."""
        caught = set()
        for attempt in tries:
            for handler in attempt.handlers:
                if handler.type is not None:
                    caught |= _names_in(handler.type)
        if not set(_AFTER_RELEASE) <= caught:
            self.refuse(
                where,
                f"the Trailers branch inside a `try` that catches {' and '.join(_AFTER_RELEASE)} "
                "(later events for the released stream raise them)",
                f"a try catching: {', '.join(sorted(caught)) or 'nothing'}",
            )

    # At the end of the StreamReset branch

    def _reset(self, cls: cst.ClassDef, names: _Names) -> None:
        # A redefined method's branch never runs; but which definition runs is for
        # every fix to agree on, so a second one is refused rather than skipped.
        replaced = [
            method
            for method in cls.body.body
            if isinstance(method, cst.FunctionDef)
            and live_method.rebound_later(cls, method)
            and any(_reset_subject(b, _subjects(method)) for b, _, _ in _branches(method.body, ()))
        ]
        if replaced:
            name = identifier(replaced[0].name)
            self.refuse(
                f"{identifier(cls.name)}.{name}",
                f"the StreamReset branch in a method defined once ({name} is defined again "
                "later in the class body)",
                f"{name} bound again later in class {identifier(cls.name)}",
            )
        branches = [
            (method, branch, subject)
            for method in _live_methods(cls)
            for branch, _, dead in _branches(method.body, ())
            if not dead and (subject := _reset_subject(branch, _subjects(method))) is not None
        ]
        for method, branch, _ in branches:
            if isinstance(branch, cst.MatchCase) and (
                not _case_of(branch.pattern, "StreamReset") or branch.guard is not None
            ):
                self.refuse(
                    f"{identifier(cls.name)}.{identifier(method.name)}",
                    "`case StreamReset():` alone, with no guard (the release is for resets only)",
                    _shown(branch),
                )
        if len(branches) != 1:
            where = ", ".join(identifier(m.name) for m, _, _ in branches) or "none"
            self.refuse(
                identifier(cls.name),
                "one `if isinstance(<event>, StreamReset):` branch (or `case StreamReset():`)",
                where,
            )
        method, branch, subject = branches[0]
        where = f"{identifier(cls.name)}.{identifier(method.name)}"
        receiver = self_name(method)
        if receiver is None or method.asynchronous is None or not isinstance(subject, cst.Name):
            self.refuse(
                where,
                "the StreamReset branch in an `async def` method, testing a plain name",
                _shown(branch),
            )
        self._prove_live(cls, method)
        taken_before = _earlier_arm_that_may_take(method, branch, identifier(subject))
        if taken_before is not None:
            self.refuse(
                where,
                f"only isinstance({identifier(subject)}, <h2 event>) tests (or class patterns) "
                "before the StreamReset branch: anything else may take the reset first, and "
                "the release would never run",
                taken_before,
            )
        body = branch.body
        if not isinstance(body, cst.IndentedBlock):
            self.refuse(where, "the StreamReset branch body on its own lines", _shown(branch))
        if identifier(subject) in bound_names(body):
            self.refuse(
                where,
                f"`{identifier(subject)}` not reassigned in the StreamReset branch (the "
                f"release names {identifier(subject)}.stream_id)",
                _shown(branch),
            )
        stream_id = cst.Attribute(value=cst.Name(identifier(subject)), attr=cst.Name("stream_id"))
        end = self._reset_end(where, branch, body)
        mutators = self._mutators(cls, names)
        live = body.body[:end]
        released = False
        for index, line in enumerate(live):
            if _releases(line, receiver, names, stream_id):
                released = True
                continue
            pair = (*live[index - 1 : index + 1],) if index else ()
            if _inline_release(live[index : index + 2], receiver, names, stream_id):
                released = True
                continue
            if _inline_release(pair, receiver, names, stream_id):
                continue
            if self._touches(line, receiver, names, mutators):
                self.refuse(
                    where,
                    "the StreamReset branch to leave the stream's send buffer and priority "
                    "node alone, or to release both with one recognised release (anything "
                    "else, such as a buffer popped alone, leaves the node for good)",
                    line,
                )
        if released:
            return
        # A reset dropped before the dispatch (filtered, or by the caller) never gets here:
        # its stream would leak whatever the branch releases.
        try:
            live_method.LiveMethods(self.module).events_reach(
                path_to(method, branch) or (),
                identifier(subject),
                live_method.Live(cls, method, receiver),
            )
        except live_method.Refusal as refusal:
            self.refuse(where, refusal.expected, refusal.found)
        lines = list(body.body)
        lines.insert(end, self.release(receiver, names, stream_id))
        self.plan.blocks[id(body)] = lines
        self.plan.changed[where] = None

    def _reset_end(self, where: str, branch: _Branch, body: cst.IndentedBlock) -> int:
        """Where the release goes: the end of the branch, or before the bare `continue`,
        `break` or `return` that ends it (after one it would never run)."""
        lines = body.body
        for index, line in enumerate(lines):
            small = _only(line)
            last = index == len(lines) - 1
            bare = isinstance(small, (cst.Continue, cst.Break)) or (
                isinstance(small, cst.Return) and small.value is None
            )
            if last and bare:
                return index
            if any(isinstance(n, _JUMPS) for n in walk(line)):
                self.refuse(
                    where,
                    "no return, raise, break or continue in the StreamReset branch but a bare "
                    "one ending it (the release must run on every path through the branch)",
                    _shown(branch),
                )
        return len(lines)

    def _mutators(self, cls: cst.ClassDef, names: _Names) -> frozenset[str]:
        """Methods of the class that add to or take from the buffers or the tree,
        themselves or through another such method."""
        methods = {identifier(m.name): m for m in _live_methods(cls)}
        found = {
            name
            for name, method in methods.items()
            if (receiver := self_name(method)) is not None
            and any(_mutates(n, receiver, names) for n in walk(method.body))
        }
        changed = True
        while changed:
            changed = False
            for name, method in methods.items():
                receiver = self_name(method)
                if name in found or receiver is None:
                    continue
                if any(_calls_own(n, receiver) & found for n in walk(method.body)):
                    found.add(name)
                    changed = True
        return frozenset(found)

    def _touches(
        self,
        line: cst.BaseStatement,
        receiver: str,
        names: _Names,
        mutators: frozenset[str],
    ) -> bool:
        """The statement uses the buffers or the tree, or calls a method that changes them."""
        state = {f"{receiver}.{names.buffers}", f"{receiver}.{names.priority}"}
        for node in walk(line):
            if isinstance(node, cst.Attribute) and dotted(node) in state:
                return True
            if _calls_own(node, receiver) & mutators:
                return True
        return False


def _imports_module_as(node: cst.CSTNode, module: str, bound: str) -> bool:
    """`node` is `import <module> as <bound>` (or `import <module>` binding `bound`)."""
    return isinstance(node, cst.Import) and any(
        dotted(alias.name) == module and imported_as(alias) == bound for alias in node.names
    )


# Methods of a priority.PriorityTree that name a stream in it.
_TREE_METHODS = frozenset({"insert_stream", "remove_stream", "block", "unblock", "reprioritize"})
# Methods of a stream buffer (called on `self.<buffers>[id]`).
_BUFFER_METHODS = frozenset({"drain", "push", "pop", "set_complete", "close"})
# An except clause naming one of these catches KeyError.
_CATCHES_KEY_ERROR = frozenset({"KeyError", "LookupError", "Exception", "BaseException"})


def _any_method_call(node: cst.CSTNode) -> tuple[cst.BaseExpression, str] | None:
    """(object, method) for `<object>.<method>(...)`."""
    # `is`, not isinstance: see _tree.py on LibCST's classes
    if type(node) is cst.Call and type(node.func) is cst.Attribute:
        assert isinstance(node, cst.Call)
        assert isinstance(node.func, cst.Attribute)
        return node.func.value, identifier(node.func.attr)
    return None


_JUMPS = (cst.Return, cst.Raise, cst.Break, cst.Continue)


def _reset_subject(
    branch: _Branch, subjects: dict[int, cst.BaseExpression]
) -> cst.BaseExpression | None:
    """`event` for `if isinstance(event, StreamReset):`, or for a case naming StreamReset in
    `match event:` (`subjects`: id(case) -> its match's subject), else None."""
    if isinstance(branch, cst.If):
        return _isinstance_of(branch.test, ("StreamReset",))
    if "StreamReset" in _names_in(branch.pattern):
        return subjects.get(id(branch))
    return None


def _subjects(method: cst.FunctionDef) -> dict[int, cst.BaseExpression]:
    """id(case) -> the subject of its match statement, for every match in the method."""
    return {
        id(case): node.subject
        for node in walk(method)
        if type(node) is cst.Match  # see _tree.py on LibCST's classes
        and isinstance(node, cst.Match)
        for case in node.cases
    }


def _inline_release(
    lines: Sequence[cst.BaseStatement],
    receiver: str,
    names: _Names,
    stream_id: cst.BaseExpression,
) -> bool:
    """The two statements release the stream's state as anycorn's helper does:

    <b> = self.<buffers>.pop(<id>, None)
    if <b> is not None:
        self.<priority>.remove_stream(<id>)
        await <b>.close()
    """
    if len(lines) != 2:
        return False
    popping, check = lines
    small = _only(popping)
    if not (
        isinstance(small, cst.Assign)
        and len(small.targets) == 1
        and isinstance(small.targets[0].target, cst.Name)
        and isinstance(check, cst.If)
        and check.orelse is None
        and isinstance(check.body, cst.IndentedBlock)
        and len(check.body.body) == 2
    ):
        return False
    local = small.targets[0].target
    popped = _method_call(small.value, "pop")
    test = check.test
    if not (
        popped is not None
        and self_attribute(popped[0], receiver) == names.buffers
        and len(popped[1]) == 2
        and all(arg.keyword is None and not arg.star for arg in popped[1])
        and _same(popped[1][0].value, stream_id)
        and dotted(popped[1][1].value) == "None"
        and isinstance(test, cst.Comparison)
        and len(test.comparisons) == 1
        and isinstance(test.comparisons[0].operator, cst.IsNot)
        and _same(test.left, local)
        and dotted(test.comparisons[0].comparator) == "None"
    ):
        return False
    removal = _expression(check.body.body[0])
    removed = _method_call(removal, "remove_stream") if removal is not None else None
    closing = _awaited(check.body.body[1])
    closed = _method_call(closing, "close") if closing is not None else None
    return (
        removed is not None
        and self_attribute(removed[0], receiver) == names.priority
        and _one_argument(removed[1], stream_id)
        and closed is not None
        and not closed[1]
        and _same(closed[0], local)
    )


def _live_methods(cls: cst.ClassDef) -> list[cst.FunctionDef]:
    """The methods of the class body that no later statement of it replaces."""
    return [
        method
        for method in cls.body.body
        if isinstance(method, cst.FunctionDef) and not live_method.rebound_later(cls, method)
    ]


def _calls_own(node: cst.CSTNode, receiver: str) -> set[str]:
    """{m} for `<receiver>.m(...)`, else nothing."""
    call = _any_method_call(node)
    if call is None or not isinstance(call[0], cst.Name) or identifier(call[0]) != receiver:
        return set()
    return {call[1]}


# The classes of node `_mutates` looks into (see _tree.py on LibCST's classes).
_MUTATING = frozenset({cst.Assign, cst.AnnAssign, cst.AugAssign, cst.Del, cst.Call})


def _mutates(node: cst.CSTNode, receiver: str, names: _Names) -> bool:
    """The node adds to or takes from the buffers or the tree (reading, unblocking and
    using a buffer do neither)."""
    if type(node) not in _MUTATING:  # most nodes: one set lookup instead of ABC checks
        return False
    buffers, tree = f"{receiver}.{names.buffers}", f"{receiver}.{names.priority}"
    targets: list[cst.BaseExpression] = []
    if isinstance(node, cst.Assign):
        targets = [target.target for target in node.targets]
    elif isinstance(node, (cst.AnnAssign, cst.AugAssign, cst.Del)):
        targets = [node.target]
    for target in targets:
        for part in walk(target):
            if isinstance(part, cst.Attribute) and dotted(part) in (buffers, tree):
                return True
    call = _any_method_call(node)
    if call is None:
        return False
    owner = dotted(call[0])
    if owner == buffers:
        return call[1] not in ("get", "keys", "values", "items", "copy")
    return owner == tree and call[1] in ("insert_stream", "remove_stream")


def _handlers(method: cst.FunctionDef) -> Iterator[cst.ExceptHandler]:
    for node in walk(method.body):
        if isinstance(node, cst.ExceptHandler):
            yield node


_Branch = Union[cst.If, cst.MatchCase]


def _branches(
    node: cst.CSTNode, tries: tuple[cst.Try, ...], dead: bool = False
) -> Iterator[tuple[_Branch, tuple[cst.Try, ...], bool]]:
    """Every `if`/`elif` and `case` in a function body (not in nested functions or classes),
    with the `try` statements whose body holds it, and whether a return, raise, break or
    continue before it in an enclosing block means it never runs."""
    kind = type(node)  # `is`, not isinstance: see _tree.py on LibCST's classes
    if kind is cst.FunctionDef or kind is cst.ClassDef or kind is cst.Lambda:
        return
    if kind is cst.If or kind is cst.MatchCase:
        assert isinstance(node, (cst.If, cst.MatchCase))
        yield node, tries, dead
    if not may_hold_blocks(node):  # no `if` or `case` below a line or an expression
        return
    if kind is cst.IndentedBlock:
        assert isinstance(node, cst.IndentedBlock)
        jumped = dead
        for statement in node.body:
            yield from _branches(statement, tries, jumped)
            jumped = jumped or (
                isinstance(statement, cst.SimpleStatementLine)
                and any(isinstance(small, _JUMPS) for small in statement.body)
            )
        return
    if kind is cst.Try:
        assert isinstance(node, cst.Try)
        yield from _branches(node.body, (*tries, node), dead)
        for child in children(node):
            if child is not node.body:
                yield from _branches(child, tries, dead)
        return
    for child in children(node):
        yield from _branches(child, tries, dead)


# Names under which an earlier arm could match a StreamReset too.
_TAKES_RESETS = frozenset({"StreamReset", "Event", "object"})


def _earlier_arm_that_may_take(
    method: cst.FunctionDef, branch: _Branch, subject: str
) -> cst.CSTNode | None:
    """An arm of the same if/elif chain or match before `branch` that could take a
    StreamReset first (a test other than isinstance(<subject>, <named classes>), or a
    catch-all pattern), if any."""
    for node in walk(method.body):
        arms: list[cst.CSTNode] = []
        if isinstance(node, cst.If):
            chain: cst.CSTNode | None = node
            while isinstance(chain, cst.If):
                arms.append(chain)
                orelse = chain.orelse
                if isinstance(orelse, cst.Else) and isinstance(orelse.body, cst.IndentedBlock):
                    inner = orelse.body.body
                    orelse = inner[0] if len(inner) == 1 and isinstance(inner[0], cst.If) else None
                chain = orelse
        elif isinstance(node, cst.Match):
            arms = list(node.cases)
        if not any(arm is branch for arm in arms):
            continue
        for arm in arms:
            if arm is branch:
                return None
            if not _tests_named_classes(arm, subject):
                return arm.with_changes(orelse=None) if isinstance(arm, cst.If) else arm
    return None


def _tests_named_classes(arm: cst.CSTNode, subject: str) -> bool:
    """`isinstance(<subject>, A)` / `(A, b.B)`, or `case A():` / `case A() | B():`, with no
    class among them that a StreamReset also is."""
    names: list[str | None] = []
    if isinstance(arm, cst.If):
        test = arm.test
        if not (
            isinstance(test, cst.Call)
            and dotted(test.func) == "isinstance"
            and len(test.args) == 2
            and dotted(test.args[0].value) == subject
        ):
            return False
        kinds = test.args[1].value
        elements = kinds.elements if isinstance(kinds, cst.Tuple) else [cst.Element(kinds)]
        names = [dotted(element.value) for element in elements]
    elif isinstance(arm, cst.MatchCase):
        pattern = arm.pattern
        options = (
            [element.pattern for element in pattern.patterns]
            if isinstance(pattern, cst.MatchOr)
            else [pattern]
        )
        for option in options:
            if not isinstance(option, cst.MatchClass):
                return False  # `case _:`, a capture, a value: may take anything
            names.append(dotted(option.cls))
    else:
        return False
    return all(name is not None and name.rsplit(".", 1)[-1] not in _TAKES_RESETS for name in names)


def _shown(branch: _Branch) -> _Branch:
    """The branch alone, without the elif/else chain that follows it."""
    return branch.with_changes(orelse=None) if isinstance(branch, cst.If) else branch


def _case_of(pattern: cst.MatchPattern, name: str) -> bool:
    """`case <name>():` or `case mod.<name>():`, nothing else."""
    if not isinstance(pattern, cst.MatchClass) or pattern.patterns or pattern.kwds:
        return False
    kind = pattern.cls
    found = kind.attr if isinstance(kind, cst.Attribute) else kind
    return isinstance(found, cst.Name) and identifier(found) == name


def _end_stream(args: Sequence[cst.Arg]) -> bool | None:
    """h2's send_headers(stream_id, headers, end_stream=False, ...): True, False or None
    (not a literal)."""
    if any(arg.star for arg in args):
        return None
    keyword = [a for a in args if a.keyword is not None and identifier(a.keyword) == "end_stream"]
    positional = [a for a in args if a.keyword is None]
    slot = keyword or positional[2:3]
    if not slot:
        return False
    value = slot[0].value
    if isinstance(value, cst.Name) and identifier(value) in ("True", "False"):
        return identifier(value) == "True"
    return None


def _stream_id(args: Sequence[cst.Arg]) -> cst.BaseExpression | None:
    for arg in args:
        if arg.keyword is not None and identifier(arg.keyword) == "stream_id":
            return arg.value
    positional = [arg for arg in args if arg.keyword is None]
    return positional[0].value if positional else None


def _releasers(cls: cst.ClassDef) -> frozenset[str]:
    return frozenset(
        identifier(method.name)
        for method in cls.body.body
        if isinstance(method, cst.FunctionDef) and _releaser(method) is not None
    )


class _Apply(cst.CSTTransformer):
    def __init__(self, blocks: dict[int, list[cst.BaseStatement]]) -> None:
        super().__init__()
        self.blocks = blocks

    def on_visit(self, node: cst.CSTNode) -> bool:
        # Only blocks change: lines and expressions, most of the module, are not entered.
        return may_hold_blocks(node)

    def leave_IndentedBlock(
        self, original_node: cst.IndentedBlock, updated_node: cst.IndentedBlock
    ) -> cst.IndentedBlock:
        lines = self.blocks.get(id(original_node))
        return updated_node if lines is None else updated_node.with_changes(body=lines)


def fix(tree: cst.Module, environment: Environment) -> tuple[cst.Module, FixOutcome]:
    work = _Fix(tree)
    try:
        outcome = work.run()
    except _Refusal as refusal:
        raise UnrecognisedStructureError(
            NAME, refusal.where, refusal.expected, refusal.found
        ) from None
    notes = "".join(f"; {note}" for note in work.plan.notes)
    if outcome is Outcome.NOT_APPLICABLE:
        return tree, FixOutcome(NAME, outcome, "this version keeps no per-stream send buffers")
    if outcome is Outcome.FIXED_UPSTREAM:
        return tree, FixOutcome(
            NAME, outcome, f"send state is already released when a stream ends{notes}"
        )
    new_tree = transform(tree, _Apply(work.plan.blocks))
    where = ", ".join(work.plan.changed)
    return new_tree, FixOutcome(
        NAME,
        Outcome.REWRITTEN,
        f"{where} now release a stream's send buffer and priority node once it has ended "
        f"with trailers or been reset{notes}",
        functions=tuple(work.plan.changed),
    )
