"""`POST /bots/{name}/chat/completions`: flared relays a chat to the bot's Hermes API.

The Worker's /v1/chat/completions lands here on Cloudflare. The bot's
api_server is played by the fake OpenAI-compatible server (same wire format,
same bearer check on the key flared rendered); the control server is the real
one, on TCP with its token, as the Worker calls it.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from flared.api import chat as chat_api
from flared.config.live import LiveConfig
from flared.config.loader import load_config
from flared.control.server import ControlServer, Router
from flared.hermes.home import api_key
from tests.fakes import llm_server as llm
from tests.fakes.llm_server import FakeLLM
from tests.fixtures.flare import free_port

TOKEN = "internal-token"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[ControlServer, FakeLLM, int]]:
    api_port, dead_port = free_port(), free_port()
    model = {"provider": "custom", "base_url": "http://127.0.0.1:9/v1", "model": "the-model"}
    data = {
        "version": 1,
        "state_dir": str(tmp_path / "state"),
        "bots": [
            {"name": "solo", "model": model, "api": {"port": api_port}},
            {"name": "down", "model": model, "api": {"port": dead_port}},
            {"name": "quiet", "model": model},
        ],
    }
    path = tmp_path / "hermes-flare.yaml"
    path.write_text(yaml.safe_dump(data))
    live = LiveConfig(load_config(path, environ={}))
    key = api_key(live.loaded.state_dir, live.config.bot("solo"))
    fake = FakeLLM(
        models=("the-model",), api_key=key, default=llm.Reply(text="hello from solo"), chunk_size=4
    )
    fake.server.port = api_port
    router = Router()
    chat_api.register(router, live)
    srv = ControlServer(
        router,
        state_dir=tmp_path,
        socket_path=tmp_path / "c.sock",
        tcp=("127.0.0.1", free_port()),
        admin_token=TOKEN,
    )
    srv.start()
    with fake:
        yield srv, fake, api_port
    srv.stop()


def post(
    srv: ControlServer, bot: str, body: Any, headers: dict[str, str] | None = None
) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", srv.tcp_port or 0, timeout=10)
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn.request(
        "POST",
        f"/bots/{bot}/chat/completions",
        raw,
        {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json", **(headers or {})},
    )
    return conn.getresponse()


MESSAGES = [{"role": "user", "content": "hi"}]


def test_a_chat_is_relayed_with_the_bots_key_and_model(served: tuple[ControlServer, FakeLLM, int]) -> None:
    srv, fake, _ = served
    resp = post(srv, "solo", {"model": "solo", "messages": MESSAGES}, {"X-Hermes-Session-Id": "s-1"})
    body = json.loads(resp.read())
    assert resp.status == 200, body
    assert body["choices"][0]["message"]["content"] == "hello from solo"
    (req,) = fake.requests
    # The bot's Hermes model and the key flared rendered (the fake checks it), never the caller's token.
    assert req.body["model"] == "the-model"
    assert req.headers["Authorization"] != f"Bearer {TOKEN}"
    assert req.headers["X-Hermes-Session-Id"] == "s-1"


def test_a_streamed_chat_arrives_chunked_as_server_sent_events(
    served: tuple[ControlServer, FakeLLM, int],
) -> None:
    srv, _, _ = served
    resp = post(srv, "solo", {"model": "solo", "messages": MESSAGES, "stream": True})
    assert resp.status == 200
    assert resp.getheader("Transfer-Encoding") == "chunked"
    assert resp.getheader("Content-Type", "").startswith("text/event-stream")
    text = resp.read().decode()
    pieces = [
        json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
        for line in text.splitlines()
        if line.startswith("data: {")
    ]
    assert len([p for p in pieces if p]) > 1  # several deltas, not one blob
    assert "".join(pieces) == "hello from solo"
    assert text.rstrip().endswith("data: [DONE]")


def test_what_cannot_be_relayed_says_why(served: tuple[ControlServer, FakeLLM, int]) -> None:
    srv, fake, _ = served
    cases = {
        ("nobody", b'{"messages": []}'): (404, "no bot named 'nobody'"),
        ("quiet", b'{"messages": []}'): (409, "has no local API"),
        ("solo", b"not json"): (400, "not valid JSON"),
        ("solo", b'{"model": "solo"}'): (400, "messages is required"),
        ("down", b'{"messages": []}'): (502, "is not reachable"),
    }
    for (bot, raw), (status, words) in cases.items():
        resp = post(srv, bot, raw)
        err = json.loads(resp.read())["error"]
        assert (resp.status, words in err) == (status, True), (bot, err)
    assert fake.requests == []
    # The bot's own error keeps its status and text.
    overloaded = llm.error(500, "model overloaded")
    overloaded.when = lambda r: True
    fake.script(overloaded)
    resp = post(srv, "solo", {"messages": MESSAGES})
    assert resp.status == 500
    assert "model overloaded" in resp.read().decode()


def test_only_the_control_token_may_chat(served: tuple[ControlServer, FakeLLM, int]) -> None:
    srv, fake, _ = served
    conn = http.client.HTTPConnection("127.0.0.1", srv.tcp_port or 0, timeout=10)
    conn.request("POST", "/bots/solo/chat/completions", json.dumps({"messages": MESSAGES}).encode())
    assert conn.getresponse().status == 401
    assert fake.requests == []
