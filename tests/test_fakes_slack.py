"""The fake Slack, driven by the real client libraries (slack_sdk, slack-bolt)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from slack_bolt import App
from slack_bolt.adapter.socket_mode import SocketModeHandler
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from tests.fakes.slack_server import FakeSlack, SlackApp, SlackUser


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack(ack_timeout=10) as server:
        yield server


@pytest.fixture
def app(slack: FakeSlack) -> SlackApp:
    return slack.add_app("hermes")


@pytest.fixture
def alice(slack: FakeSlack) -> SlackUser:
    return slack.add_user("alice")


def web(slack: FakeSlack, token: str) -> WebClient:
    return WebClient(token=token, base_url=slack.api_url)


def test_auth_and_token_types(slack: FakeSlack, app: SlackApp) -> None:
    auth = web(slack, app.bot_token).auth_test()
    assert auth["user_id"] == app.bot_user_id
    assert auth["bot_id"] == app.bot_id
    with pytest.raises(SlackApiError) as err:
        web(slack, "xoxb-unknown").auth_test()
    assert err.value.response["error"] == "invalid_auth"
    with pytest.raises(SlackApiError) as err2:
        web(slack, app.app_token).chat_postMessage(channel="C1", text="x")
    assert err2.value.response["error"] == "not_allowed_token_type"
    with pytest.raises(SlackApiError) as err3:
        web(slack, app.bot_token).apps_connections_open(app_token=app.bot_token)
    assert err3.value.response["error"] == "not_allowed_token_type"
    opened = web(slack, app.app_token).apps_connections_open(app_token=app.app_token)
    assert opened["url"].startswith("ws://127.0.0.1:")


def test_post_update_react_and_history(slack: FakeSlack, app: SlackApp, alice: SlackUser) -> None:
    client = web(slack, app.bot_token)
    dm = client.conversations_open(users=alice.id)["channel"]["id"]
    assert dm == slack.dm_channel(app, alice) and dm.startswith("D")
    posted = client.chat_postMessage(channel=dm, text="thinking…")
    client.chat_update(channel=dm, ts=posted["ts"], text="final answer")
    client.reactions_add(channel=dm, timestamp=posted["ts"], name="eyes")
    with pytest.raises(SlackApiError):
        client.reactions_add(channel=dm, timestamp=posted["ts"], name="eyes")
    got = client.reactions_get(channel=dm, timestamp=posted["ts"])
    assert got["message"]["reactions"][0]["name"] == "eyes"
    client.reactions_remove(channel=dm, timestamp=posted["ts"], name="eyes")
    post = slack.wait_for_post(app, channel=dm, timeout=5, final=False)
    assert post.text == "final answer"
    history = client.conversations_history(channel=dm)["messages"]
    assert [m["text"] for m in history] == ["final answer"]
    with pytest.raises(SlackApiError) as err:
        client.chat_postMessage(channel="C_NOPE", text="x")
    assert err.value.response["error"] == "channel_not_found"
    assert client.users_info(user=alice.id)["user"]["name"] == "alice"
    assert client.conversations_info(channel=dm)["channel"]["is_im"] is True
    client.assistant_threads_setStatus(channel_id=dm, thread_ts=posted["ts"], status="is typing…")
    assert slack.assistant_status[0]["status"] == "is typing…"
    client.chat_delete(channel=dm, ts=posted["ts"])
    assert client.conversations_history(channel=dm)["messages"] == []


def test_files_upload_v2(slack: FakeSlack, app: SlackApp, alice: SlackUser) -> None:
    client = web(slack, app.bot_token)
    dm = slack.dm_channel(app, alice)
    resp = client.files_upload_v2(channel=dm, content="hello file", filename="a.txt", initial_comment="here")
    fid = resp["file"]["id"]
    assert slack.files[fid]["content"] == b"hello file"
    assert slack.files[fid]["channel"] == dm
    assert "here" in slack.all_text(app, dm)


def test_unknown_method_is_recorded(slack: FakeSlack, app: SlackApp) -> None:
    with pytest.raises(SlackApiError) as err:
        web(slack, app.bot_token).api_call("nope.nothing")
    assert err.value.response["error"] == "unknown_method"
    assert slack.unknown_methods == ["nope.nothing"]


def test_fail_next(slack: FakeSlack, app: SlackApp) -> None:
    slack.fail_next("auth.test", "ratelimited")
    with pytest.raises(SlackApiError):
        web(slack, app.bot_token).auth_test()
    assert web(slack, app.bot_token).auth_test()["ok"]


def test_bolt_socket_mode_sync_dm_mention_slash_action_and_reconnect(
    slack: FakeSlack, app: SlackApp, alice: SlackUser
) -> None:
    """The sync Bolt SocketModeHandler: events routed, acked, and the app reconnects."""
    bolt = App(client=WebClient(token=app.bot_token, base_url=slack.api_url))
    seen: list[tuple[str, str]] = []

    @bolt.event("message")
    def on_message(event: dict[str, Any], say: Any) -> None:
        seen.append(("message", event["text"]))
        say(text=f"echo: {event['text']}")

    @bolt.event("app_mention")
    def on_mention(event: dict[str, Any], say: Any) -> None:
        seen.append(("mention", event["text"]))
        say(text="mentioned", thread_ts=event["ts"])

    @bolt.command("/flare")
    def on_command(ack: Any, command: dict[str, Any]) -> None:
        ack(text=f"got {command['text']}")
        seen.append(("command", command["text"]))

    @bolt.action("approve")
    def on_action(ack: Any, body: dict[str, Any]) -> None:
        ack()
        seen.append(("action", body["actions"][0]["value"]))

    handler = SocketModeHandler(bolt, app.app_token)
    handler.client.ping_interval = 1
    handler.connect()
    try:
        slack.wait_connected(app, timeout=10)
        dm = slack.dm_channel(app, alice)
        env = slack.dm(app, alice, "hi there")
        assert env.acked_at is not None
        assert slack.wait_for_post(app, channel=dm, contains="echo: hi there", timeout=10)

        general = slack.add_channel("general")
        slack.mention(app, alice, general, "status?")
        mention = slack.wait_for_post(app, channel=general, contains="mentioned", timeout=10)
        assert mention.thread_ts is not None

        cmd = slack.slash_command(app, alice, "/flare", "status")
        assert cmd.ack_payload == {"text": "got status"}
        slack.block_action(app, alice, "approve", "yes")
        deadline = time.monotonic() + 5
        while ("action", "yes") not in seen and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ("action", "yes") in seen

        assert slack.disconnect(app) == 1
        slack.wait_connected(app, timeout=15, min_count=2)
        slack.dm(app, alice, "after reconnect")
        assert slack.wait_for_post(app, channel=dm, contains="echo: after reconnect", timeout=10)
        assert slack.unacked() == []
    finally:
        handler.close()


def test_async_bolt_like_hermes_survives_socket_drop(slack: FakeSlack, alice: SlackUser) -> None:
    """AsyncApp + AsyncSocketModeHandler (Hermes' stack): an abrupt drop is survived."""
    app = slack.add_app("async-bot")
    other = slack.add_app("other-bot")
    done = threading.Event()
    replies: list[str] = []

    async def run() -> None:
        from slack_sdk.web.async_client import AsyncWebClient

        bolt = AsyncApp(client=AsyncWebClient(token=app.bot_token, base_url=slack.api_url))

        @bolt.event("message")
        async def on_message(event: dict[str, Any], say: Any) -> None:
            replies.append(event["text"])
            await say(text=f"async: {event['text']}")

        handler = AsyncSocketModeHandler(bolt, app.app_token, ping_interval=1)
        await handler.connect_async()
        while not done.is_set():
            await asyncio.sleep(0.05)
        await handler.close_async()

    thread = threading.Thread(target=asyncio.run, args=(run(),), daemon=True)
    thread.start()
    try:
        slack.wait_connected(app, timeout=10)
        dm = slack.dm_channel(app, alice)
        slack.dm(app, alice, "one")
        slack.wait_for_post(app, channel=dm, contains="async: one", timeout=10)
        assert slack.drop(app) == 1
        slack.wait_connected(app, timeout=20, min_count=2)
        slack.dm(app, alice, "two")
        slack.wait_for_post(app, channel=dm, contains="async: two", timeout=10)
        # Nothing reached the other app.
        assert slack.posts_for(other) == []
        assert not slack.connected(other)
        assert replies == ["one", "two"]
    finally:
        done.set()
        thread.join(10)


def test_send_to_unconnected_app_times_out(slack: FakeSlack, app: SlackApp, alice: SlackUser) -> None:
    with pytest.raises(TimeoutError):
        slack.wait_connected(app, timeout=0.3)


def test_cli_prints_tokens() -> None:
    import json
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.slack_server", "--app", "a", "--app", "b"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert [a["name"] for a in info["apps"]] == ["a", "b"]
        client = WebClient(token=info["apps"][1]["bot_token"], base_url=info["api_url"])
        assert client.auth_test()["user"] == "b"
    finally:
        proc.terminate()
        proc.wait(10)


def test_block_action_carries_the_message_it_sits_on(
    slack: FakeSlack, app: SlackApp, alice: SlackUser
) -> None:
    """Like real Slack, a button press sends the message (thread_ts, blocks) the button is on."""
    client = web(slack, app.bot_token)
    dm = slack.dm_channel(app, alice)
    parent = client.chat_postMessage(channel=dm, text="parent")["ts"]
    blocks = [{"type": "actions", "elements": [{"type": "button", "action_id": "go", "value": "v"}]}]
    prompt = client.chat_postMessage(channel=dm, text="sure?", thread_ts=parent, blocks=blocks)["ts"]
    bolt = App(client=client)
    bodies: list[dict[str, Any]] = []

    @bolt.action("go")
    def on_action(ack: Any, body: dict[str, Any]) -> None:
        ack()
        bodies.append(body)

    handler = SocketModeHandler(bolt, app.app_token)
    handler.connect()
    try:
        slack.wait_connected(app, timeout=10)
        slack.block_action(app, alice, "go", "v", message_ts=prompt)
        deadline = time.monotonic() + 5
        while not bodies and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        handler.close()
    message = bodies[0]["message"]
    assert (message["ts"], message["thread_ts"], message["text"]) == (prompt, parent, "sure?")
    assert message["blocks"][0]["elements"][0]["action_id"] == "go"
