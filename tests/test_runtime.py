"""apply / revert / status / patched in a real process, on the installed Hypercorn 0.17.3."""

from __future__ import annotations

import asyncio
import inspect
import linecache
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

import pytest

import h2fix
from h2fix import Outcome
from support.isolated import copy_package, run_python
from support.releases import unpacked
from support.runtime import every_fix, on_top_of_trailers, stream_send
from support.versions import needs_anycorn, needs_hypercorn_018


def test_import_h2fix_imports_neither_libcst_nor_the_server() -> None:
    result = run_python(
        """
        import sys, h2fix
        print(sorted(m for m in ("libcst", "hypercorn", "anycorn", "h2") if m in sys.modules))
        """
    )
    assert result.stdout.strip() == "[]", result.stderr


def test_status_changes_nothing() -> None:
    original = stream_send()
    report = h2fix.status()
    assert [(f.fix, f.outcome) for f in report.fixes] == every_fix(Outcome.PENDING)
    assert report.pending
    assert (report.target, report.version) == ("hypercorn", "0.17.3")
    assert report.file.endswith("hypercorn/protocol/h2.py")
    assert stream_send() is original


def test_apply_swaps_in_the_patched_method_and_keeps_its_identity() -> None:
    original = stream_send()
    report = h2fix.apply(fixes=["trailers"])
    assert report.changed
    assert [(f.fix, f.outcome) for f in report.fixes] == [("trailers", Outcome.APPLIED)]
    assert report.fixes[0].functions == ("H2Protocol.stream_send",)
    new = stream_send()
    assert new is not original
    for attribute in ("__qualname__", "__module__", "__doc__", "__annotations__", "__defaults__"):
        assert getattr(new, attribute) == getattr(original, attribute)
    assert new.__globals__ is original.__globals__
    assert inspect.signature(new) == inspect.signature(original)
    source = inspect.getsource(new)
    assert "end_stream=True" in source
    assert "await self.stream_buffers[event.stream_id].drain()" in source


def test_traceback_shows_the_patched_line() -> None:
    from hypercorn.protocol.events import Trailers

    h2fix.apply()

    class Failing:
        def unblock(self, stream_id: int) -> None:
            raise RuntimeError("from unblock")

    protocol = type("P", (), {"priority": Failing()})()
    with pytest.raises(RuntimeError) as caught:
        asyncio.run(stream_send()(protocol, Trailers(stream_id=1, headers=[])))
    frame = traceback.extract_tb(caught.value.__traceback__)[-2]
    assert frame.name == "stream_send"
    assert frame.line == "self.priority.unblock(event.stream_id)"
    assert frame.filename.startswith(sys.modules["hypercorn.protocol.h2"].__file__)


def test_revert_needs_no_source(tmp_path: Path) -> None:
    """Reverting works after the file is gone (say, removed by an upgrade in place)."""
    h2 = copy_package("hypercorn", tmp_path)
    result = run_python(
        f"""
        import os, h2fix, hypercorn.protocol.h2 as module
        before = module.H2Protocol.stream_send
        h2fix.apply()
        os.remove({str(h2)!r})
        h2fix.revert()
        print("restored:", module.H2Protocol.stream_send is before)
        """,
        tmp_path,
    )
    assert result.stdout.strip() == "restored: True", result.stderr


def test_apply_twice_is_a_no_op() -> None:
    h2fix.apply()
    first = stream_send()
    report = h2fix.apply()
    assert not report.changed
    assert [f.outcome for f in report.fixes] == [Outcome.ALREADY_APPLIED] * 6
    assert stream_send() is first
    assert [f.outcome for f in h2fix.status().fixes] == [Outcome.ALREADY_APPLIED] * 6


def test_revert_restores_the_exact_original() -> None:
    original = stream_send()
    h2fix.apply()
    filename = stream_send().__code__.co_filename
    assert filename in linecache.cache
    h2fix.revert()
    assert stream_send() is original
    assert filename not in linecache.cache
    h2fix.revert()  # a second revert is a no-op
    assert stream_send() is original


def test_apply_from_8_threads_at_once() -> None:
    original = stream_send()
    barrier = threading.Barrier(8)
    reports: list[h2fix.Report] = []

    def worker() -> None:
        barrier.wait()
        reports.append(h2fix.apply())

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    outcomes = sorted(r.fixes[0].outcome.value for r in reports)
    assert outcomes == ["already applied"] * 7 + ["applied"]
    assert stream_send() is not original
    h2fix.revert()
    assert stream_send() is original


def test_patched_context_manager() -> None:
    original = stream_send()
    with h2fix.patched() as report:
        assert report.changed
        assert stream_send() is not original
    assert stream_send() is original


def test_patched_leaves_an_outer_apply_in_place() -> None:
    h2fix.apply()
    outer = stream_send()
    with h2fix.patched():
        assert stream_send() is outer
    assert stream_send() is outer


def test_seed_names() -> None:
    from hypercorn.protocol.h2 import H2Protocol

    initiate = H2Protocol.__dict__["initiate"]
    minimal = h2fix.patch_h2_protocol_minimal()
    assert [f.fix for f in minimal.fixes] == ["trailers"]
    assert minimal.changed
    assert H2Protocol.__dict__["initiate"] is initiate
    trailers_only = stream_send()
    full = h2fix.patch_h2_protocol()
    # The wider set is applied on top; trailers was there already.
    assert [(f.fix, f.outcome) for f in full.fixes] == on_top_of_trailers()
    assert H2Protocol.__dict__["initiate"] is not initiate
    assert stream_send() is not trailers_only  # recompiled from the one rewritten source
    h2fix.revert()
    assert H2Protocol.__dict__["initiate"] is initiate


@needs_anycorn
def test_anycorn_target() -> None:
    from anycorn.protocol.h2 import H2Protocol

    original = H2Protocol.__dict__["stream_send"]
    report = h2fix.apply("anycorn")
    assert (report.target, report.version) == ("anycorn", "0.18.7")
    assert H2Protocol.__dict__["stream_send"] is not original
    h2fix.revert("anycorn")
    assert H2Protocol.__dict__["stream_send"] is original


def test_method_replaced_by_someone_else_is_refused() -> None:
    from hypercorn.protocol.h2 import H2Protocol

    original = stream_send()

    async def stranger(self: Any, event: Any) -> None:
        pass

    H2Protocol.stream_send = stranger  # type: ignore[method-assign]
    try:
        with pytest.raises(h2fix.FunctionReplacedError) as caught:
            h2fix.apply()
        assert "stranger" in str(caught.value)
        assert stream_send() is stranger
    finally:
        H2Protocol.stream_send = original  # type: ignore[method-assign]


def test_replaced_after_apply_is_refused_by_revert_and_apply() -> None:
    from hypercorn.protocol.h2 import H2Protocol

    h2fix.apply()
    ours = stream_send()

    async def later(self: Any, event: Any) -> None:
        pass

    H2Protocol.stream_send = later  # type: ignore[method-assign]
    try:
        with pytest.raises(h2fix.FunctionReplacedError):
            h2fix.revert()
        with pytest.raises(h2fix.FunctionReplacedError):
            h2fix.apply()
        assert stream_send() is later
    finally:
        H2Protocol.stream_send = ours  # type: ignore[method-assign]


def test_missing_target_is_an_import_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "anycorn" or m.startswith("anycorn.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "anycorn", None)
    with pytest.raises(ImportError) as caught:
        h2fix.apply("anycorn")
    assert isinstance(caught.value, h2fix.TargetNotFoundError)
    assert "pip install anycorn" in str(caught.value)


def test_unknown_target() -> None:
    with pytest.raises(h2fix.UnknownTargetError, match="hypercorn, anycorn"):
        h2fix.apply("uvicorn")


def test_source_edited_after_import_is_refused(tmp_path: Path) -> None:
    h2 = copy_package("hypercorn", tmp_path)
    result = run_python(
        f"""
        import h2fix, hypercorn.protocol.h2 as module
        before = module.H2Protocol.stream_send
        path = {str(h2)!r}
        # As an upgrade in place would: every line moves.
        text = "# edited after import\\n" + open(path).read()
        open(path, "w").write(text)
        try:
            h2fix.apply()
        except h2fix.SourceChangedError as error:
            print("refused:", error)
        assert module.H2Protocol.stream_send is before
        """,
        tmp_path,
    )
    assert "refused: expected" in result.stdout, result.stderr
    assert "changed since import" in result.stdout


def test_unrecognised_structure_strict_and_lenient(tmp_path: Path) -> None:
    h2 = copy_package("hypercorn", tmp_path)
    text = h2.read_text().replace(
        "self.connection.send_headers(event.stream_id, event.headers)",
        "await self._send_trailers(event)",
    )
    h2.write_text(text)
    result = run_python(
        """
        import logging, h2fix, hypercorn.protocol.h2 as module
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
        before = module.H2Protocol.stream_send
        try:
            h2fix.apply()
        except h2fix.UnrecognisedStructureError as error:
            print("strict:", error.expected)
        report = h2fix.apply(strict=False)
        print("lenient:", report.fixes[0].outcome.value)
        assert module.H2Protocol.stream_send is before
        """,
        tmp_path,
    )
    assert "strict: the isinstance(..., Trailers) branch to call" in result.stdout, result.stderr
    assert "lenient: refused" in result.stdout
    assert "WARNING h2fix: fix 'trailers' refused in H2Protocol.stream_send" in result.stderr


def test_bytecode_only_install_is_refused(tmp_path: Path) -> None:
    h2 = copy_package("hypercorn", tmp_path)
    result = run_python(
        f"""
        import py_compile, os
        py_compile.compile({str(h2)!r}, cfile={str(h2.with_suffix(".pyc"))!r})
        os.remove({str(h2)!r})
        import h2fix
        try:
            h2fix.apply()
        except h2fix.SourceUnavailableError as error:
            print("refused:", error)
        """,
        tmp_path,
    )
    assert "only bytecode is installed" in result.stdout, result.stderr


@needs_hypercorn_018
def test_apply_on_hypercorn_018_changes_only_what_it_still_needs() -> None:
    result = run_python(
        """
        import h2fix, hypercorn.protocol.h2 as module
        before = module.H2Protocol.initiate
        report = h2fix.apply()
        print(report.version, [f.outcome.value for f in report.fixes], report.changed)
        assert module.H2Protocol.initiate is before  # request_received: fixed upstream
        """,
        unpacked("hypercorn", "0.18.0"),
    )
    upstream, applied = "already fixed upstream", "applied"
    expected = f"0.18.0 {[upstream, upstream, applied, applied, applied, applied]} True"
    assert result.stdout.strip() == expected, result.stderr


def test_unreadable_source_is_refused(tmp_path: Path) -> None:
    h2 = copy_package("hypercorn", tmp_path)
    result = run_python(
        f"""
        import os, h2fix, hypercorn.protocol.h2 as module
        before = module.H2Protocol.stream_send
        os.remove({str(h2)!r})
        os.symlink("nowhere", {str(h2)!r})  # as root, permissions would not stop a read
        try:
            h2fix.apply()
        except h2fix.SourceUnavailableError as error:
            print("refused:", error)
        assert module.H2Protocol.stream_send is before
        """,
        tmp_path,
    )
    assert "refused: expected the Python source of hypercorn.protocol.h2" in result.stdout, (
        result.stderr
    )
    assert "cannot be read (No such file or directory)" in result.stdout


def test_not_a_protocol_module_is_refused(tmp_path: Path) -> None:
    h2 = copy_package("hypercorn", tmp_path)
    h2.write_text("class H2Protocol:\n    pass\n")
    result = run_python(
        """
        import h2fix
        from h2fix._cli import main
        for call in (h2fix.apply, h2fix.status):
            try:
                call()
            except h2fix.NotAProtocolError as error:
                print("refused:", error)
        for command in ("check", "diff"):
            print("exit", command, main([command]))
        """,
        tmp_path,
    )
    lines = result.stdout.splitlines()
    assert lines[2:] == ["exit check 2", "exit diff 2"], result.stderr
    assert result.stderr.count("none of h2fix's fixes recognise anything in it") == 2
    lines = lines[:2]
    assert all("none of h2fix's fixes recognise anything in it" in line for line in lines)
