"""What an interpreter older than 3.10 cannot run, as skip marks that say why.

h2fix itself runs on 3.9. Some of what the tests compare it with does not: these marks
skip by Python version (not by a failed import), so on 3.10+ a missing test dependency
still fails loudly instead of skipping quietly. pyproject.toml's test extra leaves the
same packages out below 3.10 with environment markers.
"""

from __future__ import annotations

import sys
from collections.abc import Collection
from typing import Any

import pytest

BEFORE_310 = sys.version_info < (3, 10)

needs_anycorn = pytest.mark.skipif(
    BEFORE_310, reason="anycorn 0.18.7 requires Python >= 3.10, so it is not installed here"
)
needs_hypercorn_018 = pytest.mark.skipif(
    BEFORE_310,
    reason="hypercorn 0.18.0 requires Python >= 3.10 (its config.py evaluates `bytes | ...`)",
)
needs_anycorn_020 = pytest.mark.skipif(
    BEFORE_310,
    reason="anycorn 0.20.1 requires Python >= 3.10, as does 0.18.7 (not installed here), "
    "whose dependencies it runs on",
)
needs_match_statement = pytest.mark.skipif(
    BEFORE_310, reason="the variant uses the match statement, which Python < 3.10 cannot compile"
)
needs_patchy = pytest.mark.skipif(
    BEFORE_310, reason="patchy >= 3.1 requires Python >= 3.10, so it is not installed here"
)


def rows(table: dict[str, tuple[Any, ...]], *, match_statement: Collection[str] = ()) -> list[Any]:
    """A table's rows as named parameters; those written with `match` skip before 3.10."""
    return [
        pytest.param(*row, id=name, marks=needs_match_statement if name in match_statement else ())
        for name, row in table.items()
    ]


DEFAULT_PYTHON = (3, 11)


def on_default_python(what: str, why: str) -> pytest.MarkDecorator:
    """Skip `what` except on CI's default Python, saying `why` that loses nothing: runs
    that do not depend on the tests' Python, once, keep CI's three Pythons in time."""
    return pytest.mark.skipif(
        sys.version_info[:2] != DEFAULT_PYTHON,
        reason=f"{what} on CI's default Python 3.11 only ({why})",
    )


# The served drift corpora check what a rewrite does to a server, which does not depend on the
# Python running the tests.
served_on_default_python = on_default_python(
    "the served drift corpus runs",
    "what a rewrite does to a server does not depend on the tests' Python; the rewrites "
    "themselves are checked here",
)

#: The composition of every subset of the fixes (63 rewrites of four releases) is pure
#: LibCST work: once is enough.
composed_on_default_python = on_default_python(
    "every subset of the fixes is composed",
    "each fix's own rewrite of every release is checked on every Python",
)

#: A release served from its downloaded wheel (Hypercorn 0.18.0, anycorn 0.20.1) in the
#: heavy real-client runs. The installed 0.17.3 (and anycorn 0.18.7) rows run on every
#: Python, so h2fix's runtime is served on each.
wheel_on_default_python = on_default_python(
    "this release is served from its wheel",
    "the installed release is served on every Python; this keeps CI's three Pythons in time",
)

#: The benchmark scripts are tools a developer runs (the README's figures come from the
#: default Python).
script_on_default_python = on_default_python(
    "the benchmark scripts' smoke test runs",
    "they are developer tools; h2fix's own start-up path is tested on every Python",
)
