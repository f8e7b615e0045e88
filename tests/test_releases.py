"""Every release in the version table, downloaded from the registry, classified right."""

from __future__ import annotations

import ast

import pytest

import h2fix
from h2fix import Outcome
from h2fix._environment import H2_KEYWORD_EVENTS, H2_NO_ARGUMENT_EVENTS
from support.releases import h2_source

pytestmark = pytest.mark.network

RELEASES = {
    ("hypercorn", "0.16.0"): Outcome.NOT_APPLICABLE,
    ("hypercorn", "0.17.0"): Outcome.REWRITTEN,
    ("hypercorn", "0.17.1"): Outcome.REWRITTEN,
    ("hypercorn", "0.17.2"): Outcome.REWRITTEN,
    ("hypercorn", "0.17.3"): Outcome.REWRITTEN,
    ("hypercorn", "0.18.0"): Outcome.FIXED_UPSTREAM,
    ("anycorn", "0.18.1"): Outcome.REWRITTEN,
    ("anycorn", "0.18.7"): Outcome.REWRITTEN,
    ("anycorn", "0.19.0"): Outcome.FIXED_UPSTREAM,
    ("anycorn", "0.20.1"): Outcome.FIXED_UPSTREAM,
}


@pytest.mark.parametrize(
    ("release", "expected"), RELEASES.items(), ids=["-".join(r) for r in RELEASES]
)
def test_release_is_classified(release: tuple[str, str], expected: Outcome) -> None:
    source = h2_source(*release)
    result = h2fix.rewrite(source, ["trailers"])
    assert [o.outcome for o in result.outcomes] == [expected]
    assert result.changed == (expected is Outcome.REWRITTEN)
    if result.changed:
        # Only the one method changes, and the result still compiles.
        assert result.changed_functions == ("H2Protocol.stream_send",)
        compile(result.source, "h2.py", "exec", dont_inherit=True)
        assert _functions(result.source, exclude="stream_send") == _functions(
            source, exclude="stream_send"
        )


def _method(source: str, name: str, body_only: bool = False) -> str:
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.AsyncFunctionDef) and node.name == name:
            return ast.dump(ast.Module(body=node.body, type_ignores=[]) if body_only else node)
    raise AssertionError(f"no method {name}")


def _functions(source: str, exclude: str) -> list[str]:
    return [
        ast.dump(node)
        for node in ast.walk(ast.parse(source))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name != exclude
    ]


@pytest.mark.parametrize(
    ("buggy", "fixed"),
    [
        (("hypercorn", "0.17.3"), ("hypercorn", "0.18.0")),
        (("anycorn", "0.18.7"), ("anycorn", "0.19.0")),
    ],
    ids=["hypercorn", "anycorn"],
)
def test_rewritten_method_equals_upstream_fix(
    buggy: tuple[str, str], fixed: tuple[str, str]
) -> None:
    rewritten = h2fix.rewrite(h2_source(*buggy), ["trailers"]).source
    assert _method(rewritten, "stream_send") == _method(h2_source(*fixed), "stream_send")


# request_received, with h2 >= 4.3 and with h2 <= 4.2
EVENT_RELEASES = {
    ("hypercorn", "0.16.0"): (Outcome.REWRITTEN, Outcome.NOT_NEEDED),
    ("hypercorn", "0.17.3"): (Outcome.REWRITTEN, Outcome.NOT_NEEDED),
    ("hypercorn", "0.18.0"): (Outcome.FIXED_UPSTREAM, Outcome.REWRITTEN),
    ("anycorn", "0.18.1"): (Outcome.REWRITTEN, Outcome.NOT_NEEDED),
    ("anycorn", "0.18.7"): (Outcome.FIXED_UPSTREAM, Outcome.REWRITTEN),
    ("anycorn", "0.20.1"): (Outcome.FIXED_UPSTREAM, Outcome.REWRITTEN),
}


@pytest.mark.parametrize(
    ("release", "expected"), EVENT_RELEASES.items(), ids=["-".join(r) for r in EVENT_RELEASES]
)
def test_release_events_are_classified(
    release: tuple[str, str], expected: tuple[Outcome, Outcome]
) -> None:
    source = h2_source(*release)
    for environment, outcome in zip((H2_KEYWORD_EVENTS, H2_NO_ARGUMENT_EVENTS), expected):
        result = h2fix.rewrite(source, ["request_received"], environment=environment)
        assert [o.outcome for o in result.outcomes] == [outcome], environment
        if result.changed:
            compile(result.source, "h2.py", "exec", dont_inherit=True)
            assert set(result.changed_functions) == {
                "H2Protocol.initiate",
                "H2Protocol._create_server_push",
            }


@pytest.mark.parametrize("method", ["initiate", "_create_server_push"])
def test_rewritten_constructions_equal_upstream_fix(method: str) -> None:
    rewritten = h2fix.rewrite(
        h2_source("hypercorn", "0.17.3"), ["request_received"], environment=H2_KEYWORD_EVENTS
    ).source
    # 0.18.0 also modernised the annotations (List -> list): compare the bodies.
    upstream = h2_source("hypercorn", "0.18.0")
    assert _method(rewritten, method, body_only=True) == _method(upstream, method, body_only=True)
