"""Resilience to upstream drift: variants of the real 0.17.3 source, fixed or refused.

Every variant is generated here from the release downloaded at test time. Each is
either rewritten (and for a representative subset, served to the grpcio client
with the runtime fix applied to the variant) or refused with a clear error:
never silently patched wrong.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

import h2fix
from h2fix import UnrecognisedStructureError
from support.edits import replace_once, replacing
from support.isolated import copy_package
from support.releases import h2_source
from support.servers import serving
from support.versions import needs_match_statement

TRAILERS_LINE = "                self.connection.send_headers(event.stream_id, event.headers)\n"
END_OF_BODY_STEPS = (
    "                self.priority.unblock(event.stream_id)\n"
    "                await self.has_data.set()\n"
    "                await self.stream_buffers[event.stream_id].drain()\n"
    "            elif isinstance(event, Trailers):\n"
)


def method_span(text: str, name: str) -> tuple[int, int]:
    start = text.index(f"    async def {name}(")
    end = text.index("\n    async def ", start + 1)
    return start, end


def in_method(text: str, name: str, edit: Callable[[str], str]) -> str:
    start, end = method_span(text, name)
    return text[:start] + edit(text[start:end]) + text[end:]


def to_match(text: str) -> str:
    """The stream_send if/elif chain on isinstance() as a match statement."""

    def edit(method: str) -> str:
        lines = method.splitlines(keepends=True)
        first = next(i for i, line in enumerate(lines) if "if isinstance(event, (Inform" in line)
        last = next(i for i, line in enumerate(lines) if line.startswith("        except ("))
        out = [*lines[:first], "            match event:\n"]
        for line in lines[first:last]:
            branch = re.match(r"^(\s*)(?:el)?if isinstance\(event, \(?([^()]*?)\)?\):$", line)
            if branch:
                classes = " | ".join(f"{c.strip()}()" for c in branch[2].split(",") if c.strip())
                out.append(f"{branch[1]}    case {classes}:\n")
            else:
                out.append("    " + line if line.strip() else line)
        return "".join(out + lines[last:])

    return in_method(text, "stream_send", edit)


def rename_method(text: str) -> str:
    return text.replace("stream_send", "send_stream_event")


def rename_attributes(text: str) -> str:
    for old, new in [
        ("self.priority", "self.prio_tree"),
        ("self.has_data", "self.wakeup"),
        ("self.stream_buffers", "self.buffers"),
    ]:
        assert old in text
        text = text.replace(old, new)
    return text


extra_statements = replacing(
    (
        TRAILERS_LINE,
        "                # Trailers close the stream.\n"
        "                trailers = list(event.headers)\n"
        "                self.connection.send_headers(event.stream_id, trailers)  # the block\n",
    ),
)


local_alias = replacing(
    (
        TRAILERS_LINE,
        "                conn = self.connection\n"
        "                conn.send_headers(event.stream_id, event.headers)\n",
    ),
)


def rename_class(text: str) -> str:
    text = replace_once(text, "class H2Protocol:", "class Http2Protocol:")
    return text + "\n\nH2Protocol = Http2Protocol\n"


def subclassed(text: str) -> str:
    text = replace_once(text, "class H2Protocol:", "class _BaseH2Protocol:")
    return text + "\n\nclass H2Protocol(_BaseH2Protocol):\n    pass\n"


def qualified_trailers(text: str) -> str:
    text = replace_once(
        text, "from .http_stream import", "from . import events\nfrom .http_stream import"
    )
    return replace_once(text, "isinstance(event, Trailers)", "isinstance(event, events.Trailers)")


tuple_isinstance = replacing(
    ("isinstance(event, Trailers)", "isinstance(event, (Trailers,))"),
)


keyword_call = replacing(
    (
        TRAILERS_LINE,
        "                self.connection.send_headers("
        "stream_id=event.stream_id, headers=event.headers)\n",
    ),
)


wrapped_call = replacing(
    (
        TRAILERS_LINE,
        "                self.connection.send_headers(\n"
        "                    event.stream_id,\n"
        "                    event.headers,\n"
        "                )\n",
    ),
)


end_stream_false = replacing(
    (TRAILERS_LINE, TRAILERS_LINE.replace("event.headers)", "event.headers, end_stream=False)")),
)


half_fixed = replacing(
    (
        TRAILERS_LINE,
        "                self.priority.unblock(event.stream_id)\n"
        "                await self.has_data.set()\n" + TRAILERS_LINE,
    ),
)


def rename_event_variable(text: str) -> str:
    return in_method(text, "stream_send", lambda m: re.sub(r"\bevent\b", "ev", m))


def decoy_elsewhere(text: str) -> str:
    return text + (
        "\n\ndef describe(event: StreamEvent) -> str:\n"
        "    if isinstance(event, Trailers):\n"
        "        return 'trailers'\n"
        "    return 'other'\n"
    )


# --- variants that must be refused ---------------------------------------------------


def helper_method(text: str) -> str:
    text = replace_once(text, TRAILERS_LINE, "                await self._send_trailers(event)\n")
    return text + (
        "\n    async def _send_trailers(self, event: Trailers) -> None:\n"
        "        self.connection.send_headers(event.stream_id, event.headers)\n"
    ).replace("\n    async", "\n\nclass _Helpers:\n    async", 1)


def subclass_overrides(text: str) -> str:
    start, end = method_span(text, "stream_send")
    return text + "\n\nclass PushlessH2Protocol(H2Protocol):\n" + text[start:end]


send_in_try = replacing(
    (
        TRAILERS_LINE,
        "                try:\n    " + TRAILERS_LINE + "                except KeyError:\n"
        "                    pass\n",
    ),
)


end_stream_computed = replacing(
    (TRAILERS_LINE, TRAILERS_LINE.replace("event.headers)", "event.headers, end_stream=last)")),
)


shared_branch = replacing(
    ("isinstance(event, Trailers)", "isinstance(event, (Trailers, InformationalResponse))"),
)


def no_reference_block(text: str) -> str:
    text = replace_once(
        text,
        END_OF_BODY_STEPS,
        "                await self._end_body(event.stream_id)\n"
        "            elif isinstance(event, Trailers):\n",
    )
    return text.replace("self.has_data", "self.wakeup")


def guarded_case(text: str) -> str:
    return replace_once(to_match(text), "case Trailers():", "case Trailers() if self.config:")


# --- traps: each a way a shape-based matcher patches wrongly (issue: prove every patch) -----

SEND_THEN_FLUSH = TRAILERS_LINE + "                await self._flush()\n"
STREAM_SEND_DEF = "    async def stream_send(self, event: StreamEvent) -> None:\n"

decoy_inbound_drain = replacing(
    (TRAILERS_LINE, "                await self.inbound[event.stream_id].drain()\n" + TRAILERS_LINE)
)


def decoy_activity_event(text: str) -> str:
    text = replace_once(
        text, TRAILERS_LINE, "                await self.activity.set()\n" + TRAILERS_LINE
    )
    return replace_once(
        text,
        "        self.has_data = self.context.event_class()\n",
        "        self.has_data = self.context.event_class()\n"
        "        self.activity = self.context.event_class()\n",
    )


fullwidth_keyword = replacing(
    (
        TRAILERS_LINE,
        TRAILERS_LINE.replace("event.headers)", "event.headers, \uff45nd_stream=False)"),
    )
)
upstream_fix_through_a_local = replacing(
    (
        TRAILERS_LINE,
        "                self.priority.unblock(event.stream_id)\n"
        "                await self.has_data.set()\n"
        "                buffer = self.stream_buffers[event.stream_id]\n"
        "                await buffer.drain()\n"
        + TRAILERS_LINE.replace("event.headers)", "event.headers, end_stream=True)"),
    ),
)
send_in_a_closure = replacing(
    (
        TRAILERS_LINE,
        "                async def send() -> None:\n"
        "    " + TRAILERS_LINE + "                await send()\n",
    ),
)
static_method = replacing((STREAM_SEND_DEF, "    @staticmethod\n" + STREAM_SEND_DEF))
id_with_side_effects = replacing(
    (TRAILERS_LINE, TRAILERS_LINE.replace("(event.stream_id,", "(self.ids.pop(event.stream_id),"))
)
mapped_stream_id = replacing(
    (TRAILERS_LINE, TRAILERS_LINE.replace("(event.stream_id,", "(self.ids[event.stream_id],"))
)
ends_the_stream_after = replacing(
    (
        SEND_THEN_FLUSH,
        TRAILERS_LINE + "                self.connection.end_stream(event.stream_id)\n"
        "                await self._flush()\n",
    ),
)
connection_wrapper = replacing(
    ("        self.connection = h2.connection.H2Connection(", "        self.connection = Wrapped(")
)
method_replaced_later = replacing(
    ("    async def _handle_events(", "    stream_send = None\n\n    async def _handle_events(")
)
class_defined_twice = replacing(
    (
        "class H2Protocol:\n",
        "if sys.version_info < (3,):\n\n    class H2Protocol:\n        pass\n\n\n"
        "class H2Protocol:\n",
    ),
)
FIRST_BRANCH = "        try:\n            if isinstance(event, (InformationalResponse, Response)):"
branch_after_return = replacing((FIRST_BRANCH, "        return\n" + FIRST_BRANCH))
receiver_rebound = replacing((TRAILERS_LINE, "                self = self.other\n" + TRAILERS_LINE))
buffer_deleted_first = replacing(
    (TRAILERS_LINE, "                del self.stream_buffers[event.stream_id]\n" + TRAILERS_LINE)
)


FIXED = {
    "match-case": (to_match, "H2Protocol.stream_send"),
    "method-renamed": (rename_method, "H2Protocol.send_stream_event"),
    "attributes-renamed": (rename_attributes, "H2Protocol.stream_send"),
    "extra-statements-and-comments": (extra_statements, "H2Protocol.stream_send"),
    "local-alias": (local_alias, "H2Protocol.stream_send"),
    "class-renamed": (rename_class, "Http2Protocol.stream_send"),
    "class-subclassed": (subclassed, "_BaseH2Protocol.stream_send"),
    "qualified-trailers": (qualified_trailers, "H2Protocol.stream_send"),
    "tuple-isinstance": (tuple_isinstance, "H2Protocol.stream_send"),
    "keyword-call": (keyword_call, "H2Protocol.stream_send"),
    "wrapped-call": (wrapped_call, "H2Protocol.stream_send"),
    "end-stream-false": (end_stream_false, "H2Protocol.stream_send"),
    "half-fixed": (half_fixed, "H2Protocol.stream_send"),
    "event-variable-renamed": (rename_event_variable, "H2Protocol.stream_send"),
    "decoy-elsewhere": (decoy_elsewhere, "H2Protocol.stream_send"),
    "decoy-inbound-drain": (decoy_inbound_drain, "H2Protocol.stream_send"),
    "decoy-activity-event": (decoy_activity_event, "H2Protocol.stream_send"),
    "fullwidth-end-stream-keyword": (fullwidth_keyword, "H2Protocol.stream_send"),
}
LEFT_ALONE = {
    "upstream-fix-through-a-local": upstream_fix_through_a_local,
}
SERVED = [
    "match-case",
    "method-renamed",
    "attributes-renamed",
    "extra-statements-and-comments",
    "local-alias",
    "class-renamed",
    "class-subclassed",
    "qualified-trailers",
    "decoy-activity-event",
    "fullwidth-end-stream-keyword",
]
REFUSED = {
    "helper-method": (helper_method, "call <connection>.send_headers itself"),
    "subclass-overrides": (subclass_overrides, "one branch that sends trailers"),
    "send-in-try": (send_in_try, "directly in the branch"),
    "end-stream-computed": (end_stream_computed, "literal True or False"),
    "shared-branch": (shared_branch, "a branch for Trailers alone"),
    "no-reference-block": (no_reference_block, "end-of-body branch"),
    "guarded-case": (guarded_case, "with no guard"),
    "send-in-a-closure": (send_in_a_closure, "directly in the branch"),
    "static-method": (static_method, "a plain method"),
    "stream-id-with-side-effects": (id_with_side_effects, "on the stream the end-of-body"),
    "mapped-stream-id": (mapped_stream_id, "on the stream the end-of-body"),
    "ends-the-stream-after": (ends_the_stream_after, "the connection only in the send"),
    "connection-wrapper": (connection_wrapper, "H2Connection"),
    "method-replaced-later": (method_replaced_later, "in code that runs"),
    "class-defined-twice": (class_defined_twice, "the class defined once"),
    "branch-after-return": (branch_after_return, "in code that runs"),
    "receiver-rebound": (receiver_rebound, "never reassigned"),
    "buffer-deleted-first": (buffer_deleted_first, "only in the steps before the send"),
}


@pytest.fixture(scope="module")
def original() -> str:
    return h2_source("hypercorn", "0.17.3")


# Fixed variants that Python < 3.10 cannot compile or serve. (LibCST parses a match statement
# on any Python, so the refusal of "guarded-case" is tested everywhere.)
MATCH_STATEMENT = {"match-case", "guarded-case"}


def cases(table: dict[str, Any]) -> list[Any]:
    """The table's rows as parameters, each named, skipped where its syntax cannot compile."""
    return [
        pytest.param(*row, id=name, marks=needs_match_statement if name in MATCH_STATEMENT else ())
        for name, row in table.items()
    ]


@pytest.mark.parametrize(("make", "function"), cases(FIXED))
def test_variant_is_fixed(original: str, make: Callable[[str], str], function: str) -> None:
    variant = make(original)
    assert variant != original
    result = h2fix.rewrite(variant, ["trailers"])
    assert result.changed_functions == (function,)
    compile(result.source, "h2.py", "exec", dont_inherit=True)
    added = [line.strip() for line in result.diff().splitlines() if line.startswith("+ ")]
    assert any(line.endswith("].drain()") for line in added) or "half" in function
    method = result.source.split(f"def {function.split('.')[-1]}(")[1]
    assert "end_stream=True" in unicodedata.normalize("NFKC", method)
    assert h2fix.rewrite(result.source, ["trailers"]).outcomes[0].outcome.value == (
        "already fixed upstream"
    )  # idempotent: the rewritten variant needs nothing more


@pytest.mark.parametrize("make", LEFT_ALONE.values(), ids=LEFT_ALONE.keys())
def test_variant_is_left_alone(original: str, make: Callable[[str], str]) -> None:
    variant = make(original)
    result = h2fix.rewrite(variant, ["trailers"])
    assert result.source == variant
    assert result.outcomes[0].outcome is h2fix.Outcome.FIXED_UPSTREAM


@pytest.mark.parametrize(("make", "expected"), cases(REFUSED))
def test_variant_is_refused(original: str, make: Callable[[str], str], expected: str) -> None:
    variant = make(original)
    with pytest.raises(UnrecognisedStructureError) as caught:
        h2fix.rewrite(variant, ["trailers"])
    assert expected in caught.value.expected
    assert caught.value.found  # the message shows what it found instead


@pytest.mark.server
@pytest.mark.parametrize("name", cases({name: (name,) for name in SERVED}))
def test_fixed_variant_serves_grpc(tmp_path: Path, original: str, name: str) -> None:
    make, _ = FIXED[name]
    copy_package("hypercorn", tmp_path / "site").write_text(make(original))
    # max_requests refuses a match/case dispatch of StreamClosed (a needless refusal, like
    # closed_stream_data's for DataReceived): served without it, the others are what is tested.
    extra = ["--without", "max_requests"] if name in MATCH_STATEMENT else []
    with (
        serving(tmp_path, first_on_path=tmp_path / "site", extra=extra) as port,
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        assert channel.unary_unary("/test.Test/Echo")(b"drift", timeout=20) == b"drift"
        big = channel.unary_unary("/test.Test/Big")(b"300000", timeout=20)
        assert big == b"x" * 300000
        assert len(list(channel.unary_stream("/test.Test/Stream")(b"50", timeout=20))) == 50
        with pytest.raises(grpc.RpcError) as caught:
            channel.unary_unary("/test.Test/Fail")(b"", timeout=20)
        assert caught.value.code() is grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
