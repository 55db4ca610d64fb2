"""Operator command parsing and rendering (pure) and the audit log."""

from __future__ import annotations

from pathlib import Path

import pytest

from flared.operator import commands as cmds
from flared.operator.audit import AuditLog, tail


@pytest.mark.parametrize(
    ("text", "name", "args"),
    [
        ("status", "status", []),
        ("  STATUS  ", "status", []),
        ("<@U0001> snapshot athena", "snapshot", ["athena"]),
        ("/flare restore athena 20261124T055012Z-3f9a1c", "restore", ["athena", "20261124T055012Z-3f9a1c"]),
        ("logs athena 40", "logs", ["athena", "40"]),
        ("", "help", []),
        ("help", "help", []),
    ],
)
def test_parse(text: str, name: str, args: list[str]) -> None:
    assert cmds.parse(text) == cmds.Command(name, args)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("statsu", "Did you mean `status`?"),
        ("rm -rf /", "I don't know `rm`"),
        ("restore", "Usage: `restore <bot> [id]`"),
        ("restart a b", "Usage: `restart <bot>`"),
        ("logs athena lots", "must be a number"),
        ("logs athena 999999", "must be a number"),
    ],
)
def test_parse_errors_say_what_to_type(text: str, message: str) -> None:
    with pytest.raises(cmds.ParseError) as err:
        cmds.parse(text)
    assert message in str(err.value)


def test_help_lists_every_command() -> None:
    text = cmds.help_text()
    for name in cmds.SPEC:
        assert f"`{name}" in text


def test_render_status_shows_what_an_operator_needs() -> None:
    status = {
        "flared": {"uptime_s": 4000},
        "config": {
            "digest": "abcdef1234567890",
            "loaded_at": "2026-11-24T05:00:00",
            "error": ["f.yaml:3:1: x: bad"],
        },
        "bots": [
            {
                "name": "athena",
                "state": "RUNNING",
                "uptime_s": 120,
                "restarts": 2,
                "snapshots": {
                    "phase": "ready",
                    "last": {"result": "ok"},
                    "last_ok": {"id": "20261124T0500Z-aaaaaa", "age_s": 300},
                    "restore": {"result": "restored", "id": "20261124T0400Z-bbbbbb"},
                },
            },
            {
                "name": "hermes",
                "state": "BACKOFF",
                "restarts": 5,
                "error": "exited too quickly",
                "snapshots": {"phase": "waiting for store", "last": None, "fenced": "another writer"},
            },
        ],
        "leases": [
            {"id": "fl-default-aaaaaaaaaaaa", "bot": "athena"},
            {"id": "fl-default-bbbbbbbbbbbb", "bot": "athena"},
            {"id": "fl-default-cccccccccccc", "bot": "hermes"},
        ],
    }
    text = cmds.render_status(status)
    for needle in (
        "abcdef123456",
        "NOT applied",
        "athena* RUNNING",
        "restarts 2",
        "20261124T0500Z-aaaaaa",
        "5m ago",
        "restore restored 20261124T0400Z-bbbbbb",
        "BACKOFF",
        "waiting for store",
        "fenced: another writer",
        "exited too quickly",
        "leases in use: 3 (athena 2, hermes 1)",
    ):
        assert needle in text, needle


def test_restore_preview_says_what_is_replaced() -> None:
    text = cmds.restore_preview(
        "athena",
        {
            "id": "20261124T0400Z-bbbbbb",
            "created_at": "2026-11-24T04:00:00",
            "packed_size": 4096,
            "latest": False,
        },
        {"snapshots": {"last_ok": {"id": "20261124T0500Z-aaaaaa", "age_s": 60}}},
    )
    assert "older snapshot `20261124T0400Z-bbbbbb`" in text and "home.previous" in text and "1m ago" in text


def test_audit_log_appends_json_lines_and_redacts(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "operator" / "audit.jsonl")
    log.append("U1", "status", [], "ok", "fine")
    log.append("U2", "refused", [], "refused", "token xoxb-1234567890-secretsecret leaked")
    (tmp_path / "operator" / "audit.jsonl").open("a").write('{"torn": ')
    entries = tail(tmp_path / "operator" / "audit.jsonl", 5)
    assert [(e["user"], e["result"]) for e in entries] == [("U1", "ok"), ("U2", "refused")]
    assert "secretsecret" not in entries[1]["detail"]
    assert oct((tmp_path / "operator" / "audit.jsonl").stat().st_mode & 0o777) == "0o600"


def test_audit_log_redacts_secrets_in_args_too(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    log.append("U9", "refused", ["restore", "xapp-1-A0-1-abcdefabcdef"], "refused")
    assert "abcdefabcdef" not in (tmp_path / "audit.jsonl").read_text()
    assert tail(tmp_path / "audit.jsonl")[0]["args"][0] == "restore"


def test_render_reload_applied_unchanged_and_refused() -> None:
    applied = cmds.render_reload(
        {
            "applied": True,
            "config_digest": "0123456789abcdef",
            "changes": ["bots.athena.model: changed"],
            "restarted": ["athena"],
            "started": [],
            "stopped": ["old"],
            "failures": {"athena": "snapshot before restart failed: store down"},
        }
    )
    assert applied.startswith(":white_check_mark: config `0123456789ab` applied")
    for needle in ("bots.athena.model: changed", "restarted: athena", "stopped: old", ":warning: athena"):
        assert needle in applied, needle
    assert "\nstarted:" not in applied
    assert cmds.render_reload({"applied": False, "unchanged": True}) == "Config unchanged; nothing to do."
    # A change that cannot apply live comes back 200 with applied false: it must not read as success.
    refused = cmds.render_reload(
        {
            "applied": False,
            "errors": [
                {"file": "f.yaml", "line": 2, "col": 1, "path": "state_dir", "message": "cannot change"}
            ],
        }
    )
    assert refused.startswith(":x:") and "f.yaml:2:1: state_dir: cannot change" in refused


def test_render_leases_lists_each_with_its_session() -> None:
    assert cmds.render_leases([]) == "No sandbox leases in use."
    text = cmds.render_leases(
        [
            {
                "id": "fl-a-1",
                "bot": "athena",
                "mode": "session",
                "provider": "local",
                "session": "s1",
                "busy": True,
                "idle_expires_in_s": 125.0,
            }
        ]
    )
    assert "`fl-a-1` bot athena, session local, session s1, busy, idle expiry in 2m" in text


def test_the_operator_manifest_grants_what_the_app_uses() -> None:
    """docs/operator-app-manifest.yaml: the command, events and scopes flared/operator/app.py needs."""
    import yaml

    root = Path(__file__).resolve().parent.parent
    manifest = yaml.safe_load((root / "docs" / "operator-app-manifest.yaml").read_text())
    source = (root / "flared" / "operator" / "app.py").read_text()
    assert [c["command"] for c in manifest["features"]["slash_commands"]] == ["/flare"]
    assert '@app.command("/flare")' in source
    settings = manifest["settings"]
    assert settings["socket_mode_enabled"] and settings["interactivity"]["is_enabled"]
    assert set(settings["event_subscriptions"]["bot_events"]) == {"message.im", "app_mention"}
    scopes = set(manifest["oauth_config"]["scopes"]["bot"])
    # chat.postMessage/update, files upload v2, conversations.open (DM for /flare), DM events.
    assert {"chat:write", "files:write", "im:write", "im:history", "commands", "app_mentions:read"} <= scopes
