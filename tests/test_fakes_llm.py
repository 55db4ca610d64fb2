"""The fake model server, driven by the real ``openai`` client (what Hermes uses)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest

from tests.fakes import llm_server as llm
from tests.fakes.llm_server import FakeLLM

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "terminal",
            "description": "run a command",
            "parameters": {"type": "object", "properties": {"command": {"type": "string"}}},
        },
    }
]


@pytest.fixture
def fake() -> Iterator[FakeLLM]:
    with FakeLLM(models=("m1", "m2"), api_key="sk-test") as server:
        yield server


@pytest.fixture
def client(fake: FakeLLM) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake.base_url, api_key="sk-test", max_retries=0)


def test_models_lists_configured_models(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["m1", "m2"]
    assert client.models.retrieve("m2").id == "m2"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("m3")


def test_wrong_key_is_rejected(fake: FakeLLM) -> None:
    bad = openai.OpenAI(base_url=fake.base_url, api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="m1", messages=[{"role": "user", "content": "hi"}])


def test_non_streaming_tool_call_then_text(fake: FakeLLM, client: openai.OpenAI) -> None:
    fake.script(llm.tool("terminal", {"command": "whoami"}), llm.echo_tool_result("out: "))
    messages: list[dict[str, object]] = [
        {"role": "system", "content": "You are Hermes. MEMORY: dog=Yodel"},
        {"role": "user", "content": "run whoami"},
    ]
    first = client.chat.completions.create(model="m1", messages=messages, tools=TOOLS)  # type: ignore[arg-type]
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "terminal"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"command": "whoami"}  # type: ignore[union-attr]
    messages += [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "sandbox"},
    ]
    second = client.chat.completions.create(model="m1", messages=messages, tools=TOOLS)  # type: ignore[arg-type]
    assert second.choices[0].message.content == "out: sandbox"
    assert fake.pending == []
    recorded = fake.agent_turns()
    assert len(recorded) == 2
    assert "Yodel" in recorded[0].system
    assert recorded[0].tool_names == ["terminal"]
    assert recorded[1].last_tool_result == "sandbox"
    assert recorded[0].headers["Authorization"] == "Bearer sk-test"


def test_streaming_text_and_tool_call_deltas(fake: FakeLLM, client: openai.OpenAI) -> None:
    fake.script(llm.tools(("terminal", {"command": "ls /opt/x"}), ("memory", {"action": "add"})))
    stream = client.chat.completions.create(
        model="m2",
        messages=[{"role": "user", "content": "go"}],
        tools=TOOLS,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    )
    calls: dict[int, dict[str, str]] = {}
    finish = None
    usage = None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            for d in choice.delta.tool_calls or []:
                slot = calls.setdefault(d.index, {"name": "", "args": "", "id": ""})
                if d.id:
                    slot["id"] = d.id
                if d.function and d.function.name:
                    slot["name"] += d.function.name
                if d.function and d.function.arguments:
                    slot["args"] += d.function.arguments
            finish = choice.finish_reason or finish
    assert finish == "tool_calls"
    assert usage is not None and usage.total_tokens > 0
    assert [calls[i]["name"] for i in sorted(calls)] == ["terminal", "memory"]
    assert json.loads(calls[0]["args"]) == {"command": "ls /opt/x"}
    assert all(c["id"].startswith("call_") for c in calls.values())

    fake.script(llm.text("a fairly long answer split into many small chunks"))
    stream2 = client.chat.completions.create(
        model="m2", messages=[{"role": "user", "content": "again"}], tools=TOOLS, stream=True
    )  # type: ignore[arg-type]
    pieces = [c.choices[0].delta.content or "" for c in stream2 if c.choices]
    assert len([p for p in pieces if p]) > 3
    assert "".join(pieces) == "a fairly long answer split into many small chunks"


def test_requests_without_tools_get_default_and_keep_the_script(fake: FakeLLM, client: openai.OpenAI) -> None:
    fake.script(llm.text("scripted"))
    title = client.chat.completions.create(model="m1", messages=[{"role": "user", "content": "title?"}])
    assert title.choices[0].message.content == "OK"
    assert len(fake.pending) == 1
    turn = client.chat.completions.create(
        model="m1", messages=[{"role": "user", "content": "hi"}], tools=TOOLS
    )  # type: ignore[arg-type]
    assert turn.choices[0].message.content == "scripted"


def test_scripted_error_and_wait_for(fake: FakeLLM, client: openai.OpenAI) -> None:
    fake.script(llm.error(429, "slow down"))
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="m1", messages=[{"role": "user", "content": "x"}], tools=TOOLS)  # type: ignore[arg-type]
    got = fake.wait_for(lambda r: r.last_user_text == "x", timeout=1)
    assert got.reply is not None and got.reply.status == 429
    with pytest.raises(TimeoutError):
        fake.wait_for(lambda r: r.last_user_text == "never", timeout=0.2)


def test_unknown_paths_are_recorded(fake: FakeLLM) -> None:
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(fake.url + "/api/show")
    assert err.value.code == 404
    assert fake.unknown == [("GET", "/api/show")]
