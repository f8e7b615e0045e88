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
