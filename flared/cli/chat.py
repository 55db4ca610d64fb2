"""`flared chat [--bot B] MESSAGE`: talk to a bot locally, no Slack needed.

It posts to the bot's Hermes api_server with the key flared rendered for it.
Where that API listens and its key come from the running daemon (`GET
/bots/{name}/api`), not from the caller's environment or the file on disk:
the daemon knows what it started. Without a daemon the file is read.

The answer streams to the terminal; ``--json`` waits for the whole answer.
``--timeout`` (default 90 s) bounds the silence, not the turn: Hermes sends
a keepalive every 30 s while it works, and a bot whose gateway does not
answer ``GET /health`` is named before anything is sent.
Each chat is a new conversation unless ``--session ID`` continues one (the
id is printed on stderr; an id the bot does not have is refused, exit 2).
Another program on the bot's port is named, not its page printed. When the
agent fails (no key, the model server down), Hermes says so in the stream;
that error is printed and the exit status is 1, with ``--json`` as
``{"error": ...}`` on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple, TextIO

from flared.cli.common import (
    EXIT_FAILED,
    EXIT_INVALID,
    EXIT_OK,
    CommandError,
    Subparsers,
    add_config_arg,
    add_json_arg,
)
from flared.cli.remote import Remote, connect
from flared.cli.text import Out
from flared.control.client import ControlError, DaemonNotAnswering

SESSION_HEADER = "X-Hermes-Session-Id"
#: Hermes' api_server writes a keepalive every 30 s while the agent works: three missed is a hang.
DEFAULT_TIMEOUT_S = 90.0
#: How long the bot's ``GET /health`` may take before the chat is not even sent.
HEALTH_DEADLINE_S = 10.0


class ChatError(Exception):
    def __init__(self, message: str, code: int = EXIT_FAILED, *, session_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.session_id = session_id


class Endpoint(NamedTuple):
    """A bot's local OpenAI-compatible API: where, with which key, which model name."""

    bot: str
    url: str  # http://host:port/v1
    key: str
    model: str


def register(sub: Subparsers) -> None:
    p = sub.add_parser(
        "chat",
        help="send a message to a bot through its local API and print the answer",
        description="Send MESSAGE to a bot through its local OpenAI-compatible API (`api:` in the "
        "config) and stream the answer. The running daemon says where the API is and its key. "
        "Each chat starts a new conversation; --session ID continues one (the id is printed on "
        "stderr). Exits 1 with the provider's error when the agent fails.",
    )
    add_config_arg(p)
    add_json_arg(p)
    p.add_argument("--bot", help="bot name (default: the only bot with an `api:` section)")
    p.add_argument(
        "--session",
        metavar="ID",
        help="continue this conversation (id printed by a previous chat; an unknown id is refused)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help="give up after this long without a word from the bot (it sends a keepalive every 30 s "
        f"while it works; default {DEFAULT_TIMEOUT_S:.0f})",
    )
    p.add_argument("message", nargs="+", help="the message (words are joined with spaces; `-` reads stdin)")
    p.set_defaults(func=run)


def new_session_id() -> str:
    """A fresh conversation (Hermes would otherwise derive one from the first message)."""
    return f"cli-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(3).hex()}"


# ---------------------------------------------------------------------- finding the API


def _choose(bots: list[tuple[str, bool]], name: str | None) -> str:
    """``bots`` as (name, has_api) of enabled bots; the one to talk to or a clear error."""
    names = [n for n, _ in bots]
    if name:
        for n, has_api in bots:
            if n == name:
                if not has_api:
                    raise ChatError(
                        f"bot {name!r} has no local API: add `api: {{port: 8642}}` to it in the config",
                        EXIT_INVALID,
                    )
                return n
        raise ChatError(f"no bot named {name!r} (bots: {', '.join(names) or 'none'})", EXIT_INVALID)
    with_api = [n for n, has_api in bots if has_api]
    if len(with_api) == 1:
        return with_api[0]
    if not with_api:
        raise ChatError(
            "no bot has a local API: add `api: {port: 8642}` to a bot in the config", EXIT_INVALID
        )
    raise ChatError(
        f"several bots have a local API ({', '.join(with_api)}): choose one with --bot", EXIT_INVALID
    )


def endpoint_from_daemon(remote: Remote, name: str | None) -> Endpoint:
    bots = [(str(b["name"]), bool(b.get("api"))) for b in remote.bots() if b.get("enabled", True)]
    bot = _choose(bots, name)
    try:
        info = remote.request("GET", f"/bots/{bot}/api", timeout=10)  # names are [a-z0-9-]
    except ControlError as exc:
        raise ChatError(str(exc), EXIT_INVALID if exc.status in {404, 409} else EXIT_FAILED) from None
    return Endpoint(bot, str(info["url"]), str(info.get("key") or ""), str(info.get("model") or "hermes"))


def endpoint_from_file(args: argparse.Namespace) -> Endpoint:
    from flared.cli.common import load_or_exit
    from flared.hermes.home import api_key

    loaded = load_or_exit(args)
    bots = [(b.name, b.api is not None) for b in loaded.config.bots if b.enabled or b.name == args.bot]
    bot = loaded.config.bot(_choose(bots, args.bot))
    assert bot.api is not None
    return Endpoint(
        bot.name,
        f"http://{bot.api.dial_host}:{bot.api.port}/v1",
        api_key(loaded.state_dir, bot) or "",
        bot.model.model or "hermes",
    )


# ---------------------------------------------------------------------- talking to it


def sse_events(resp: Iterable[bytes]) -> Iterator[tuple[str, Any]]:
    """An OpenAI-style event stream as ("content", text), ("error", message) and ("tool", payload)."""
    event = ""
    for raw in resp:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if not line:
            event = ""
            continue
        if line.startswith("event:"):
            event = line[6:].strip()
            continue
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            chunk = json.loads(data)
        except ValueError:
            continue
        if event == "hermes.tool.progress":
            yield "tool", chunk
            continue
        if isinstance(chunk.get("error"), dict) or (chunk.get("hermes") or {}).get("failed"):
            err = chunk.get("error") if isinstance(chunk.get("error"), dict) else {}
            yield (
                "error",
                err.get("message") or (chunk.get("hermes") or {}).get("error") or "the agent failed",
            )
            continue
        for choice in chunk.get("choices") or []:
            piece = (choice.get("delta") or {}).get("content")
            if piece:
                yield "content", str(piece)
            if choice.get("finish_reason") == "error":
                yield "error", "the agent failed (the gateway's log says why: `flared logs --bot BOT`)"


class _Writer:
    """Streams the reply without blank lines at its start or end (Hermes sends some around tool use).

    Whitespace is held back until something follows it, so the reply ends
    exactly where its text does; the caller adds the one final newline.
    """

    def __init__(self, out: TextIO | None) -> None:
        self.out = out
        self.parts: list[str] = []
        self.pending = ""

    @property
    def started(self) -> bool:
        return bool(self.parts)

    def write(self, piece: str) -> None:
        text = self.pending + piece
        body = text.rstrip()
        self.pending = text[len(body) :]
        if not self.parts:
            body = body.lstrip()
        if not body:
            return
        self.parts.append(body)
        if self.out is not None:
            self.out.write(body)
            self.out.flush()

    @property
    def text(self) -> str:
        return "".join(self.parts)


def _get_json(ep: Endpoint, path: str, timeout: float) -> tuple[int, dict[str, Any]]:
    """GET ``path`` on the bot's API server (beside ``/v1``); (status, JSON body or {})."""
    import http.client
    import urllib.parse

    parts = urllib.parse.urlsplit(ep.url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {ep.key}"})
        resp = conn.getresponse()
        try:
            data = json.loads(resp.read())
        except ValueError:
            data = {}
        return resp.status, data if isinstance(data, dict) else {}
    finally:
        conn.close()


def check_session(ep: Endpoint, session: str, timeout: float = 10.0) -> None:
    """Refuse ``--session ID`` when the bot has no such conversation.

    Hermes would take the unknown id and silently start a new, empty
    conversation under it, so a mistyped id looked like the bot forgetting.
    Only Hermes' own "session not found" answer refuses; a server that
    cannot say (unreachable, another program) is left to the chat itself,
    which explains those.
    """
    import http.client
    import urllib.parse

    try:
        status, data = _get_json(ep, "/api/sessions/" + urllib.parse.quote(session, safe=""), timeout)
        error = data.get("error")
        if status != 404 or not isinstance(error, dict) or error.get("code") != "session_not_found":
            return
        _, listing = _get_json(ep, "/api/sessions?limit=5", timeout)
    except (OSError, http.client.HTTPException):
        return
    ids = [str(s["id"]) for s in listing.get("data") or [] if isinstance(s, dict) and s.get("id")]
    known = f"its latest: {', '.join(ids)}" if ids else "it has none yet"
    raise ChatError(
        f"bot {ep.bot!r} has no conversation {session!r} ({known}); nothing was sent. "
        "Leave out --session to start a new one.",
        EXIT_INVALID,
    )


def foreign_answer(ep: Endpoint, where: str, resp: Any) -> str | None:
    """What to say when the program on the bot's port is not a Hermes API server, else None.

    Hermes answers JSON or an event stream; anything else (an HTML page from a
    dev server, a proxy's error page) means another program holds the port,
    and printing its page would only bury that.
    """
    ctype = (resp.getheader("Content-Type") or "").split(";")[0].strip().lower()
    if ctype in {"application/json", "text/event-stream"}:
        return None
    import re

    body = resp.read(4096).decode("utf-8", "replace")
    title = re.search(r"<title[^>]*>\s*(.*?)\s*</title>", body, re.I | re.S)
    what = [f"HTTP {resp.status}", ctype or "no content type"]
    if resp.getheader("Server"):
        what.append(f"server {resp.getheader('Server')!r}")
    if title and title.group(1):
        what.append(f"page {title.group(1)[:80]!r}")
    port = where.rsplit(":", 1)[-1]
    return (
        f"something other than the Hermes API of bot {ep.bot!r} answered on {where} ({', '.join(what)}): "
        f"another program holds port {port}. Stop that program, or give the bot a free port in the "
        "config (`api: {port: N}`; the edit is applied live), then chat again."
    )


def chat(
    ep: Endpoint,
    message: str,
    *,
    session: str | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    out: TextIO | None = None,
    tools: TextIO | None = None,
) -> dict[str, Any]:
    """Send one message; returns ``{"bot", "reply", "session_id"}``; raises ChatError when the agent failed.

    The answer is always streamed (``out`` None collects it silently), so
    ``timeout`` bounds the silence between two pieces, not the whole turn:
    Hermes writes a keepalive every 30 s while a long turn works. A gateway
    that does not answer ``GET /health`` is reported before the chat is sent.
    """
    import http.client
    import urllib.parse

    from flared.hermes.liveness import health_error

    body = {"model": ep.model, "messages": [{"role": "user", "content": message}], "stream": True}
    headers = {
        "Content-Type": "application/json",
        "Authorization": f"Bearer {ep.key}",
    }
    parts = urllib.parse.urlsplit(ep.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    where = f"{parts.scheme}://{parts.netloc}"
    trouble = health_error(host, port, min(timeout, HEALTH_DEADLINE_S))
    if trouble is not None:
        raise ChatError(
            f"bot {ep.bot!r} is not answering on {where} ({trouble}): is its gateway ready? "
            "(`flared status` says; start everything with `flared up`)"
        )
    if session:
        check_session(ep, session, min(timeout, HEALTH_DEADLINE_S))
    session = session or new_session_id()
    headers[SESSION_HEADER] = session
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        try:
            conn.request(
                "POST", parts.path.rstrip("/") + "/chat/completions", body=json.dumps(body), headers=headers
            )
            resp = conn.getresponse()
        except TimeoutError:
            raise ChatError(f"bot {ep.bot!r} did not answer within {timeout:.0f} s (--timeout)") from None
        except OSError as exc:
            raise ChatError(f"cannot reach bot {ep.bot!r} on {where}: {exc}") from None
        session_id = resp.getheader(SESSION_HEADER) or session
        foreign = foreign_answer(ep, where, resp)
        if foreign:
            raise ChatError(foreign)
        if resp.status >= 400:
            text = resp.read().decode("utf-8", "replace")
            try:
                err = json.loads(text).get("error")
                detail = err.get("message") if isinstance(err, dict) else err
            except (ValueError, AttributeError):
                detail = text[:300]
            if resp.status == 401:
                detail = "the API key was refused (was the gateway started from this config?)"
            raise ChatError(f"bot {ep.bot!r} answered {resp.status}: {detail}", session_id=session_id)
        writer = _Writer(out)
        error: str | None = None
        try:
            for kind, value in sse_events(resp):
                if kind == "content":
                    writer.write(value)
                elif kind == "error":
                    error = error or str(value)
                elif kind == "tool" and tools is not None and value.get("status") == "running":
                    tools.write(f"[{value.get('tool')}] {value.get('label') or ''}\n")
                    tools.flush()
        except TimeoutError:
            raise ChatError(
                f"bot {ep.bot!r} stopped answering: nothing for {timeout:.0f} s (--timeout)",
                session_id=session_id,
            ) from None
        if error:
            if writer.started and out is not None:
                out.write("\n")
            raise ChatError(f"bot {ep.bot!r}: the agent failed: {error}", session_id=session_id)
    finally:
        conn.close()
    return {"bot": ep.bot, "reply": writer.text, "session_id": session_id}


# ---------------------------------------------------------------------- the command


def run(args: argparse.Namespace) -> int:
    message = " ".join(args.message)
    if message == "-":
        message = sys.stdin.read()
    if not message.strip():
        print("flared chat: the message is empty", file=sys.stderr)
        return EXIT_INVALID
    bot_name = args.bot
    try:
        remote = connect(args)
        known = remote is not None and "bots" in remote.context  # an older daemon cannot say
        ep = (
            endpoint_from_daemon(remote, args.bot)
            if remote is not None and known
            else endpoint_from_file(args)
        )
        bot_name = ep.bot
        if args.json:
            result = chat(ep, message, session=args.session, timeout=args.timeout)
            print(json.dumps(result, indent=2))
            return EXIT_OK
        result = chat(
            ep, message, session=args.session, timeout=args.timeout, out=sys.stdout, tools=sys.stderr
        )
    except (ChatError, CommandError, DaemonNotAnswering) as exc:
        code = exc.code if isinstance(exc, ChatError | CommandError) else EXIT_FAILED
        if args.json:
            sid = exc.session_id if isinstance(exc, ChatError) else None
            print(
                json.dumps({"bot": bot_name, "reply": None, "session_id": sid, "error": str(exc)}, indent=2)
            )
        print(f"flared chat: {exc}", file=sys.stderr)
        if isinstance(exc, ChatError) and exc.session_id:
            print(f"(continue with --session {exc.session_id})", file=sys.stderr)
        return code
    if result["reply"]:
        print()
    else:
        Out(sys.stderr).print("(the bot sent an empty answer)")
    if result["session_id"]:
        print(f"(continue with --session {result['session_id']})", file=sys.stderr)
    return EXIT_OK
