"""The flare plugin's Slack API URL feature (and the Anthropic header feature).

Clients are built exactly as Hermes' Slack adapter builds them, with no
``base_url``, and must land on the fake Slack instead of slack.com.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk import WebClient
from slack_sdk.web.async_client import AsyncWebClient

from flared.plugin import model as model_feature
from flared.plugin import slack as slack_feature
from tests.fakes.slack_server import FakeSlack


@pytest.fixture
def fake() -> Iterator[FakeSlack]:
    with FakeSlack() as server:
        yield server


@pytest.fixture
def patched(fake: FakeSlack, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSlack]:
    monkeypatch.setenv(slack_feature.ENV_VAR, fake.api_url)
    slack_feature.install(None)
    try:
        yield fake
    finally:
        slack_feature.remove_api_url()


def test_without_env_nothing_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(slack_feature.ENV_VAR, raising=False)
    slack_feature.install(None)
    assert slack_feature.current_api_url() is None
    assert WebClient(token="xoxb-1").base_url == "https://slack.com/api/"


def test_sync_and_async_clients_default_to_the_url(patched: FakeSlack) -> None:
    app = patched.add_app("hermes")
    assert WebClient(token=app.bot_token).auth_test()["user_id"] == app.bot_user_id
    assert WebClient(app.bot_token).base_url == patched.api_url  # positional token

    async def run() -> str:
        result = await AsyncWebClient(token=app.bot_token).auth_test()
        return str(result["user_id"])

    assert asyncio.run(run()) == app.bot_user_id
    # An explicit base_url is the caller's choice and is kept.
    assert WebClient(token="x", base_url="http://elsewhere/api/").base_url == "http://elsewhere/api/"


def test_hermes_style_socket_mode_connects_to_the_fake(patched: FakeSlack) -> None:
    """AsyncApp(token) + AsyncSocketModeHandler(app, app_token): Hermes' exact construction."""
    app = patched.add_app("hermes")
    user = patched.add_user("alice")
    stop = threading.Event()

    async def run() -> None:
        bolt = AsyncApp(token=app.bot_token)  # auth.test happens here, against the fake

        @bolt.event("message")
        async def on_message(event: dict[str, Any], say: Any) -> None:
            await say(text="pong")

        handler = AsyncSocketModeHandler(bolt, app.app_token)
        await handler.connect_async()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        await handler.close_async()

    t = threading.Thread(target=asyncio.run, args=(run(),), daemon=True)
    t.start()
    try:
        patched.wait_connected(app, timeout=15)
        patched.dm(app, user, "ping")
        assert patched.wait_for_post(app, contains="pong", timeout=10, final=False)
        assert patched.calls_to("apps.connections.open", app)
    finally:
        stop.set()
        t.join(10)


def test_apply_is_idempotent_and_removable(fake: FakeSlack) -> None:
    try:
        slack_feature.apply_api_url(fake.api_url.rstrip("/"))
        slack_feature.apply_api_url(fake.api_url)
        assert WebClient().base_url == fake.api_url
        slack_feature.apply_api_url("http://other.example/api")
        assert WebClient().base_url == "http://other.example/api/"
    finally:
        slack_feature.remove_api_url()
    assert WebClient().base_url == "https://slack.com/api/"


def test_bad_url_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(slack_feature.ENV_VAR, "slack.internal/api")
    with pytest.raises(ValueError, match="FLARE_SLACK_API_URL must be an http"):
        slack_feature.install(None)
    assert slack_feature.current_api_url() is None


class _Capture(BaseHTTPRequestHandler):
    seen: list[dict[str, str]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        _Capture.seen.append({k.lower(): v for k, v in self.headers.items()})
        body = json.dumps(
            {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": "claude-x",
                "content": [{"type": "text", "text": "hi"}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": 1, "output_tokens": 1},
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_anthropic_client_carries_the_ai_gateway_header(monkeypatch: pytest.MonkeyPatch) -> None:
    from agent import anthropic_adapter

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Capture)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    original = anthropic_adapter.build_anthropic_client
    try:
        monkeypatch.setenv(model_feature.ENV_VAR, json.dumps({"cf-aig-authorization": "Bearer aig-tok"}))
        model_feature.install(None)
        model_feature.install(None)  # twice: still one layer
        client = anthropic_adapter.build_anthropic_client(
            "sk-ant-api03-test", base_url=f"http://127.0.0.1:{server.server_port}/anthropic"
        )
        client.messages.create(model="claude-x", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
        sent = _Capture.seen[-1]
        assert sent["cf-aig-authorization"] == "Bearer aig-tok"
        assert sent["x-api-key"] == "sk-ant-api03-test"
    finally:
        anthropic_adapter.build_anthropic_client = original
        server.shutdown()


def test_bad_headers_env_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(model_feature.ENV_VAR, "not json")
    with pytest.raises(ValueError, match="FLARE_MODEL_HEADERS is not a JSON object"):
        model_feature.install(None)
