"""The operator's actions (Slack-free) against a real control server speaking the daemon's contract.

The routes here answer as flared's do (shapes from flared/routes.py,
flared/snapshots/api.py, flared/sandboxes/api.py), so each rule is checked
fast and in isolation; tests/test_operator.py runs the same commands against
a real daemon through the fake Slack.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flared.control.client import ControlClient
from flared.control.server import ControlServer, HTTPError, Request, Response, Router
from flared.operator import core
from flared.operator.audit import AuditLog, tail
from flared.operator.core import Operator, Reply

ALICE, BOB, MALLORY = "U0ALICE", "U0BOB", "U0MALLORY"
SNAPS = [
    {"id": "20261124T0600Z-cccccc", "created_at": "2026-11-24T06:00:00", "packed_size": 2048, "latest": True},
    {
        "id": "20261124T0500Z-bbbbbb",
        "created_at": "2026-11-24T05:00:00",
        "packed_size": 1024,
        "latest": False,
    },
]


class Daemon:
    """What the routes answer, and every call they got."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self.restore_result: dict[str, Any] = {"result": "restored", "id": SNAPS[0]["id"], "seconds": 1.5}
        self.reload_result: dict[str, Any] = {"applied": False, "unchanged": True}
        self.log_lines = ["line one", "line two"]

    def router(self) -> Router:
        r = Router()

        def record(req: Request) -> None:
            self.calls.append((req.method, req.path, req.json() if req.body else dict(req.query)))

        def bot_named(name: str | None) -> str:
            if name not in {"athena", "hermes"}:
                raise HTTPError(404, f"no enabled bot named {name!r}")
            return name

        def status(req: Request) -> dict[str, Any]:
            record(req)
            return {
                "config": {"digest": "d" * 64, "loaded_at": "2026-11-24T06:00:00"},
                "bots": [
                    {"name": "athena", "state": "RUNNING", "pid": 42, "snapshots": {}},
                    {"name": "hermes", "state": "STOPPED", "pid": None, "snapshots": {}},
                ],
            }

        def snapshots(req: Request) -> dict[str, Any]:
            record(req)
            bot_named(req.query.get("bot"))
            return {"snapshots": SNAPS}

        def take(req: Request) -> Response:
            record(req)
            bot = req.json().get("bot")
            results = [
                {"bot": b, "result": "ok", "id": "20261124T0700Z-dddddd", "bytes_uploaded": 4096}
                if b == "athena"
                else {"bot": b, "result": "failed", "error": "store unreachable"}
                for b in ([bot_named(bot)] if bot else ["athena", "hermes"])
            ]
            failed = any(x["result"] == "failed" for x in results)
            return Response(500 if failed else 200, {"results": results})

        def restore(req: Request) -> Response:
            record(req)
            ok = self.restore_result.get("result") == "restored"
            return Response(200 if ok else 500, self.restore_result)

        def restart(req: Request) -> dict[str, Any]:
            record(req)
            return {"restarted": bot_named(req.params["name"])}

        def logs(req: Request) -> dict[str, Any]:
            record(req)
            return {"bot": bot_named(req.query.get("bot")), "lines": self.log_lines}

        def reload(req: Request) -> Response:
            record(req)
            return Response(400 if self.reload_result.get("errors") else 200, self.reload_result)

        r.add("GET", "/status", status)
        r.add("GET", "/snapshots", snapshots)
        r.add("POST", "/snapshots", take)
        r.add("POST", "/restore", restore)
        r.add("POST", "/bots/{name}/restart", restart)
        r.add("GET", "/logs", logs)
        r.add("POST", "/reload", reload)
        return r


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon()
    server = ControlServer(d.router(), state_dir=tmp_path, socket_path=tmp_path / "flared.sock")
    server.start()
    try:
        yield d
    finally:
        server.stop()


@pytest.fixture
def op(tmp_path: Path, daemon: Daemon) -> Operator:
    audit = AuditLog(tmp_path / "operator" / "audit.jsonl")
    return Operator(ControlClient(tmp_path / "flared.sock"), audit, [ALICE, BOB], ["restore", "restart"])


def audit(tmp_path: Path) -> list[dict[str, Any]]:
    return tail(tmp_path / "operator" / "audit.jsonl", 100)


def run(replies: Iterator[Reply]) -> list[Reply]:
    return list(replies)


def test_a_stranger_is_refused_without_touching_flared(op: Operator, daemon: Daemon, tmp_path: Path) -> None:
    [reply] = run(op.handle(MALLORY, "restart athena"))
    assert "not allowed" in reply.text
    assert daemon.calls == []
    assert audit(tmp_path)[-1] | {"at": ""} == {
        "at": "",
        "user": MALLORY,
        "command": "refused",
        "args": ["restart", "athena"],
        "result": "refused",
        "detail": "user not in operator.allowed_users",
    }


def test_a_mistyped_command_is_answered_and_audited(op: Operator, tmp_path: Path) -> None:
    [reply] = run(op.handle(ALICE, "snapshto athena"))
    assert "Did you mean `snapshot`" in reply.text
    entry = audit(tmp_path)[-1]
    assert (entry["command"], entry["args"], entry["result"]) == (
        "invalid",
        ["snapshto", "athena"],
        "invalid",
    )


def test_flared_down_is_said_plainly(tmp_path: Path) -> None:
    op = Operator(ControlClient(tmp_path / "none.sock"), AuditLog(tmp_path / "a.jsonl"), [ALICE], [])
    [reply] = run(op.handle(ALICE, "status"))
    assert reply.text == ":x: flared is not answering (is the Agent container up?)"
    assert tail(tmp_path / "a.jsonl")[-1]["result"] == "error"


def test_restore_confirmation_flow(op: Operator, daemon: Daemon, tmp_path: Path) -> None:
    [prompt] = run(op.handle(ALICE, "restore athena 20261124T0500Z-bbbbbb"))
    assert prompt.confirm_token and "older snapshot `20261124T0500Z-bbbbbb`" in prompt.text
    assert not [c for c in daemon.calls if c[1] == "/restore"]
    assert audit(tmp_path)[-1]["result"] == "asked"
    # Another allowed user cannot confirm someone else's request.
    [other] = run(op.decide(BOB, prompt.confirm_token, True))
    assert "Only the person who asked" in other.text and not other.replaces_prompt
    assert audit(tmp_path)[-1] | {"at": "", "detail": ""} == {
        "at": "",
        "detail": "",
        "user": BOB,
        "command": "restore",
        "args": ["athena", "20261124T0500Z-bbbbbb"],
        "result": "refused",
    }
    confirmed, progress, result = run(op.decide(ALICE, prompt.confirm_token, True))
    assert confirmed.replaces_prompt and f"<@{ALICE}>" in confirmed.text
    assert not progress.final and "restore of athena started" in progress.text
    assert result.final and result.text.startswith(":white_check_mark: athena restored from `20261124T0600Z")
    assert ("POST", "/restore", {"bot": "athena", "id": "20261124T0500Z-bbbbbb"}) in daemon.calls
    assert audit(tmp_path)[-1]["result"] == "ok"
    # Spent: a second press does nothing.
    [again] = run(op.decide(ALICE, prompt.confirm_token, True))
    assert "already used" in again.text
    assert len([c for c in daemon.calls if c[1] == "/restore"]) == 1


def test_cancel_and_expiry(
    op: Operator, daemon: Daemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    [prompt] = run(op.handle(ALICE, "restart athena"))
    assert "pid 42" in prompt.text and prompt.confirm_token
    [cancelled] = run(op.decide(ALICE, prompt.confirm_token, False))
    assert cancelled.replaces_prompt and cancelled.text == "Cancelled `restart athena`."
    assert audit(tmp_path)[-1]["result"] == "cancelled"
    [prompt] = run(op.handle(ALICE, "restart athena"))
    monkeypatch.setattr(core, "CONFIRM_TTL", 0.0)
    [late] = run(op.decide(ALICE, prompt.confirm_token or "", True))
    assert "expired" in late.text
    assert not [c for c in daemon.calls if c[0] == "POST"]


def test_confirmation_is_not_offered_for_what_cannot_run(
    op: Operator, daemon: Daemon, tmp_path: Path
) -> None:
    [reply] = run(op.handle(ALICE, "restore athena 20990101T0000Z-ffffff"))
    assert reply.confirm_token is None and "no snapshot `20990101T0000Z-ffffff`" in reply.text
    [reply] = run(op.handle(ALICE, "restart zeus"))
    assert reply.confirm_token is None and "no bot named `zeus`" in reply.text
    assert [e["result"] for e in audit(tmp_path)] == ["failed", "failed"]
    assert op.pending == {}


def test_failed_restore_reads_as_a_failure(op: Operator, daemon: Daemon, tmp_path: Path) -> None:
    daemon.restore_result = {"result": "failed", "bot": "athena", "error": "the store holds no snapshot"}
    [prompt] = run(op.handle(ALICE, "restore athena"))
    *_, result = run(op.decide(ALICE, prompt.confirm_token or "", True))
    assert result.text == ":x: restore of athena failed: the store holds no snapshot"
    assert audit(tmp_path)[-1]["result"] == "failed"


def test_snapshot_of_every_bot_reports_each(op: Operator, daemon: Daemon, tmp_path: Path) -> None:
    progress, result = run(op.handle(ALICE, "snapshot"))
    assert "snapshot of every bot started" in progress.text
    assert ("POST", "/snapshots", {"bot": None}) in daemon.calls
    assert "athena: snapshot `20261124T0700Z-dddddd` (4.0 KiB uploaded)" in result.text
    assert "hermes: failed: store unreachable" in result.text
    assert audit(tmp_path)[-1]["result"] == "failed"


def test_logs_inline_or_as_a_file(op: Operator, daemon: Daemon) -> None:
    [short] = run(op.handle(ALICE, "logs athena 2"))
    assert short.file is None and "```line one\nline two```" in short.text
    assert ("GET", "/logs", {"bot": "athena", "lines": "2"}) in daemon.calls
    daemon.log_lines = [f"line {i} " + "x" * 80 for i in range(100)]
    [long] = run(op.handle(ALICE, "logs athena"))
    assert long.file is not None and long.file[0] == "athena-gateway.log"
    assert long.file[1].count("\n") == 99 and "x" * 80 not in long.text


def test_unknown_bot_is_flareds_answer(op: Operator) -> None:
    [reply] = run(op.handle(ALICE, "logs zeus"))
    assert reply.text == ":x: no enabled bot named 'zeus'"


def test_reload_refused_is_not_a_success(op: Operator, daemon: Daemon, tmp_path: Path) -> None:
    daemon.reload_result = {
        "applied": False,
        "errors": [{"file": "h.yaml", "line": 3, "col": 5, "path": "bots.0.name", "message": "bad"}],
    }
    *_, result = run(op.handle(ALICE, "reload"))
    assert (
        result.text.startswith(":x: the config was NOT applied")
        and "h.yaml:3:5: bots.0.name: bad" in result.text
    )
    assert audit(tmp_path)[-1]["result"] == "failed"


def test_an_unexpected_answer_is_reported_and_audited(op: Operator, daemon: Daemon, tmp_path: Path) -> None:
    daemon.log_lines = None  # type: ignore[assignment]  # a shape the operator does not expect
    [reply] = run(op.handle(ALICE, "logs athena"))
    assert reply.text == ":x: `logs` failed inside the operator; see its log (operator.log)."
    assert audit(tmp_path)[-1]["result"] == "error"
