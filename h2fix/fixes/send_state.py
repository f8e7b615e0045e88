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
from ._scopes import self_name

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


def _walk(node: cst.CSTNode) -> Iterator[cst.CSTNode]:
    yield node
    for child in node.children:
        yield from _walk(child)


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


def _self_attribute(node: cst.CSTNode, receiver: str) -> str | None:
    """`x` for `<receiver>.x`."""
    if (
        isinstance(node, cst.Attribute)
        and isinstance(node.value, cst.Name)
        and node.value.value == receiver
    ):
        return node.attr.value
    return None


def _method_call(node: cst.CSTNode, method: str) -> tuple[cst.BaseExpression, list[cst.Arg]] | None:
    """(object, args) for `<object>.<method>(args)`."""
    if (
        isinstance(node, cst.Call)
        and isinstance(node.func, cst.Attribute)
        and node.func.attr.value == method
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


def _pure(node: cst.BaseExpression) -> bool:
    """A name or a chain of attributes of one: safe to evaluate more than once."""
    while isinstance(node, cst.Attribute):
        node = node.value
    return isinstance(node, cst.Name)


def _same(a: cst.CSTNode, b: cst.CSTNode) -> bool:
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
        and test.func.value == "isinstance"
        and len(test.args) == 2
        and all(arg.keyword is None and not arg.star for arg in test.args)
    ):
        return None
    kind = test.args[1].value
    if isinstance(kind, cst.Tuple) and len(kind.elements) == 1:
        kind = kind.elements[0].value
    name = kind.attr.value if isinstance(kind, cst.Attribute) else getattr(kind, "value", None)
    return test.args[0].value if name in names else None


def _names_in(kind: cst.CSTNode) -> set[str]:
    """Class names an isinstance second argument or an except clause mentions."""
    found = set()
    for node in _walk(kind):
        if isinstance(node, cst.Attribute):
            found.add(node.attr.value)
        elif isinstance(node, cst.Name):
            found.add(node.value)
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
    buffers = _self_attribute(indexed[0], receiver)
    deleted = _subscript_key(deletion.target)
    priority = _self_attribute(removed[0], receiver)
    stream_id = indexed[1]
    if (
        buffers is None
        or priority is None
        or deleted is None
        or _self_attribute(deleted[0], receiver) != buffers
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
    buffers = _self_attribute(test.comparisons[0].comparator, receiver)
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
    priority = _self_attribute(removed[0], receiver)
    if (
        priority is None
        or _self_attribute(popped[0], receiver) != buffers
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
    stream_id = cst.Name(params[1].name.value)
    buffers = priority = None
    for node in _walk(method.body):
        popped = _method_call(node, "pop")
        if popped is not None and len(popped[1]) == 2 and _same(popped[1][0].value, stream_id):
            buffers = _self_attribute(popped[0], receiver) or buffers
        removed = _method_call(node, "remove_stream")
        if removed is not None and _one_argument(removed[1], stream_id):
            priority = _self_attribute(removed[0], receiver) or priority
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
        method = _self_attribute(awaited.func, receiver)
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
            if any(_method_call(n, "remove_stream") for n in _walk(self.module)):
                self.refuse(
                    "<module>",
                    "a method whose except clause releases the stream's send state "
                    "(`await self.<buffers>[<id>].close()`, `del self.<buffers>[<id>]`, "
                    "`self.<priority>.remove_stream(<id>)`)",
                    "remove_stream is called, but no such release exists",
                )
            return Outcome.NOT_APPLICABLE
        if len(senders) > 1:
            where = ", ".join(f"{c.name.value}.{m.name.value}" for c, m, _ in senders)
            self.refuse(
                "<module>", "one method that releases send state", f"{len(senders)}: {where}"
            )
        cls, method, handler = senders[0]
        found = self._send_release(cls, method, handler)
        assert found is not None
        names, stock = found
        self._prove_names(cls, names)
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
            helper = _self_attribute(awaited.func, receiver)
            for other in cls.body.body:
                if isinstance(other, cst.FunctionDef) and other.name.value == helper:
                    pair = _releaser(other)
                    if pair is not None:
                        return _Names(pair[0], pair[1], _releasers(cls)), False
        return None

    def _prove_names(self, cls: cst.ClassDef, names: _Names) -> None:
        """__init__ makes the tree a priority.PriorityTree and the buffers an empty dict of a
        buffer class this module defines with an async close(); nothing else rebinds them."""
        where = cls.name.value
        buffer_classes = {
            node.name.value
            for node in self.module.body
            if isinstance(node, cst.ClassDef)
            and any(
                isinstance(m, cst.FunctionDef) and m.name.value == "close" and m.asynchronous
                for m in node.body.body
            )
        }
        tree = buffers = False
        stored: list[cst.CSTNode] = []
        for method in cls.body.body:
            if not isinstance(method, cst.FunctionDef):
                continue
            receiver = self_name(method)
            for node in _walk(method):
                targets: list[tuple[cst.BaseExpression, cst.BaseExpression | None]] = []
                if isinstance(node, cst.Assign):
                    targets = [(t.target, node.value) for t in node.targets]
                elif isinstance(node, (cst.AnnAssign, cst.AugAssign)):
                    targets = [(node.target, node.value)]
                for target, value in targets:
                    attr = _self_attribute(target, receiver) if receiver else None
                    in_init = method.name.value == "__init__"
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
                    into = _self_attribute(key[0], receiver) if key and receiver else None
                    if into == names.buffers:
                        stored.append(node)
                        if not (
                            isinstance(value, cst.Call)
                            and isinstance(value.func, cst.Name)
                            and value.func.value in buffer_classes
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
        self.plan.changed[f"{cls.name.value}.{method.name.value}"] = None

    def _priority_tree(self, value: cst.BaseExpression) -> bool:
        """`priority.PriorityTree()` after `import priority`, or `PriorityTree()` after
        `from priority import PriorityTree` (its remove_stream is the one called)."""
        if not (isinstance(value, cst.Call) and not value.args):
            return False
        modules: set[str] = set()  # import priority
        names: set[str] = set()  # from priority import PriorityTree
        for line in self.module.body:
            small = _only(line)
            if isinstance(small, cst.Import):
                modules |= {self.code(a.name) for a in small.names if a.asname is None}
            elif (
                isinstance(small, cst.ImportFrom)
                and small.module is not None
                and self.code(small.module) == "priority"
                and not isinstance(small.names, cst.ImportStar)
            ):
                names |= {self.code(a.name) for a in small.names if a.asname is None}
        if isinstance(value.func, cst.Attribute):
            return "priority" in modules and self.code(value.func) == "priority.PriorityTree"
        return isinstance(value.func, cst.Name) and value.func.value in names & {"PriorityTree"}

    # After the trailers, sent with END_STREAM

    def _trailers(self, cls: cst.ClassDef, names: _Names) -> None:
        branches: list[tuple[cst.FunctionDef, _Branch, tuple[cst.Try, ...]]] = []
        for method in cls.body.body:
            if not isinstance(method, cst.FunctionDef):
                continue
            for branch, tries in _branches(method.body, ()):
                if isinstance(branch, cst.If):
                    if _isinstance_of(branch.test, ("Trailers",)) is not None:
                        branches.append((method, branch, tries))
                elif "Trailers" in _names_in(branch.pattern):
                    if not _case_of(branch.pattern, "Trailers") or branch.guard is not None:
                        self.refuse(
                            f"{cls.name.value}.{method.name.value}",
                            "`case Trailers():` alone, with no guard (END_STREAM is for "
                            "trailers only)",
                            _shown(branch),
                        )
                    branches.append((method, branch, tries))
        if not branches:
            self.plan.notes.append("no trailers support in this version")
            return
        if len(branches) > 1:
            where = ", ".join(m.name.value for m, _, _ in branches)
            self.refuse(cls.name.value, "one Trailers branch", f"{len(branches)}: in {where}")
        method, branch, tries = branches[0]
        where = f"{cls.name.value}.{method.name.value}"
        receiver = self_name(method)
        if receiver is None or method.asynchronous is None:
            self.refuse(where, "the Trailers branch in an `async def` method", _shown(branch))
        body = branch.body
        sends = [n for n in _walk(body) if _method_call(n, "send_headers") is not None]
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
        if stream_id is None or not _pure(stream_id):
            self.refuse(
                where,
                "the stream id of send_headers as a name or attribute (it is repeated)",
                _shown(branch),
            )
        if any(_releases(line, receiver, names, stream_id) for line in body.body[send_index + 1 :]):
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
        branches = [
            (method, branch, subject)
            for method in cls.body.body
            if isinstance(method, cst.FunctionDef)
            for branch, _ in _branches(method.body, ())
            if isinstance(branch, cst.If)
            and (subject := _isinstance_of(branch.test, ("StreamReset",))) is not None
        ]
        if len(branches) != 1:
            where = ", ".join(m.name.value for m, _, _ in branches) or "none"
            self.refuse(cls.name.value, "one `if isinstance(<event>, StreamReset):` branch", where)
        method, branch, subject = branches[0]
        where = f"{cls.name.value}.{method.name.value}"
        receiver = self_name(method)
        if receiver is None or method.asynchronous is None or not isinstance(subject, cst.Name):
            self.refuse(
                where,
                "the StreamReset branch in an `async def` method, testing a plain name",
                _shown(branch),
            )
        body = branch.body
        if not isinstance(body, cst.IndentedBlock):
            self.refuse(where, "the StreamReset branch body on its own lines", _shown(branch))
        stream_id = cst.Attribute(value=cst.Name(subject.value), attr=cst.Name("stream_id"))
        if any(_releases(line, receiver, names, stream_id) for line in body.body):
            return
        self.plan.blocks[id(body)] = [*body.body, self.release(receiver, names, stream_id)]
        self.plan.changed[where] = None


def _handlers(method: cst.FunctionDef) -> Iterator[cst.ExceptHandler]:
    for node in _walk(method.body):
        if isinstance(node, cst.ExceptHandler):
            yield node


_Branch = Union[cst.If, cst.MatchCase]


def _branches(
    node: cst.CSTNode, tries: tuple[cst.Try, ...]
) -> Iterator[tuple[_Branch, tuple[cst.Try, ...]]]:
    """Every `if`/`elif` and `case` in a function body (not in nested functions or classes),
    with the `try` statements whose body holds it."""
    if isinstance(node, (cst.FunctionDef, cst.ClassDef, cst.Lambda)):
        return
    if isinstance(node, (cst.If, cst.MatchCase)):
        yield node, tries
    if isinstance(node, cst.Try):
        yield from _branches(node.body, (*tries, node))
        for child in node.children:
            if child is not node.body:
                yield from _branches(child, tries)
        return
    for child in node.children:
        yield from _branches(child, tries)


def _shown(branch: _Branch) -> _Branch:
    """The branch alone, without the elif/else chain that follows it."""
    return branch.with_changes(orelse=None) if isinstance(branch, cst.If) else branch


def _case_of(pattern: cst.MatchPattern, name: str) -> bool:
    """`case <name>():` or `case mod.<name>():`, nothing else."""
    if not isinstance(pattern, cst.MatchClass) or pattern.patterns or pattern.kwds:
        return False
    kind = pattern.cls
    found = kind.attr if isinstance(kind, cst.Attribute) else kind
    return isinstance(found, cst.Name) and found.value == name


def _end_stream(args: Sequence[cst.Arg]) -> bool | None:
    """h2's send_headers(stream_id, headers, end_stream=False, ...): True, False or None
    (not a literal)."""
    if any(arg.star for arg in args):
        return None
    keyword = [a for a in args if a.keyword is not None and a.keyword.value == "end_stream"]
    positional = [a for a in args if a.keyword is None]
    slot = keyword or positional[2:3]
    if not slot:
        return False
    value = slot[0].value
    if isinstance(value, cst.Name) and value.value in ("True", "False"):
        return value.value == "True"
    return None


def _stream_id(args: Sequence[cst.Arg]) -> cst.BaseExpression | None:
    for arg in args:
        if arg.keyword is not None and arg.keyword.value == "stream_id":
            return arg.value
    positional = [arg for arg in args if arg.keyword is None]
    return positional[0].value if positional else None


def _releasers(cls: cst.ClassDef) -> frozenset[str]:
    return frozenset(
        method.name.value
        for method in cls.body.body
        if isinstance(method, cst.FunctionDef) and _releaser(method) is not None
    )


class _Apply(cst.CSTTransformer):
    def __init__(self, blocks: dict[int, list[cst.BaseStatement]]) -> None:
        super().__init__()
        self.blocks = blocks

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
    new_tree = tree.visit(_Apply(work.plan.blocks))
    where = ", ".join(work.plan.changed)
    return new_tree, FixOutcome(
        NAME,
        Outcome.REWRITTEN,
        f"{where} now release a stream's send buffer and priority node once it has ended "
        f"with trailers or been reset{notes}",
        functions=tuple(work.plan.changed),
    )
