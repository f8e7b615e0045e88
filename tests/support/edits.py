"""Anchored small edits of a release's protocol/h2.py, for the drift corpora.

Each edit names the exact text it changes and asserts that text occurs once, so a
variant that no longer means what its name says fails loudly instead of testing nothing.
"""

from __future__ import annotations

import re
from typing import Callable

Edit = Callable[[str], str]


def replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"the variant's anchor is not unique: {old!r}"
    return text.replace(old, new)


def replacing(*pairs: tuple[str, str]) -> Edit:
    """A variant that replaces each `old` (each must occur exactly once) by its `new`."""

    def edit(text: str) -> str:
        for old, new in pairs:
            text = replace_once(text, old, new)
        return text

    return edit


def method_span(text: str, name: str, *, last: bool = False) -> tuple[int, int]:
    """Where the class-level method `name` starts and ends (the first definition, or the last)."""
    starts = list(re.finditer(rf"^    (?:async )?def {name}\(", text, re.MULTILINE))
    assert starts, name
    start = starts[-1] if last else starts[0]
    end = re.compile(r"^    (?:async def|def|@)|^\S", re.MULTILINE).search(text, start.end())
    return start.start(), end.start() if end else len(text)


def in_method(name: str, edit: Edit) -> Edit:
    def whole(text: str) -> str:
        start, end = method_span(text, name)
        return text[:start] + edit(text[start:end]) + text[end:]

    return whole


def method_text(text: str, name: str, *, last: bool = False) -> str:
    start, end = method_span(text, name, last=last)
    return text[start:end]


def handle_events_chain(method: str) -> tuple[list[str], int, int]:
    """_handle_events' lines, and where its if/elif chain on the event's class starts and
    ends (the `await self._flush()` after it)."""
    lines = method.splitlines(keepends=True)
    first = next(i for i, line in enumerate(lines) if "if isinstance(event, h2.events.Req" in line)
    last = next(i for i, line in enumerate(lines) if line == "        await self._flush()\n")
    return lines, first, last


def _handle_events_as_match(method: str) -> str:
    lines, first, last = handle_events_chain(method)
    out = [*lines[:first], "            match event:\n"]
    for line in lines[first:last]:
        branch = re.match(r"^            (?:el)?if isinstance\(event, ([\w.]+)\):$", line)
        if branch:
            out.append(f"                case {branch[1]}():\n")
        else:
            out.append("    " + line if line.strip() else line)
    return "".join(out + lines[last:])


#: _handle_events' dispatch as a match statement, one `case <Event>():` per branch.
match_case_dispatch = in_method("_handle_events", _handle_events_as_match)


# --- which definition runs: shapes shared by the corpora (anchors of Hypercorn 0.17.3) -------

_HANDLE_EVENTS_DEF = "    async def _handle_events(self, events: List[h2.events.Event]) -> None:\n"
_CLASS_HEAD = "class H2Protocol:\n"
_TYPING_IMPORT = "from typing import Awaitable,"


def protocol_rebound_to_subclass(text: str) -> str:
    override = method_text(text, "_handle_events")
    return (
        text
        + "\n\nclass _TracedH2Protocol(H2Protocol):\n"
        + override.rstrip("\n")
        + "\n\n\nH2Protocol = _TracedH2Protocol  # type: ignore[misc]\n"
    )


DECORATOR = '''def counted(
    method: Callable[..., Awaitable[None]],
) -> Callable[..., Awaitable[None]]:
    """Counts a protocol method's calls (for the worker's metrics)."""

    @functools.wraps(method)
    async def wrapper(*args: object, **kwargs: object) -> None:
        wrapper.calls += 1  # type: ignore[attr-defined]
        await method(*args, **kwargs)

    wrapper.calls = 0  # type: ignore[attr-defined]
    return wrapper


class H2Protocol:
'''
handle_events_decorated = replacing(
    (_TYPING_IMPORT, "import functools\n" + _TYPING_IMPORT),
    (_CLASS_HEAD, DECORATOR),
    (_HANDLE_EVENTS_DEF, "    @counted\n" + _HANDLE_EVENTS_DEF),
)
