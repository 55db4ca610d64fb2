"""A protocol-faithful Slack on loopback: Web API plus Socket Mode.

What it implements is what slack_sdk, slack-bolt and Hermes' Slack adapter
actually call, with Slack's own shapes: ``{"ok": false, "error": ...}`` with
HTTP 200 for API errors, bot tokens (``xoxb-``) for the Web API and app-level
tokens (``xapp-``) only for ``apps.connections.open``, form-encoded or JSON
bodies, multipart uploads for the files v2 flow.

Socket Mode: ``apps.connections.open`` returns a one-time ``wss``-style URL on
this server; the websocket gets ``hello`` first, then envelopes
(``events_api``, ``slash_commands``, ``interactive``). Every envelope must be
acknowledged with ``{"envelope_id": ...}``; acks are recorded and checked.
``disconnect()`` sends Slack's ``disconnect`` message (clients must reconnect
to a fresh URL); ``drop()`` closes the sockets abruptly, as a network failure
would.

Several apps (one per bot, each a bot token + app token pair) share one
server and one workspace; messages posted by each are recorded with the app
that posted them, so tests can check routing.

Use in-process (the real gateway is another process and reaches it over TCP)::

    with FakeSlack() as slack:
        app = slack.add_app("hermes")
        user = slack.add_user("alice")
        slack.dm(app, user, "hello")
        reply = slack.wait_for_post(app, channel=slack.dm_channel(app, user))

or as a subprocess: ``python -m tests.fakes.slack_server --app hermes`` prints
the API URL and the tokens as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from tests.fakes._background import BackgroundServer

TEAM_ID = "T0FAKE0001"
TEAM_NAME = "Fake Workspace"
TEAM_DOMAIN = "fake-workspace"

_counter = itertools.count(1)


def _id(prefix: str, n: int | None = None) -> str:
    return f"{prefix}0{(n if n is not None else next(_counter)):08d}"


@dataclass
class SlackApp:
    """One Slack app installed in the fake workspace (one per bot)."""

    name: str
    app_id: str
    bot_id: str
    bot_user_id: str
    bot_token: str
    app_token: str
    connections: list[web.WebSocketResponse] = field(default_factory=list, repr=False)
    connect_count: int = 0
    tickets: set[str] = field(default_factory=set, repr=False)


@dataclass
class SlackUser:
    id: str
    name: str
    real_name: str
    is_bot: bool = False
    deleted: bool = False


@dataclass
class Post:
    """A message the fake received through ``chat.postMessage`` (or an update/ephemeral)."""

    app: str
    method: str
    channel: str
    ts: str
    text: str
    thread_ts: str | None
    blocks: list[Any] | None
    user: str
    raw: dict[str, Any]
    at: float = field(default_factory=time.time)


@dataclass
class Envelope:
    """A Socket Mode envelope sent to an app, and what the app acknowledged."""

    app: str
    envelope_id: str
    type: str
    payload: dict[str, Any]
    sent_at: float
    acked_at: float | None = None
    ack_payload: dict[str, Any] | None = None


@dataclass
class ApiCall:
    app: str | None
    method: str
    args: dict[str, Any]
    at: float = field(default_factory=time.time)


class SlackError(Exception):
    def __init__(self, error: str, **extra: Any) -> None:
        super().__init__(error)
        self.error = error
        self.extra = extra


class FakeSlack:
    """The fake Slack server. Thread-safe helpers for the test side."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, ack_timeout: float = 5.0) -> None:
        self.ack_timeout = ack_timeout
        self.apps: dict[str, SlackApp] = {}
        self.users: dict[str, SlackUser] = {}
        self.posts: list[Post] = []
        self.envelopes: list[Envelope] = []
        self.calls: list[ApiCall] = []
        self.unknown_methods: list[str] = []
        self.reactions: dict[tuple[str, str], dict[str, set[str]]] = {}
        self.files: dict[str, dict[str, Any]] = {}
        self.messages: dict[str, list[dict[str, Any]]] = {}  # channel -> history, oldest first
        self.channels: dict[str, dict[str, Any]] = {}
        self.assistant_status: list[dict[str, Any]] = []
        self._dm: dict[tuple[str, str], str] = {}
        self._ts = itertools.count(int(time.time()) * 1_000_000)
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._fail_next: dict[str, list[str]] = {}
        self.refuse_connections = False

        app = web.Application(client_max_size=64 * 1024**2)
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_get("/link/", self._socket)
        app.router.add_post("/upload/{file_id}", self._upload)
        app.router.add_get("/files/{file_id}/{name}", self._download)
        self.server = BackgroundServer(app, host=host, port=port)

    # ================================================================== lifecycle

    def start(self) -> FakeSlack:
        self.server.start()
        return self

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.server.call(self._close_all(), timeout=10)
        self.server.stop()

    def __enter__(self) -> FakeSlack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def api_url(self) -> str:
        """What a client uses as ``base_url`` (Slack's is ``https://slack.com/api/``)."""
        return self.server.url + "/api/"

    # ================================================================== workspace setup

    def add_app(self, name: str) -> SlackApp:
        with self._lock:
            if name in self.apps:
                raise ValueError(f"app {name!r} exists")
            n = next(_counter)
            app = SlackApp(
                name=name,
                app_id=_id("A", n),
                bot_id=_id("B", n),
                bot_user_id=_id("U", n),
                bot_token=f"xoxb-{n}-{secrets.token_hex(6)}-{name}",
                app_token=f"xapp-1-{_id('A', n)}-{n}-{secrets.token_hex(16)}",
            )
            self.apps[name] = app
            self.users[app.bot_user_id] = SlackUser(app.bot_user_id, name, name, is_bot=True)
            return app

    def add_user(self, name: str, user_id: str | None = None) -> SlackUser:
        with self._lock:
            user = SlackUser(user_id or _id("U"), name, name.title())
            self.users[user.id] = user
            return user

    def add_channel(self, name: str, channel_id: str | None = None) -> str:
        with self._lock:
            cid = channel_id or _id("C")
            self.channels[cid] = {"id": cid, "name": name, "is_channel": True, "is_im": False}
            return cid

    def dm_channel(self, app: SlackApp, user: SlackUser | str) -> str:
        """The DM channel between an app's bot user and a user (created on first use)."""
        uid = user if isinstance(user, str) else user.id
        with self._lock:
            key = (app.name, uid)
            if key not in self._dm:
                cid = _id("D")
                self._dm[key] = cid
                self.channels[cid] = {"id": cid, "is_im": True, "is_channel": False, "user": uid}
            return self._dm[key]

    def fail_next(self, method: str, error: str) -> None:
        """Make the next call of ``method`` answer ``{"ok": false, "error": error}``."""
        with self._lock:
            self._fail_next.setdefault(method, []).append(error)

    # ================================================================== test helpers: inbound

    def next_ts(self) -> str:
        v = next(self._ts)
        return f"{v // 1_000_000}.{v % 1_000_000:06d}"

    def dm(self, app: SlackApp, user: SlackUser, text: str, *, thread_ts: str | None = None) -> Envelope:
        """The user writes ``text`` in their DM with the app's bot."""
        channel = self.dm_channel(app, user)
        event = self._user_message(channel, user, text, thread_ts, channel_type="im")
        return self.send_event(app, event)

    def mention(
        self, app: SlackApp, user: SlackUser, channel: str, text: str, *, thread_ts: str | None = None
    ) -> Envelope:
        """The user writes ``<@bot> text`` in a channel: Slack sends ``app_mention``."""
        full = f"<@{app.bot_user_id}> {text}"
        event = self._user_message(channel, user, full, thread_ts, channel_type="channel")
        event["type"] = "app_mention"
        event.pop("channel_type", None)
        return self.send_event(app, event)

    def channel_message(
        self, app: SlackApp, user: SlackUser, channel: str, text: str, *, thread_ts: str | None = None
    ) -> Envelope:
        """A plain channel message (``message.channels`` subscription)."""
        event = self._user_message(channel, user, text, thread_ts, channel_type="channel")
        return self.send_event(app, event)

    def _user_message(
        self, channel: str, user: SlackUser, text: str, thread_ts: str | None, channel_type: str
    ) -> dict[str, Any]:
        ts = self.next_ts()
        event: dict[str, Any] = {
            "type": "message",
            "client_msg_id": str(uuid.uuid4()),
            "user": user.id,
            "text": text,
            "ts": ts,
            "team": TEAM_ID,
            "blocks": [
                {
                    "type": "rich_text",
                    "block_id": secrets.token_hex(3),
                    "elements": [{"type": "rich_text_section", "elements": [{"type": "text", "text": text}]}],
                }
            ],
            "channel": channel,
            "event_ts": ts,
            "channel_type": channel_type,
        }
        if thread_ts:
            event["thread_ts"] = thread_ts
        with self._lock:
            self.messages.setdefault(channel, []).append(
                {k: v for k, v in event.items() if k not in ("channel", "event_ts", "channel_type")}
            )
        return event

    def send_event(self, app: SlackApp, event: dict[str, Any], *, wait_ack: bool = True) -> Envelope:
        payload = {
            "token": "fake-verification-token",
            "team_id": TEAM_ID,
            "context_team_id": TEAM_ID,
            "api_app_id": app.app_id,
            "event": event,
            "type": "event_callback",
            "event_id": f"Ev{secrets.token_hex(5).upper()}",
            "event_time": int(time.time()),
            "authorizations": [
                {
                    "enterprise_id": None,
                    "team_id": TEAM_ID,
                    "user_id": app.bot_user_id,
                    "is_bot": True,
                    "is_enterprise_install": False,
                }
            ],
            "is_ext_shared_channel": False,
            "event_context": secrets.token_hex(8),
        }
        return self.send_envelope(app, "events_api", payload, wait_ack=wait_ack)

    def slash_command(
        self, app: SlackApp, user: SlackUser, command: str, text: str = "", channel: str | None = None
    ) -> Envelope:
        channel = channel or self.dm_channel(app, user)
        payload = {
            "token": "fake-verification-token",
            "team_id": TEAM_ID,
            "team_domain": TEAM_DOMAIN,
            "channel_id": channel,
            "channel_name": "directmessage" if channel.startswith("D") else self.channels[channel]["name"],
            "user_id": user.id,
            "user_name": user.name,
            "command": command,
            "text": text,
            "api_app_id": app.app_id,
            "is_enterprise_install": "false",
            "response_url": f"{self.url}/api/response_url.{secrets.token_hex(4)}",
            "trigger_id": f"{next(_counter)}.{secrets.token_hex(6)}",
        }
        return self.send_envelope(app, "slash_commands", payload, accepts_response_payload=True)

    def block_action(
        self,
        app: SlackApp,
        user: SlackUser,
        action_id: str,
        value: str = "",
        *,
        channel: str | None = None,
        message_ts: str | None = None,
    ) -> Envelope:
        channel = channel or self.dm_channel(app, user)
        # Real Slack sends the whole message the button sits on (thread_ts, blocks included).
        message: dict[str, Any] | None = None
        if message_ts:
            message = {"ts": message_ts, "type": "message", "text": ""}
            with self._lock:
                stored = next((m for m in self.messages.get(channel, []) if m.get("ts") == message_ts), None)
                if stored is not None:
                    message = json.loads(json.dumps(stored))
        payload = {
            "type": "block_actions",
            "user": {"id": user.id, "username": user.name, "name": user.name, "team_id": TEAM_ID},
            "api_app_id": app.app_id,
            "token": "fake-verification-token",
            "container": {"type": "message", "message_ts": message_ts, "channel_id": channel},
            "trigger_id": f"{next(_counter)}.{secrets.token_hex(6)}",
            "team": {"id": TEAM_ID, "domain": TEAM_DOMAIN},
            "channel": {"id": channel, "name": "directmessage"},
            "message": message,
            "response_url": f"{self.url}/api/response_url.{secrets.token_hex(4)}",
            "actions": [
                {
                    "action_id": action_id,
                    "block_id": secrets.token_hex(3),
                    "type": "button",
                    "value": value,
                    "action_ts": self.next_ts(),
                }
            ],
        }
        return self.send_envelope(app, "interactive", payload, accepts_response_payload=False)

    def send_envelope(
        self,
        app: SlackApp,
        kind: str,
        payload: dict[str, Any],
        *,
        accepts_response_payload: bool = False,
        wait_ack: bool = True,
        connect_timeout: float = 30.0,
    ) -> Envelope:
        """Send an envelope to one live connection of ``app``; by default wait for its ack."""
        self.wait_connected(app, timeout=connect_timeout)
        env = Envelope(app.name, str(uuid.uuid4()), kind, payload, time.time())
        with self._lock:
            self.envelopes.append(env)
        message = {
            "envelope_id": env.envelope_id,
            "payload": payload,
            "type": kind,
            "accepts_response_payload": accepts_response_payload,
        }
        if kind == "events_api":
            message["retry_attempt"] = 0
            message["retry_reason"] = ""
        self.server.call(self._send(app, message))
        if wait_ack:
            self.wait_ack(env)
        return env

    def wait_ack(self, env: Envelope, timeout: float | None = None) -> Envelope:
        """Wait until the app acknowledged ``env``; fail like Slack would log a missing ack."""
        limit = self.ack_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        with self._cond:
            while env.acked_at is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"app {env.app} did not ack envelope {env.envelope_id} within {limit}s"
                    )
                self._cond.wait(left)
        return env

    async def _send(self, app: SlackApp, message: dict[str, Any]) -> None:
        live = [ws for ws in app.connections if not ws.closed]
        if not live:
            raise AssertionError(f"app {app.name} has no socket connection")
        await live[-1].send_str(json.dumps(message))

    # ================================================================== test helpers: connections

    def connected(self, app: SlackApp) -> bool:
        return any(not ws.closed for ws in app.connections)

    def wait_connected(self, app: SlackApp, timeout: float = 30.0, min_count: int = 1) -> None:
        """Wait until the app has a live socket (and has connected at least ``min_count`` times)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not (self.connected(app) and app.connect_count >= min_count):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"app {app.name} has no socket connection after {timeout}s "
                        f"(connected {app.connect_count} times)"
                    )
                self._cond.wait(min(left, 0.2))

    def disconnect(self, app: SlackApp, reason: str = "refresh_requested") -> int:
        """Slack's graceful ``disconnect`` message, then close; returns how many sockets."""
        return self.server.call(self._disconnect(app, reason))

    async def _disconnect(self, app: SlackApp, reason: str) -> int:
        n = 0
        for ws in list(app.connections):
            if ws.closed:
                continue
            n += 1
            await ws.send_str(
                json.dumps({"type": "disconnect", "reason": reason, "debug_info": {"host": "fake-slack"}})
            )
            await ws.close()
        return n

    def drop(self, app: SlackApp) -> int:
        """Close the app's sockets abruptly (no disconnect message), as a network failure."""
        return self.server.call(self._drop(app))

    async def _drop(self, app: SlackApp) -> int:
        n = 0
        for ws in list(app.connections):
            if ws.closed:
                continue
            n += 1
            transport = ws._req.transport if ws._req is not None else None  # type: ignore[attr-defined]
            if transport is not None:
                transport.abort()
            else:
                await ws.close()
        return n

    async def _close_all(self) -> None:
        for app in self.apps.values():
            for ws in list(app.connections):
                if not ws.closed:
                    await ws.close()

    # ================================================================== test helpers: outbound

    def posts_for(self, app: SlackApp | None = None, channel: str | None = None) -> list[Post]:
        with self._lock:
            return [
                p
                for p in self.posts
                if (app is None or p.app == app.name) and (channel is None or p.channel == channel)
            ]

    def wait_for_post(
        self,
        app: SlackApp | None = None,
        *,
        channel: str | None = None,
        contains: str | None = None,
        predicate: Callable[[Post], bool] | None = None,
        after: float | None = None,
        timeout: float = 60.0,
        final: bool = True,
    ) -> Post:
        """Wait for a message posted (or edited into its final text) matching the filters.

        Bots that stream edit their message with ``chat.update``; the returned
        post carries the text as it was at the latest update. With ``final``,
        wait until the message has not changed for a short moment.
        """

        def match(p: Post) -> bool:
            return (
                (app is None or p.app == app.name)
                and (channel is None or p.channel == channel)
                and (after is None or p.at >= after)
                and (contains is None or contains in self.current_text(p))
                and (predicate is None or predicate(p))
            )

        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [p for p in self.posts if p.method == "chat.postMessage" and match(p)]
                found += [p for p in self.posts if p.method == "chat.update" and match(p)]
                if found:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [(p.app, p.channel, p.text[:80]) for p in self.posts]
                    raise TimeoutError(f"no matching Slack post within {timeout}s; posts so far: {seen}")
                self._cond.wait(left)
        post = found[0]
        if final:
            self._wait_settled(post, min(2.0, max(0.0, deadline - time.monotonic())))
        return self.latest_version(post)

    def _wait_settled(self, post: Post, quiet: float) -> None:
        last = self.current_text(post)
        while quiet > 0:
            time.sleep(0.3)
            quiet -= 0.3
            now = self.current_text(post)
            if now != last:
                last = now
                quiet = max(quiet, 0.6)

    def latest_version(self, post: Post) -> Post:
        with self._lock:
            versions = [p for p in self.posts if p.channel == post.channel and p.ts == post.ts]
            return versions[-1] if versions else post

    def current_text(self, post: Post) -> str:
        return self.latest_version(post).text

    def all_text(self, app: SlackApp | None = None, channel: str | None = None) -> str:
        """Every posted message's final text, joined (for ``in`` checks)."""
        seen: dict[tuple[str, str], str] = {}
        for p in self.posts_for(app, channel):
            seen[(p.channel, p.ts)] = p.text
        return "\n".join(seen.values())

    def calls_to(self, method: str, app: SlackApp | None = None) -> list[ApiCall]:
        with self._lock:
            return [c for c in self.calls if c.method == method and (app is None or c.app == app.name)]

    def unacked(self) -> list[Envelope]:
        with self._lock:
            return [e for e in self.envelopes if e.acked_at is None]

    # ================================================================== Web API

    def _app_for_token(self, token: str | None) -> tuple[SlackApp | None, str]:
        """(app, kind) where kind is 'bot', 'app' or '' for unknown."""
        if not token:
            return None, ""
        for app in self.apps.values():
            if token == app.bot_token:
                return app, "bot"
            if token == app.app_token:
                return app, "app"
        return None, ""

    async def _read_args(self, request: web.Request) -> dict[str, Any]:
        args: dict[str, Any] = dict(request.query)
        if request.method != "POST" or not request.can_read_body:
            return args
        ctype = request.content_type
        if ctype == "application/json":
            body = await request.json()
            if isinstance(body, dict):
                args.update(body)
        elif ctype == "multipart/form-data":
            reader = await request.multipart()
            async for part in reader:
                if part.name is None:
                    continue
                if part.filename:
                    args[part.name] = {"filename": part.filename, "content": await part.read()}
                else:
                    args[part.name] = (await part.read()).decode()
        else:
            form = await request.post()
            for k, v in form.items():
                args[k] = v if isinstance(v, str) else v.file.read()
        return args

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        args = await self._read_args(request)
        auth = request.headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else args.pop("token", None)
        app, kind = self._app_for_token(token)
        with self._lock:
            self.calls.append(ApiCall(app.name if app else None, method, args))
        if method.startswith("response_url."):
            return self._response_url(method, args)
        if not token:
            return _fail("not_authed")
        if app is None:
            return _fail("invalid_auth")
        if method == "apps.connections.open":
            if kind != "app":
                return _fail("not_allowed_token_type")
        elif kind != "bot":
            return _fail("not_allowed_token_type")
        with self._lock:
            queued = self._fail_next.get(method)
            if queued:
                return _fail(queued.pop(0))
        handler = getattr(self, "_m_" + method.replace(".", "_"), None)
        if handler is None:
            with self._lock:
                self.unknown_methods.append(method)
            return _fail("unknown_method")
        try:
            result = handler(app, args, request)
            if asyncio.iscoroutine(result):
                result = await result
        except SlackError as exc:
            return _fail(exc.error, **exc.extra)
        return web.json_response({"ok": True, **result})

    def _response_url(self, method: str, args: dict[str, Any]) -> web.Response:
        with self._cond:
            self.posts.append(
                Post(
                    app="",
                    method="response_url",
                    channel="",
                    ts=self.next_ts(),
                    text=str(args.get("text", "")),
                    thread_ts=None,
                    blocks=_blocks(args.get("blocks")),
                    user="",
                    raw=args,
                )
            )
            self._cond.notify_all()
        return web.Response(text="ok")

    # --- auth / apps

    def _m_auth_test(self, app: SlackApp, args: dict[str, Any], request: web.Request) -> dict[str, Any]:
        return {
            "url": f"https://{TEAM_DOMAIN}.slack.com/",
            "team": TEAM_NAME,
            "user": app.name,
            "team_id": TEAM_ID,
            "user_id": app.bot_user_id,
            "bot_id": app.bot_id,
            "is_enterprise_install": False,
        }

    def _m_apps_connections_open(
        self, app: SlackApp, args: dict[str, Any], request: web.Request
    ) -> dict[str, Any]:
        if self.refuse_connections:
            raise SlackError("internal_error")
        ticket = secrets.token_hex(16)
        app.tickets.add(ticket)
        host = request.host
        return {"url": f"ws://{host}/link/?ticket={ticket}&app_id={app.app_id}"}

    def _m_bots_info(self, app: SlackApp, args: dict[str, Any], request: web.Request) -> dict[str, Any]:
        bot = next((a for a in self.apps.values() if a.bot_id == args.get("bot", app.bot_id)), None)
        if bot is None:
            raise SlackError("bot_not_found")
        return {
            "bot": {
                "id": bot.bot_id,
                "app_id": bot.app_id,
                "user_id": bot.bot_user_id,
                "name": bot.name,
                "deleted": False,
            }
        }

    def _m_team_info(self, app: SlackApp, args: dict[str, Any], request: web.Request) -> dict[str, Any]:
        return {"team": {"id": TEAM_ID, "name": TEAM_NAME, "domain": TEAM_DOMAIN}}

    # --- chat

    def _channel_arg(self, args: dict[str, Any]) -> str:
        channel = str(args.get("channel") or "")
        if not channel:
            raise SlackError("channel_not_found")
        if channel.startswith("U"):  # posting to a user id opens the DM
            return channel
        if channel not in self.channels:
            raise SlackError("channel_not_found")
        return channel

    def _record(self, app: SlackApp, method: str, channel: str, ts: str, args: dict[str, Any]) -> Post:
        text = str(args.get("text") or "")
        blocks = _blocks(args.get("blocks"))
        if not text and blocks:
            text = _blocks_text(blocks)
        post = Post(
            app=app.name,
            method=method,
            channel=channel,
            ts=ts,
            text=text,
            thread_ts=str(args["thread_ts"]) if args.get("thread_ts") else None,
            blocks=blocks,
            user=app.bot_user_id,
            raw=dict(args),
        )
        with self._cond:
            self.posts.append(post)
            self._cond.notify_all()
        return post

    def _m_chat_postMessage(
        self, app: SlackApp, args: dict[str, Any], request: web.Request
    ) -> dict[str, Any]:
        channel = self._channel_arg(args)
        if not args.get("text") and not args.get("blocks") and not args.get("attachments"):
            raise SlackError("no_text")
        ts = self.next_ts()
        post = self._record(app, "chat.postMessage", channel, ts, args)
        message = {
            "type": "message",
            "user": app.bot_user_id,
            "bot_id": app.bot_id,
            "app_id": app.app_id,
            "text": post.text,
            "ts": ts,
            "team": TEAM_ID,
        }
        if post.thread_ts:
            message["thread_ts"] = post.thread_ts
        if post.blocks:
            message["blocks"] = post.blocks
        with self._lock:
            self.messages.setdefault(channel, []).append(dict(message))
        return {"channel": channel, "ts": ts, "message": message}

    def _m_chat_postEphemeral(
        self, app: SlackApp, args: dict[str, Any], request: web.Request
    ) -> dict[str, Any]:
        channel = self._channel_arg(args)
        ts = self.next_ts()
        self._record(app, "chat.postEphemeral", channel, ts, args)
        return {"message_ts": ts}

    def _find_message(self, channel: str, ts: str) -> dict[str, Any]:
        for m in self.messages.get(channel, []):
            if m.get("ts") == ts:
                return m
        raise SlackError("message_not_found")

    def _m_chat_update(self, app: SlackApp, args: dict[str, Any], request: web.Request) -> dict[str, Any]:
        channel = self._channel_arg(args)
        ts = str(args.get("ts") or "")
        with self._lock:
            msg = self._find_message(channel, ts)
            if msg.get("user") != app.bot_user_id:
                raise SlackError("cant_update_message")
            post = self._record(app, "chat.update", channel, ts, args)
            msg["text"] = post.text
            msg["edited"] = {"user": app.bot_user_id, "ts": self.next_ts()}
            if post.blocks is not None:
                msg["blocks"] = post.blocks
        return {"channel": channel, "ts": ts, "text": post.text, "message": dict(msg)}

    def _m_chat_delete(self, app: SlackApp, args: dict[str, Any], request: web.Request) -> dict[str, Any]:
        channel = self._channel_arg(args)
        ts = str(args.get("ts") or "")
        with self._cond:
            msg = self._find_message(channel, ts)
            if msg.get("user") != app.bot_user_id:
                raise SlackError("cant_delete_message")
            self.messages[channel].remove(msg)
            self.posts.append(
                Post(app.name, "chat.delete", channel, ts, "", None, None, app.bot_user_id, dict(args))
            )
            self._cond.notify_all()
        return {"channel": channel, "ts": ts}

    def _m_chat_getPermalink(
        self, app: SlackApp, args: dict[str, Any], request: web.Request
    ) -> dict[str, Any]:
        channel = self._channel_arg(args)
        ts = str(args.get("message_ts") or "").replace(".", "")
        return {"channel": channel, "permalink": f"https://{TEAM_DOMAIN}.slack.com/archives/{channel}/p{ts}"}

    # --- reactions

    def _m_reactions_add(self, app: SlackApp, args: dict[str, Any], request: web.Request) -> dict[str, Any]:
        channel = self._channel_arg(args)
        ts, name = str(args.get("timestamp") or ""), str(args.get("name") or "")
        if not name:
            raise SlackError("invalid_name")
        with self._lock:
            self._find_message(channel, ts)
            users = self.reactions.setdefault((channel, ts), {}).setdefault(name, set())
            if app.bot_user_id in users:
                raise SlackError("already_reacted")
            users.add(app.bot_user_id)
        return {}

    def _m_reactions_remove(
        self, app: SlackApp, args: dict[str, Any], request: web.Request
    ) -> dict[str, Any]:
        channel = self._channel_arg(args)
        ts, name = str(args.get("timestamp") or ""), str(args.get("name") or "")
        with self._lock:
            users = self.reactions.get((channel, ts), {}).get(name, set())
            if app.bot_user_id not in users:
                raise SlackError("no_reaction")
            users.discard(app.bot_user_id)
        return {}

    def _m_reactions_get(self, app: SlackApp, args: dict[str, Any], request: web.Request) -> dict[str, Any]:
        channel = self._channel_arg(args)
        ts = str(args.get("timestamp") or "")
        with self._lock:
            msg = dict(self._find_message(channel, ts))
            msg["reactions"] = [
                {"name": n, "users": sorted(u), "count": len(u)}
                for n, u in self.reactions.get((channel, ts), {}).items()
                if u
            ]
        return {"type": "message", "channel": channel, "message": msg}

    # --- conversations

    def _conversation(self, cid: str) -> dict[str, Any]:
        ch = self.channels.get(cid)
        if ch is None:
            raise SlackError("channel_not_found")
        info = {
            "id": cid,
            "created": 1700000000,
            "is_archived": False,
            "is_general": False,
            "is_private": False,
            "is_mpim": False,
            "is_group": False,
            "is_org_shared": False,
            "is_ext_shared": False,
            "context_team_id": TEAM_ID,
            **ch,
        }
        if ch.get("is_im"):
            info["is_private"] = True
        return info

    def _m_conversations_info(
        self, app: SlackApp, args: dict[str, Any], request: web.Request
    ) -> dict[str, Any]:
        return {"channel": self._conversation(str(args.get("channel") or ""))}

    def _m_conversations_open(
        self, app: SlackApp, args: dict[str, Any], request: web.Request
    ) -> dict[str, Any]:
        users = [u for u in str(args.get("users") or "").split(",") if u]
        if args.get("channel"):
            return {"channel": self._conversation(str(args["channel"]))}
        if len(users) != 1:
            raise SlackError("not_implemented" if users else "users_list_not_supplied")
        if users[0] not in self.users:
            raise SlackError("user_not_found")
        cid = self.dm_channel(app, users[0])
        return {"no_op": False, "already_open": False, "channel": {"id": cid}}

    def _history(self, cid: str) -> list[dict[str, Any]]:
        if cid not in self.channels:
            raise SlackError("channel_not_found")
        return [dict(m) for m in self.messages.get(cid, [])]

    @staticmethod
    def _page(items: list[dict[str, Any]], args: dict[str, Any]) -> list[dict[str, Any]]:
        limit = int(args.get("limit") or 100)
        oldest, latest = args.get("oldest"), args.get("latest")
        if oldest:
            items = [m for m in items if float(m["ts"]) >= float(oldest)]
        if latest:
            items = [m for m in items if float(m["ts"]) <= float(latest)]
        return items[:limit]

    def _m_conversations_history(
        self, app: SlackApp, args: dict[str, Any], request: web.Request
    ) -> dict[str, Any]:
        msgs = [
            m
            for m in self._history(str(args.get("channel") or ""))
            if "thread_ts" not in m or m["thread_ts"] == m["ts"]
        ]
        msgs = self._page(list(reversed(msgs)), args)  # newest first
        return {"messages": msgs, "has_more": False, "response_metadata": {"next_cursor": ""}}

    def _m_conversations_replies(
        self, app: SlackApp, args: dict[str, Any], request: web.Request
    ) -> dict[str, Any]:
        ts = str(args.get("ts") or "")
        msgs = self._history(str(args.get("channel") or ""))
        thread = [m for m in msgs if m["ts"] == ts or m.get("thread_ts") == ts]
        if not thread:
            raise SlackError("thread_not_found")
        return {
            "messages": self._page(thread, args),
            "has_more": False,
            "response_metadata": {"next_cursor": ""},
        }

    def _m_conversations_list(
        self, app: SlackApp, args: dict[str, Any], request: web.Request
    ) -> dict[str, Any]:
        types = str(args.get("types") or "public_channel").split(",")
        out = []
        for cid in self.channels:
            conv = self._conversation(cid)
            kind = "im" if conv.get("is_im") else "public_channel"
            if kind in types:
                out.append(conv)
        return {"channels": out, "response_metadata": {"next_cursor": ""}}

    def _m_conversations_members(
        self, app: SlackApp, args: dict[str, Any], request: web.Request
    ) -> dict[str, Any]:
        self._conversation(str(args.get("channel") or ""))
        return {"members": sorted(self.users), "response_metadata": {"next_cursor": ""}}

    def _m_conversations_join(
        self, app: SlackApp, args: dict[str, Any], request: web.Request
    ) -> dict[str, Any]:
        return {"channel": self._conversation(str(args.get("channel") or ""))}

    def _m_conversations_mark(
        self, app: SlackApp, args: dict[str, Any], request: web.Request
    ) -> dict[str, Any]:
        self._conversation(str(args.get("channel") or ""))
        return {}

    # --- users

    def _user(self, uid: str) -> dict[str, Any]:
        u = self.users.get(uid)
        if u is None:
            raise SlackError("user_not_found")
        return {
            "id": u.id,
            "team_id": TEAM_ID,
            "name": u.name,
            "real_name": u.real_name,
            "deleted": u.deleted,
            "is_bot": u.is_bot,
            "is_admin": False,
            "tz": "Europe/Berlin",
            "tz_offset": 3600,
            "profile": {
                "real_name": u.real_name,
                "display_name": u.name,
                "real_name_normalized": u.real_name,
                "display_name_normalized": u.name,
                "email": f"{u.name}@example.com",
                "team": TEAM_ID,
            },
        }

    def _m_users_info(self, app: SlackApp, args: dict[str, Any], request: web.Request) -> dict[str, Any]:
        return {"user": self._user(str(args.get("user") or ""))}

    def _m_users_list(self, app: SlackApp, args: dict[str, Any], request: web.Request) -> dict[str, Any]:
        return {"members": [self._user(u) for u in self.users], "response_metadata": {"next_cursor": ""}}

    def _m_users_profile_get(
        self, app: SlackApp, args: dict[str, Any], request: web.Request
    ) -> dict[str, Any]:
        return {"profile": self._user(str(args.get("user") or app.bot_user_id))["profile"]}

    def _m_users_conversations(
        self, app: SlackApp, args: dict[str, Any], request: web.Request
    ) -> dict[str, Any]:
        return self._m_conversations_list(app, args, request)

    def _m_users_getPresence(
        self, app: SlackApp, args: dict[str, Any], request: web.Request
    ) -> dict[str, Any]:
        self._user(str(args.get("user") or ""))
        return {"presence": "active"}

    # --- assistant threads (Slack AI apps)

    def _assistant(self, app: SlackApp, method: str, args: dict[str, Any]) -> dict[str, Any]:
        self._channel_arg({"channel": args.get("channel_id")})
        if not args.get("thread_ts"):
            raise SlackError("invalid_arguments")
        with self._lock:
            self.assistant_status.append({"app": app.name, "method": method, **args})
        return {}

    def _m_assistant_threads_setStatus(
        self, app: SlackApp, args: dict[str, Any], request: web.Request
    ) -> dict[str, Any]:
        return self._assistant(app, "setStatus", args)

    def _m_assistant_threads_setTitle(
        self, app: SlackApp, args: dict[str, Any], request: web.Request
    ) -> dict[str, Any]:
        return self._assistant(app, "setTitle", args)

    def _m_assistant_threads_setSuggestedPrompts(
        self, app: SlackApp, args: dict[str, Any], request: web.Request
    ) -> dict[str, Any]:
        return self._assistant(app, "setSuggestedPrompts", args)

    # --- files (upload v2: getUploadURLExternal -> POST bytes -> completeUploadExternal)

    def _m_files_getUploadURLExternal(
        self, app: SlackApp, args: dict[str, Any], request: web.Request
    ) -> dict[str, Any]:
        name = str(args.get("filename") or "")
        length = int(args.get("length") or 0)
        if not name or length <= 0:
            raise SlackError("invalid_arguments")
        fid = _id("F")
        with self._lock:
            self.files[fid] = {
                "id": fid,
                "name": name,
                "title": name,
                "size": length,
                "app": app.name,
                "content": None,
                "user": app.bot_user_id,
            }
        return {"upload_url": f"{self.url}/upload/{fid}", "file_id": fid}

    async def _upload(self, request: web.Request) -> web.Response:
        fid = request.match_info["file_id"]
        with self._lock:
            f = self.files.get(fid)
        if f is None:
            return web.Response(status=404, text="unknown file")
        if request.content_type == "multipart/form-data":
            reader = await request.multipart()
            data = b""
            async for part in reader:
                data = await part.read()
        else:
            data = await request.read()
        with self._lock:
            f["content"] = data
        return web.Response(text=f"OK - {len(data)}")

    def _m_files_completeUploadExternal(
        self, app: SlackApp, args: dict[str, Any], request: web.Request
    ) -> dict[str, Any]:
        files = args.get("files")
        if isinstance(files, str):
            files = json.loads(files)
        if not isinstance(files, list) or not files:
            raise SlackError("invalid_arguments")
        out = []
        channel = args.get("channel_id") or args.get("channels")
        for entry in files:
            with self._lock:
                f = self.files.get(str(entry.get("id")))
                if f is None or f["content"] is None:
                    raise SlackError("file_not_found")
                f["title"] = entry.get("title") or f["name"]
                if channel:
                    f["channel"] = str(channel)
                    f["thread_ts"] = args.get("thread_ts")
                    f["initial_comment"] = args.get("initial_comment")
            out.append(self._file_obj(f))
        if channel:
            ts = self.next_ts()
            self._record(
                app,
                "files.completeUploadExternal",
                str(channel),
                ts,
                {"text": str(args.get("initial_comment") or ""), "thread_ts": args.get("thread_ts")},
            )
        return {"files": out}

    def _file_obj(self, f: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": f["id"],
            "name": f["name"],
            "title": f["title"],
            "size": len(f["content"] or b""),
            "user": f["user"],
            "url_private": f"{self.url}/files/{f['id']}/{f['name']}",
            "url_private_download": f"{self.url}/files/{f['id']}/{f['name']}",
            "permalink": f"https://{TEAM_DOMAIN}.slack.com/files/{f['user']}/{f['id']}/{f['name']}",
        }

    def _m_files_info(self, app: SlackApp, args: dict[str, Any], request: web.Request) -> dict[str, Any]:
        f = self.files.get(str(args.get("file") or ""))
        if f is None:
            raise SlackError("file_not_found")
        return {"file": self._file_obj(f)}

    async def _download(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        _app, kind = self._app_for_token(auth[7:] if auth.startswith("Bearer ") else None)
        if kind != "bot":
            return web.Response(status=403, text="forbidden")
        f = self.files.get(request.match_info["file_id"])
        if f is None or f["content"] is None:
            return web.Response(status=404)
        return web.Response(body=f["content"], content_type="application/octet-stream")

    # ================================================================== Socket Mode

    async def _socket(self, request: web.Request) -> web.StreamResponse:
        ticket = request.query.get("ticket", "")
        app = next((a for a in self.apps.values() if ticket in a.tickets), None)
        if app is None:
            return web.Response(status=401, text="invalid ticket")
        app.tickets.discard(ticket)  # a URL is good for one connection
        ws = web.WebSocketResponse(autoping=True, heartbeat=None)
        await ws.prepare(request)
        with self._cond:
            app.connections.append(ws)
            app.connect_count += 1
            self._cond.notify_all()
        await ws.send_str(
            json.dumps(
                {
                    "type": "hello",
                    "num_connections": sum(1 for c in app.connections if not c.closed),
                    "debug_info": {
                        "host": "fake-slack",
                        "build_number": 1,
                        "approximate_connection_time": 3600,
                    },
                    "connection_info": {"app_id": app.app_id},
                }
            )
        )
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    data = json.loads(msg.data)
                except ValueError:
                    continue
                eid = data.get("envelope_id") if isinstance(data, dict) else None
                if not eid:
                    continue
                with self._cond:
                    for env in self.envelopes:
                        if env.envelope_id == eid and env.acked_at is None:
                            env.acked_at = time.time()
                            env.ack_payload = data.get("payload")
                    self._cond.notify_all()
        finally:
            with self._cond:
                self._cond.notify_all()
        return ws


def _fail(error: str, **extra: Any) -> web.Response:
    return web.json_response({"ok": False, "error": error, **extra})


def _blocks(value: Any) -> list[Any] | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError:
            return None
        return parsed if isinstance(parsed, list) else None
    return value if isinstance(value, list) else None


def _blocks_text(blocks: list[Any]) -> str:
    out: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("text"), str):
                out.append(node["text"])
            for v in node.values():
                if isinstance(v, dict | list):
                    walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(blocks)
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Fake Slack (Web API + Socket Mode) on loopback.")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--app", action="append", default=[], help="app name (repeat for several bots)")
    p.add_argument("--user", action="append", default=[], help="user name")
    args = p.parse_args(argv)
    slack = FakeSlack(port=args.port)
    slack.start()
    apps = [slack.add_app(n) for n in args.app or ["hermes"]]
    users = [slack.add_user(n) for n in args.user or ["alice"]]
    print(
        json.dumps(
            {
                "api_url": slack.api_url,
                "apps": [
                    {
                        "name": a.name,
                        "bot_token": a.bot_token,
                        "app_token": a.app_token,
                        "bot_user_id": a.bot_user_id,
                    }
                    for a in apps
                ],
                "users": [{"name": u.name, "id": u.id} for u in users],
            }
        ),
        flush=True,
    )
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        slack.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
