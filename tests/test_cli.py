"""The `h2fix` command line: output and exit codes, on installed releases and on files."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from h2fix._cli import main
from support.isolated import run_python
from support.releases import h2_source, unpacked
from support.versions import needs_hypercorn_018

# Hypercorn 0.18.0 fixed these two faults upstream; it still needs send_state.
TWO_FIXES = ("--fix", "trailers", "--fix", "request_received")


def h2fix_cli(*args: str, path: Path | None = None) -> subprocess.CompletedProcess[str]:
    code = f"import sys; from h2fix._cli import main; sys.exit(main({list(args)!r}))"
    return run_python(code, *([path] if path else []))


def test_diff_of_the_installed_release(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diff", "--fix", "trailers"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("--- a/hypercorn/protocol/h2.py\n+++ b/hypercorn/protocol/h2.py\n")
    added = [line for line in out.splitlines() if line.startswith("+") and "+++" not in line]
    assert [line.strip("+ ") for line in added] == [
        "self.priority.unblock(event.stream_id)",
        "await self.has_data.set()",
        "await self.stream_buffers[event.stream_id].drain()",
        "self.connection.send_headers(event.stream_id, event.headers, end_stream=True)",
    ]
    assert "\x1b[" not in out  # not a terminal: no colour


def test_diff_of_every_fix(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diff"]) == 0
    out = capsys.readouterr().out
    # initiate, _send_data, stream_send (trailers and the close once idle), _handle_events
    # (the shutdown reset, then the request limit and DATA, then StreamReset), push
    assert out.count("@@ -") == 7
    assert "+            event = h2.events.RequestReceived(stream_id=1, headers=headers)\n" in out


def test_diff_is_what_apply_compiles(capsys: pytest.CaptureFixture[str]) -> None:
    import h2fix

    main(["diff"])
    out = capsys.readouterr().out
    h2fix.apply()
    from hypercorn.protocol.h2 import H2Protocol

    filename = H2Protocol.stream_send.__code__.co_filename
    import linecache

    patched = "".join(linecache.getlines(filename))
    for line in out.splitlines():
        if line.startswith("+") and not line.startswith("+++"):
            assert line[1:] + "\n" in patched


def test_diff_of_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    buggy = tmp_path / "h2_0171.py"
    buggy.write_text(h2_source("hypercorn", "0.17.1"))
    fixed = tmp_path / "h2_0180.py"
    fixed.write_text(h2_source("hypercorn", "0.18.0"))
    # 0.18.0 still needs send_state (tests/test_rewrite_send_state.py); these two it does not.
    assert main(["diff", *TWO_FIXES, str(buggy), str(fixed)]) == 0
    out = capsys.readouterr().out
    assert out.count("--- a/") == 1  # the fixed file prints nothing
    # An absolute path is labelled as git labels it: no double slash after a/.
    label = str(buggy).lstrip("/")
    assert f"--- a/{label}\n+++ b/{label}\n" in out


def test_diff_in_colour_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    monkeypatch.delenv("NO_COLOR", raising=False)
    main(["diff"])
    assert "\x1b[32m+" in terminal.getvalue()
    monkeypatch.setenv("NO_COLOR", "1")
    terminal.seek(0)
    terminal.truncate()
    main(["diff"])
    assert "\x1b[" not in terminal.getvalue()


def test_check_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("hypercorn/protocol/h2.py: trailers: would be applied (")
    assert err[1].startswith("hypercorn/protocol/h2.py: request_received: would be applied (")
    assert err[2].startswith("hypercorn/protocol/h2.py: send_state: would be applied (")
    assert err[3].startswith("hypercorn/protocol/h2.py: closed_stream_data: would be applied (")
    assert err[4].startswith("hypercorn/protocol/h2.py: graceful_shutdown: would be applied (")
    assert err[5].startswith("hypercorn/protocol/h2.py: max_requests: would be applied (")
    assert len(err) == 6
    fixed = tmp_path / "h2.py"
    fixed.write_text(h2_source("hypercorn", "0.18.0"))
    assert main(["check", *TWO_FIXES, str(fixed)]) == 0
    assert "trailers: already fixed upstream" in capsys.readouterr().err
    old = tmp_path / "h2_016.py"
    old.write_text(h2_source("hypercorn", "0.16.0"))
    assert main(["check", "--fix", "trailers", str(old)]) == 0
    assert "trailers: not applicable" in capsys.readouterr().err
    # 0.16 builds RequestReceived() without arguments too: broken with this h2.
    assert main(["check", "--fix", "request_received", str(old)]) == 1


def test_check_refusal_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    odd = tmp_path / "h2.py"
    odd.write_text(
        h2_source("hypercorn", "0.17.3").replace(
            "self.connection.send_headers(event.stream_id, event.headers)",
            "await self._send_trailers(event)",
        )
    )
    assert main(["check", str(odd)]) == 2
    assert "trailers: refused" in capsys.readouterr().err
    assert main(["diff", "--fix", "trailers", str(odd)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "pin a release" in captured.err


def test_missing_target_is_exit_2_with_advice(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in [m for m in sys.modules if m == "anycorn" or m.startswith("anycorn.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "anycorn", None)
    assert main(["check", "--target", "anycorn"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("h2fix: error: anycorn is not installed")
    assert "pip install anycorn" in err
    assert len(err.strip().splitlines()) == 1


def test_unreadable_file_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(tmp_path / "missing.py")]) == 2
    assert "cannot be read" in capsys.readouterr().err


def test_status(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["target:", "hypercorn", "0.17.3"]
    assert out[2].split()[:2] == ["h2:", out[2].split()[1]]
    assert out[2].split()[1].startswith("4.")
    assert out[3].startswith("trailers:           would be applied (H2Protocol.stream_send")
    assert out[4].startswith("request_received:   would be applied (H2Protocol.initiate")
    assert out[5].startswith("send_state:         would be applied (H2Protocol._send_data")
    assert out[6].startswith("closed_stream_data: would be applied (H2Protocol._handle_events")


def test_status_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["target"] == "hypercorn"
    assert data["version"] == "0.17.3"
    assert data["h2_version"].startswith("4.")
    assert [(f["fix"], f["outcome"], f["functions"]) for f in data["fixes"]] == [
        ("trailers", "would be applied", ["H2Protocol.stream_send"]),
        (
            "request_received",
            "would be applied",
            ["H2Protocol.initiate", "H2Protocol._create_server_push"],
        ),
        (
            "send_state",
            "would be applied",
            ["H2Protocol._send_data", "H2Protocol.stream_send", "H2Protocol._handle_events"],
        ),
        ("closed_stream_data", "would be applied", ["H2Protocol._handle_events"]),
        ("graceful_shutdown", "would be applied", ["H2Protocol._handle_events"]),
        (
            "max_requests",
            "would be applied",
            ["H2Protocol._handle_events", "H2Protocol.stream_send"],
        ),
    ]


def test_list_fixes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list-fixes"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split(None, 1) == ["trailers", lines[0].split(None, 1)[1]]
    assert "send response trailers after the buffered DATA" in lines[0]
    assert lines[2].startswith("request_received    build h2's RequestReceived events")
    assert "upstream: https://" in out


@needs_hypercorn_018
def test_on_hypercorn_018_nothing_to_do() -> None:
    # send_state is still needed there (tests/test_send_state.py); these two are not.
    path = unpacked("hypercorn", "0.18.0")
    check = h2fix_cli("check", *TWO_FIXES, path=path)
    assert check.returncode == 0, check.stderr
    assert "0.18.0" not in check.stderr  # one line per fix, nothing else
    assert "trailers: already fixed upstream" in check.stderr
    assert "request_received: already fixed upstream" in check.stderr
    diff = h2fix_cli("diff", *TWO_FIXES, path=path)
    assert (diff.returncode, diff.stdout) == (0, "")
    status = h2fix_cli("status", "--json", path=path)
    assert json.loads(status.stdout)["version"] == "0.18.0"


def test_module_entry_point() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "h2fix", "check"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 1
    assert "would be applied" in result.stderr


def test_run_needs_a_known_server(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--", "uvicorn", "app:app"]) == 2
    err = capsys.readouterr().err
    assert "expected a server command (hypercorn or anycorn, or python -m either)" in err
    assert "found uvicorn" in err
    assert "uvicorn is not affected" in err
    assert len(err.strip().splitlines()) == 1
