"""`flared chat [--bot B] MESSAGE`: talk to a bot locally, no Slack needed.

It posts to the bot's Hermes api_server (``bots[].api``) with the key flared
rendered for it (the configured one, or the one derived from the state
dir's secret), so there is nothing to copy around. The answer streams to the
terminal; ``--json`` waits for the whole answer. ``--session ID`` continues a
conversation (Hermes' ``X-Hermes-Session-Id``); the id of each exchange is
printed on stderr.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
from collections.abc import Iterator
from typing import Any

from flared.cli.common import (
    EXIT_FAILED,
    EXIT_INVALID,
    EXIT_OK,
    Subparsers,
    add_config_arg,
    add_json_arg,
    load_or_exit,
)
from flared.config.loader import LoadedConfig
from flared.config.models import BotConfig
from flared.hermes.home import api_key

SESSION_HEADER = "X-Hermes-Session-Id"


class ChatError(Exception):
    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def register(sub: Subparsers) -> None:
    p = sub.add_parser("chat", help="send a message to a bot through its local API and print the answer")
    add_config_arg(p)
    add_json_arg(p)
    p.add_argument("--bot", help="bot name (default: the only bot with an `api:` section)")
    p.add_argument(
        "--session", metavar="ID", help="continue this conversation (id printed by a previous chat)"
    )
    p.add_argument(
        "--timeout", type=float, default=600.0, help="seconds to wait for the answer (default 600)"
    )
    p.add_argument("message", nargs="+", help="the message (words are joined with spaces; `-` reads stdin)")
    p.set_defaults(func=run)


def pick_bot(loaded: LoadedConfig, name: str | None) -> BotConfig:
    bots = loaded.config.bots
    if name:
        for b in bots:
            if b.name == name:
                if b.api is None:
                    raise ChatError(
                        f"bot {name!r} has no local API: add `api: {{port: 8642}}` to it in the config",
                        EXIT_INVALID,
                    )
                return b
        raise ChatError(
            f"no bot named {name!r} (bots: {', '.join(loaded.config.bot_names) or 'none'})", EXIT_INVALID
        )
    with_api = [b for b in bots if b.api is not None and b.enabled]
    if len(with_api) == 1:
        return with_api[0]
    if not with_api:
        raise ChatError(
            "no bot has a local API: add `api: {port: 8642}` to a bot in the config", EXIT_INVALID
        )
    raise ChatError(
        f"several bots have a local API ({', '.join(b.name for b in with_api)}): choose one with --bot",
        EXIT_INVALID,
    )


def _connection(bot: BotConfig, timeout: float) -> http.client.HTTPConnection:
    assert bot.api is not None
    host = "127.0.0.1" if bot.api.host in ("0.0.0.0", "::", "") else bot.api.host
    return http.client.HTTPConnection(host, bot.api.port, timeout=timeout)


def _sse_deltas(resp: http.client.HTTPResponse) -> Iterator[str]:
    """Content deltas of an OpenAI-style event stream."""
    for raw in resp:
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            chunk = json.loads(data)
        except ValueError:
            continue
        for choice in chunk.get("choices") or []:
            piece = (choice.get("delta") or {}).get("content")
            if piece:
                yield str(piece)


def chat(
    loaded: LoadedConfig,
    bot: BotConfig,
    message: str,
    *,
    session: str | None = None,
    stream: bool = False,
    timeout: float = 600.0,
    out: Any = None,
) -> dict[str, Any]:
    """Send one message; returns ``{"bot", "reply", "session_id"}``. Streams to ``out`` if asked."""
    assert bot.api is not None
    key = api_key(loaded.state_dir, bot) or ""
    body = {
        "model": bot.model.model or "hermes",
        "messages": [{"role": "user", "content": message}],
        "stream": stream,
    }
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    if session:
        headers[SESSION_HEADER] = session
    conn = _connection(bot, timeout)
    where = f"http://{bot.api.host}:{bot.api.port}"
    try:
        try:
            conn.request("POST", "/v1/chat/completions", body=json.dumps(body), headers=headers)
            resp = conn.getresponse()
        except ConnectionRefusedError:
            raise ChatError(
                f"bot {bot.name!r} is not answering on {where}: is it running? (`flared up`, then `flared status`)"
            ) from None
        except TimeoutError:
            raise ChatError(f"bot {bot.name!r} did not answer within {timeout:.0f}s") from None
        except OSError as exc:
            raise ChatError(f"cannot reach bot {bot.name!r} on {where}: {exc}") from None
        session_id = resp.getheader(SESSION_HEADER)
        if resp.status >= 400:
            text = resp.read().decode("utf-8", "replace")
            try:
                err = json.loads(text).get("error")
                detail = err.get("message") if isinstance(err, dict) else err
            except (ValueError, AttributeError):
                detail = text[:300]
            if resp.status == 401:
                detail = "the API key was refused (was the gateway started from this config?)"
            raise ChatError(f"bot {bot.name!r} answered {resp.status}: {detail}")
        if stream:
            parts = []
            try:
                for piece in _sse_deltas(resp):
                    parts.append(piece)
                    if out is not None:
                        out.write(piece)
                        out.flush()
            except TimeoutError:
                raise ChatError(f"bot {bot.name!r} stopped answering for {timeout:.0f}s") from None
            reply = "".join(parts)
        else:
            try:
                data = json.loads(resp.read())
            except TimeoutError:
                raise ChatError(f"bot {bot.name!r} did not answer within {timeout:.0f}s") from None
            except ValueError:
                raise ChatError(f"bot {bot.name!r} sent an answer that is not JSON") from None
            choices = data.get("choices") or [{}]
            reply = str((choices[0].get("message") or {}).get("content") or "")
    finally:
        conn.close()
    return {"bot": bot.name, "reply": reply, "session_id": session_id}


def run(args: argparse.Namespace) -> int:
    loaded = load_or_exit(args)
    message = " ".join(args.message)
    if message == "-":
        message = sys.stdin.read()
    if not message.strip():
        print("flared chat: the message is empty", file=sys.stderr)
        return EXIT_INVALID
    try:
        bot = pick_bot(loaded, args.bot)
        if args.json:
            result = chat(loaded, bot, message, session=args.session, timeout=args.timeout)
            print(json.dumps(result, indent=2))
            return EXIT_OK
        result = chat(
            loaded, bot, message, session=args.session, stream=True, timeout=args.timeout, out=sys.stdout
        )
    except ChatError as exc:
        print(f"flared chat: {exc}", file=sys.stderr)
        return exc.code
    if not result["reply"].endswith("\n"):
        print()
    if result["session_id"]:
        print(f"(continue with --session {result['session_id']})", file=sys.stderr)
    return EXIT_OK
