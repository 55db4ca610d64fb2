"""The mission in six scenarios: real ``hermes gateway run`` under flared, fake Slack and model.

Scenarios share one ``flared up`` with two bots (alpha and beta, each its own
Slack app); the one that kills the container runs last.
"""

from __future__ import annotations

import shutil
import time
from typing import Any

import pytest

from tests.e2e.harness import (
    INSTALL_PATH,
    SANDBOXES,
    SNAPSHOTS,
    World,
    for_bot,
    messages,
    turn_with,
    wait_until,
)
from tests.fakes import llm_server as llm
from tests.fakes.llm_server import Reply
from tests.fixtures.flare import run_cli

pytestmark = pytest.mark.e2e

needs_sandboxes = pytest.mark.skipif(
    not SANDBOXES,
    reason="sandboxes (issue 4: flared.plugin.terminal + flared.sandboxes.manager) not built yet",
)
needs_snapshots = pytest.mark.skipif(
    not SNAPSHOTS, reason="snapshots (issue 3: flared.snapshots.service, `flared snapshot(s)`) not built yet"
)


@needs_sandboxes
def test_1_the_originals_demo_runs_in_a_sandbox(world: World) -> None:
    """A DM asks for a command; it runs in a lease, not the agent container; the output comes back."""
    command = f"whoami; ls {INSTALL_PATH}"
    answer = world.ask(
        "alpha",
        f"run whoami and ls {INSTALL_PATH}",
        llm.tool("terminal", {"command": command}, when=turn_with("alpha", "run whoami")),
        llm.echo_tool_result("Output:\n"),
        contains="Output:",
    )
    world.llm.script()  # nothing else expected
    assert "No such file" in answer, answer  # the agent's install is not in the sandbox
    user = answer.split("Output:", 1)[1].strip().splitlines()[0]
    assert user and user != "root", f"command ran as {user!r}: not dropped to the sandbox user"
    # The model saw the same output as its tool result.
    turn = world.llm.wait_for(lambda r: for_bot("alpha")(r) and bool(r.last_tool_result), timeout=5)
    assert "No such file" in turn.last_tool_result


def test_4_two_bots_are_routed_and_kept_apart(world: World) -> None:
    world.llm.script(
        llm.text("ALPHA-OK from alpha", when=turn_with("alpha", "ping-alpha")),
        llm.text("BETA-OK from beta", when=turn_with("beta", "ping-beta")),
    )
    t = world.dm("alpha", "ping-alpha")
    world.dm("beta", "ping-beta")
    assert "ALPHA-OK" in world.reply("alpha", t, contains="ALPHA-OK")
    assert "BETA-OK" in world.reply("beta", t, contains="BETA-OK")

    # Each app posted only its own bot's answer.
    assert "BETA-OK" not in world.slack.all_text(world.apps["alpha"])
    assert "ALPHA-OK" not in world.slack.all_text(world.apps["beta"])
    # Each model request carried only its own conversation.
    for r in world.llm.agent_turns():
        other = "ping-beta" if r.body["model"] == "model-alpha" else "ping-alpha"
        assert other not in r.text
    # Each bot's state holds only its own conversation.
    alpha, beta = messages(world.home("alpha")), messages(world.home("beta"))
    assert any("ping-alpha" in c for _, c in alpha) and not any("ping-beta" in c for _, c in alpha)
    assert any("ping-beta" in c for _, c in beta) and not any("ping-alpha" in c for _, c in beta)
    if SNAPSHOTS:  # separate snapshot streams (the periodic loop takes them)
        a = wait_until(lambda: world.snapshots("alpha"), 30, "alpha has a snapshot")
        b = wait_until(lambda: world.snapshots("beta"), 30, "beta has a snapshot")
        assert {s["id"] for s in a}.isdisjoint({s["id"] for s in b})


def test_5_disallowed_user_gets_nothing_at_all(world: World) -> None:
    """A stranger gets no agent turn, no reply, and sees no sign of work (issue 13 item 10):
    no 👀/✅ reaction, no "is thinking…" status, no assistant thread title, no suggested prompts."""
    app = world.apps["alpha"]
    dm = world.slack.dm_channel(app, world.mallory)
    before = len(world.llm.requests)
    calls_before = len(world.slack.calls)
    top = world.slack.dm(app, world.mallory, "mallory-wants-in")  # acked, like any event
    world.slack.dm(app, world.mallory, "mallory-in-a-thread", thread_ts=top.payload["event"]["ts"])
    world.slack.send_event(
        app,
        {
            "type": "assistant_thread_started",
            "assistant_thread": {
                "user_id": world.mallory.id,
                "channel_id": dm,
                "thread_ts": world.slack.next_ts(),
            },
            "event_ts": world.slack.next_ts(),
        },
    )
    slash = world.slack.slash_command(app, world.mallory, "/hermes", "mallory-slash")
    assert not (slash.ack_payload or {}).get("text"), slash.ack_payload  # not "Running `/hermes`…"
    # A later allowed message is answered: the gateway was up and had read mallory's first.
    world.ask(
        "alpha", "alice-after-mallory", llm.text("hi alice", when=for_bot("alpha")), contains="hi alice"
    )
    time.sleep(3)  # what Hermes would do for mallory runs in the background: give it time to show
    said = ("mallory-wants-in", "mallory-in-a-thread", "mallory-slash")
    assert not any(m in r.text for r in world.llm.requests[before:] for m in said)
    assert world.slack.posts_for(app, dm) == []
    assert not any(m in c for _, c in messages(world.home("alpha")) for m in said)
    seen = [
        (c.method, c.args)
        for c in world.slack.calls[calls_before:]
        if c.app == app.name and dm in (str(c.args.get("channel")), str(c.args.get("channel_id")))
    ]
    assert seen == [], f"the stranger's DM saw API calls: {seen}"
    # The same signs do show for alice, so the check above is not vacuous.
    alice_dm = world.slack.dm_channel(app, world.alice)
    shown = {c.method for c in world.slack.calls[calls_before:] if alice_dm in str(c.args)}
    assert "reactions.add" in shown, shown


def test_6_socket_drop_is_survived(world: World) -> None:
    app, other = world.apps["alpha"], world.apps["beta"]
    count, other_count = app.connect_count, other.connect_count
    assert world.slack.drop(app) >= 1
    world.slack.wait_connected(app, timeout=60, min_count=count + 1)
    answer = world.ask(
        "alpha",
        "still there?",
        llm.text("back again", when=turn_with("alpha", "still there")),
        contains="back",
    )
    assert answer == "back again"
    assert other.connect_count == other_count, "dropping alpha's socket touched beta"


def test_8_channel_mention_is_answered_in_a_thread(world: World) -> None:
    app = world.apps["beta"]
    channel = world.slack.add_channel(f"general-{app.name}")
    world.llm.script(llm.text("MENTION-OK", when=turn_with("beta", "status please")))
    sent = time.time()
    world.slack.channel_message(app, world.alice, channel, "no mention: ignored")
    env = world.slack.mention(app, world.alice, channel, "status please")
    post = world.slack.wait_for_post(app, channel=channel, contains="MENTION-OK", after=sent, timeout=60)
    assert post.thread_ts == env.payload["event"]["ts"], "reply_in_thread: the answer belongs in a thread"
    assert not any("no mention: ignored" in r.text for r in world.llm.agent_turns())


def test_7_flared_chat_talks_to_the_api_server(world: World) -> None:
    """No Slack: `flared chat` reaches the same agent through Hermes' api_server."""
    world.llm.script(llm.text("CHAT-OK from the api server", when=turn_with("alpha", "via flared chat")))
    out = run_cli("chat", "-c", str(world.flare.config_path), "--bot", "alpha", "hello via flared chat")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "CHAT-OK from the api server"


def test_9_no_secret_in_any_log(world: World) -> None:
    secrets = [t for a in world.apps.values() for t in (a.bot_token, a.app_token)]
    logs = [
        p for p in world.flare.state_dir.rglob("*") if p.is_file() and (".log" in p.name or "logs" in p.parts)
    ]
    assert logs, "no logs found"
    for path in logs:
        text = path.read_text(errors="replace")
        for secret in secrets:
            assert secret not in text, f"a Slack token is in {path}"


def _settle(read: Any, quiet: float, timeout: float) -> Any:
    """The value once it stopped changing for `quiet` seconds."""
    deadline = time.monotonic() + timeout
    value, since = read(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = read()
        if now != value:
            value, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return value
    raise AssertionError(f"still changing after {timeout} s: {value}")


@needs_snapshots
def test_3_automatic_snapshots(world: World) -> None:
    """A change made through chat reaches the store with no command; idling uploads nothing."""
    before = {s["id"] for s in world.snapshots("alpha")}
    world.ask(
        "alpha",
        "remember my favourite colour is teal",
        llm.tool(
            "memory",
            {"action": "add", "target": "user", "content": "Favourite colour: teal."},
            when=turn_with("alpha", "favourite colour"),
        ),
        llm.text("Noted: teal.", when=for_bot("alpha")),
        contains="teal",
    )
    wait_until(
        lambda: {s["id"] for s in world.snapshots("alpha")} - before, 30, "a new snapshot after the change"
    )
    # Hermes finishes its own bookkeeping (session rows, titles) just after replying.
    settled = _settle(lambda: {s["id"] for s in world.snapshots("alpha")}, quiet=4.0, timeout=40)
    time.sleep(8)  # four periods of snapshots.every with nothing happening
    assert {s["id"] for s in world.snapshots("alpha")} == settled, "idle period uploaded snapshots"


@needs_snapshots
def test_2_memory_survives_the_container(world: World) -> None:
    """Remember, snapshot, SIGKILL everything, lose the disk, come back: the bot still knows."""
    world.ask(
        "alpha",
        "remember that my dog is called Yodel",
        llm.tool(
            "memory",
            {"action": "add", "target": "user", "content": "User's dog is called Yodel."},
            when=turn_with("alpha", "dog is called Yodel"),
        ),
        llm.text("I'll remember Yodel.", when=for_bot("alpha")),
        contains="Yodel",
    )
    assert "Yodel" in (world.home("alpha") / "memories" / "USER.md").read_text()
    world.cli("snapshot", "--bot", "alpha")

    # A dead container: every process SIGKILLed, its disk gone (the store is elsewhere).
    connects = world.apps["alpha"].connect_count
    world.flare.kill_all()
    shutil.rmtree(world.flare.state_dir)
    world.flare.start()
    world.flare.wait_running("alpha", timeout=90)
    app = world.apps["alpha"]
    world.slack.wait_connected(app, timeout=90, min_count=connects + 1)

    history = messages(world.home("alpha"))
    assert any("remember that my dog is called Yodel" in c for r, c in history if r == "user"), history

    def answer(req: llm.LLMRequest) -> Reply:
        return Reply(text="Your dog is Yodel." if "Yodel" in req.system else "I don't know your dog.")

    reply = world.ask(
        "alpha",
        "what's my dog's name?",
        llm.dynamic(answer, when=turn_with("alpha", "dog's name")),
        contains="dog",
    )
    assert reply == "Your dog is Yodel."
    turn = world.llm.wait_for(turn_with("alpha", "dog's name"), timeout=5)
    assert "Yodel" in turn.system
