"""`flared chat`: bot choice, errors, streaming and JSON output.

The bot's api_server is played by the fake OpenAI-compatible server (same
wire format, same bearer check); the real gateway is in tests/e2e.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from flared.config.loader import load_config
from flared.hermes.home import api_key
from tests.fakes import llm_server as llm
from tests.fakes.llm_server import FakeLLM
from tests.fixtures.flare import free_port, run_cli


def write(tmp: Path, bots: list[dict[str, Any]]) -> Path:
    path = tmp / "hermes-flare.yaml"
    data = {"version": 1, "state_dir": str(tmp / "state"), "bots": bots}
    path.write_text(yaml.safe_dump(data))
    return path


def bot(name: str, port: int | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": name,
        "model": {"provider": "custom", "base_url": "http://127.0.0.1:9/v1", "model": "m"},
    }
    if port is not None:
        entry["api"] = {"port": port}
    return entry


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, FakeLLM]]:
    """A config whose bot `solo` has its API on a fake server expecting flared's generated key."""
    port = free_port()
    cfg = write(tmp_path, [bot("solo", port), bot("quiet")])
    loaded = load_config(cfg)
    key = api_key(loaded.state_dir, loaded.config.bot("solo"))
    fake = FakeLLM(models=("m",), api_key=key, default=llm.Reply(text="hello from solo"))
    fake.server.port = port
    with fake:
        yield cfg, fake


def test_streams_the_answer(served: tuple[Path, FakeLLM]) -> None:
    cfg, fake = served
    out = run_cli("chat", "-c", str(cfg), "how", "are", "you")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "hello from solo\n"
    req = fake.requests[-1]
    assert req.last_user_text == "how are you"
    assert req.body["stream"] is True


def test_json_and_session(served: tuple[Path, FakeLLM]) -> None:
    cfg, fake = served
    out = run_cli("chat", "-c", str(cfg), "--json", "--bot", "solo", "--session", "s-1", "hi")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"bot": "solo", "reply": "hello from solo", "session_id": "s-1"}
    assert fake.requests[-1].headers["X-Hermes-Session-Id"] == "s-1"
    # streamed, then printed whole: --timeout bounds the silence between pieces, not the turn
    assert fake.requests[-1].body["stream"] is True


def test_each_chat_without_session_is_a_new_conversation(served: tuple[Path, FakeLLM]) -> None:
    cfg, fake = served
    ids = []
    for _ in range(2):
        out = run_cli("chat", "-c", str(cfg), "hello")
        assert out.returncode == 0, out.stderr
        ids.append(fake.requests[-1].headers["X-Hermes-Session-Id"])
        assert f"(continue with --session {ids[-1]})" in out.stderr
    assert ids[0] != ids[1] and all(i.startswith("cli-") for i in ids)


def test_blank_lines_around_the_answer_are_not_printed(served: tuple[Path, FakeLLM]) -> None:
    cfg, fake = served
    fake.script(llm.Reply(text="\n\n  The answer.\n\nSecond paragraph.\n\n", when=lambda r: True))
    out = run_cli("chat", "-c", str(cfg), "hi")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "The answer.\n\nSecond paragraph.\n"


def test_an_http_error_exits_1_and_json_says_it_on_stdout(served: tuple[Path, FakeLLM]) -> None:
    cfg, fake = served
    fake.script(llm.Reply(status=500, error="model overloaded", when=lambda r: True))
    out = run_cli("chat", "-c", str(cfg), "--json", "hi")
    assert out.returncode == 1
    data = json.loads(out.stdout)
    assert data["reply"] is None and data["error"] == "bot 'solo' answered 500: model overloaded"
    assert "flared chat: bot 'solo' answered 500: model overloaded" in out.stderr


def test_sse_errors_from_hermes_are_read() -> None:
    from flared.cli.chat import sse_events

    stream = [
        b'data: {"choices": [{"delta": {"role": "assistant"}, "finish_reason": null}]}\n',
        b"\n",
        b"event: hermes.tool.progress\n",
        b'data: {"tool": "terminal", "label": "ls", "status": "running"}\n',
        b"\n",
        b'data: {"choices": [{"delta": {}, "finish_reason": "error"}], "error": '
        b'{"message": "No Anthropic credentials found", "type": "agent_error"}}\n',
        b"\n",
        b"data: [DONE]\n",
    ]
    assert list(sse_events(stream)) == [
        ("tool", {"tool": "terminal", "label": "ls", "status": "running"}),
        ("error", "No Anthropic credentials found"),
    ]


def test_refused_key_is_explained(served: tuple[Path, FakeLLM]) -> None:
    cfg, fake = served
    fake.api_key = "something-else"
    out = run_cli("chat", "-c", str(cfg), "hi")
    assert out.returncode == 1
    assert "API key was refused" in out.stderr
    assert "Traceback" not in out.stderr


def test_bot_choice_errors(tmp_path: Path) -> None:
    cfg = write(tmp_path, [bot("a", free_port()), bot("b", free_port()), bot("c")])
    several = run_cli("chat", "-c", str(cfg), "hi")
    assert several.returncode == 2 and "choose one with --bot" in several.stderr
    no_api = run_cli("chat", "-c", str(cfg), "--bot", "c", "hi")
    assert no_api.returncode == 2 and "has no local API" in no_api.stderr
    unknown = run_cli("chat", "-c", str(cfg), "--bot", "zz", "hi")
    assert unknown.returncode == 2 and "no bot named 'zz'" in unknown.stderr
    down = run_cli("chat", "-c", str(cfg), "--bot", "a", "hi")
    assert down.returncode == 1 and "is not answering" in down.stderr
    assert all("Traceback" not in r.stderr for r in (several, no_api, unknown, down))


def test_a_bot_that_does_not_answer_in_time_is_named(served: tuple[Path, FakeLLM]) -> None:
    import time

    cfg, fake = served

    def late(_req: Any) -> llm.Reply:
        time.sleep(3)
        return llm.Reply(text="too late")

    fake.script(llm.Reply(build=late, when=lambda r: True))
    out = run_cli("chat", "-c", str(cfg), "--timeout", "1", "hi")
    assert out.returncode == 1
    assert out.stderr.startswith("flared chat: bot 'solo' did not answer within 1 s (--timeout)\n"), (
        out.stderr
    )
    assert "Traceback" not in out.stderr


def test_the_default_timeout_is_three_missed_keepalives() -> None:
    out = run_cli("chat", "--help")
    assert "keepalive every 30 s while it works; default 90)" in " ".join(out.stdout.split())


def test_another_program_on_the_port_is_named_not_printed(tmp_path: Path) -> None:
    """`python -m http.server` on the bot's port: chat used to print its HTML error page (issue 23)."""
    import http.server
    import threading

    port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cfg = write(tmp_path, [bot("solo", port)])
        for extra in ((), ("--json",)):
            out = run_cli("chat", "-c", str(cfg), *extra, "hi")
            assert out.returncode == 1, out.stderr
            assert "<html" not in (out.stdout + out.stderr).lower()
            assert (
                f"flared chat: something other than the Hermes API of bot 'solo' answered on "
                f"http://127.0.0.1:{port} (HTTP 501, text/html, server 'SimpleHTTP/"
            ) in out.stderr, out.stderr
            assert f"page 'Error response'): another program holds port {port}." in out.stderr
            assert "give the bot a free port in the config (`api: {port: N}`" in out.stderr
    finally:
        server.shutdown()
        server.server_close()
