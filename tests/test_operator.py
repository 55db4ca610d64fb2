"""The operator bot end to end: real flared + supervisord + gateway, fake Slack on loopback."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.slack_server import FakeSlack, Post, SlackApp, SlackUser
from tests.fixtures.flare import FlareUp, bot, run_cli

pytestmark = pytest.mark.integration


class World:
    def __init__(
        self, slack: FakeSlack, app: SlackApp, alice: SlackUser, mallory: SlackUser, flare: FlareUp
    ) -> None:
        self.slack, self.app, self.alice, self.mallory, self.flare = slack, app, alice, mallory, flare

    def say(self, text: str, user: SlackUser | None = None) -> float:
        at = time.time()
        self.slack.dm(self.app, user or self.alice, text)
        return at

    def reply(self, contains: str, after: float, timeout: float = 60) -> Post:
        return self.slack.wait_for_post(
            self.app, contains=contains, after=after, timeout=timeout, final=False
        )

    def audit(self) -> list[dict[str, Any]]:
        path = self.flare.state_dir / "operator" / "audit.jsonl"
        return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("operator")
    with FakeSlack() as slack:
        app = slack.add_app("operator")
        alice = slack.add_user("alice")
        mallory = slack.add_user("mallory")
        operator = {
            "slack": {"bot_token": app.bot_token, "app_token": app.app_token, "api_url": slack.api_url},
            "allowed_users": [alice.id],
        }
        flare = FlareUp(tmp, [bot("athena")], operator=operator)
        flare.start()
        try:
            flare.wait_running("athena")
            slack.wait_connected(app, timeout=60)
            yield World(slack, app, alice, mallory, flare)
        finally:
            flare.stop()


def test_status_help_and_unknown_commands(world: World) -> None:
    at = world.say("status")
    post = world.reply("athena", at)
    assert "RUNNING" in post.text and "config `" in post.text
    at = world.say("statsu")
    assert "Did you mean `status`" in world.reply("Did you mean", at).text
    at = world.say("help")
    assert "restore <bot> [id]" in world.reply("restore <bot>", at).text


def test_stranger_is_refused_and_logged(world: World) -> None:
    at = world.say("snapshot athena", user=world.mallory)
    assert "not allowed" in world.reply("not allowed", at).text
    time.sleep(0.5)
    refused = [e for e in world.audit() if e["user"] == world.mallory.id]
    assert refused and refused[-1]["result"] == "refused"
    assert not [p for p in world.slack.posts_for(world.app) if p.at >= at and "snapshot `" in p.text]


def test_snapshot_posts_progress_then_result_in_one_thread(world: World) -> None:
    home = world.flare.state_dir / "bots" / "athena" / "home"
    (home / "memories").mkdir(exist_ok=True)
    (home / "memories" / "USER.md").write_text("operator test\n")
    at = time.time()
    env = world.slack.dm(world.app, world.alice, "snapshot athena")
    progress = world.reply("started", at)
    done = world.reply("athena: snapshot `", at)
    assert done.thread_ts == (progress.thread_ts or progress.ts)
    # Acked before the work finished: Slack redelivers events not acked in 3 s.
    assert env.acked_at is not None and env.acked_at < done.at
    entry = world.audit()[-1]
    assert (entry["command"], entry["args"], entry["result"]) == ("snapshot", ["athena"], "ok")
    at = world.say("snapshots athena")
    assert "*latest*" in world.reply("snapshots, newest first", at).text
    status = world.flare.status()
    assert status["operator"]["last_actions"][-1]["command"] in {"snapshots", "snapshot"}


def test_restore_asks_first_and_cancel_changes_nothing(world: World) -> None:
    at = world.say("restore athena")
    prompt = world.reply("Restore *athena*", at)
    assert "home.previous" in prompt.text and prompt.blocks
    buttons = [e for b in prompt.blocks if b.get("type") == "actions" for e in b["elements"]]
    token = buttons[0]["value"]
    # Someone else pressing the button does nothing.
    at = time.time()
    world.slack.block_action(world.app, world.mallory, "flare_confirm", token, message_ts=prompt.ts)
    world.reply("Only the person who asked", at)
    at = time.time()
    world.slack.block_action(world.app, world.alice, "flare_cancel", token, message_ts=prompt.ts)
    world.reply("Cancelled `restore athena`", at)
    # The token is spent.
    at = time.time()
    world.slack.block_action(world.app, world.alice, "flare_confirm", token, message_ts=prompt.ts)
    world.reply("expired or was already used", at)


def test_restore_confirmed_restores_and_restarts(world: World) -> None:
    home = world.flare.state_dir / "bots" / "athena" / "home"
    (home / "memories").mkdir(exist_ok=True)
    (home / "memories" / "USER.md").write_text("before restore\n")
    at = world.say("snapshot athena")
    world.reply("athena: snapshot `", at)
    (home / "memories" / "USER.md").write_text("edited after the snapshot\n")
    pid = world.flare.bot_status("athena")["pid"]
    at = world.say("restore athena")
    prompt = world.reply("Restore *athena*", at)
    token = next(e for b in prompt.blocks or [] if b.get("type") == "actions" for e in b["elements"])["value"]
    at = time.time()
    world.slack.block_action(world.app, world.alice, "flare_confirm", token, message_ts=prompt.ts)
    world.reply("athena restored from", at, timeout=120)
    assert (home / "memories" / "USER.md").read_text() == "before restore\n"
    st = world.flare.wait_running("athena")
    assert st["pid"] != pid


def test_works_while_the_gateway_is_down_and_never_leaks_secrets(world: World) -> None:
    pid = world.flare.bot_status("athena")["pid"]
    os.kill(pid, signal.SIGSTOP)  # a hung gateway: the operator does not depend on it
    try:
        at = world.say("status")
        assert "athena" in world.reply("athena", at).text
        at = world.say("logs athena 2000")
        post = world.slack.wait_for_post(
            world.app, after=at, predicate=lambda p: "gateway log" in p.text, final=False
        )
        assert "gateway log" in post.text
    finally:
        os.kill(pid, signal.SIGCONT)
    at = world.say("config")
    config = world.reply("secrets redacted", at).text
    assert world.app.bot_token not in config and world.app.app_token not in config
    assert world.app.bot_token not in world.slack.all_text(world.app)
    for log in (world.flare.state_dir / "logs").glob("*.log"):
        assert world.app.bot_token not in log.read_text(errors="replace"), log


def test_slash_command_and_audit_cli(world: World) -> None:
    at = time.time()
    world.slack.slash_command(world.app, world.alice, "/flare", "leases")
    world.reply("lease", at)
    # From a channel: the answer comes in the caller's DM, not in the channel.
    channel = world.slack.add_channel(f"ops-{time.monotonic_ns()}")
    at = time.time()
    env = world.slack.slash_command(world.app, world.alice, "/flare", "status", channel=channel)
    assert env.ack_payload == {"text": "I answer in our DM."}
    post = world.reply("athena", at)
    assert post.channel == world.slack.dm_channel(world.app, world.alice)
    assert not world.slack.posts_for(world.app, channel=channel)
    out = run_cli("operator", "audit", "--json", "-c", str(world.flare.config_path))
    entries = json.loads(out.stdout)
    assert [(e["command"], e["user"]) for e in entries[-2:]] == [
        ("leases", world.alice.id),
        ("status", world.alice.id),
    ]


def test_operator_failure_never_touches_the_bots(tmp_path: Path) -> None:
    """A bad operator token: supervisord keeps retrying it, the bot runs on."""
    operator = {
        "slack": {
            "bot_token": "xoxb-1-bad",
            "app_token": "xapp-1-A0-1-bad",
            "api_url": "http://127.0.0.1:9/api/",
        },
        "allowed_users": ["U0000000001"],
    }
    with FlareUp(tmp_path, [bot("athena")], operator=operator) as flare:
        first = flare.wait_running("athena")
        time.sleep(8)
        st = flare.status()
        assert st["operator"]["state"] in {"BACKOFF", "STARTING", "EXITED", "FATAL"}, st["operator"]
        log = (flare.state_dir / "logs" / "operator.log").read_text(errors="replace")
        assert log.strip() and "xoxb-1-bad" not in log
        assert flare.bot_status("athena")["pid"] == first["pid"]
        assert flare.bot_status("athena")["state"] == "RUNNING"


def buttons(post: Post) -> list[dict[str, Any]]:
    return [e for b in post.blocks or [] if b.get("type") == "actions" for e in b["elements"]]


def test_restart_asks_then_restarts_in_the_prompts_thread(world: World) -> None:
    pid = world.flare.wait_running("athena")["pid"]
    at = world.say("restart athena")
    prompt = world.reply("Restart *athena*", at)
    assert f"pid {pid}" in prompt.text and prompt.thread_ts
    [confirm, _] = buttons(prompt)
    at = time.time()
    world.slack.block_action(
        world.app, world.alice, confirm["action_id"], confirm["value"], message_ts=prompt.ts
    )
    done = world.reply("gateway restarted", at, timeout=120)
    assert done.thread_ts == prompt.thread_ts
    # The prompt now says who confirmed, and its buttons are gone.
    settled = world.slack.latest_version(prompt)
    assert settled.method == "chat.update" and f"Confirmed by <@{world.alice.id}>" in settled.text
    assert not buttons(settled)
    assert world.flare.wait_running("athena")["pid"] != pid
    entry = world.audit()[-1]
    assert (entry["command"], entry["args"], entry["result"]) == ("restart", ["athena"], "ok")


def test_logs_redact_secrets_and_long_ones_come_as_a_file(world: World) -> None:
    log = world.flare.state_dir / "bots" / "athena" / "logs" / "gateway.log"
    assert log.exists(), sorted(p.name for p in log.parent.iterdir())
    secret = "sk-live0123456789abcdefXYZ"
    with log.open("a") as fh:
        fh.write(f"connecting with {world.app.app_token} and key {secret}\n")
        for i in range(80):
            fh.write(f"filler line {i} " + "." * 60 + "\n")
    world.say("logs athena 200")
    deadline = time.monotonic() + 60
    uploads: list[dict[str, Any]] = []
    while not uploads and time.monotonic() < deadline:
        time.sleep(0.2)
        uploads = [
            f for f in list(world.slack.files.values()) if "gateway log" in str(f.get("initial_comment"))
        ]
    assert uploads, "the long log should have been uploaded as a file"
    assert uploads[-1]["channel"] == world.slack.dm_channel(world.app, world.alice)
    assert "(secrets redacted)" in uploads[-1]["initial_comment"] and uploads[-1]["thread_ts"]
    content = uploads[-1]["content"].decode()
    assert "connecting with **********" in content and "filler line 79" in content
    assert world.app.app_token not in content and secret not in content
    assert world.app.app_token not in world.slack.all_text(world.app)


def test_reload_reports_a_broken_file_and_changes_nothing(world: World) -> None:
    digest = world.flare.status()["config"]["digest"]
    good = world.flare.config_path.read_text()
    world.flare.config_path.write_text(good + "bogus_section: {a: 1}\n")
    try:
        at = world.say("reload")
        failed = world.reply("NOT applied", at)
        assert f"{world.flare.config_path}:" in failed.text and "bogus_section" in failed.text
        assert world.audit()[-1]["result"] == "failed"
        assert world.flare.status()["config"]["digest"] == digest
    finally:
        world.flare.config_path.write_text(good)
    at = world.say("reload")
    world.reply("Config unchanged", at)


def test_killed_operator_comes_back_and_the_bot_never_notices(world: World) -> None:
    gateway = world.flare.wait_running("athena")["pid"]
    deadline = time.monotonic() + 30
    while (op := world.flare.status()["operator"])["state"] != "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.5)  # STARTING for startsecs after its launch
    assert op["state"] == "RUNNING" and op["pid"]
    connects = world.app.connect_count
    os.kill(op["pid"], signal.SIGKILL)
    world.slack.wait_connected(world.app, timeout=60, min_count=connects + 1)
    at = world.say("status")
    assert "athena" in world.reply("athena", at).text
    assert world.flare.status()["operator"]["pid"] not in (None, op["pid"])
    assert world.flare.bot_status("athena")["pid"] == gateway
