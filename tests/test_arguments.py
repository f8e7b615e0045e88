"""Wrong arguments to the API, and a server that is installed but cannot be imported."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import h2fix
from support.isolated import copy_package, run_python

SOURCE = "x = 1\n"


@pytest.mark.parametrize(
    ("value", "found"),
    [(None, "NoneType None"), (123, "int 123"), (b"x = 1\n", "bytes b'x = 1\\n'")],
    ids=["None", "int", "bytes"],
)
def test_rewrite_needs_text(value: Any, found: str) -> None:
    with pytest.raises(h2fix.ArgumentTypeError) as caught:
        h2fix.rewrite(value)
    assert isinstance(caught.value, TypeError)
    assert str(caught.value).startswith(
        f"source: expected the text of a module (str), found {found}"
    )
    if isinstance(value, bytes):
        assert "decode it first" in str(caught.value)


def test_rewrite_needs_an_environment_object() -> None:
    with pytest.raises(
        h2fix.ArgumentTypeError, match=r"environment: expected None .* found str 'x'"
    ):
        h2fix.rewrite(SOURCE, environment="x")  # type: ignore[arg-type]


#: Every public function taking `fixes`, called with it.
WITH_FIXES: dict[str, Callable[[Any], object]] = {
    "rewrite": lambda fixes: h2fix.rewrite(SOURCE, fixes),
    "apply": lambda fixes: h2fix.apply(fixes=fixes),
    "status": lambda fixes: h2fix.status(fixes=fixes),
    "patched": lambda fixes: h2fix.patched(fixes=fixes).__enter__(),
}


@pytest.mark.parametrize("function", WITH_FIXES.values(), ids=WITH_FIXES.keys())
def test_a_plain_string_is_not_a_list_of_fixes(function: Callable[[Any], object]) -> None:
    # It used to be iterated letter by letter: "unknown fix 't'".
    with pytest.raises(h2fix.ArgumentTypeError) as caught:
        function("trailers")
    assert isinstance(caught.value, TypeError)
    assert "found str 'trailers'; write ['trailers']" in str(caught.value)


@pytest.mark.parametrize("function", WITH_FIXES.values(), ids=WITH_FIXES.keys())
def test_an_empty_list_of_fixes_is_an_error(function: Callable[[Any], object]) -> None:
    with pytest.raises(h2fix.NoFixSelectedError) as caught:
        function([])
    assert isinstance(caught.value, ValueError)
    assert "no fixes selected: expected at least one of trailers, request_received" in str(
        caught.value
    )


@pytest.mark.parametrize("function", WITH_FIXES.values(), ids=WITH_FIXES.keys())
def test_fix_names_must_be_strings(function: Callable[[Any], object]) -> None:
    with pytest.raises(h2fix.ArgumentTypeError, match=r"expected a fix name .* found int 1"):
        function(["trailers", 1])


def test_fixes_may_be_any_iterable_of_names() -> None:
    result = h2fix.rewrite(SOURCE, (name for name in ["trailers"]))
    assert [o.fix for o in result.outcomes] == ["trailers"]


#: Every public function taking `target`, called with it.
WITH_TARGET: dict[str, Callable[[Any], object]] = {
    "apply": lambda target: h2fix.apply(target),
    "status": lambda target: h2fix.status(target),
    "revert": lambda target: h2fix.revert(target),
    "patched": lambda target: h2fix.patched(target).__enter__(),
    "patch_h2_protocol": lambda target: h2fix.patch_h2_protocol(target),
}


@pytest.mark.parametrize("function", WITH_TARGET.values(), ids=WITH_TARGET.keys())
def test_target_must_be_a_name(function: Callable[[Any], object]) -> None:
    with pytest.raises(h2fix.ArgumentTypeError) as caught:
        function(["hypercorn"])
    assert isinstance(caught.value, TypeError)
    assert "target: expected a target name (str), one of 'hypercorn', 'anycorn'" in str(
        caught.value
    )


@pytest.mark.parametrize("function", WITH_TARGET.values(), ids=WITH_TARGET.keys())
def test_misspelt_target_is_an_error(function: Callable[[Any], object]) -> None:
    # revert("hypercron") used to do nothing, silently.
    with pytest.raises(h2fix.UnknownTargetError, match="unknown target 'hypercron'"):
        function("hypercron")


# --- a server that is installed but cannot be imported -------------------------


def broken_copy(tmp_path: Path, file: str) -> Path:
    """A copy of the installed hypercorn whose `file` imports a module that is missing."""
    h2_py = copy_package("hypercorn", tmp_path)
    broken = h2_py.parent.parent / file
    broken.write_text(broken.read_text() + "\nimport h2fix_test_missing_dependency\n")
    return tmp_path


@pytest.mark.parametrize("file", ["__init__.py", "protocol/h2.py"])
def test_missing_dependency_is_named(tmp_path: Path, file: str) -> None:
    code = """
        import json, h2fix
        try:
            h2fix.apply()
        except ImportError as error:
            print(json.dumps([type(error).__name__, error.name, str(error)]))
    """
    result = run_python(code, broken_copy(tmp_path, file))
    kind, name, message = json.loads(result.stdout)
    assert kind == "DependencyMissingError"
    assert name == "h2fix_test_missing_dependency"
    assert "a module it needs, 'h2fix_test_missing_dependency', cannot be imported" in message
    assert "is not installed" not in message


def test_missing_dependency_in_the_cli(tmp_path: Path) -> None:
    code = "import sys; from h2fix._cli import main; sys.exit(main(['check']))"
    result = run_python(code, broken_copy(tmp_path, "__init__.py"))
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert "'h2fix_test_missing_dependency'" in line
    assert "hypercorn is not installed" not in line


def test_missing_server_is_still_not_installed(tmp_path: Path) -> None:
    code = """
        import sys, h2fix
        sys.modules["anycorn"] = None  # as if it were not installed
        try:
            h2fix.apply("anycorn")
        except h2fix.TargetNotFoundError as error:
            print(error)
    """
    assert run_python(code).stdout.startswith("anycorn is not installed")
