"""`flared status` in text: readiness, failures with what to do, the restore, the last stop (pure rendering)."""

from __future__ import annotations

import io
from typing import Any

from flared.cli.status import final_snapshot_lines, render_status, restore_line, snapshot_age
from flared.cli.text import Out


def render(data: dict[str, Any]) -> str:
    buf = io.StringIO()
    render_status(Out(buf), data)
    return buf.getvalue()


def bot(**over: Any) -> dict[str, Any]:
    b: dict[str, Any] = {
        "name": "hermes",
        "state": "RUNNING",
        "readiness": "ready",
        "detail": "",
        "pid": 42,
        "uptime_s": 65,
        "restarts": 0,
        "api": "http://127.0.0.1:8642/v1",
        "error": None,
        "hint": None,
        "log": "/s/bots/hermes/logs/gateway.log",
        "failure": None,
        "snapshots": {"phase": "ready", "last_ok": None, "next_due_in_s": 900, "restore": None},
    }
    b.update(over)
    return b


def status(*bots: dict[str, Any], **over: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "daemon": "running",
        "flared": {"pid": 7, "uptime_s": 70},
        "config": {"path": "/x/hermes-flare.yaml", "digest": "abcdef0123456789", "error": None},
        "bots": list(bots),
        "leases": [],
    }
    d.update(over)
    return d


def test_ready_bot_shows_ready_and_its_api_url() -> None:
    text = render(status(bot()))
    assert (
        text.splitlines()[0] == "flared running (pid 7, up 1m10s)   config abcdef012345 /x/hermes-flare.yaml"
    )
    row = next(ln for ln in text.splitlines() if ln.startswith("hermes"))
    assert row.split()[:3] == ["hermes", "ready", "http://127.0.0.1:8642/v1"]
    assert "\x1b[" not in text  # no colours when not a terminal


def test_starting_bot_says_what_it_waits_for() -> None:
    text = render(status(bot(readiness="starting", detail="restoring", state="WAITING", pid=None)))
    assert "starting (restoring)" in text


def test_failed_bot_shows_the_error_the_fix_and_the_log() -> None:
    failed = bot(
        state="FAILED",
        readiness="failed",
        pid=None,
        error="api_server: Port 8642 already in use",
        hint="another process holds port 8642: stop it, or set bots[0].api.port in /x/hermes-flare.yaml; "
        "then `flared restart --bot hermes`",
        failure={"kind": "fatal", "exit_code": 78, "retry_in_s": None},
    )
    lines = render(status(failed)).splitlines()
    i = lines.index("hermes:")
    assert lines[i + 1 : i + 4] == [
        "  gateway failed (exit 78; waits for a config change or a restart): api_server: Port 8642 already in use",
        "  fix: another process holds port 8642: stop it, or set bots[0].api.port in /x/hermes-flare.yaml; "
        "then `flared restart --bot hermes`",
        "  log: /s/bots/hermes/logs/gateway.log (`flared logs --bot hermes`)",
    ]


def test_a_crash_loop_says_when_it_is_retried() -> None:
    failed = bot(readiness="failed", error="boom", failure={"kind": "loop", "exit_code": 1, "retry_in_s": 40})
    assert "gateway failed (kept exiting; retry in 40s): boom" in render(status(failed))


def test_the_restore_at_boot_is_shown_with_the_snapshots_age_and_time() -> None:
    snaps = {
        "phase": "ready",
        "restore": {
            "result": "restored",
            "id": "20260101T000000Z-abc123",
            "seconds": 1.25,
            "at": "2026-01-01T03:00:00+00:00",
        },
    }
    assert "restored snapshot 20260101T000000Z-abc123 (taken 3h00m before) in 1.25 s" in render(
        status(bot(snapshots=snaps))
    )


def test_a_broken_file_is_said_once() -> None:
    text = render(
        status(bot(), config={"path": "/x/h.yaml", "digest": "d" * 64, "error": ["h.yaml:3:1: x: bad"]})
    )
    assert text.count("NOT applied") == 1 and "  h.yaml:3:1: x: bad" in text
    assert "problem" not in text and "nothing was changed" not in text


def test_offline_status_shows_the_last_stop() -> None:
    text = render(
        {
            "daemon": "not running",
            "config": {"path": "/x/h.yaml", "digest": "d" * 64},
            "bots": [{"name": "hermes", "state": "STOPPED", "readiness": "stopped"}],
            "last_stop": {
                "stopped_at": "2026-01-01T00:00:00+00:00",
                "final_snapshots": [{"bot": "hermes", "result": "unchanged", "id": "S1"}],
            },
        }
    )
    assert text.startswith("flared not running")
    assert "hermes: final snapshot: unchanged since S1, nothing uploaded" in text
    assert text.rstrip().endswith("start it with `flared up`")


def test_final_snapshot_lines_and_restore_lines() -> None:
    assert final_snapshot_lines(
        [
            {"bot": "a", "result": "ok", "id": "S2", "bytes_uploaded": 2048, "seconds": 0.5},
            {"bot": "b", "result": "skipped", "reason": "fenced"},
        ]
    ) == ["a: final snapshot S2: 2.0 KiB uploaded in 0.5 s", "b: no final snapshot (skipped): fenced"]
    assert restore_line({"result": "empty"}) == "started fresh: the store held no snapshot"
    assert restore_line({"result": "failed", "error": "no space"}) == "restore failed: no space"
    assert snapshot_age("not-an-id") is None


def test_the_admin_page_is_shown_with_its_url_or_why_it_is_not_served() -> None:
    text = render(status(bot(), admin={"url": "http://127.0.0.1:8643/admin/", "error": None}))
    assert "admin page: http://127.0.0.1:8643/admin/ (`flared admin` prints a sign-in link)" in text
    why = "admin page not served: cannot listen on 127.0.0.1:8643 (Address already in use); set admin.port"
    assert why in render(status(bot(), admin={"url": None, "error": why}))
    assert "admin page" not in render(status(bot(), admin={"url": None, "error": None}))  # turned off


def test_the_stream_shows_its_lag_and_a_stalled_database_with_its_error() -> None:
    ok = {
        "enabled": True,
        "streaming": True,
        "stalled": False,
        "databases": [{"db": "state.db", "state": "ok", "lag_s": 0.7, "error": None}],
    }
    row = next(ln for ln in render(status(bot(stream=ok))).splitlines() if ln.startswith("hermes"))
    assert row.endswith("0.7 s behind")
    stalled = {
        "enabled": True,
        "streaming": True,
        "stalled": True,
        "databases": [
            {"db": "state.db", "state": "stalled", "lag_s": 95.0, "error": "403 Forbidden"},
            {"db": "kanban.db", "state": "ok", "lag_s": 0.5, "error": None},
        ],
    }
    text = render(status(bot(stream=stalled)))
    assert next(ln for ln in text.splitlines() if ln.startswith("hermes")).endswith("stalled")
    assert "  stream of state.db stalled (95 s behind): 403 Forbidden" in text
    assert "kanban.db" not in text
    paused = {"enabled": True, "streaming": False, "reason": "a restore is replacing its databases"}
    assert "stream paused: a restore is replacing its databases" in render(status(bot(stream=paused)))
    assert next(
        ln for ln in render(status(bot(stream={"enabled": False}))).splitlines() if ln.startswith("hermes")
    ).endswith("off")
