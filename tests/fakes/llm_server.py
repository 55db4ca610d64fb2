"""An OpenAI-compatible model server on loopback, scripted per test.

Speaks the wire format the ``openai`` client (and therefore Hermes in
``chat_completions`` mode) uses: ``GET /v1/models`` and
``POST /v1/chat/completions``, streaming as server-sent events (content and
``delta.tool_calls`` chunks, ``[DONE]``) or as one JSON body.

A test queues replies with :meth:`FakeLLM.script`. Each queued :class:`Reply`
has a ``when`` predicate; a request consumes the first queued reply whose
predicate accepts it. By default only *agent turns* (requests that offer
tools) consume scripted replies, so side calls Hermes makes on its own (session
titles, background reviews without tools) get the ``default`` reply and do not
eat the script. Every request is recorded, so a test can assert what the
agent sent: its system prompt, the memory in it, tool results.

Run standalone with ``python -m tests.fakes.llm_server`` to poke at it by hand.
"""

from __future__ import annotations

import argparse
import itertools
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes._background import BackgroundServer

Predicate = Callable[["LLMRequest"], bool]


@dataclass
class LLMRequest:
    """One request the fake received."""

    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    at: float = field(default_factory=time.time)
    reply: Reply | None = None

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages") or [])

    @property
    def tools(self) -> list[dict[str, Any]]:
        return list(self.body.get("tools") or [])

    @property
    def tool_names(self) -> list[str]:
        return [t.get("function", {}).get("name", "") for t in self.tools]

    @property
    def is_agent_turn(self) -> bool:
        return bool(self.tools)

    @property
    def system(self) -> str:
        """The system prompt(s), joined."""
        return "\n".join(_text(m.get("content")) for m in self.messages if m.get("role") == "system")

    @property
    def text(self) -> str:
        """Everything in the conversation as one string, for ``in`` checks."""
        return "\n".join(_text(m.get("content")) for m in self.messages)

    def last(self, role: str) -> dict[str, Any] | None:
        for m in reversed(self.messages):
            if m.get("role") == role:
                return m
        return None

    @property
    def last_user_text(self) -> str:
        m = self.last("user")
        return _text(m.get("content")) if m else ""

    @property
    def last_tool_result(self) -> str:
        m = self.last("tool")
        return _text(m.get("content")) if m else ""


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content)


@dataclass
class ToolCall:
    name: str
    arguments: dict[str, Any] | str
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:16]}")

    @property
    def arguments_json(self) -> str:
        return self.arguments if isinstance(self.arguments, str) else json.dumps(self.arguments)


@dataclass
class Reply:
    """What the model answers: text, tool calls, an HTTP error, or a function of the request."""

    text: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    status: int = 200
    error: str | None = None
    build: Callable[[LLMRequest], Reply] | None = None
    when: Predicate = field(default=lambda r: r.is_agent_turn)
    label: str = ""

    def resolve(self, req: LLMRequest) -> Reply:
        return self.build(req) if self.build is not None else self


def text(content: str, *, when: Predicate | None = None, label: str = "") -> Reply:
    r = Reply(text=content, label=label or "text")
    if when is not None:
        r.when = when
    return r


def tool(name: str, arguments: dict[str, Any] | None = None, *, when: Predicate | None = None) -> Reply:
    r = Reply(tool_calls=[ToolCall(name, arguments or {})], label=f"tool:{name}")
    if when is not None:
        r.when = when
    return r


def tools(*calls: tuple[str, dict[str, Any]], when: Predicate | None = None) -> Reply:
    r = Reply(tool_calls=[ToolCall(n, a) for n, a in calls], label="tools")
    if when is not None:
        r.when = when
    return r


def error(status: int, message: str = "scripted failure") -> Reply:
    return Reply(status=status, error=message, label=f"error:{status}")


def dynamic(build: Callable[[LLMRequest], Reply], *, when: Predicate | None = None, label: str = "") -> Reply:
    r = Reply(build=build, label=label or "dynamic")
    if when is not None:
        r.when = when
    return r


def echo_tool_result(prefix: str = "Here is the output:\n") -> Reply:
    """A final answer quoting the last tool result (what a model does after a command)."""
    return dynamic(lambda req: Reply(text=prefix + req.last_tool_result), label="echo_tool_result")


class FakeLLM:
    """The scripted model server; use as a context manager or call start()/stop()."""

    def __init__(
        self,
        models: tuple[str, ...] = ("fake-model",),
        default: Reply | None = None,
        api_key: str | None = None,
        chunk_size: int = 8,
    ) -> None:
        self.models = list(models)
        self.default = default or Reply(text="OK", label="default")
        self.api_key = api_key
        self.chunk_size = chunk_size
        self.requests: list[LLMRequest] = []
        self.unknown: list[tuple[str, str]] = []
        self._queue: list[Reply] = []
        self._cond = threading.Condition()
        app = web.Application(client_max_size=64 * 1024**2)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/models", self._models)
        app.router.add_get("/v1/models/{model}", self._model)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/chat/completions", self._chat)
        app.router.add_route("*", "/{tail:.*}", self._unknown)
        self.server = BackgroundServer(app)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeLLM:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def __enter__(self) -> FakeLLM:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def base_url(self) -> str:
        """What to give an OpenAI client as ``base_url``."""
        return self.server.url + "/v1"

    # ------------------------------------------------------------------ scripting

    def script(self, *replies: Reply) -> None:
        with self._cond:
            self._queue.extend(replies)

    def clear(self) -> None:
        with self._cond:
            self._queue.clear()
            self.requests.clear()

    @property
    def pending(self) -> list[Reply]:
        with self._cond:
            return list(self._queue)

    def agent_turns(self) -> list[LLMRequest]:
        with self._cond:
            return [r for r in self.requests if r.is_agent_turn]

    def wait_for(self, predicate: Predicate, timeout: float = 30.0, after: int = 0) -> LLMRequest:
        """Block until a request (index >= ``after``) matches; raise TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for r in self.requests[after:]:
                    if predicate(r):
                        return r
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"no matching LLM request within {timeout}s "
                        f"({len(self.requests)} received, {len(self._queue)} scripted left)"
                    )
                self._cond.wait(left)

    def wait_script_consumed(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(self._queue)} scripted replies never requested")
                self._cond.wait(left)

    # ------------------------------------------------------------------ handlers

    def _authorized(self, request: web.Request) -> bool:
        if self.api_key is None:
            return True
        return request.headers.get("Authorization", "") == f"Bearer {self.api_key}"

    async def _models(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error_response(401, "invalid api key")
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.models]
        return web.json_response({"object": "list", "data": data})

    async def _model(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error_response(401, "invalid api key")
        name = request.match_info["model"]
        if name not in self.models:
            return _error_response(404, f"The model {name!r} does not exist")
        return web.json_response({"id": name, "object": "model", "created": 0, "owned_by": "fake"})

    async def _unknown(self, request: web.Request) -> web.Response:
        with self._cond:
            self.unknown.append((request.method, request.path))
        return _error_response(404, f"unknown path {request.path}")

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return _error_response(401, "invalid api key")
        try:
            body = await request.json()
        except ValueError:
            return _error_response(400, "body is not JSON")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return _error_response(400, "messages is required")
        req = LLMRequest(path=request.path, body=body, headers=dict(request.headers))
        with self._cond:
            chosen = None
            for i, candidate in enumerate(self._queue):
                if candidate.when(req):
                    chosen = self._queue.pop(i)
                    break
        reply = (chosen or self.default).resolve(req)
        req.reply = reply
        with self._cond:
            self.requests.append(req)
            self._cond.notify_all()
        if reply.error is not None:
            return _error_response(reply.status, reply.error)
        model = str(body.get("model") or self.models[0])
        if body.get("stream"):
            return await self._stream(request, body, model, reply)
        return web.json_response(_completion(model, reply))

    async def _stream(
        self, request: web.Request, body: dict[str, Any], model: str, reply: Reply
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        for chunk in _chunks(model, reply, self.chunk_size, include_usage):
            await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


_ids = itertools.count(1)


def _usage(reply: Reply) -> dict[str, int]:
    completion = len((reply.text or "").split()) + 10 * len(reply.tool_calls)
    return {"prompt_tokens": 100, "completion_tokens": completion, "total_tokens": 100 + completion}


def _completion(model: str, reply: Reply) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.text}
    if reply.tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments_json}}
            for c in reply.tool_calls
        ]
    return {
        "id": f"chatcmpl-fake{next(_ids)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": "tool_calls" if reply.tool_calls else "stop",
            }
        ],
        "usage": _usage(reply),
    }


def _chunks(model: str, reply: Reply, size: int, include_usage: bool) -> Iterator[dict[str, Any]]:
    cid = f"chatcmpl-fake{next(_ids)}"
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if include_usage:
            out["usage"] = None
        return out

    yield chunk({"role": "assistant", "content": ""})
    content = reply.text or ""
    for i in range(0, len(content), size):
        yield chunk({"content": content[i : i + size]})
    for index, call in enumerate(reply.tool_calls):
        yield chunk(
            {
                "tool_calls": [
                    {
                        "index": index,
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": ""},
                    }
                ]
            }
        )
        args = call.arguments_json
        for i in range(0, len(args), size):
            yield chunk({"tool_calls": [{"index": index, "function": {"arguments": args[i : i + size]}}]})
    yield chunk({}, "tool_calls" if reply.tool_calls else "stop")
    if include_usage:
        yield {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [],
            "usage": _usage(reply),
        }


def _error_response(status: int, message: str) -> web.Response:
    kind = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}.get(
        status, "invalid_request_error" if status < 500 else "server_error"
    )
    return web.json_response({"error": {"message": message, "type": kind, "code": status}}, status=status)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Fake OpenAI-compatible server (answers OK to everything).")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--reply", default="OK")
    args = p.parse_args(argv)
    llm = FakeLLM(default=Reply(text=args.reply))
    llm.server.port = args.port
    llm.start()
    print(llm.base_url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        llm.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
