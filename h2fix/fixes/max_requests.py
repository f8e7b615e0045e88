"""Fix `max_requests`: at the keep-alive request limit, close an HTTP/2 connection gracefully.

Once a connection has served `keep_alive_max_requests` requests, Hypercorn's
`_handle_events` calls h2's `close_connection()` as the next request arrives. h2 sends
GOAWAY and moves the connection to CLOSED: every response still in flight, the new
request's included, is never sent. RFC 9113 §6.8 describes the graceful way, in two
steps, and the rewrite does exactly that:

(a) in the RequestReceived branch, `close_connection()` becomes a GOAWAY that h2 is not
    told about: last stream id 2**31-1 and NO_ERROR, "open no new streams", nothing
    refused. It is a raw 17-byte frame, sent the way the class already sends what h2
    has to send (`await self.send(RawData(data=...))`), after h2's pending bytes so
    the frames keep their order. h2 stays open and every response goes out.
(b) in `stream_send`'s StreamClosed arm, the connection already closes once idle when
    the server shuts down: `if idle and <terminated>:` becomes
    `if idle and (<terminated> or (<the same limit test> and <nothing open in h2>)):`.
    h2's own GOAWAY then names the last stream it received, all of them processed,
    and the client leaves. "Nothing open in h2" (`open_inbound_streams` and
    `open_outbound_streams` both 0) matters: a stream's StreamClosed comes as soon as
    the app's last body chunk is drained from its buffer, before the send task has
    sent its END_STREAM; closing then would make h2 refuse that END_STREAM and the
    response would never end (a reviewer measured it: the last response lost on 14
    of 30 connections). When the send task still has to end a stream, the connection
    is left for the client to close (it was told GOAWAY), or for Hypercorn's idle
    timeout; a gRPC response ends with its trailers, before its StreamClosed, so a
    gRPC connection closes here.

Streams the client opened before it read the first GOAWAY are served; after the final
one h2 rejects later ones, whose ids are above its last stream id, so the client
retries them elsewhere. Both parts or neither: (a) alone would never close the
connection, (b) alone changes nothing.

The proof shows both methods are the ones the server runs (plain async methods of
module-level classes that `H2Protocol` is or derives from, defined once, not
overridden, their branches reachable and first in their dispatches, `self` never
rebound), that the calls are h2's (`close_connection()` without arguments on the
attribute assigned only `h2.connection.H2Connection(...)`), that the inserted send is
the class's own (`RawData` bound once, imported from the package's events module;
`<self>.<send>(RawData(data=...))` already sends h2's `data_to_send()`), that the limit
test is pure (attribute reads and one comparison: it is evaluated again in (b)) and
stays true once true (the counter is assigned 0 only in `__init__` and otherwise only
grows by `+=` a positive literal, the limit's object is assigned once in `__init__`),
and that (b)'s close is guarded by `<idle> and <test>`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import libcst as cst

from .._environment import Environment
from .._errors import UnrecognisedStructureError
from .._results import FixOutcome, Outcome
from ._live_method import (
    Branch,
    Live,
    LiveMethods,
    Refusal,
    Write,
    branch_code,
    find_branches,
    node_path,
    only_branch,
    parameters,
)
from ._syntax import (
    bindings_of,
    bound_names,
    calls_named,
    class_methods,
    dotted,
    first_parameter,
    identifier,
    imported_as,
    method_call,
    self_attribute,
    statement_expression,
    walk,
)
from ._tree import PathTransformer, transform

NAME = "max_requests"

REQUEST = "RequestReceived"
CLOSED = "StreamClosed"
_CLOSE = "close_connection"
_RAW_DATA = "RawData"
_PENDING = "data_to_send"
#: The server setting the limit is read from (Hypercorn's Config): a module naming it limits.
_LIMIT_SETTING = "keep_alive_max_requests"
#: Base classes an earlier arm could take each event by (h2's events; Hypercorn's
#: stream events, imported as StreamEvent).
_H2_EVENT_BASES = ("Event",)
_STREAM_EVENT_BASES = ("Event", "StreamEvent")
#: Comparisons that, with the counter on the given side, stay true as it grows.
_GROWING_LEFT = (cst.GreaterThan, cst.GreaterThanEqual)
_GROWING_RIGHT = (cst.LessThan, cst.LessThanEqual)


def _goaway(receiver: str, send: str, raw_data: str, connection: str) -> str:
    """The statement that replaces `close_connection()` in the RequestReceived branch."""
    return f"""\
# RFC 9113 §6.8, the first of two GOAWAYs: last stream id 2**31-1
# and NO_ERROR ask the client to open no new streams, while every
# response in flight (this request's too) still goes out. h2 is not
# told, so it stays open; once the connection is idle and no stream
# is open in h2, stream_send's close_connection() sends the final
# GOAWAY. Not after that one (it may come first): a GOAWAY must
# never raise the last stream id of an earlier one.
if (
    {receiver}.{connection}.state_machine.state
    is not h2.connection.ConnectionState.CLOSED
):
    await {receiver}.{send}(
        {raw_data}(
            data={receiver}.{connection}.{_PENDING}()  # h2's pending frames first
            + (8).to_bytes(3, "big")  # payload length
            + bytes((7, 0))  # frame type GOAWAY, no flags
            + (0).to_bytes(4, "big")  # stream 0: the connection
            + (2**31 - 1).to_bytes(4, "big")  # last stream id
            + (0).to_bytes(4, "big")  # error code NO_ERROR
        )
    )
"""


def _idle_test(
    module: cst.Module,
    idle: cst.BaseExpression,
    terminated: cst.BaseExpression,
    limit: cst.BaseExpression,
    h2_connection: str,
) -> cst.BaseExpression:
    """`<idle> and (<terminated> or (<limit> and <nothing open in h2>))`, laid out over
    lines; `h2_connection` is the proven h2 connection as `<self>.<attribute>`."""
    shutdown = module.code_for_node(terminated)
    if isinstance(terminated, (cst.IfExp, cst.Lambda)) and not terminated.lpar:
        shutdown = f"({shutdown})"  # they bind less tightly than `or`
    text = (
        f"{module.code_for_node(idle)} and (\n    {shutdown}\n"
        f"    or (\n        {module.code_for_node(limit)}\n"
        f"        and {h2_connection}.open_inbound_streams == 0\n"
        f"        and {h2_connection}.open_outbound_streams == 0\n    )\n)"
    )
    return cst.parse_expression(text, config=module.config_for_parsing)


@dataclass(frozen=True)
class _Plan:
    """What the rewrite needs, each part proven."""

    request: Branch
    receiver: str
    #: (a): the block of `if <limit>:` and the close statement in it.
    limit_body: cst.IndentedBlock
    close: cst.SimpleStatementLine
    send: str
    raw_data: str
    connection: str
    #: (b): the `if <idle> and <terminated>:` of the StreamClosed arm and its new test.
    closed: Branch
    idle_if: cst.If
    idle_test: cst.BaseExpression


class _Proof:
    """The proof obligations of both parts; either all hold or the fix refuses."""

    def __init__(self, module: cst.Module) -> None:
        self.module = module
        self.live = LiveMethods(module, "the protocol object whose connection is closed")
        self.bindings = self.live.bindings

    def plan(self, request: Branch, close: cst.Call, closed: list[Branch]) -> _Plan:
        # (a) the request limit in the RequestReceived branch
        live = self.live_dispatch(request, _H2_EVENT_BASES)
        self.is_async(request, live)
        body = self.body_on_own_lines(request)
        limit_if, limit_body, statement = self.close_under_a_limit_test(body, close)
        self.limit_arm_only_closes(live, limit_body, statement)
        self.live.reachable_in_branch(request, limit_if, f"the `if <limit>: ...{_CLOSE}()`")
        connection = self.close_on_h2_connection(live, close)
        counter, limit = self.limit_is_pure(limit_if.test, live.receiver)
        self.no_property_read(live, [counter, *limit])
        send = self.class_sends_pending_bytes(live, connection)
        raw_data = self.raw_data_from_the_package_events(live.method)
        self.live.h2_names_the_package(live.method, "h2.connection.ConnectionState")
        self.live.events_reach_the_dispatch(request, live)
        # (b) the close once idle in the StreamClosed arm
        branch = self.one_closed_branch(closed)
        other = self.live_dispatch(branch, _STREAM_EVENT_BASES)
        idle_if, idle, terminated = self.close_once_idle(branch, other, connection)
        self.no_other_close(close, idle_if)
        self.counter_only_grows([live.cls, other.cls], counter)
        self.limit_object_fixed([live.cls, other.cls], limit)
        again = _with_receiver(limit_if.test, live.receiver, other.receiver)
        test = _idle_test(
            self.module, idle.left, terminated, again, f"{other.receiver}.{connection}"
        )
        return _Plan(
            request,
            live.receiver,
            limit_body,
            statement,
            send,
            raw_data,
            connection,
            branch,
            idle_if,
            test,
        )

    # Each check: one obligation, its refusal beside it.

    def live_dispatch(self, branch: Branch, bases: tuple[str, ...]) -> Live:
        live = self.live.prove(branch)
        self.live.first_arm_for_the_event(branch)
        self.live.no_earlier_arm_names_it(branch, bases)
        return live

    def is_async(self, branch: Branch, live: Live) -> None:
        if live.method.asynchronous is None:
            raise Refusal(
                f"{branch.where} an async method (the GOAWAY is sent with await)",
                f"def {identifier(live.method.name)}",
            )

    def body_on_own_lines(self, branch: Branch) -> cst.IndentedBlock:
        body = branch.node.body
        if not isinstance(body, cst.IndentedBlock):
            raise Refusal("the branch body on its own lines")
        return body

    def close_under_a_limit_test(
        self, body: cst.IndentedBlock, close: cst.Call
    ) -> tuple[cst.If, cst.IndentedBlock, cst.SimpleStatementLine]:
        """`if <limit>: <self>.<connection>.close_connection()` directly in the branch."""
        for statement in body.body:
            if not (
                isinstance(statement, cst.If) and isinstance(statement.body, cst.IndentedBlock)
            ):
                continue
            block = statement.body
            for inner in block.body:
                if statement_expression(inner) is close:
                    assert isinstance(inner, cst.SimpleStatementLine)  # it holds an expression
                    if statement.orelse is not None:
                        raise Refusal(
                            f"`if <limit>: ...{_CLOSE}()` without elif/else",
                            self.module.code_for_node(statement).strip(),
                        )
                    return statement, block, inner
        raise Refusal(
            f"`if <limit>:` directly in the {REQUEST} branch, with `<self>.<connection>."
            f"{_CLOSE}()` as a statement of its own in it",
            self.module.code_for_node(close),
        )

    def close_on_h2_connection(self, live: Live, close: cst.Call) -> str:
        found = method_call(close)
        assert found is not None
        attribute = self_attribute(found[0], live.receiver)
        if attribute is None or close.args:
            raise Refusal(
                f"`{live.receiver}.<connection>.{_CLOSE}()` without arguments",
                self.module.code_for_node(close),
            )
        self.live.h2_connection(live.cls, attribute)
        return attribute

    def limit_is_pure(self, test: cst.BaseExpression, receiver: str) -> tuple[str, list[str]]:
        """`<self>.<counter> > <limit>` (or `>=`, or mirrored), each side an attribute
        chain of `self` (the limit may be an int): read again in (b) with no effect.
        Returns the counter attribute and the first attributes the limit reads."""
        expected = (
            f"the limit test as `{receiver}.<counter> > {receiver}.<limit...>` (only attribute "
            "reads and one comparison: it is evaluated again once the connection is idle)"
        )
        if not isinstance(test, cst.Comparison) or len(test.comparisons) != 1:
            raise Refusal(expected, self.module.code_for_node(test))
        [target] = test.comparisons
        if isinstance(target.operator, _GROWING_LEFT):
            counter_side, limit_side = test.left, target.comparator
        elif isinstance(target.operator, _GROWING_RIGHT):
            counter_side, limit_side = target.comparator, test.left
        else:
            raise Refusal(expected, self.module.code_for_node(test))
        counter = self_attribute(counter_side, receiver)
        limit = dotted(limit_side)
        if counter is None:
            raise Refusal(expected, self.module.code_for_node(test))
        if isinstance(limit_side, cst.Integer):
            return counter, []
        if limit is None or limit.split(".")[0] != receiver or "." not in limit:
            raise Refusal(expected, self.module.code_for_node(test))
        return counter, [limit.split(".")[1]]

    def class_sends_pending_bytes(self, live: Live, connection: str) -> str:
        """The class already sends h2's pending bytes with `await <self>.<send>(RawData(
        data=<self>.<connection>.data_to_send()))` (directly or through a local): the
        GOAWAY takes the same path, so it reaches the same socket in the same order."""
        sends = set()
        for method in _family_methods(self.live.family(live.cls)):
            receiver = first_parameter(method)
            if receiver is not None:
                sends |= _pending_senders(method, receiver, connection)
        if len(sends) != 1:
            raise Refusal(
                f"one way the class sends h2's bytes: `await <self>.<send>({_RAW_DATA}(data="
                f"<self>.{connection}.{_PENDING}()))`, directly or through a local",
                f"{len(sends)}: {', '.join(sorted(sends))}" if sends else "none",
            )
        return sends.pop()

    def raw_data_from_the_package_events(self, method: cst.FunctionDef) -> str:
        """`RawData` is bound once, by `from ..events import RawData` or
        `from <package>.events import RawData`, and never rebound in the method."""
        found = self.bindings.get(_RAW_DATA, [])
        binding = found[0] if len(found) == 1 else None
        if not (
            isinstance(binding, cst.ImportFrom)
            and binding.module is not None
            and not isinstance(binding.names, cst.ImportStar)
            and (
                (len(binding.relative) == 2 and dotted(binding.module) == "events")
                or (
                    not binding.relative
                    and (dotted(binding.module) or "").count(".") == 1
                    and (dotted(binding.module) or "").endswith(".events")
                )
            )
            and any(
                dotted(alias.name) == _RAW_DATA and imported_as(alias) == _RAW_DATA
                for alias in binding.names
            )
        ):
            raise Refusal(
                f"{_RAW_DATA} bound once, imported from the package's events module "
                f"(`from ..events import {_RAW_DATA}` or `from <package>.events import "
                f"{_RAW_DATA}`)",
                "; ".join(self.module.code_for_node(b).strip() for b in found)
                or f"{_RAW_DATA} not bound",
            )
        if _RAW_DATA in bound_names(method) | parameters(method):
            raise Refusal(
                f"{_RAW_DATA} never rebound in {identifier(method.name)}",
                f"a binding of {_RAW_DATA} in {identifier(method.name)}",
            )
        return _RAW_DATA

    def one_closed_branch(self, closed: list[Branch]) -> Branch:
        if len(closed) != 1:
            raise Refusal(
                f"one {CLOSED} branch (where the connection closes once idle: the second "
                "half of the graceful close)",
                f"{len(closed)}" + (f": in {', '.join(b.where for b in closed)}" if closed else ""),
            )
        return closed[0]

    def close_once_idle(
        self, branch: Branch, live: Live, connection: str
    ) -> tuple[cst.If, cst.BooleanOperation, cst.BaseExpression]:
        """`if <idle> and <terminated>: <self>.<connection>.close_connection()` directly in
        the StreamClosed arm, reachable: the close the server already makes once idle."""
        body = self.body_on_own_lines(branch)
        found = []
        for statement in body.body:
            if isinstance(statement, cst.If) and isinstance(statement.body, cst.IndentedBlock):
                for inner in statement.body.body:
                    call = statement_expression(inner)
                    called = method_call(call) if call is not None else None
                    if called is not None and called[1] == _CLOSE:
                        found.append((statement, called))
        closes = calls_named(body, _CLOSE)
        if len(found) != 1 or len(closes) != 1:
            raise Refusal(
                f"one `if <idle> and <terminated>: {live.receiver}.<connection>.{_CLOSE}()` "
                f"directly in the {CLOSED} arm, and no other {_CLOSE}() in it",
                branch_code(self.module, branch),
            )
        [(idle_if, (owner, _, call))] = found
        if self_attribute(owner, live.receiver) != connection or call.args:
            raise Refusal(
                f"`{live.receiver}.{connection}.{_CLOSE}()` (the same h2 connection, no arguments)",
                self.module.code_for_node(call),
            )
        self.live.h2_connection(live.cls, connection)
        test = idle_if.test
        if not (
            isinstance(test, cst.BooleanOperation)
            and isinstance(test.operator, cst.And)
            and dotted(test.left) is not None
            and idle_if.orelse is None
        ):
            raise Refusal(
                f"the close in the {CLOSED} arm guarded by `<idle> and <terminated>` (a "
                "name or attribute for idle), without elif/else",
                self.module.code_for_node(test),
            )
        self.live.reachable_in_branch(branch, idle_if, f"the idle `if ...: ...{_CLOSE}()`")
        self.shutdown_test_alone(live, test.right)
        return idle_if, test, test.right

    def limit_arm_only_closes(
        self, live: Live, limit_body: cst.IndentedBlock, close: cst.SimpleStatementLine
    ) -> None:
        """The arm under the limit test holds the close and nothing else but awaits of the
        class's flush: anything more (`await self.send(Closed())`, `self.closed = True`)
        still ends the connection with responses in flight once the close is a GOAWAY."""
        flushes = {
            identifier(method.name)
            for method in _family_methods(self.live.family(live.cls))
            if any(
                isinstance(node, cst.Call)
                and (call := method_call(node)) is not None
                and call[1] == _PENDING
                for node in walk(method)
            )
        }
        for statement in limit_body.body:
            if statement is close:
                continue
            expression = statement_expression(statement)
            awaited = expression.expression if isinstance(expression, cst.Await) else None
            call = method_call(awaited) if awaited is not None else None
            flush = (
                call is not None
                and dotted(call[0]) == live.receiver
                and call[1] in flushes
                and not call[2].args
            )
            # A plain call on a module-level name (`log.info(...)`) cannot reach the
            # connection but through its arguments; one on the protocol object can.
            logged = method_call(expression) if isinstance(expression, cst.Call) else None
            plain = (
                logged is not None
                and isinstance(logged[0], cst.Name)
                and identifier(logged[0]) != live.receiver
                and not any(
                    isinstance(node, cst.Call)
                    and (dotted(node.func) or "").split(".")[0] == live.receiver
                    for node in walk(logged[2])
                )
            )
            if not (flush or plain):
                raise Refusal(
                    "the close alone under the limit test (with awaits of the class's flush "
                    "or logging at most): anything else there may still end the connection",
                    self.module.code_for_node(statement).strip(),
                )

    def no_property_read(self, live: Live, attributes: list[str]) -> None:
        """The counter and the limit are plain attributes: a property (a method of the class
        family by that name) may count or change something each time it is read, and the
        fix reads the limit test again once idle."""
        methods = {
            identifier(method.name) for method in _family_methods(self.live.family(live.cls))
        }
        read = [attribute for attribute in attributes if attribute in methods]
        if read:
            raise Refusal(
                "the counter and the limit read as plain attributes, not properties (the fix "
                "evaluates the limit test again)",
                f"{live.receiver}.{read[0]} is a method of the class",
            )

    def shutdown_test_alone(self, live: Live, terminated: cst.BaseExpression) -> None:
        """The idle close's own condition is the shutdown test alone: `<...>.is_set()`, or a
        local bound once to it. Another condition there (a limit test already, `or` a
        flag) would close the connection once idle while h2 still has streams open, the
        race the fix's `and nothing is open in h2` is there to prevent."""
        value: cst.BaseExpression | None = terminated
        if isinstance(terminated, cst.Name):
            name = identifier(terminated)
            bound = [
                node.value
                for node in walk(live.method.body)
                if isinstance(node, cst.Assign)
                and len(node.targets) == 1
                and dotted(node.targets[0].target) == name
            ]
            once = bindings_of(live.method.body).count(name) == 1 and len(bound) == 1
            value = bound[0] if once else None
        call = method_call(value) if value is not None else None
        if call is None or call[1] != "is_set" or call[2].args or dotted(call[0]) is None:
            raise Refusal(
                "the idle close's condition `<idle> and <...>.is_set()` (the shutdown test "
                "alone, or a local bound once to it)",
                self.module.code_for_node(terminated),
            )

    def no_other_close(self, close: cst.Call, idle_if: cst.If) -> None:
        """The module closes the connection only where the fix knows: at the limit (which
        becomes the first GOAWAY) and once idle. Another close (a cap in `_create_stream`,
        say) would still cut the responses in flight while the fix reports them saved."""
        known = [close, *calls_named(idle_if, _CLOSE)]  # once, not once per close
        others = [c for c in calls_named(self.module, _CLOSE) if not any(c is k for k in known)]
        if others:
            raise Refusal(
                f"no {_CLOSE}() but the one at the limit and the one once idle (another "
                "closes h2 with responses in flight)",
                "; ".join(self.module.code_for_node(c) for c in others),
            )

    def counter_only_grows(self, classes: list[cst.ClassDef], counter: str) -> None:
        """Once over the limit, always over it: the counter is assigned 0 only in
        `__init__`, and otherwise only grows by `+=` a positive integer literal."""
        seen: set[int] = set()
        for cls in classes:
            for write in self.live.family_writes(cls, counter):
                if id(write.node) in seen:
                    continue
                seen.add(id(write.node))
                if not _grows_or_starts(write):
                    raise Refusal(
                        f"`self.{counter}` assigned 0 in __init__ and otherwise only `+=` a "
                        "positive int (once over the limit it must stay over)",
                        self.module.code_for_node(write.node).strip(),
                    )

    def limit_object_fixed(self, classes: list[cst.ClassDef], attributes: list[str]) -> None:
        for attribute in attributes:
            found = {
                id(w.node): w for cls in classes for w in self.live.family_writes(cls, attribute)
            }
            if len(found) > 1 or any(not _in_init(w) for w in found.values()):
                raise Refusal(
                    f"`self.{attribute}` (the limit is read through it) assigned once, in __init__",
                    "; ".join(self.module.code_for_node(w.node).strip() for w in found.values()),
                )


# --- rewrite ---------------------------------------------------------------------


class _Apply(PathTransformer):
    """(a) swaps the close statement for the GOAWAY send; (b) widens the idle test."""

    def __init__(self, plan: _Plan, goaway: cst.If, paths: Sequence[cst.CSTNode]):
        super().__init__(paths)
        self.plan = plan
        self.goaway = goaway

    def leave_IndentedBlock(
        self, original_node: cst.IndentedBlock, updated_node: cst.IndentedBlock
    ) -> cst.IndentedBlock:
        if original_node is not self.plan.limit_body:
            return updated_node
        statements = [
            self.goaway.with_changes(
                leading_lines=[*self.plan.close.leading_lines, *self.goaway.leading_lines]
            )
            if statement is self.plan.close
            else statement
            for statement in updated_node.body
        ]
        return updated_node.with_changes(body=statements)

    def leave_If(self, original_node: cst.If, updated_node: cst.If) -> cst.If:
        if original_node is self.plan.idle_if:
            return updated_node.with_changes(test=self.plan.idle_test)
        return updated_node


# --- helpers on nodes ------------------------------------------------------------


def _with_receiver(test: cst.BaseExpression, old: str, new: str) -> cst.BaseExpression:
    """`test` with the root of its attribute chains renamed from `old` to `new`."""

    class Rename(cst.CSTTransformer):
        def leave_Attribute(
            self, original_node: cst.Attribute, updated_node: cst.Attribute
        ) -> cst.Attribute:
            value = updated_node.value
            if isinstance(value, cst.Name) and identifier(value) == old:
                return updated_node.with_changes(value=cst.Name(new))
            return updated_node

    renamed = transform(test, Rename())
    assert isinstance(renamed, cst.BaseExpression)
    return renamed


def _family_methods(family: list[cst.ClassDef]) -> Iterator[cst.FunctionDef]:
    for member in family:
        for statement in member.body.body:
            if isinstance(statement, cst.FunctionDef):
                yield statement


def _is_pending(node: cst.BaseExpression, receiver: str, connection: str) -> bool:
    """`<receiver>.<connection>.data_to_send()` without arguments."""
    called = method_call(node)
    return (
        called is not None
        and called[1] == _PENDING
        and not called[2].args
        and self_attribute(called[0], receiver) == connection
    )


def _pending_senders(method: cst.FunctionDef, receiver: str, connection: str) -> set[str]:
    """The `<send>` of each `await <receiver>.<send>(RawData(data=<pending>))` in the method,
    <pending> being `<receiver>.<connection>.data_to_send()` or a local bound once, to it."""
    assigned: dict[str, list[cst.BaseExpression]] = {}
    sent: list[tuple[str, cst.BaseExpression]] = []
    for node in walk(method.body):
        if isinstance(node, cst.Assign) and len(node.targets) == 1:
            target = node.targets[0].target
            if isinstance(target, cst.Name):
                assigned.setdefault(identifier(target), []).append(node.value)
        else:
            found = _raw_send(node, receiver)
            if found is not None:
                sent.append(found)
    if not sent:
        return set()
    bindings = bindings_of(method.body)
    pending = {
        name
        for name, values in assigned.items()
        if len(values) == 1
        and bindings.count(name) == 1
        and _is_pending(values[0], receiver, connection)
    }
    return {
        send
        for send, data in sent
        if _is_pending(data, receiver, connection)
        or (isinstance(data, cst.Name) and identifier(data) in pending)
    }


def _raw_send(node: cst.CSTNode, receiver: str) -> tuple[str, cst.BaseExpression] | None:
    """(send attribute, data) for `await <receiver>.<send>(RawData(data=<data>))`."""
    if not isinstance(node, cst.Await):
        return None
    called = method_call(node.expression)
    if called is None or len(called[2].args) != 1:
        return None
    owner, attribute, call = called
    if dotted(owner) != receiver:
        return None
    inner = call.args[0].value
    if not (
        isinstance(inner, cst.Call)
        and dotted(inner.func) == _RAW_DATA
        and len(inner.args) == 1
        and inner.args[0].keyword is not None
        and identifier(inner.args[0].keyword) == "data"
    ):
        return None
    return attribute, inner.args[0].value


def _grows_or_starts(write: Write) -> bool:
    value = write.value
    if isinstance(write.node, cst.AugAssign):
        return (
            isinstance(write.node.operator, cst.AddAssign)
            and isinstance(value, cst.Integer)
            and isinstance(value.evaluated_value, int)
            and value.evaluated_value > 0
        )
    if isinstance(write.node, (cst.Assign, cst.AnnAssign)):
        return isinstance(value, cst.Integer) and value.evaluated_value == 0 and _in_init(write)
    return False


def _in_init(write: Write) -> bool:
    """The write is in `__init__`, which runs once, before anything else."""
    return identifier(write.method.name) == "__init__"


def _closes_once_idle_over_a_limit(closed: list[Branch]) -> bool:
    """One StreamClosed arm whose close_connection() is guarded by a test that compares
    (as this fix writes it): the limit is already honoured there."""
    if len(closed) != 1:
        return False
    for node in walk(closed[0].node.body):
        if (
            isinstance(node, cst.If)
            and any(isinstance(n, cst.Comparison) for n in walk(node.test))
            and calls_named(node.body, _CLOSE)
        ):
            return True
    return False


def _closing_helper(request: Branch) -> str | None:
    """A method of the class the request branch calls (directly, or through the methods
    those call) that closes the connection, or None."""
    classes = [n for n in request.ancestors if isinstance(n, cst.ClassDef)]
    method = request.method
    receiver = first_parameter(method) if method is not None else None
    if not classes or receiver is None:
        return None
    methods = class_methods(classes[-1])
    seen: set[str] = set()
    pending: list[cst.CSTNode] = [request.node.body]
    while pending:
        node = pending.pop()
        for child in walk(node):
            call = method_call(child) if isinstance(child, cst.Call) else None
            if call is None or dotted(call[0]) != receiver or call[1] in seen:
                continue
            seen.add(call[1])
            helper = methods.get(call[1])
            if helper is None:
                continue
            if calls_named(helper, _CLOSE):
                return identifier(helper.name)
            pending.append(helper.body)
    return None


# --- the fix -----------------------------------------------------------------------


def fix(tree: cst.Module, environment: Environment) -> tuple[cst.Module, FixOutcome]:
    # One walk for both events: visiting the module is the costly part.
    branches = find_branches(tree, NAME, (REQUEST, CLOSED))
    requests = [b for b in branches if b.event == REQUEST]
    if not requests:
        return tree, FixOutcome(NAME, Outcome.NOT_APPLICABLE, f"this module handles no {REQUEST}")
    request = only_branch(NAME, REQUEST, requests)
    closes = calls_named(request.node.body, _CLOSE)
    closed = [b for b in branches if b.event == CLOSED]
    if not closes:
        if _closes_once_idle_over_a_limit(closed):
            return tree, FixOutcome(
                NAME,
                Outcome.FIXED_UPSTREAM,
                f"{request.where} does not close the connection as a request arrives; "
                f"{closed[0].where} closes it once idle, testing a limit",
            )
        helper = _closing_helper(request)
        if helper is not None:
            # A close the branch reaches through a method (a helper, `_create_stream`) is
            # one the fix cannot see or repair: "nothing to do" would be untrue.
            raise UnrecognisedStructureError(
                NAME,
                request.where,
                f"the {_CLOSE}() a request may cause directly in the {REQUEST} branch",
                f"{_CLOSE}() in {helper}, which the branch calls",
            )
        # Hypercorn <= 0.15 has no request limit at all.
        return tree, FixOutcome(
            NAME,
            Outcome.NOT_APPLICABLE,
            f"{request.where} does not close the connection as a request arrives",
        )
    if len(closes) > 1:
        raise UnrecognisedStructureError(
            NAME,
            request.where,
            f"one {_CLOSE}() in the {REQUEST} branch",
            "; ".join(tree.code_for_node(c) for c in closes),
        )
    proof = _Proof(tree)
    try:
        plan = proof.plan(request, closes[0], closed)
    except Refusal as refusal:
        raise UnrecognisedStructureError(
            NAME, request.where, refusal.expected, refusal.found or branch_code(tree, request)
        ) from None
    goaway = cst.parse_statement(
        _goaway(plan.receiver, plan.send, plan.raw_data, plan.connection),
        config=tree.config_for_parsing,
    )
    assert isinstance(goaway, cst.If)  # the send, unless h2 has closed
    paths = [
        *request.ancestors,
        *node_path(request.node, plan.limit_body),
        *plan.closed.ancestors,
        *node_path(plan.closed.node, plan.idle_if),
    ]
    where = (request.where, plan.closed.where)
    return transform(tree, _Apply(plan, goaway, paths)), FixOutcome(
        NAME,
        Outcome.REWRITTEN,
        f"{where[0]} now sends GOAWAY(2**31-1, NO_ERROR) at the request limit instead of "
        f"closing with responses in flight; {where[1]} closes the connection once it is "
        "idle over the limit",
        functions=tuple(dict.fromkeys(where)),
    )
