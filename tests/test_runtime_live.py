"""apply() patches what the server really runs, and nothing else.

Each case is an edited copy of the installed Hypercorn 0.17.3 (or the installed one,
changed at runtime) that once fooled apply(): an alias of the method, a method or
class defined twice, a class the server does not serve, a reload, code replaced in
place. Where the point is "the server would still be broken", a real grpcio client
calls the real server h2fix repaired.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

import h2fix
from h2fix import Outcome
from support.edits import replace_once
from support.isolated import copy_package, run_python
from support.releases import unpacked
from support.runtime import every_fix, on_top_of_trailers, stream_send
from support.servers import serving
from support.versions import needs_hypercorn_018, needs_patchy

TIMEOUT = 20
FUTURE_IMPORT = "from __future__ import annotations\n"
UNTAKEN_STUB = (
    "        async def stream_send(self, event):\n            raise NotImplementedError\n"
)


def with_sys(text: str) -> str:
    """Conditions on sys.version_info, as real code does; `if True:` would be folded away
    by the compiler and leave one definition only."""
    return replace_once(text, FUTURE_IMPORT, FUTURE_IMPORT + "\nimport sys\n")


def indented(block: str) -> str:
    return "".join("    " + line if line.strip() else line for line in block.splitlines(True))


def stream_send_span(text: str) -> tuple[int, int]:
    start = text.index("    async def stream_send(")
    return start, text.index("    async def _handle_events(", start)


def alias_of_renamed_method(text: str) -> str:
    """The server calls `self.stream_send`, now a class-body alias of `_send_event`."""
    text = replace_once(text, "    async def stream_send(", "    async def _send_event(")
    end = text.index("    async def _handle_events(")
    return text[:end] + "    stream_send = _send_event\n\n" + text[end:]


def method_twice_live_first(text: str) -> str:
    """Defined in both branches of an `if` in the class body: the first one runs."""
    start, end = stream_send_span(text)
    method = "    if sys.version_info >= (3,):\n" + indented(text[start:end])
    method += "    else:\n" + UNTAKEN_STUB + "\n"
    return with_sys(text[:start] + method + text[end:])


def class_twice_live_first(text: str) -> str:
    """The whole class in both branches of an `if`: the first one runs."""
    start = text.index("class H2Protocol:")
    body = "if sys.version_info >= (3,):\n" + indented(text[start:])
    body += "else:\n\n    class H2Protocol:\n        pass\n"
    return with_sys(text[:start] + body)


def fix_lands_in_dead_branch(text: str) -> str:
    """The buggy method only in the untaken branch; the live one has no trailers branch."""
    start, end = stream_send_span(text)
    method = text[start:end]
    branch_start = method.index("            elif isinstance(event, Trailers):\n")
    branch_end = method.index("            elif isinstance(event, StreamClosed):")
    live = method[:branch_start] + method[branch_end:]
    edited = "    if sys.version_info < (3,):\n" + indented(method)
    edited += "    else:\n" + indented(live)
    return with_sys(text[:start] + edited + text[end:])


def edited_copy(tmp_path: Path, edit: Callable[[str], str]) -> Path:
    """A copy of the installed hypercorn with `edit` applied to protocol/h2.py; returns
    the directory to put first on sys.path."""
    site = tmp_path / "site"
    h2 = copy_package("hypercorn", site)
    h2.write_text(edit(h2.read_text()))
    return site


def grpc_echo_20_times(port: int) -> list[str]:
    """The errors of 20 unary calls on one connection (empty when all succeed)."""
    errors = []
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        echo = channel.unary_unary("/test.Test/Echo")
        for i in range(20):
            try:
                assert echo(b"call %d" % i, timeout=TIMEOUT) == b"call %d" % i
            except grpc.RpcError as error:
                errors.append(str(error))
    return errors


def checked(code: str, site: Path) -> list[str]:
    result = run_python(code, site)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


# --- 1. aliases ----------------------------------------------------------------


def test_class_body_alias_is_patched_and_reverted(tmp_path: Path) -> None:
    site = edited_copy(tmp_path, alias_of_renamed_method)
    lines = checked(
        """
        import h2fix, hypercorn.protocol.h2 as module
        cls = module.H2Protocol
        before = cls.__dict__["_send_event"]
        report = h2fix.apply(fixes=["trailers"])
        print(report.fixes[0].functions)
        print(cls.__dict__["stream_send"] is cls.__dict__["_send_event"] is not before)
        print("end_stream=True" in __import__("inspect").getsource(cls.stream_send))
        h2fix.revert()
        print(cls.__dict__["stream_send"] is cls.__dict__["_send_event"] is before)
        """,
        site,
    )
    assert lines == ["('H2Protocol._send_event',)", "True", "True", "True"]


@pytest.mark.server
def test_server_calling_the_alias_is_repaired(tmp_path: Path) -> None:
    with serving(tmp_path, first_on_path=edited_copy(tmp_path, alias_of_renamed_method)) as port:
        assert grpc_echo_20_times(port) == []


# --- 2. defined more than once ---------------------------------------------------


@pytest.mark.parametrize(
    "edit",
    [method_twice_live_first, class_twice_live_first, fix_lands_in_dead_branch],
    ids=["method-twice", "class-twice", "fix-in-dead-branch"],
)
def test_definitions_under_a_condition_are_refused(
    tmp_path: Path, edit: Callable[[str], str]
) -> None:
    """Which definition runs depends on how the module executes: the rewrite alone cannot
    prove it patches the live one, so it refuses, and apply() changes nothing."""
    lines = checked(
        """
        import h2fix, hypercorn.protocol.h2 as module
        before = module.H2Protocol.__dict__["stream_send"]
        try:
            h2fix.apply(fixes=["trailers"])
        except h2fix.UnrecognisedStructureError as error:
            print(type(error).__name__)
        print(module.H2Protocol.__dict__["stream_send"] is before)
        print(h2fix.status(fixes=["trailers"]).fixes[0].outcome.value)
        """,
        edited_copy(tmp_path, edit),
    )
    assert lines == ["UnrecognisedStructureError", "True", "refused"]


# --- 3. the class the server serves ---------------------------------------------

OVERRIDE_IN_PACKAGE = """
from .h2 import H2Protocol as _Upstream


class H2Protocol(_Upstream):
    # A copy of the method, as a vendor subclass would carry it.
    stream_send = _Upstream.__dict__["stream_send"].__class__(
        _Upstream.stream_send.__code__, _Upstream.stream_send.__globals__, "stream_send"
    )
"""


def test_subclass_the_server_serves_overrides_the_method(tmp_path: Path) -> None:
    site = tmp_path / "site"
    copy_package("hypercorn", site)
    init = site / "hypercorn" / "protocol" / "__init__.py"
    text = init.read_text()
    anchor = "from .h2 import H2Protocol\n"
    init.write_text(replace_once(text, anchor, anchor + OVERRIDE_IN_PACKAGE))
    lines = checked(
        """
        import h2fix, hypercorn.protocol.h2 as module
        before = module.H2Protocol.__dict__["stream_send"]
        try:
            h2fix.apply()
        except h2fix.UnreachablePatchError as error:
            print(error)
        print(module.H2Protocol.__dict__["stream_send"] is before)
        print([f.outcome.value for f in h2fix.status().fixes])
        """,
        site,
    )
    assert lines[0].startswith("expected hypercorn.protocol.H2Protocol, the class the server")
    assert "hypercorn.protocol.H2Protocol overrides stream_send" in lines[0]
    assert lines[1:] == ["True", str(["refused"] * 6)]


def test_served_class_that_is_not_the_patched_one_is_refused(tmp_path: Path) -> None:
    site = tmp_path / "site"
    copy_package("hypercorn", site)
    init = site / "hypercorn" / "protocol" / "__init__.py"
    anchor = "from .h2 import H2Protocol\n"
    init.write_text(replace_once(init.read_text(), anchor, anchor + "H2Protocol = object\n"))
    lines = checked(
        """
        import h2fix
        try:
            h2fix.apply()
        except h2fix.UnreachablePatchError as error:
            print(error)
        """,
        site,
    )
    assert "it is builtins.object, not H2Protocol or a subclass" in lines[0]


# --- 4. importlib.reload ----------------------------------------------------------


def test_reload_then_apply_is_refused() -> None:
    lines = checked(
        """
        import importlib, h2fix, hypercorn.protocol, hypercorn.protocol.h2 as module
        served = hypercorn.protocol.H2Protocol
        importlib.reload(module)
        fresh, served_send = module.H2Protocol, served.__dict__["stream_send"]
        try:
            h2fix.apply()
        except h2fix.ModuleReloadedError as error:
            print(error)
        print(served.__dict__["stream_send"] is served_send, module.H2Protocol is fresh)
        """,
        Path(),
    )
    assert "hypercorn.protocol.h2 was reloaded after hypercorn.protocol.H2Protocol" in lines[0]
    assert "the server uses the class from the first import" in lines[0]
    assert lines[1] == "True True"


def test_apply_then_reload_is_reported_by_apply_and_revert() -> None:
    lines = checked(
        """
        import importlib, logging, h2fix, hypercorn.protocol, hypercorn.protocol.h2 as module
        logging.basicConfig(format="%(levelname)s %(message)s")
        served = hypercorn.protocol.H2Protocol
        original = served.__dict__["stream_send"]
        h2fix.apply()
        importlib.reload(module)
        try:
            h2fix.apply()
        except h2fix.ModuleReloadedError as error:
            print(error)
        h2fix.revert()
        print(served.__dict__["stream_send"] is original)
        try:
            h2fix.apply()  # now as if reloaded before any apply()
        except h2fix.ModuleReloadedError as error:
            print("then refused, after apply:", error.after_apply)
        """,
        Path(),
    )
    assert "hypercorn.protocol.h2 was reloaded after h2fix patched it" in lines[0]
    assert "still serves the class h2fix patched" in lines[0]
    assert lines[1:] == ["True", "then refused, after apply: False"]


def test_revert_after_reload_says_what_it_did() -> None:
    result = run_python(
        """
        import importlib, logging, h2fix, hypercorn.protocol, hypercorn.protocol.h2 as module
        logging.basicConfig(format="%(levelname)s %(message)s")
        served = hypercorn.protocol.H2Protocol
        original = served.__dict__["stream_send"]
        h2fix.apply()
        importlib.reload(module)
        h2fix.revert()
        print(served.__dict__["stream_send"] is original)
        """
    )
    assert result.stdout.strip() == "True", result.stderr
    assert "WARNING h2fix: hypercorn.protocol.h2 was reloaded after apply()" in result.stderr


# --- 5. code replaced in place -----------------------------------------------------


@needs_patchy
def test_code_replaced_in_place_is_noticed() -> None:
    """patchy assigns __code__ on h2fix's own function object: status(), apply() and
    revert() must see it, not claim "already applied" or drop the other patch."""
    import textwrap

    import patchy

    h2fix.apply(fixes=["trailers"])
    ours = stream_send()
    ours_code = ours.__code__
    source = textwrap.dedent(inspect.getsource(ours))
    patchy.replace(ours, source, source.replace("end_stream=True", "end_stream=False"))
    try:
        for call in (h2fix.status, h2fix.apply, h2fix.revert):
            with pytest.raises(h2fix.FunctionReplacedError) as caught:
                call()
            assert caught.value.in_place
            assert "__code__ replaced in place by code from <patchy: " in str(caught.value)
        assert stream_send() is ours  # revert() left the other patch alone
        assert ours.__code__.co_filename.startswith("<patchy: ")
    finally:
        ours.__code__ = ours_code


# --- 6. patched() blocks -------------------------------------------------------------


def test_patched_block_keeps_what_was_applied_before_it() -> None:
    from hypercorn.protocol.h2 import H2Protocol

    initiate = H2Protocol.__dict__["initiate"]
    h2fix.patch_h2_protocol_minimal()
    with h2fix.patched() as report:
        assert [(f.fix, f.outcome) for f in report.fixes] == on_top_of_trailers()
        assert H2Protocol.__dict__["initiate"] is not initiate
    # Only the block's own fixes are undone; the trailers fix stays.
    assert H2Protocol.__dict__["initiate"] is initiate
    assert "end_stream=True" in inspect.getsource(stream_send())
    assert [f.outcome for f in h2fix.status().fixes] == [
        Outcome.ALREADY_APPLIED,
        *[Outcome.PENDING] * 5,
    ]


def test_nested_blocks_undo_only_their_own_fixes() -> None:
    original = stream_send()
    with h2fix.patched(fixes=["trailers"]):
        trailers_only = stream_send()
        with h2fix.patched(fixes=["trailers"]) as inner:
            assert not inner.changed
            assert stream_send() is trailers_only
        assert stream_send() is trailers_only
    assert stream_send() is original


def test_overlapping_blocks_in_two_threads() -> None:
    """A enters, B enters, A exits: B still runs patched until it exits."""
    original = stream_send()
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, bool] = {}

    def a() -> None:
        with h2fix.patched():
            a_in.set()
            b_in.wait(TIMEOUT)
        a_out.set()

    def b() -> None:
        a_in.wait(TIMEOUT)
        with h2fix.patched():
            b_in.set()
            a_out.wait(TIMEOUT)
            seen["patched after A left"] = stream_send() is not original
        seen["original after B left"] = stream_send() is original

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert seen == {"patched after A left": True, "original after B left": True}


def test_revert_inside_a_block_wins() -> None:
    original = stream_send()
    with h2fix.patched():
        h2fix.revert()
        assert stream_send() is original
        h2fix.apply()  # pinned: the block's exit no longer owns it
        pinned = stream_send()
    assert stream_send() is pinned


# --- 7. logging ----------------------------------------------------------------------


def test_one_info_line_when_fixes_are_applied(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="h2fix")
    h2fix.apply()
    h2fix.apply()
    h2fix.status()
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert info == [
        "h2fix: repaired hypercorn 0.17.3: "
        "trailers, request_received, send_state, closed_stream_data, graceful_shutdown, "
        "max_requests"
    ]


@needs_hypercorn_018
def test_nothing_at_info_when_nothing_changes() -> None:
    result = run_python(
        """
        import logging, h2fix
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
        # 0.18.0 has these two upstream (the other fixes change it: tested elsewhere).
        h2fix.apply(fixes=["trailers", "request_received"])
        """,
        unpacked("hypercorn", "0.18.0"),
    )
    assert result.returncode == 0, result.stderr
    assert "INFO" not in result.stderr


# --- 8. repair it if it is installed -------------------------------------------------


def test_missing_ok_reports_a_target_that_is_not_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    for name in [m for m in sys.modules if m == "anycorn" or m.startswith("anycorn.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "anycorn", None)
    report = h2fix.apply("anycorn", missing_ok=True)
    assert not report.installed
    assert not report.changed
    assert [(f.fix, f.outcome) for f in report.fixes] == every_fix(Outcome.NOT_INSTALLED)
    assert str(report).splitlines()[0] == "anycorn (not installed)"
    assert not h2fix.status("anycorn", missing_ok=True).installed
    with h2fix.patched("anycorn", fixes=["trailers"], missing_ok=True) as inside:
        assert [f.outcome for f in inside.fixes] == [Outcome.NOT_INSTALLED]
    with pytest.raises(h2fix.TargetNotFoundError):
        h2fix.apply("anycorn")


def test_missing_ok_still_repairs_an_installed_target() -> None:
    report = h2fix.apply(missing_ok=True)
    assert report.installed
    assert report.changed
