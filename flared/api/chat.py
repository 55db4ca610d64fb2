"""A bot's OpenAI-compatible API through the control API.

On Cloudflare the Worker's ``POST /v1/chat/completions`` reaches a bot only
through its group's Agent container's control port (the one port the Worker
talks to), so flared relays the request to the bot's Hermes api_server on
loopback, with the key it rendered for that bot, and streams the answer back
as it comes (chunked). The caller never sees the key; ``model`` becomes the
bot's Hermes model, as ``flared chat`` sends it. Admin only: on TCP that is
the Worker with the container's internal token.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from flared.config.live import LiveConfig
from flared.control.server import HTTPError, Request, Response, Router
from flared.hermes.home import api_key

#: Hermes' session header: continues a conversation, both ways.
SESSION_HEADER = "X-Hermes-Session-Id"
#: Longest silence from the bot's API before the relay gives up (a tool may run for minutes).
READ_TIMEOUT_S = 600.0
CHUNK = 16 * 1024


class BotEndpoint(NamedTuple):
    bot: str
    url: str  # http://host:port/v1
    key: str
    model: str


def bot_endpoint(live: LiveConfig, name: str) -> BotEndpoint:
    """Where bot ``name``'s api_server listens, its key and model; HTTPError when it has none."""
    if name not in live.config.bot_names:
        raise HTTPError(404, f"no bot named {name!r} (bots: {', '.join(live.config.bot_names) or 'none'})")
    bot = live.config.bot(name)
    if bot.api is None:
        raise HTTPError(
            409, f"bot {name!r} has no local API: add `api: {{port: 8642}}` to it in {live.loaded.path}"
        )
    key = api_key(live.loaded.state_dir, bot) or ""
    return BotEndpoint(
        name, f"http://{bot.api.dial_host}:{bot.api.port}/v1", key, bot.model.model or "hermes"
    )


def chat_body(raw: bytes, model: str) -> bytes:
    """The client's request with the bot's model; refuses what is not a JSON object."""
    try:
        body: Any = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise HTTPError(400, "request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise HTTPError(400, "request body must be a JSON object")
    if not isinstance(body.get("messages"), list):
        raise HTTPError(400, "messages is required (a list)")
    return json.dumps({**body, "model": model}).encode()


def relay(ep: BotEndpoint, body: bytes, session: str | None) -> Response:
    """POST to the bot's API; the answer streams through as its bytes arrive."""
    url = urlsplit(ep.url)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=READ_TIMEOUT_S)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {ep.key}"}
    if session:
        headers[SESSION_HEADER] = session
    try:
        conn.request("POST", f"{url.path.rstrip('/')}/chat/completions", body, headers)
        upstream = conn.getresponse()
    except OSError as exc:
        conn.close()
        raise HTTPError(
            502, f"bot {ep.bot}'s API at {ep.url} is not reachable ({exc}); is it running? see /status"
        ) from None

    def pieces() -> Iterator[bytes]:
        try:
            while chunk := upstream.read1(CHUNK):
                yield chunk
        finally:
            conn.close()

    out = {"Cache-Control": "no-cache"}
    if sid := upstream.getheader(SESSION_HEADER):
        out[SESSION_HEADER] = sid
    return Response(
        status=upstream.status,
        content_type=upstream.getheader("Content-Type") or "application/json",
        headers=out,
        stream=pieces(),
    )


def register(router: Router, live: LiveConfig) -> None:
    def chat(req: Request) -> Response:
        ep = bot_endpoint(live, req.params["name"])
        return relay(ep, chat_body(req.body, ep.model), req.headers.get(SESSION_HEADER.lower()))

    router.add("POST", "/bots/{name}/chat/completions", chat)
