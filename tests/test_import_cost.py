"""What `import h2fix` loads, and that its value types behave as the frozen dataclasses
they replace (equality, hash, repr, immutability, copy, pickle, replace).

`import h2fix` runs in every worker; these check behaviour, not time (the time is
measured by scripts/bench_startup.py).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import h2fix
from h2fix._environment import H2_KEYWORD_EVENTS, Environment
from h2fix._errors import UnrecognisedStructureError
from h2fix._results import replace


def loaded_after(
    code: str, *, before: str = "import hypercorn.protocol.h2", env: dict[str, str] | None = None
) -> list[str]:
    """The modules a fresh interpreter has loaded after `before` and then `code`, that it
    had not loaded after `before` alone."""
    script = textwrap.dedent(
        f"""
        import json, sys
        {before}
        seen = set(sys.modules)
        {code}
        print(json.dumps(sorted(set(sys.modules) - seen)))
        """
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env
    )
    loaded: list[str] = json.loads(completed.stdout)
    return loaded


def test_import_loads_nothing_but_the_package() -> None:
    # Every public name is imported on first use: a worker pays for what it calls.
    assert loaded_after("import h2fix") == ["h2fix"]


def test_apply_loads_only_the_warm_path() -> None:
    loaded = loaded_after("import h2fix; h2fix.apply")
    assert all(name == "h2fix" or name.startswith("h2fix.") for name in loaded), loaded
    assert "h2fix._runtime" in loaded
    # Needed only to rewrite (cold path) or on first use of a lazy attribute.
    for name in ("h2fix._rewrite", "h2fix._known", "h2fix._known_releases", "h2fix._cli"):
        assert name not in loaded


def test_a_warm_apply_loads_no_error_class(tmp_path: Path) -> None:
    # The errors are imported where they are raised: a warm apply() raises none.
    # Both processes share one cache directory: the first fills it, the second is warm.
    env = {**os.environ, "H2FIX_CACHE_DIR": str(tmp_path / "cache"), "H2FIX_NO_CACHE": ""}
    code = "import h2fix; h2fix.apply(fixes=['trailers'])"
    loaded_after(code, env=env)
    loaded = loaded_after(code, env=env)
    assert "h2fix._runtime" in loaded
    for name in ("h2fix._errors", "h2fix._limits", "h2fix._rewrite", "h2fix._known"):
        assert name not in loaded, f"a warm apply() imported {name}"


def test_errors_imported_on_demand_are_the_public_classes() -> None:
    # The same classes whatever module raises them, and every one an H2FixError.
    with pytest.raises(h2fix.UnknownFixError):
        h2fix.apply(fixes=["nonexistent"])
    with pytest.raises(h2fix.ArgumentTypeError):
        h2fix.apply(fixes="trailers")
    with pytest.raises(h2fix.NoFixSelectedError):
        h2fix.apply(fixes=[])
    with pytest.raises(h2fix.UnknownTargetError):
        h2fix.apply("uvicorn")
    with pytest.raises(h2fix.ArgumentTypeError):
        h2fix.apply(3)  # type: ignore[arg-type]


def test_apply_alone_needs_neither_dataclasses_nor_typing() -> None:
    loaded = loaded_after("import h2fix; h2fix.apply", before="")
    for name in ("dataclasses", "inspect", "typing", "libcst", "hypercorn", "pathlib"):
        assert name not in loaded, f"import h2fix imported {name}"


def test_lazy_attributes_resolve_to_the_defining_modules() -> None:
    from h2fix import _errors, _results, _rewrite, _runtime

    assert h2fix.rewrite is _rewrite.rewrite
    assert h2fix.apply is _runtime.apply
    assert h2fix.H2FixError is _errors.H2FixError
    assert h2fix.Report is _results.Report
    assert h2fix.UnrecognisedStructureError is _errors.UnrecognisedStructureError
    assert h2fix.Environment is Environment
    assert set(h2fix.__all__) <= set(dir(h2fix))
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        h2fix.nothing  # type: ignore[attr-defined]  # noqa: B018


def test_every_public_name_is_importable() -> None:
    loaded = loaded_after(f"from h2fix import {', '.join(h2fix.__all__)}")
    assert "h2fix._rewrite" in loaded  # `rewrite` was asked for


def outcome(**changes: object) -> h2fix.FixOutcome:
    values: dict[str, object] = {
        "fix": "trailers",
        "outcome": h2fix.Outcome.APPLIED,
        "message": "done",
        "functions": ("H2Protocol.stream_send",),
    }
    values.update(changes)
    return h2fix.FixOutcome(**values)  # type: ignore[arg-type]


def test_equality_and_hash_over_the_compared_fields() -> None:
    error = UnrecognisedStructureError("trailers", "f", "this", "that")
    assert outcome() == outcome(error=error)  # `error` is not compared
    assert hash(outcome()) == hash(outcome(error=error))
    assert outcome() != outcome(message="other")
    assert outcome() != ("trailers", h2fix.Outcome.APPLIED, "done", ("H2Protocol.stream_send",))
    assert len({outcome(), outcome(), outcome(fix="request_received")}) == 2


def test_repr_is_the_dataclass_repr() -> None:
    report = h2fix.Report("hypercorn", "hypercorn.protocol.h2", "0.17.3", "/h2.py", (outcome(),))
    assert repr(report) == (
        "Report(target='hypercorn', module='hypercorn.protocol.h2', version='0.17.3', "
        "file='/h2.py', fixes=(FixOutcome(fix='trailers', outcome=<Outcome.APPLIED: 'applied'>, "
        "message='done', functions=('H2Protocol.stream_send',), error=None),))"
    )
    # The cache key is built from this repr: it must not change between processes.
    assert repr(H2_KEYWORD_EVENTS) == (
        "Environment(h2_version='4.4.1', request_received_parameters=('stream_id', 'headers', "
        "'stream_ended', 'priority_updated'), request_received_required=('stream_id',))"
    )


@pytest.mark.parametrize("value", [outcome(), h2fix.Rewrite("a", "b", ()), H2_KEYWORD_EVENTS])
def test_immutable_as_a_frozen_dataclass(value: object) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field") as caught:
        value.source = "x"  # type: ignore[attr-defined]
    assert isinstance(caught.value, h2fix.H2FixError)
    assert "expected" in str(caught.value)
    assert "found an assignment" in str(caught.value)
    with pytest.raises(AttributeError, match="found a deletion"):
        del value.source  # type: ignore[attr-defined]


def test_copy_pickle_and_replace() -> None:
    rewrite = h2fix.Rewrite("old\n", "new\n", (outcome(),))
    for again in (copy.copy(rewrite), copy.deepcopy(rewrite), pickle.loads(pickle.dumps(rewrite))):
        assert again == rewrite
        assert again.changed
    changed = replace(outcome(), outcome=h2fix.Outcome.PENDING)
    assert changed == outcome(outcome=h2fix.Outcome.PENDING)
    assert replace(H2_KEYWORD_EVENTS, h2_version="4.3.0").request_received_required == (
        "stream_id",
    )
    with pytest.raises(TypeError):
        replace(outcome(), nothing=1)


def test_keyword_construction_and_defaults() -> None:
    assert Environment() == Environment(None, None, ())
    assert h2fix.FixOutcome("f", h2fix.Outcome.APPLIED, "m").functions == ()
    assert h2fix.Report.__match_args__ == ("target", "module", "version", "file", "fixes")
