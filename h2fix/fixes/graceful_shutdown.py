"""Fix `graceful_shutdown`: refuse new requests during shutdown so that clients retry them.

While the server shuts down gracefully, Hypercorn's `_handle_events` answers a new
request with `self.connection.reset_stream(event.stream_id)`: RST_STREAM with h2's
default code, NO_ERROR. A gRPC client reports that call as INTERNAL and does not
retry it. RFC 9113 §8.7 has the code for this: REFUSED_STREAM says the request was
not processed at all and is safe to retry: grpcio then reports UNAVAILABLE, the status
retry policies retry, instead of INTERNAL (measured). The rewrite only adds the code:

    self.connection.reset_stream(event.stream_id, error_code=h2.errors.ErrorCodes.REFUSED_STREAM)

The proof shows the function the server runs (a plain method of the module-level class
`H2Protocol` is or derives from, defined once, not overridden, its RequestReceived
branch reachable and first in its dispatch, `self` never rebound), the call it changes
(h2's `reset_stream` on the attribute assigned only `h2.connection.H2Connection(...)`),
the stream it resets (the event's own, `<event>.stream_id`), that the request really
is unprocessed (nothing on the way to the reset hands the event to anyone: it is used
only for its stream id), and the name the new code reads (`h2`, bound only by
`import h2...` statements, one of them `import h2.connection`, which loads h2.errors).

The RequestReceived branch must hold exactly one `reset_stream` call: with two, which
one answers the shutdown is a guess, so the fix refuses. A code already given is left
alone when it is REFUSED_STREAM (or 7) and refused otherwise: another code is a choice
this fix cannot judge.
"""

from __future__ import annotations

from collections.abc import Sequence

import libcst as cst

from .._environment import Environment
from .._errors import UnrecognisedStructureError
from .._results import FixOutcome, Outcome
from ._live_method import (
    Branch,
    Live,
    LiveMethods,
    Refusal,
    branch_code,
    find_branches,
    names_any,
    node_path,
    only_branch,
)
from ._syntax import (
    argument,
    bound_names,
    calls_named,
    dotted,
    identifier,
    keyword,
    method_call,
    self_attribute,
    statement_expression,
    walk,
)
from ._tree import PathTransformer, children, transform

NAME = "graceful_shutdown"

REQUEST = "RequestReceived"
_RESET = "reset_stream"
#: h2's `H2Connection.reset_stream(stream_id, error_code=0)`.
_PARAMETERS = ("stream_id", "error_code")
_REFUSED_STREAM = "REFUSED_STREAM"
_REFUSED_STREAM_CODE = 7  # RFC 9113 §7
#: What the rewrite passes: h2.errors is loaded by h2.connection, which the module imports.
_REFUSED_STREAM_CODE_TEXT = "h2.errors.ErrorCodes.REFUSED_STREAM"
#: The base class of every h2 event: an earlier arm testing it takes a RequestReceived.
_EVENT_BASES = ("Event",)


class _Proof:
    """The proof obligations for the reset in the RequestReceived branch."""

    def __init__(self, module: cst.Module, branch: Branch) -> None:
        self.module = module
        self.branch = branch
        self.live = LiveMethods(module, "the protocol object whose connection resets the stream")

    def reset(self) -> cst.Call | None:
        """The reset to rewrite, or None when it already refuses the stream."""
        live = self.live.prove(self.branch)
        self.live.first_arm_for_the_event(self.branch)
        self.live.no_earlier_arm_names_it(self.branch, _EVENT_BASES)
        subject = self.subject_is_a_name()
        body = self.body_on_own_lines()
        call = self.one_reset(body)
        path = self.reset_is_a_statement(body, call)
        self.live.reachable_in_branch(self.branch, path[-1][1], f"the {_RESET}()")
        code = self.error_code(call)
        if code is None:
            self.live.h2_names_the_package(live.method, "h2.errors")
        self.on_h2_connection(live, call)
        self.resets_the_events_stream(call, subject, body)
        if code is not None:
            self.code_is_refused_stream(code)
            return None  # fixed upstream: leave it byte for byte
        self.request_is_unprocessed(path, subject, live.receiver)
        self.live.events_reach_the_dispatch(self.branch, live)
        return call

    # Each check: one obligation, its refusal beside it.

    def subject_is_a_name(self) -> str:
        subject = self.branch.subject
        if subject is None or "." in subject:
            raise Refusal("the dispatch on a plain name (`isinstance(event, ...)`)")
        return subject

    def body_on_own_lines(self) -> cst.IndentedBlock:
        body = self.branch.node.body
        if not isinstance(body, cst.IndentedBlock):
            raise Refusal("the branch body on its own lines")
        return body

    def one_reset(self, body: cst.IndentedBlock) -> cst.Call:
        resets = calls_named(body, _RESET)
        if len(resets) != 1:
            raise Refusal(
                f"one {_RESET}() call in the {REQUEST} branch (with more, which one answers "
                "the shutdown is a guess)",
                f"{len(resets)}: " + "; ".join(self.module.code_for_node(c) for c in resets),
            )
        return resets[0]

    def reset_is_a_statement(
        self, body: cst.IndentedBlock, call: cst.Call
    ) -> list[tuple[cst.IndentedBlock, cst.BaseStatement]]:
        """The reset as a statement of its own in some arm of the branch; returns the
        blocks on the way to it, each with its statement that leads to the reset."""
        path = _path_to(body, call)
        assert path is not None  # one_reset() found it under the body
        statement = path[-1][1]
        if statement_expression(statement) is not call:
            raise Refusal(
                f"`<self>.<connection>.{_RESET}(...)` as a statement of its own",
                self.module.code_for_node(statement).strip(),
            )
        if len(path) > 2 or (len(path) == 2 and not isinstance(path[0][1], cst.If)):
            # Deeper (under a second `if`, a loop, a `try`), another way through the arm
            # may answer the request instead, and that one would stay NO_ERROR.
            raise Refusal(
                f"the {_RESET}() directly in the branch, or directly in one arm of an `if` "
                "in it (the arm's answer to the request)",
                self.module.code_for_node(path[0][1]).strip(),
            )
        return path

    def on_h2_connection(self, live: Live, call: cst.Call) -> None:
        found = method_call(call)
        assert found is not None
        attribute = self_attribute(found[0], live.receiver)
        if attribute is None:
            raise Refusal(
                f"{_RESET}() called on `{live.receiver}.<connection>`",
                self.module.code_for_node(call),
            )
        self.live.h2_connection(live.cls, attribute)

    def resets_the_events_stream(
        self, call: cst.Call, subject: str, body: cst.IndentedBlock
    ) -> None:
        if any(arg.star for arg in call.args) or any(
            keyword(arg) not in (None, *_PARAMETERS) for arg in call.args
        ):
            raise Refusal(
                f"{_RESET}(stream_id[, error_code]) as h2 defines it",
                self.module.code_for_node(call),
            )
        stream = argument(call, 0, "stream_id")
        if stream is None or dotted(stream) != f"{subject}.stream_id":
            raise Refusal(
                f"{_RESET}({subject}.stream_id): the stream of the request being refused",
                self.module.code_for_node(call),
            )
        if subject in bound_names(body):
            raise Refusal(
                f"`{subject}` never rebound in the {REQUEST} branch (it names the request)",
                f"an assignment to {subject} in the branch",
            )

    def error_code(self, call: cst.Call) -> cst.BaseExpression | None:
        return argument(call, 1, "error_code")

    def code_is_refused_stream(self, code: cst.BaseExpression) -> None:
        name = dotted(code)
        if name is not None and name.split(".")[-1] == _REFUSED_STREAM:
            return
        if isinstance(code, cst.Integer) and code.evaluated_value == _REFUSED_STREAM_CODE:
            return
        raise Refusal(
            f"no error code yet, or {_REFUSED_STREAM} ({_REFUSED_STREAM_CODE}): another code "
            "is a choice this fix cannot judge",
            self.module.code_for_node(code),
        )

    def request_is_unprocessed(
        self,
        path: Sequence[tuple[cst.IndentedBlock, cst.BaseStatement]],
        subject: str,
        receiver: str,
    ) -> None:
        """Nothing that runs with the reset hands the request on: the arm holding it and the
        statements around the arms on the way to it use the event only for its stream id
        (a request is handed over with its headers), and call no method of the protocol
        the branch hands the event to elsewhere (its create-stream method)."""
        handlers = _handed_the_event(self.branch.node.body, subject, receiver)
        arm = path[-1][0]
        runs_with_reset: list[cst.CSTNode] = list(arm.body)
        for block, leading in path[:-1]:
            runs_with_reset += [s for s in block.body if s is not leading]
        for statement in runs_with_reset:
            if not _uses_only_stream_id(statement, subject):
                raise Refusal(
                    f"the arm that resets uses {subject} only for {subject}.stream_id (the "
                    "request must really be unprocessed: REFUSED_STREAM tells the client so)",
                    self.module.code_for_node(statement).strip(),
                )
            for node in walk(statement):
                called = method_call(node) if isinstance(node, cst.BaseExpression) else None
                if called is not None and dotted(called[0]) == receiver and called[1] in handlers:
                    raise Refusal(
                        f"no call of {receiver}.{called[1]}() (which takes the request "
                        "elsewhere in the branch) with the reset",
                        self.module.code_for_node(statement).strip(),
                    )


# --- rewrite ---------------------------------------------------------------------


class _AddCode(PathTransformer):
    """Adds `error_code=REFUSED_STREAM` to one call (by identity)."""

    def __init__(self, module: cst.Module, call: cst.Call, path: Sequence[cst.CSTNode]) -> None:
        super().__init__(path)
        self.module = module
        self.call = call
        self.code = cst.parse_expression(
            _REFUSED_STREAM_CODE_TEXT, config=module.config_for_parsing
        )

    def leave_Call(self, original_node: cst.Call, updated_node: cst.Call) -> cst.Call:
        if original_node is not self.call:
            return updated_node
        if "\n" not in self.module.code_for_node(original_node):
            # On one line it would run far past the line length: the arguments go on a
            # line of their own, as a formatter would put them.
            arguments = ", ".join(
                self.module.code_for_node(arg.with_changes(comma=cst.MaybeSentinel.DEFAULT)).strip()
                for arg in updated_node.args
            )
            text = (
                f"{self.module.code_for_node(updated_node.func)}(\n"
                f"    {arguments}, error_code={_REFUSED_STREAM_CODE_TEXT}\n)"
            )
            wrapped = cst.parse_expression(text, config=self.module.config_for_parsing)
            assert isinstance(wrapped, cst.Call)
            return wrapped
        args = list(updated_node.args)
        last = args[-1]
        added = cst.Arg(
            keyword=cst.Name("error_code"),
            value=self.code,
            equal=cst.AssignEqual(
                whitespace_before=cst.SimpleWhitespace(""),
                whitespace_after=cst.SimpleWhitespace(""),
            ),
            comma=last.comma,
        )
        if isinstance(last.comma, cst.Comma):
            # A trailing comma (the call spread over lines): the new argument goes on a
            # line of its own, laid out like the one before it.
            between = (
                args[-2].comma
                if len(args) > 1
                else cst.Comma(whitespace_after=updated_node.whitespace_before_args)
            )
            args[-1] = last.with_changes(comma=between)
        else:
            args[-1] = last.with_changes(
                comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))
            )
        return updated_node.with_changes(args=[*args, added])


# --- helpers on nodes ------------------------------------------------------------


def _path_to(
    block: cst.IndentedBlock, target: cst.CSTNode
) -> list[tuple[cst.IndentedBlock, cst.BaseStatement]] | None:
    """The blocks from `block` down to the innermost one holding `target`, each with its
    statement on the way (through if/elif/else arms, try, with and loops)."""
    for statement in block.body:
        if not any(node is target for node in walk(statement)):
            continue
        for inner in _blocks_in(statement):
            below = _path_to(inner, target)
            if below is not None:
                return [(block, statement), *below]
        return [(block, statement)]
    return None


def _blocks_in(statement: cst.CSTNode) -> list[cst.IndentedBlock]:
    """The blocks directly under a compound statement (nested defs excluded: not run here)."""
    if isinstance(statement, (cst.FunctionDef, cst.ClassDef)):
        return []
    blocks = []
    for child in children(statement):
        if isinstance(child, cst.IndentedBlock):
            blocks.append(child)
        elif isinstance(child, (cst.If, cst.Else, cst.ExceptHandler, cst.Finally)):
            blocks += _blocks_in(child)
    return blocks


def _uses_only_stream_id(node: cst.CSTNode, subject: str) -> bool:
    """Every use of the name `subject` under `node` is `<subject>.stream_id`."""
    not_uses: set[int] = set()  # names that are not reads of a variable
    for child in walk(node):
        if isinstance(child, cst.Attribute):
            not_uses.add(id(child.attr))
        elif isinstance(child, cst.Arg) and child.keyword is not None:
            not_uses.add(id(child.keyword))
    uses = [
        child
        for child in walk(node)
        if isinstance(child, cst.Name)
        and id(child) not in not_uses
        and identifier(child) == subject
    ]
    stream_ids = [
        child
        for child in walk(node)
        if isinstance(child, cst.Attribute)
        and isinstance(child.value, cst.Name)
        and identifier(child.value) == subject
        and identifier(child.attr) == "stream_id"
    ]
    return len(uses) == len(stream_ids)


def _handed_the_event(node: cst.CSTNode, subject: str, receiver: str) -> set[str]:
    """Methods of `<receiver>` the branch calls with the event itself as an argument."""
    names = set()
    for child in walk(node):
        called = method_call(child) if isinstance(child, cst.BaseExpression) else None
        if called is None or dotted(called[0]) != receiver:
            continue
        if any(dotted(arg.value) == subject for arg in called[2].args):
            names.add(called[1])
    return names


# --- the fix -----------------------------------------------------------------------


def fix(tree: cst.Module, environment: Environment) -> tuple[cst.Module, FixOutcome]:
    branches = find_branches(tree, NAME, (REQUEST,))
    if not branches:
        if names_any(tree, (REQUEST,)) and calls_named(tree, _RESET):
            raise UnrecognisedStructureError(
                NAME,
                "<module>",
                f"an `if isinstance(<event>, h2.events.{REQUEST}):` branch",
                f"{REQUEST} and {_RESET}() are named, but no such branch exists",
            )
        return tree, FixOutcome(NAME, Outcome.NOT_APPLICABLE, f"this module handles no {REQUEST}")
    branch = only_branch(NAME, REQUEST, branches)
    if not calls_named(branch.node.body, _RESET):
        if calls_named(tree, _RESET):
            # A reset elsewhere (a helper the branch calls, say) may be the one that answers
            # a request in shutdown: the fix cannot see it, so it cannot say there is none.
            raise UnrecognisedStructureError(
                NAME,
                branch.where,
                f"the {_RESET}() that refuses a request in shutdown directly in the {REQUEST} "
                "branch",
                f"{_RESET}() is called elsewhere in the module, not in the branch",
            )
        return tree, FixOutcome(
            NAME, Outcome.NOT_APPLICABLE, f"{branch.where} resets no stream as a request arrives"
        )
    try:
        reset = _Proof(tree, branch).reset()
    except Refusal as refusal:
        raise UnrecognisedStructureError(
            NAME, branch.where, refusal.expected, refusal.found or branch_code(tree, branch)
        ) from None
    if reset is None:
        return tree, FixOutcome(
            NAME,
            Outcome.FIXED_UPSTREAM,
            f"{branch.where} already refuses new streams with {_REFUSED_STREAM}",
        )
    path = [*branch.ancestors, *node_path(branch.node, reset)]
    return transform(tree, _AddCode(tree, reset, path)), FixOutcome(
        NAME,
        Outcome.REWRITTEN,
        f"{branch.where} now refuses a request it will not process with RST_STREAM"
        f"({_REFUSED_STREAM}), which clients may retry, instead of NO_ERROR",
        functions=(branch.where,),
    )
