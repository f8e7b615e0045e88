"""An adversarial drift corpus for the `request_received` fix, written without reading its
matcher or its own rewrite table.

Every variant is a small anchored edit of a real release's protocol/h2.py (downloaded at
test time, never committed), rewritten for one of two environments:

- h2 4.4 (keyword-only events) on Hypercorn 0.17.3, which builds `RequestReceived()` and
  sets its attributes afterwards (TypeError with this h2);
- h2 4.2 (no-argument events) on Hypercorn 0.18.0 and anycorn 0.18.7, which build it with
  keywords (TypeError with that h2).

Verdicts: "fix" (it must rewrite), "leave" (it must change nothing), "refuse" (it must raise
UnrecognisedStructureError and change nothing), or "a|b" (either is right).

The one rule checked: never a silent wrong patch. So every variant the fix rewrites is also
checked two ways:

- the event each changed function builds, by running the construction statements (from the
  construction to the statement that hands the event on) of the original under the h2 it
  was written for and of the rewrite under the h2 it was rewritten for, both real: the two
  events (and whatever the statements did to the protocol object) must be equal;
- on 0.17.3 with the installed h2 (>= 4.3), the variant served by a real Hypercorn with
  h2fix.apply(fixes=["request_received"]): `curl --http2` (the h2c Upgrade, `initiate`)
  must get the whole response, and a pushed response (`_create_server_push`) must arrive.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import h2fix
from h2fix import Outcome, UnrecognisedStructureError
from h2fix._environment import H2_KEYWORD_EVENTS, H2_NO_ARGUMENT_EVENTS, Environment
from h2fix._probe import ServerExitedError, free_port
from h2fix._probe import serving as serving_command
from support.clients import curl_h2c, pushed_responses
from support.edits import Edit, in_method, method_text, replace_once, replacing
from support.isolated import copy_package
from support.releases import h2_source, unpacked
from support.servers import TESTS, WITH_FIX
from support.verdicts import check_verdict
from support.versions import served_on_default_python

FIX = "request_received"
KEYWORD = "keyword"  # h2 >= 4.3: RequestReceived(*, stream_id, headers=..., ...)
NO_ARGUMENT = "no-argument"  # h2 <= 4.2: RequestReceived(), attributes set afterwards
ENVIRONMENTS = {KEYWORD: H2_KEYWORD_EVENTS, NO_ARGUMENT: H2_NO_ARGUMENT_EVENTS}
#: The last h2 with a no-argument RequestReceived, run from its wheel for the event check.
OLD_H2 = "4.2.0"

# --- anchors -------------------------------------------------------------------------------

# Hypercorn 0.17.3
INIT_BUILD = (
    "            event = h2.events.RequestReceived()\n"
    "            event.stream_id = 1\n"
    "            event.headers = headers\n"
)
PUSH_BUILD = (
    "            event = h2.events.RequestReceived()\n"
    "            event.stream_id = push_stream_id\n"
    "            event.headers = request_headers\n"
)
# What Hypercorn 0.18.0 writes instead
INIT_KEYWORDS = "            event = h2.events.RequestReceived(stream_id=1, headers=headers)\n"
PUSH_KEYWORDS = (
    "            event = h2.events.RequestReceived(stream_id=push_stream_id, "
    "headers=request_headers)\n"
)
H2_IMPORTS = "import h2.events\nimport h2.exceptions\n"
FLUSH_DEF = "    async def _flush(self) -> None:\n"
CLASS_HEAD = "class H2Protocol:\n"
INITIATE_DEF = "    async def initiate(\n"
INIT_TAIL = "        self.task_group.spawn(self.send_task)\n"

# A helper with a side effect (it counts), in the protocol class.
NEXT_ID_HELPER = (
    "    def _next_upgrade_id(self) -> int:\n"
    "        self.upgrades = getattr(self, 'upgrades', 0) + 1\n"
    "        return 1\n\n"
)
# A helper that reads the event it is given (what it sees depends on when it runs).
NOTE_HELPER = (
    "    def _note_upgrade(self, event: h2.events.RequestReceived) -> None:\n"
    "        self.noted = (event.stream_id, event.headers)\n\n"
)
# A RequestReceived that is not h2's: it keeps the no-argument construction.
LOCAL_CLASS = '''class RequestReceived:
    """The request the protocol makes up itself (h2c upgrade, server push)."""

    def __init__(self) -> None:
        self.stream_id: Optional[int] = None
        self.headers: Optional[List[Tuple[bytes, bytes]]] = None
        self.stream_ended = None
        self.priority_updated = None


'''
# A RequestReceived that is not h2's and takes keywords (for h2 4.2: nothing to undo).
LOCAL_KEYWORD_CLASS = '''class RequestReceived:
    """The request the protocol makes up itself (h2c upgrade, server push)."""

    def __init__(self, *, stream_id: int, headers: List[Tuple[bytes, bytes]]) -> None:
        self.stream_id = stream_id
        self.headers = headers


'''


def both(old: str, new: str) -> Callable[[str], str]:
    """Replace `old` by `new` where it occurs twice (the upgrade and the push)."""

    def edit(text: str) -> str:
        assert text.count(old) == 2, f"expected twice: {old!r}"
        return text.replace(old, new)

    return edit


def chain(*edits: Edit) -> Edit:
    def edit(text: str) -> str:
        for one in edits:
            text = one(text)
        return text

    return edit


def add_to_class(member: str) -> Edit:
    return replacing((FLUSH_DEF, member + FLUSH_DEF))


# --- benign drift on 0.17.3: it must still be fixed -------------------------------------------

comments = replacing(
    (
        INIT_BUILD,
        "            # The upgraded request arrives as stream 1 (RFC 9113 3.2).\n"
        "            event = h2.events.RequestReceived()  # built as if the client had sent it\n"
        "            event.stream_id = 1\n"
        "            # the HTTP/1.1 request's headers, already translated\n"
        "            event.headers = headers\n",
    ),
    (
        PUSH_BUILD,
        "            event = h2.events.RequestReceived()  # as if the client had asked\n"
        "            event.stream_id = push_stream_id\n"
        "            event.headers = request_headers\n",
    ),
)
# A comment on the assignment a fold removes: keeping it takes a choice of where.
comment_on_moved_assignment = replacing(
    (
        INIT_BUILD,
        "            event = h2.events.RequestReceived()\n"
        "            # always the first stream\n"
        "            event.stream_id = 1  # RFC 9113 3.2\n"
        "            event.headers = headers\n",
    ),
)
event_renamed = chain(
    in_method("initiate", lambda m: re.sub(r"\bevent\b", "upgrade_request", m)),
    in_method("_create_server_push", lambda m: re.sub(r"\bevent\b", "promised", m)),
)
from_import = chain(
    replacing(
        (
            H2_IMPORTS,
            "import h2.events\nimport h2.exceptions\nfrom h2.events import RequestReceived\n",
        )
    ),
    both("event = h2.events.RequestReceived()\n", "event = RequestReceived()\n"),
)
assignments_reordered = replacing(
    (
        INIT_BUILD,
        "            event = h2.events.RequestReceived()\n"
        "            event.headers = headers\n"
        "            event.stream_id = 1\n",
    ),
    (
        PUSH_BUILD,
        "            event = h2.events.RequestReceived()\n"
        "            event.headers = request_headers\n"
        "            event.stream_id = push_stream_id\n",
    ),
)
LOGGING = (
    ("from typing import Awaitable,", "import logging\nfrom typing import Awaitable,"),
    ("BUFFER_HIGH_WATER = ", "logger = logging.getLogger(__name__)\n\nBUFFER_HIGH_WATER = "),
)
logging_around = replacing(
    *LOGGING,
    (
        INIT_BUILD,
        '            logger.debug("h2c upgrade with %d headers", len(headers))\n'
        + INIT_BUILD
        + '            logger.debug("upgraded request built")\n',
    ),
    (PUSH_BUILD, PUSH_BUILD + '            logger.debug("pushing %r", path)\n'),
)
logging_between = replacing(
    *LOGGING,
    (
        INIT_BUILD,
        "            event = h2.events.RequestReceived()\n"
        '            logger.debug("h2c upgrade")\n'
        "            event.stream_id = 1\n"
        "            event.headers = headers\n",
    ),
)


def events_module_aliased(text: str) -> str:
    text = replace_once(text, "import h2.events\n", "import h2.events as h2_events\n")
    return text.replace("h2.events.", "h2_events.")


annotated_construction = replacing(
    (
        INIT_BUILD,
        "            event: h2.events.RequestReceived = h2.events.RequestReceived()\n"
        "            event.stream_id = 1\n"
        "            event.headers = headers\n",
    )
)
priority_updated_set = replacing(
    (INIT_BUILD, INIT_BUILD + "            event.priority_updated = None\n")
)
push_already_keywords = replacing((PUSH_BUILD, PUSH_KEYWORDS))
# --- already right for h2 4.4, or not h2's event: nothing to do ------------------------------

already_keywords = replacing((INIT_BUILD, INIT_KEYWORDS), (PUSH_BUILD, PUSH_KEYWORDS))
# anycorn 0.18.2+'s way: the one required field as a keyword, the rest assigned.
stream_id_keyword_only = replacing(
    (
        INIT_BUILD,
        "            event = h2.events.RequestReceived(stream_id=1)\n"
        "            event.headers = headers\n",
    ),
    (
        PUSH_BUILD,
        "            event = h2.events.RequestReceived(stream_id=push_stream_id)\n"
        "            event.headers = request_headers\n",
    ),
)
local_class = chain(
    replacing((CLASS_HEAD, LOCAL_CLASS + CLASS_HEAD)),
    both("event = h2.events.RequestReceived()\n", "event = RequestReceived()\n"),
)
# h2's class imported by name, then shadowed by the module's own (the later binding wins).
import_shadowed = chain(
    replacing(
        (H2_IMPORTS, H2_IMPORTS + "from h2.events import RequestReceived\n"),
        (CLASS_HEAD, LOCAL_CLASS + CLASS_HEAD),
    ),
    both("event = h2.events.RequestReceived()\n", "event = RequestReceived()\n"),
)
SUBCLASS_OWN_INIT = '''class UpgradeRequest(h2.events.RequestReceived):
    """h2's event, built the way this module always has (its own no-argument __init__)."""

    def __init__(self) -> None:
        self.stream_id = None
        self.headers = None
        self.stream_ended = None
        self.priority_updated = None


'''
subclass_with_own_init = chain(
    replacing((CLASS_HEAD, SUBCLASS_OWN_INIT + CLASS_HEAD)),
    both("event = h2.events.RequestReceived()\n", "event = UpgradeRequest()\n"),
)
LEGACY_H2 = (
    LOCAL_CLASS + "_LEGACY_H2 = types.SimpleNamespace(\n"
    "    events=types.SimpleNamespace(RequestReceived=RequestReceived)\n"
    ")\n\n\n"
)
# initiate() builds the module's own event through a local `h2`; the push still uses h2's.
h2_rebound_in_initiate = chain(
    replacing(
        ("from typing import Awaitable,", "import types\nfrom typing import Awaitable,"),
        (CLASS_HEAD, LEGACY_H2 + CLASS_HEAD),
    ),
    in_method(
        "initiate",
        lambda m: replace_once(m, "        if settings is not None:\n",
                               "        h2 = _LEGACY_H2\n        if settings is not None:\n"),
    ),
)  # fmt: skip

# --- the object the moved assignments act on ------------------------------------------------

event_aliased = replacing(
    (
        INIT_BUILD,
        "            event = h2.events.RequestReceived()\n"
        "            upgrade = event\n"
        "            upgrade.stream_id = 1\n"
        "            upgrade.headers = headers\n",
    )
)
# The protocol's own attribute is set between; the event's value reads it back.
value_set_on_self_between = replacing(
    (
        INIT_BUILD,
        "            event = h2.events.RequestReceived()\n"
        "            self.upgrade_stream_id = 1\n"
        "            event.stream_id = self.upgrade_stream_id\n"
        "            event.headers = headers\n",
    )
)
# --- the values it moves --------------------------------------------------------------------

value_with_side_effect = chain(
    replacing(
        (
            INIT_BUILD,
            INIT_BUILD.replace("event.stream_id = 1", "event.stream_id = self._next_upgrade_id()"),
        )
    ),
    add_to_class(NEXT_ID_HELPER),
)
value_reads_event = replacing(
    (
        PUSH_BUILD,
        "            event = h2.events.RequestReceived()\n"
        "            event.stream_id = push_stream_id\n"
        '            event.headers = request_headers + [(b"x-pushed", b"%d" % event.stream_id)]\n',
    )
)
headers_rebound_between = replacing(
    (
        INIT_BUILD,
        "            event = h2.events.RequestReceived()\n"
        "            event.stream_id = 1\n"
        '            headers = [*headers, (b"x-upgraded", b"h2c")]\n'
        "            event.headers = headers\n",
    )
)
unknown_attribute = replacing((INIT_BUILD, INIT_BUILD + "            event.upgraded = True\n"))
duplicate_assignment = replacing(
    (
        INIT_BUILD,
        "            event = h2.events.RequestReceived()\n"
        "            event.headers = []\n"
        "            event.stream_id = 1\n"
        "            event.headers = headers\n",
    )
)
missing_stream_id = replacing(
    (
        INIT_BUILD,
        "            event = h2.events.RequestReceived()\n            event.headers = headers\n",
    )
)
stream_id_after_handing_on = in_method(
    "initiate",
    lambda m: replace_once(
        replace_once(m, "            event.stream_id = 1\n", ""),
        "            await self._create_stream(event)\n",
        "            await self._create_stream(event)\n            event.stream_id = 1\n",
    ),
)

augmented_headers_after = replacing(
    (INIT_BUILD, INIT_BUILD + '            event.headers += [(b"x-upgraded", b"h2c")]\n')
)

# --- the call it changes ----------------------------------------------------------------------

passed_to_helper_first = chain(
    replacing(
        (
            INIT_BUILD,
            "            event = h2.events.RequestReceived()\n"
            "            self._note_upgrade(event)\n"
            "            event.stream_id = 1\n"
            "            event.headers = headers\n",
        )
    ),
    add_to_class(NOTE_HELPER),
)
passed_to_helper_between = chain(
    replacing(
        (
            INIT_BUILD,
            "            event = h2.events.RequestReceived()\n"
            "            event.stream_id = 1\n"
            "            self._note_upgrade(event)\n"
            "            event.headers = headers\n",
        )
    ),
    add_to_class(NOTE_HELPER),
)
positional_arguments = replacing(
    (INIT_BUILD, "            event = h2.events.RequestReceived(1, headers)\n")
)
# h2's own class, imported under another name: still h2's, still a TypeError with h2 4.4.
import_as_alias = chain(
    replacing(
        (H2_IMPORTS, H2_IMPORTS + "from h2.events import RequestReceived as Received\n"),
    ),
    both("event = h2.events.RequestReceived()\n", "event = Received()\n"),
)
# Written for both h2 lines: keywords first, the old way if they are refused.
try_except_compat = replacing(
    (
        INIT_BUILD,
        "            try:\n"
        "                event = h2.events.RequestReceived(stream_id=1, headers=headers)\n"
        "            except TypeError:  # h2 < 4.3 builds it without arguments\n"
        "                event = h2.events.RequestReceived()\n"
        "                event.stream_id = 1\n"
        "                event.headers = headers\n",
    )
)
SUBCLASS = '''class UpgradeRequest(h2.events.RequestReceived):
    """h2's event, named for where it comes from (h2's own constructor)."""


'''
subclass_without_init = chain(
    replacing((CLASS_HEAD, SUBCLASS + CLASS_HEAD)),
    in_method(
        "initiate",
        lambda m: replace_once(
            m, "event = h2.events.RequestReceived()", "event = UpgradeRequest()"
        ),
    ),
)

# --- the function the server runs -------------------------------------------------------------


def initiate_defined_twice(text: str) -> str:
    later = method_text(text, "initiate").replace(
        "        await self._flush()\n", "        await self._flush()  # the definition that runs\n"
    )
    return replace_once(text, FLUSH_DEF, later + FLUSH_DEF)


def initiate_overridden_in_subclass(text: str) -> str:
    override = method_text(text, "initiate")
    text = replace_once(text, CLASS_HEAD, "class _BaseH2Protocol:\n")
    return text + "\n\nclass H2Protocol(_BaseH2Protocol):\n" + override.rstrip("\n") + "\n"


def fixed_copy_first(text: str) -> str:
    """A definition already in 0.18.0's form, then the one that runs, in 0.17.3's."""
    earlier = method_text(text, "initiate").replace(INIT_BUILD, INIT_KEYWORDS)
    return replace_once(text, INITIATE_DEF, earlier + INITIATE_DEF)


DECORATOR = """def _traced(
    method: Callable[..., Awaitable[None]],
) -> Callable[..., Awaitable[None]]:
    @functools.wraps(method)
    async def traced(*args: Any, **kwargs: Any) -> None:
        await method(*args, **kwargs)

    return traced


"""
initiate_decorated = replacing(
    ("from typing import Awaitable,", "import functools\nfrom typing import Any, Awaitable,"),
    (CLASS_HEAD, DECORATOR + CLASS_HEAD),
    (INITIATE_DEF, "    @_traced\n" + INITIATE_DEF),
)
dead_copy_after_return = replacing(
    (
        INIT_TAIL,
        INIT_TAIL + "        return\n"
        "        event = h2.events.RequestReceived()  # unreachable: an older upgrade path\n"
        "        event.stream_id = 1\n",
    )
)


built_in_nested_function = replacing(
    (
        INIT_BUILD,
        "\n            def upgrade_event() -> h2.events.RequestReceived:\n"
        "                event = h2.events.RequestReceived()\n"
        "                event.stream_id = 1\n"
        "                event.headers = headers\n"
        "                return event\n\n"
        "            event = upgrade_event()\n",
    )
)

# --- keyword construction on h2 4.2 (0.18.0, anycorn 0.18.7) -----------------------------------

n_from_import = chain(
    replacing((H2_IMPORTS, H2_IMPORTS + "from h2.events import RequestReceived\n")),
    replacing(
        (INIT_KEYWORDS, INIT_KEYWORDS.replace("h2.events.RequestReceived", "RequestReceived")),
        (PUSH_KEYWORDS, PUSH_KEYWORDS.replace("h2.events.RequestReceived", "RequestReceived")),
    ),
)
n_import_as_alias = chain(
    replacing((H2_IMPORTS, H2_IMPORTS + "from h2.events import RequestReceived as Received\n")),
    replacing(
        (INIT_KEYWORDS, INIT_KEYWORDS.replace("h2.events.RequestReceived", "Received")),
        (PUSH_KEYWORDS, PUSH_KEYWORDS.replace("h2.events.RequestReceived", "Received")),
    ),
)
n_value_with_side_effect = chain(
    replacing(
        (
            INIT_KEYWORDS,
            INIT_KEYWORDS.replace("stream_id=1", "stream_id=self._next_upgrade_id()"),
        )
    ),
    add_to_class(NEXT_ID_HELPER),
)
n_extra_fields = replacing(
    (
        INIT_KEYWORDS,
        "            event = h2.events.RequestReceived(\n"
        "                stream_id=1, headers=headers, stream_ended=None, priority_updated=None\n"
        "            )\n",
    )
)
n_double_star = replacing(
    (
        INIT_KEYWORDS,
        '            event = h2.events.RequestReceived(**{"stream_id": 1, "headers": headers})\n',
    )
)
n_built_inline = in_method(
    "initiate",
    lambda m: replace_once(
        m,
        INIT_KEYWORDS
        + "            await self._create_stream(event)\n"
        + "            await self.streams[event.stream_id].handle("
        "EndBody(stream_id=event.stream_id))\n",
        "            await self._create_stream(\n"
        "                h2.events.RequestReceived(stream_id=1, headers=headers)\n"
        "            )\n"
        "            await self.streams[1].handle(EndBody(stream_id=1))\n",
    ),
)
n_local_class = chain(
    replacing((CLASS_HEAD, LOCAL_KEYWORD_CLASS + CLASS_HEAD)),
    replacing(
        (INIT_KEYWORDS, INIT_KEYWORDS.replace("h2.events.RequestReceived", "RequestReceived")),
        (PUSH_KEYWORDS, PUSH_KEYWORDS.replace("h2.events.RequestReceived", "RequestReceived")),
    ),
)


def unchanged_release(text: str) -> str:
    return text


@dataclass(frozen=True)
class Variant:
    make: Edit
    verdict: str  # "fix", "leave", "refuse", or "a|b"
    environment: str = KEYWORD
    release: tuple[str, str] = ("hypercorn", "0.17.3")
    #: Functions a rewrite must change (the definitions that run) / must leave alone.
    changes: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()
    #: (method, text, count): how often `text` may occur in the method once rewritten.
    occurs: tuple[tuple[str, str, int], ...] = ()
    #: The reviewer's own verdict where the accepted one also allows what the matcher does
    #: (a needless refusal), with why it is needless.
    needless: str = ""


K, N = KEYWORD, NO_ARGUMENT
H18 = ("hypercorn", "0.18.0")
ANY = ("anycorn", "0.18.7")
INITIATE, PUSH = "H2Protocol.initiate", "H2Protocol._create_server_push"
NEEDLESS_LOGGING = "fix: a log call that neither sees the event nor can rebind the locals it moves"
NEEDLESS_COMMENT = "fix: the comment could stay where it was, above the folded construction"
NEEDLESS_LOCAL = "leave: the class is the module's own, it takes no arguments under any h2"

VARIANTS: dict[str, Variant] = {
    # the releases as they are
    "hypercorn-0.17.3": Variant(unchanged_release, "fix", changes=(INITIATE, PUSH)),
    "hypercorn-0.17.3-old-h2": Variant(unchanged_release, "leave", N),
    # benign drift on 0.17.3 (h2 4.4)
    "comments": Variant(comments, "fix", changes=(INITIATE, PUSH)),
    "comment-on-moved-assignment": Variant(
        comment_on_moved_assignment, "fix|refuse", needless=NEEDLESS_COMMENT
    ),
    "event-renamed": Variant(event_renamed, "fix", changes=(INITIATE, PUSH)),
    "from-import": Variant(from_import, "fix", changes=(INITIATE, PUSH)),
    "assignments-reordered": Variant(assignments_reordered, "fix", changes=(INITIATE, PUSH)),
    "logging-around": Variant(logging_around, "fix", changes=(INITIATE, PUSH)),
    "logging-between": Variant(logging_between, "fix|refuse", needless=NEEDLESS_LOGGING),
    "events-module-aliased": Variant(events_module_aliased, "fix|refuse"),
    "annotated-construction": Variant(annotated_construction, "fix|refuse"),
    "priority-updated-set": Variant(priority_updated_set, "fix", changes=(INITIATE,)),
    "push-already-keywords": Variant(
        push_already_keywords, "fix", changes=(INITIATE,), unchanged=(PUSH,)
    ),
    # nothing to do with h2 4.4
    "already-keywords": Variant(already_keywords, "leave"),
    "stream-id-keyword-only": Variant(stream_id_keyword_only, "leave|fix"),
    "local-class": Variant(local_class, "leave|refuse", needless=NEEDLESS_LOCAL),
    "import-shadowed-by-local-class": Variant(
        import_shadowed, "leave|refuse", needless=NEEDLESS_LOCAL
    ),
    "subclass-with-own-init": Variant(subclass_with_own_init, "leave"),
    # initiate() binds a local `h2` to the module's own events: its `h2.events.RequestReceived`
    # is not h2's and takes no arguments; only the push may change.
    "h2-rebound-in-initiate": Variant(
        h2_rebound_in_initiate, "fix|refuse", changes=(PUSH,), unchanged=(INITIATE,)
    ),
    # the object the assignments act on
    "event-aliased": Variant(event_aliased, "fix|refuse"),
    "value-set-on-self-between": Variant(value_set_on_self_between, "fix|refuse"),
    # the values it moves
    "value-with-side-effect": Variant(
        value_with_side_effect, "fix|refuse", occurs=(("initiate", "_next_upgrade_id()", 1),)
    ),
    "value-reads-event": Variant(value_reads_event, "fix|refuse"),
    "headers-rebound-between": Variant(headers_rebound_between, "fix|refuse"),
    "unknown-attribute": Variant(unknown_attribute, "fix|refuse"),
    "duplicate-assignment": Variant(duplicate_assignment, "fix|refuse"),
    "augmented-headers-after": Variant(augmented_headers_after, "fix", changes=(INITIATE,)),
    "missing-stream-id": Variant(missing_stream_id, "refuse"),
    "stream-id-after-handing-on": Variant(stream_id_after_handing_on, "refuse"),
    # the call it changes
    "passed-to-helper-first": Variant(passed_to_helper_first, "refuse"),
    "passed-to-helper-between": Variant(passed_to_helper_between, "fix|refuse"),
    "positional-arguments": Variant(positional_arguments, "leave|refuse"),
    # Leaving it is no answer: the server still fails while the report says nothing to do.
    "import-as-alias": Variant(import_as_alias, "fix|refuse"),
    "try-except-compat": Variant(try_except_compat, "leave|fix"),
    # h2's class under another name, no __init__ of its own: still TypeError with h2 4.4, so
    # a rewrite must change initiate() too (or refuse), never report the module repaired.
    "subclass-without-init": Variant(subclass_without_init, "fix|refuse", changes=(INITIATE,)),
    # the function the server runs
    "initiate-defined-twice": Variant(initiate_defined_twice, "fix|refuse"),
    "fixed-copy-first": Variant(fixed_copy_first, "fix|refuse"),
    "initiate-overridden-in-subclass": Variant(initiate_overridden_in_subclass, "fix|refuse"),
    "initiate-decorated": Variant(initiate_decorated, "fix|refuse"),
    "dead-copy-after-return": Variant(dead_copy_after_return, "fix|refuse"),
    "built-in-nested-function": Variant(built_in_nested_function, "fix|refuse"),
    # keyword construction with h2 4.2
    "hypercorn-0.18.0": Variant(unchanged_release, "fix", N, H18, changes=(INITIATE, PUSH)),
    "anycorn-0.18.7": Variant(unchanged_release, "fix", N, ANY, changes=(INITIATE, PUSH)),
    "n-from-import": Variant(n_from_import, "fix", N, H18, changes=(INITIATE, PUSH)),
    "n-value-with-side-effect": Variant(
        n_value_with_side_effect,
        "fix|refuse",
        N,
        H18,
        occurs=(("initiate", "_next_upgrade_id()", 1),),
    ),
    "n-import-as-alias": Variant(n_import_as_alias, "fix|refuse", N, H18),
    "n-extra-fields": Variant(n_extra_fields, "fix", N, H18, changes=(INITIATE,)),
    "n-double-star": Variant(n_double_star, "fix|refuse", N, H18),
    "n-built-inline": Variant(n_built_inline, "fix|refuse", N, H18),
    "n-local-class": Variant(n_local_class, "leave|refuse", N, H18, needless=NEEDLESS_LOCAL),
}


@pytest.fixture(scope="module")
def sources() -> dict[tuple[str, str], str]:
    return {release: h2_source(*release) for release in {v.release for v in VARIANTS.values()}}


def outcome_of(result: h2fix.Rewrite) -> h2fix.FixOutcome:
    return next(o for o in result.outcomes if o.fix == FIX)


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_compiles(sources: dict[tuple[str, str], str], name: str) -> None:
    """Every variant is code a maintainer could ship: a refusal is about its structure."""
    variant = VARIANTS[name]
    text = variant.make(sources[variant.release])
    compile(text, "h2.py", "exec", dont_inherit=True)
    if variant.make is not unchanged_release:
        assert text != sources[variant.release]


@pytest.mark.parametrize("name", VARIANTS)
def test_verdict(sources: dict[tuple[str, str], str], name: str, tmp_path: Path) -> None:
    variant = VARIANTS[name]
    text = variant.make(sources[variant.release])
    environment = ENVIRONMENTS[variant.environment]
    rewritten = check_verdict(text, FIX, variant.verdict, environment=environment)
    if rewritten is None:
        return
    result, outcome = rewritten
    for function in variant.changes:
        assert function in outcome.functions, f"{function} unchanged: {outcome}"
    for function in variant.unchanged:
        assert function not in outcome.functions, f"{function} changed: {outcome}"
        method = function.rsplit(".", 1)[1]
        assert method_text(result.source, method) == method_text(text, method), result.diff()
    for method, needle, count in variant.occurs:
        found = method_text(result.source, method).count(needle)
        assert found == count, f"{needle!r} {found} times in {method}:\n{result.diff()}"


# What a rewrite's statements build does not depend on the tests' Python, and running them
# takes two interpreters per variant: once, on CI's default Python.
@served_on_default_python
@pytest.mark.parametrize("name", VARIANTS)
def test_rewrite_builds_the_same_event(
    sources: dict[tuple[str, str], str], name: str, tmp_path: Path
) -> None:
    """The event each changed function builds: the original under the h2 it was written
    for, the rewrite under the h2 it was rewritten for."""
    variant = VARIANTS[name]
    text = variant.make(sources[variant.release])
    environment = ENVIRONMENTS[variant.environment]
    result = h2fix.rewrite(text, [FIX], environment=environment, strict=False)
    outcome = next(o for o in result.outcomes if o.fix == FIX)
    if not outcome.outcome.changes_code:
        pytest.skip(f"h2fix does not rewrite this variant: {outcome}")
    methods = sorted({f.rsplit(".", 1)[1] for f in outcome.functions})
    old, new = built_with(OLD_H2, tmp_path), built_with("installed", tmp_path)
    if variant.environment == KEYWORD:
        before, after = old(text, methods), new(result.source, methods)
    else:
        before, after = new(text, methods), old(result.source, methods)
    before, after = changed_constructions(before, after)
    assert after == before, (
        f"the rewrite builds another event:\n{json.dumps(after, indent=1)}\n"
        f"the original builds:\n{json.dumps(before, indent=1)}\n{result.diff()}"
    )


def test_own_output_is_stable(sources: dict[tuple[str, str], str]) -> None:
    """The fix, run again on its own output for the same h2, has nothing left to do; run for
    the other h2 on its own output, it gives back the release."""
    original = sources[("hypercorn", "0.17.3")]
    once = h2fix.rewrite(original, [FIX], environment=H2_KEYWORD_EVENTS)
    assert outcome_of(once).outcome is Outcome.REWRITTEN
    again = h2fix.rewrite(once.source, [FIX], environment=H2_KEYWORD_EVENTS)
    assert not outcome_of(again).outcome.changes_code
    back = h2fix.rewrite(once.source, [FIX], environment=H2_NO_ARGUMENT_EVENTS)
    assert back.source == original


def test_the_corpus_is_large_enough() -> None:
    assert 35 <= len(VARIANTS) <= 50
    verdicts = {part for v in VARIANTS.values() for part in v.verdict.split("|")}
    assert {"fix", "refuse", "leave"} <= verdicts
    assert sum(v.environment == NO_ARGUMENT for v in VARIANTS.values()) >= 8


# --- the event a construction builds, under a real h2 -----------------------------------------

# Run in a fresh interpreter with the chosen h2 first on the path. For every statement list
# in the named methods that builds a RequestReceived, it runs the statements from the
# construction to the one that hands the event on (the `_create_stream(...)` call, a
# `return`, or the end of the list) inside an async function whose locals are a request's,
# with `self` an object that has only the variant's own methods. It prints the event built
# and what the statements left on `self`, as plain data (h2 4.2 and 4.4 differ in repr and
# in how an unset field looks, not in the fields).
BUILD_HARNESS = r'''
import __future__
import ast
import asyncio
import json
import sys
import types

import h2
import h2.events

LOCALS = """\
headers = [(b":method", b"GET"), (b":path", b"/hello"), (b":authority", b"127.0.0.1")]
settings = None
stream_id = 1
path = b"/hello"
push_stream_id = 2
request_headers = [(b":method", b"GET"), (b":path", b"/hello")]
"""
FIELDS = ("stream_id", "headers", "stream_ended", "priority_updated")
EVENT_CLASSES = ("RequestReceived", "UpgradeRequest")
STATEMENT = (ast.stmt, ast.excepthandler)
FLAGS = __future__.annotations.compiler_flag


def described(value):
    if isinstance(value, h2.events.Event) or type(value).__name__ == "RequestReceived":
        out = {"class": type(value).__name__}
        out.update({f: described(getattr(value, f, None)) for f in FIELDS})
        extra = getattr(value, "__dict__", {})
        out.update({k: described(v) for k, v in extra.items() if k not in FIELDS})
        return out
    if value is None or type(value) is object:  # unset: None in 4.2, a sentinel in 4.4
        return "<unset>"
    if isinstance(value, (list, tuple)):
        return [described(v) for v in value]
    if isinstance(value, dict):
        return {str(k): described(v) for k, v in sorted(value.items())}
    return repr(value)


def builds(node):
    return any(
        isinstance(n, ast.Call)
        and getattr(n.func, "id", getattr(n.func, "attr", None)) in EVENT_CLASSES
        for n in ast.walk(node)
    )


def hands_on(node):
    return isinstance(node, ast.Return) or any(
        isinstance(n, ast.Call) and getattr(n.func, "attr", None) == "_create_stream"
        for n in ast.walk(node)
    )


def statement_lists(node):
    for field in ("body", "orelse", "finalbody", "handlers"):
        block = getattr(node, field, None)
        if isinstance(block, list) and block and isinstance(block[0], STATEMENT):
            yield block
            for child in block:
                yield from statement_lists(child)


SIMPLE = (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.Expr, ast.Return)


def plain_bindings(function, block):
    """The function's own `name = value` statements before `block` whose values call
    nothing (e.g. `h2 = _LEGACY_H2`, `request_headers = [...]`): the snippet may read them."""
    found = []
    for statement in function.body:
        if any(node is block[0] for node in ast.walk(statement)):
            break  # the statement that holds the snippet: what follows runs after it
        if (
            isinstance(statement, ast.Assign)
            and all(isinstance(t, ast.Name) for t in statement.targets)
            and not any(isinstance(n, (ast.Call, ast.Await)) for n in ast.walk(statement.value))
        ):
            found.append(ast.unparse(statement))
    return found


def snippets(function):
    for block in statement_lists(function):
        start = next((i for i, s in enumerate(block) if isinstance(s, SIMPLE) and builds(s)), None)
        if start is None:
            continue
        end = next((i for i in range(start, len(block)) if hands_on(block[i])), len(block))
        if end < len(block) and isinstance(block[end], ast.Return):
            result = ast.unparse(block[end].value)
        elif end < len(block):
            call = next(
                n for n in ast.walk(block[end])
                if isinstance(n, ast.Call) and getattr(n.func, "attr", None) == "_create_stream"
            )
            result = ast.unparse(call.args[0])
        else:
            first = block[start]
            target = first.targets[0] if isinstance(first, ast.Assign) else first.target
            result = ast.unparse(target)
        statements = [ast.unparse(s) for s in block[start:end]]
        yield "\n".join(plain_bindings(function, block) + statements), result


def module_namespace(tree):
    namespace = {"__name__": "variant"}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and (node.level or node.module == "__future__"):
            continue  # the package's own modules are not needed to build an event
        code = compile(ast.Module([node], []), "variant", "exec", flags=FLAGS, dont_inherit=True)
        try:
            exec(code, namespace)
        except Exception:
            pass
    return namespace


def run(source, methods):
    tree = ast.parse(source)
    namespace = module_namespace(tree)
    protocol = namespace.get("H2Protocol")
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in methods:
            for body, result in snippets(node):
                found.append(built(namespace, protocol, node.name, body, result))
    return found


def built(namespace, protocol, method, body, result):
    class Self:
        def __getattr__(self, name):
            member = getattr(protocol, name, None)
            if callable(member):
                return member.__get__(self)
            raise AttributeError(name)

    code = "async def __built(self):\n"
    for line in (LOCALS + body + f"\nreturn {result}").splitlines():
        code += "    " + line + "\n"
    scope = dict(namespace)
    exec(compile(code, "snippet", "exec", flags=FLAGS, dont_inherit=True), scope)
    me = Self()
    try:
        event = asyncio.run(scope["__built"](me))
    except Exception as error:
        return {"method": method, "code": body, "error": f"{type(error).__name__}: {error}"}
    return {"method": method, "code": body, "event": described(event), "self": described(vars(me))}


request = json.load(sys.stdin)
print(json.dumps({"h2": h2.__version__, "built": run(request["source"], request["methods"])}))
'''


def built_with(h2_version: str, tmp_path: Path) -> Callable[[str, list[str]], list[Any]]:
    """The events the named methods of a module build, under h2 `h2_version` (a release's
    wheel), or the installed h2 ("installed")."""
    path = [] if h2_version == "installed" else [str(unpacked("h2", h2_version))]

    def run(source: str, methods: list[str]) -> list[Any]:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
        completed = subprocess.run(
            [sys.executable, "-c", BUILD_HARNESS],
            input=json.dumps({"source": source, "methods": methods}),
            capture_output=True, text=True, env=env, cwd=tmp_path, check=False, timeout=60,
        )  # fmt: skip
        assert completed.returncode == 0, completed.stderr
        report = json.loads(completed.stdout)
        if h2_version != "installed":
            assert report["h2"] == h2_version, report
        built: list[Any] = report["built"]
        assert built, f"no RequestReceived construction found in {methods}"
        return built

    return run


def changed_constructions(before: list[Any], after: list[Any]) -> tuple[list[Any], list[Any]]:
    """The constructions the rewrite changed (each has its code): one left as it was, e.g. a
    branch written for the other h2, is not the rewrite's to answer for."""
    if len(before) != len(after):
        return before, after  # a construction appeared or went: compare them all
    pairs = [(b, a) for b, a in zip(before, after) if b["code"] != a["code"]]
    for pair in pairs:
        for side in pair:
            del side["code"]
    return [b for b, _ in pairs], [a for _, a in pairs]


def test_the_event_check_tells_the_h2_versions_apart(tmp_path: Path) -> None:
    """The unrepaired 0.17.3 construction fails under the installed h2 (>= 4.3) and works
    under h2 4.2: the event check runs each side where it is meant to."""
    if Environment.detect().request_received_required != ("stream_id",):
        pytest.skip("the installed h2 is older than 4.3: the check needs keyword-only events")
    original = h2_source("hypercorn", "0.17.3")
    [old_init] = built_with(OLD_H2, tmp_path)(original, ["initiate"])
    [new_init] = built_with("installed", tmp_path)(original, ["initiate"])
    assert old_init["event"]["stream_id"] == "1", old_init
    assert "TypeError" in new_init["error"], new_init


def test_the_event_check_catches_a_wrong_fold(tmp_path: Path) -> None:
    """Folding `event.headers = headers` into the construction, above the line that
    rebinds `headers`, builds an event without the added header: the check sees it."""
    text = headers_rebound_between(h2_source("hypercorn", "0.17.3"))
    wrong = replace_once(
        text,
        "            event = h2.events.RequestReceived()\n"
        "            event.stream_id = 1\n"
        '            headers = [*headers, (b"x-upgraded", b"h2c")]\n'
        "            event.headers = headers\n",
        "            event = h2.events.RequestReceived(stream_id=1, headers=headers)\n"
        '            headers = [*headers, (b"x-upgraded", b"h2c")]\n',
    )
    [before] = built_with(OLD_H2, tmp_path)(text, ["initiate"])
    [after] = built_with("installed", tmp_path)(wrong, ["initiate"])
    assert "x-upgraded" in json.dumps(before)
    assert after != before


# --- serving every variant the fix rewrites on 0.17.3 ------------------------------------------

REFUSED_EXIT = 3
# Serves the test app like support.serve, but applies h2fix itself (a refusal is exit 3, not
# a crash) with only the fixes named by --only-fix, or with every fix (--every-fix), or with
# none (the release as it is).
LAUNCHER = f"""
import sys

import h2fix
import support.serve as serve

only = [sys.argv[i + 1] for i, arg in enumerate(sys.argv) if arg == "--only-fix"]
try:
    if only or "--every-fix" in sys.argv:
        print(h2fix.apply("hypercorn", fixes=only or None), file=sys.stderr, flush=True)
except h2fix.H2FixError as error:
    print(f"REFUSED {{type(error).__name__}}: {{error}}", file=sys.stderr, flush=True)
    raise SystemExit({REFUSED_EXIT})
sys.argv = [arg for arg in sys.argv if arg != "--every-fix"]  # support.serve does not know it
serve.main()
"""


@dataclass
class Served:
    port: int
    log: Path


@pytest.fixture
def serve_variant(tmp_path: Path) -> Iterator[Callable[..., Served | str]]:
    stack: list[Any] = []

    def start(text: str, fix: bool, every_fix: bool = False) -> Served | str:
        """The variant served with request_received applied (with every fix, or none), or
        when apply() refuses it, the server's log."""
        copy_package("hypercorn", tmp_path / "site").write_text(text)
        port = free_port()
        log = tmp_path / "server.log"
        command = [
            sys.executable, "-c", LAUNCHER, "--no-fix",
            *(["--every-fix"] if fix and every_fix else ["--only-fix", FIX] if fix else []),
            "--port", str(port), "--worker-class", "asyncio",
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(TESTS)])}
        output = log.open("wb")
        stack.append(output)
        context = serving_command(command, port, log=output, env=env, timeout=60)
        try:
            context.__enter__()
        except ServerExitedError as error:  # it exited before listening: a refusal, or a bug
            if error.code == REFUSED_EXIT:
                return log.read_text()
            raise
        stack.append(context)
        return Served(port, log)

    yield start
    for item in reversed(stack):  # the server is stopped by its own process id
        if hasattr(item, "__exit__"):
            item.__exit__(None, None, None)
        else:
            item.close()


def client_problems(served: Served) -> list[str]:
    """What goes wrong for real clients on the two paths that build the event (nothing: [])."""
    problems = []
    result = curl_h2c(served.port)
    if (result.returncode, result.stdout) != (0, "hello HTTP/2"):
        problems.append(
            f"curl --http2: exit {result.returncode}, {result.stdout!r} {result.stderr}"
        )
    try:
        response, pushed = pushed_responses(served.port)
    except Exception as error:  # the connection died, or no push came
        problems.append(f"server push: {type(error).__name__}: {error}")
    else:
        if (response.headers.get(b":status"), response.body) != (b"200", b"pushed"):
            problems.append(f"/push answered {response.headers}, {response.body!r}")
        if (pushed.headers.get(b":status"), pushed.body) != (b"200", b"hello"):
            problems.append(f"the pushed /hello: {pushed.headers}, {pushed.body!r}")
    return problems


def installed_h2_has_keyword_events() -> bool:
    return Environment.detect().request_received_required == ("stream_id",)


@pytest.mark.server
def test_the_check_catches_the_fault(serve_variant: Callable[..., Served | str]) -> None:
    """0.17.3 served as it is, with the installed h2 (>= 4.3), fails the clients' check."""
    if not installed_h2_has_keyword_events():
        pytest.skip("the installed h2 is older than 4.3: 0.17.3 has no fault with it")
    served = serve_variant(h2_source("hypercorn", "0.17.3"), False)
    assert isinstance(served, Served), served
    assert len(client_problems(served)) == 2


SERVED = [n for n, v in VARIANTS.items() if v.environment == KEYWORD and v.release[1] == "0.17.3"]


@served_on_default_python
@pytest.mark.server
@pytest.mark.parametrize("name", SERVED)
def test_rewritten_variant_serves(
    sources: dict[tuple[str, str], str],
    name: str,
    serve_variant: Callable[..., Served | str],
) -> None:
    """Whatever the verdict: if the fix changes this variant (or leaves it where it must not),
    real clients get their responses from it (with H2FIX_TEST_WITHOUT_FIX=1 nothing is
    applied, and every one of these fails)."""
    if not installed_h2_has_keyword_events():
        pytest.skip("the installed h2 is older than 4.3: the served check needs h2 >= 4.3")
    variant = VARIANTS[name]
    text = variant.make(sources[variant.release])
    try:
        result = h2fix.rewrite(text, [FIX], strict=False)
    except (UnrecognisedStructureError, h2fix.InvalidSourceError):
        pytest.skip("h2fix refuses this variant: nothing is served")
    if result.refusals:
        pytest.skip(f"h2fix refuses this variant: {[str(o) for o in result.outcomes]}")
    if not result.changed and "leave" in variant.verdict:
        pytest.skip(f"h2fix rightly changes nothing here: {[str(o) for o in result.outcomes]}")
    # Changed, or left alone where the verdict says it must not be: either way, what do
    # real clients get from it? (Left alone, it is served as a user runs it, with every fix:
    # request_received alone on a module it finds nothing in is refused as not a protocol.)
    served = serve_variant(text, WITH_FIX, not result.changed)
    if isinstance(served, str):  # apply() refused: nothing was patched
        assert "refuse" in variant.verdict, f"rewrite() fixes it, apply() refuses: {served}"
        return
    if WITH_FIX and result.changed:
        assert f"{FIX}: applied" in served.log.read_text(), served.log.read_text()
    problems = client_problems(served)
    assert not problems, "\n".join([*problems, "server log:", served.log.read_text()[-3000:]])
