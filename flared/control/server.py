"""flared's control API: small JSON-over-HTTP on a unix socket (and TCP for the Worker).

HTTP is aiohttp's low-level server (its parser, keep-alive and flow control);
this module adds what a daemon's control port needs on top, all enforced
before a request's body is read:

- **who is calling** (:func:`authenticate`) from the listener and the
  headers alone. The unix socket lives in the state dir with mode 0600, so
  only the daemon's user reaches it; on TCP every request needs the control
  token. Gateways' `flare` plugins use per-bot tokens that only open their
  own bot's routes.
- **whether the route exists and the caller may use it** (:meth:`Router.resolve`);
- **how big the body may be** (:class:`Limits`, per route via ``max_body``):
  a declared length over the limit is answered 413 unread, a chunked body
  is cut off at the limit, and a body must arrive within ``body_timeout``.

Connections are bounded too: a client has ``header_timeout`` to send its
first request line and headers, idle keep-alive connections close after
``keepalive_timeout``, and each listener keeps at most ``max_connections``
(at the cap the oldest idle connection is closed to make room). Malformed
requests (``Content-Length: -1`` or ``abc``, header lines too long) get a
JSON 400 and one log line, never a traceback.

Threads: the event loop runs in one thread; route handlers are synchronous
and may block for minutes (a snapshot, a restore, an exec), so each runs in
a thread pool with one worker per connection the listeners accept. A
request therefore never queues behind another one: long calls cannot starve
``/healthz``. Workers are made on demand and reused.

To add a listener (say a page on 127.0.0.1), bind a socket and pass it to
:meth:`ControlServer.listen` with its trust; a page is a route whose
handler returns ``Response(body=html_bytes, content_type="text/html")``.
The routes themselves live in :mod:`flared.api`, one module per capability.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import hmac
import json
import logging
import os
import re
import socket
import struct
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from flared.control.tokens import verify_bot_token

log = logging.getLogger("flared.control")

MAX_BODY = 8 * 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """What one connection may cost the daemon. Defaults suit the CLI, plugins and the Worker."""

    max_body: int = MAX_BODY  # bytes, unless a route sets its own
    header_timeout: float = 10.0  # from connect to the first request's last header
    body_timeout: float = 15.0  # to receive a whole body once the headers are in
    keepalive_timeout: float = 15.0  # an idle keep-alive connection is closed after this
    max_connections: int = 128  # per listener
    backlog: int = 128
    max_header_line: int = 8190  # bytes per request line or header
    max_headers: int = 64
    shutdown_timeout: float = 2.0  # stop() waits this long for requests in flight


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: bytes
    headers: dict[str, str]
    params: dict[str, str] = field(default_factory=dict)
    is_admin: bool = False
    bot_token_bot: str | None = None
    anonymous: bool = False  # TCP caller without a valid token

    def json(self) -> Any:
        if not self.body:
            return {}
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            raise HTTPError(400, "request body is not valid JSON") from None


@dataclass
class Response:
    status: int = 200
    body: Any = None
    content_type: str = "application/json"

    def encode(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str) and not self.content_type.startswith("application/json"):
            return self.body.encode()
        return (json.dumps(self.body, default=str) + "\n").encode()


class HTTPError(Exception):
    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


Handler = Callable[[Request], Response | dict[str, Any] | list[Any]]


@dataclass
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    bot_access: bool  # callable with a per-bot token (the handler checks the bot)
    public: bool  # no credentials needed (liveness only)
    max_body: int | None = None  # bytes; None: the server's limit


class Router:
    def __init__(self) -> None:
        self.routes: list[Route] = []

    def add(
        self,
        method: str,
        path: str,
        handler: Handler,
        *,
        bot_access: bool = False,
        public: bool = False,
        max_body: int | None = None,
    ) -> None:
        """``path`` may hold ``{name}`` segments, e.g. ``/leases/{id}/exec``."""
        regex = "^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", path) + "$"
        self.routes.append(Route(method.upper(), re.compile(regex), handler, bot_access, public, max_body))

    def route(
        self, method: str, path: str, *, bot_access: bool = False, public: bool = False
    ) -> Callable[[Handler], Handler]:
        def deco(fn: Handler) -> Handler:
            self.add(method, path, fn, bot_access=bot_access, public=public)
            return fn

        return deco

    def resolve(self, req: Request) -> Route | Response:
        """The route for ``req`` (its params filled in), or the answer when there is none
        or the caller may not use it. Needs only the method, path and caller: no body."""
        allowed: list[str] = []
        for r in self.routes:
            m = r.pattern.match(req.path)
            if not m:
                continue
            if r.method != req.method:
                allowed.append(r.method)
                continue
            if not (req.is_admin or r.public or (r.bot_access and req.bot_token_bot)):
                if req.anonymous:
                    return Response(401, {"error": "missing or wrong bearer token"})
                return Response(403, {"error": "not authorized for this endpoint"})
            req.params = m.groupdict()
            return r
        if allowed:
            return Response(405, {"error": f"method not allowed; use {', '.join(sorted(set(allowed)))}"})
        return Response(404, {"error": f"no such endpoint: {req.method} {req.path}"})

    @staticmethod
    def call(route: Route, req: Request) -> Response:
        """Run the handler; an :class:`HTTPError` becomes its JSON answer."""
        try:
            out = route.handler(req)
        except HTTPError as exc:
            return Response(exc.status, {"error": exc.message, **exc.extra})
        return out if isinstance(out, Response) else Response(200, out)

    def dispatch(self, req: Request) -> Response:
        found = self.resolve(req)
        return found if isinstance(found, Response) else self.call(found, req)


# --------------------------------------------------------------------------- who is calling


@dataclass(frozen=True)
class Peer:
    """The process at the other end of a unix-socket connection (SO_PEERCRED)."""

    pid: int
    uid: int
    gid: int


@dataclass(frozen=True)
class Caller:
    is_admin: bool = False
    bot: str | None = None  # the bot a valid `flb_` token belongs to
    anonymous: bool = False  # no valid credentials at all (TCP only): 401, not 403


def authenticate(
    *,
    trusted: bool,
    headers: Mapping[str, str],
    state_dir: Path,
    admin_token: str | None,
    peer: Peer | None = None,
) -> Caller:
    """Who the caller is, from the listener and the headers alone (the body is not read yet).

    ``trusted`` is the unix socket: today any same-uid client without a bot
    token is admin there. Raises :class:`HTTPError` 401 for a bot token that
    does not verify.
    """
    bearer = headers.get("authorization", "")
    token = bearer[7:].strip() if bearer.lower().startswith("bearer ") else ""
    bot: str | None = None
    if token.startswith("flb_"):
        bot = verify_bot_token(state_dir, token)
        if bot is None:
            raise HTTPError(401, "invalid bot token")
    if trusted:
        return Caller(is_admin=bot is None, bot=bot)
    if token and admin_token and hmac.compare_digest(token.encode(), admin_token.encode()):
        return Caller(is_admin=True)
    return Caller(bot=bot, anonymous=bot is None)


def peer_of(transport: asyncio.BaseTransport | None) -> Peer | None:
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    pid, uid, gid = struct.unpack("3i", raw)
    return Peer(pid, uid, gid)


# --------------------------------------------------------------------------- HTTP


@dataclass
class _Listener:
    name: str  # "unix" or "tcp" (logs)
    sock: socket.socket
    trusted: bool
    server: _GuardedServer | None = None
    runner: web.ServerRunner | None = None


class _Protocol(RequestHandler):
    """aiohttp's connection handler, answering malformed requests in JSON without a traceback."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            log.error("control: %s %s failed", request.method, request.path, exc_info=exc)
            text = "internal error; see the flared log"
        else:
            detail = str(getattr(exc, "message", None) or message or exc or "")
            first = detail.strip().splitlines()[0].rstrip(":") if detail.strip() else ""
            text = f"bad HTTP request: {first}" if first else "bad HTTP request"
            log.info("control: refused a malformed request: %s", text)
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send the error")
        resp = web.Response(
            status=status,
            body=(json.dumps({"error": text}) + "\n").encode(),
            headers={"Content-Type": "application/json"},
        )
        resp.force_close()
        return resp


class _GuardedServer(web.Server):
    """aiohttp's server plus a cap on connections and a deadline for the first request."""

    def __init__(self, handler: Any, limits: Limits, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.limits = limits
        self.opened: dict[RequestHandler, asyncio.TimerHandle] = {}  # oldest first
        self.busy: set[RequestHandler] = set()  # a handler is working on its request
        self.seen: set[RequestHandler] = set()  # sent at least one whole request head

    def __call__(self) -> RequestHandler:
        return _Protocol(self, loop=self._loop, **self._kwargs)

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        timer = self._loop.call_later(self.limits.header_timeout, self._first_request_due, handler)
        self.opened[handler] = timer
        if len(self.opened) > self.limits.max_connections:
            idle = [h for h in self.opened if h not in self.busy]
            victim = idle[0] if idle else handler
            log.info("control: %d connections open; closing the oldest idle one", len(self.opened))
            self._drop(victim)

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        self._drop(handler, close=False)
        super().connection_lost(handler, exc)

    def _first_request_due(self, handler: RequestHandler) -> None:
        if handler in self.opened and handler not in self.seen:
            log.debug("control: no request within %.0f s of connecting; closing", self.limits.header_timeout)
            self._drop(handler)

    def _drop(self, handler: RequestHandler, *, close: bool = True) -> None:
        timer = self.opened.pop(handler, None)
        if timer is not None:
            timer.cancel()
        self.busy.discard(handler)
        self.seen.discard(handler)
        if close:
            handler.force_close()


class ControlServer:
    """Serves the router on the unix socket and, if configured, on TCP."""

    def __init__(
        self,
        router: Router,
        *,
        state_dir: Path,
        socket_path: Path,
        tcp: tuple[str, int] | None = None,
        admin_token: str | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.router = router
        self.state_dir = state_dir
        self.socket_path = socket_path
        self.tcp = tcp
        self.admin_token = admin_token
        self.limits = limits or Limits()
        self._listeners: list[_Listener] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Bind (errors raise here, in the caller's thread), then serve from a background loop."""
        if self.tcp and not self.admin_token:
            raise RuntimeError("control.port is set but no control token: set FLARE_CONTROL_TOKEN")
        unix = bind_unix(self.socket_path)
        try:
            tcp = bind_tcp(self.tcp) if self.tcp else None
        except BaseException:
            unix.close()
            raise
        self.listen(unix, name="unix", trusted=True)
        if tcp is not None:
            self.listen(tcp, name="tcp", trusted=False)

    def listen(self, sock: socket.socket, *, name: str, trusted: bool) -> None:
        """Serve the router on an already bound socket (``trusted``: no token needed to be admin)."""
        loop = self._ensure_loop()
        listener = _Listener(name, sock, trusted)
        fut = asyncio.run_coroutine_threadsafe(self._serve(listener), loop)
        try:
            fut.result(timeout=30)
        except BaseException:
            sock.close()
            raise
        self._listeners.append(listener)

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, name="control-http", daemon=True)
            self._thread.start()
        return self._loop

    async def _serve(self, listener: _Listener) -> None:
        lim = self.limits
        server = _GuardedServer(
            functools.partial(self._handle, listener),
            lim,
            keepalive_timeout=lim.keepalive_timeout,
            max_line_size=lim.max_header_line,
            max_field_size=lim.max_header_line,
            max_headers=lim.max_headers,
            lingering_time=2.0,
            access_log=None,
        )
        listener.server = server
        runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=lim.shutdown_timeout)
        await runner.setup()
        await web.SockSite(runner, listener.sock, backlog=lim.backlog).start()
        listener.runner = runner
        # One worker per connection the listeners accept: no request waits for a thread.
        workers = lim.max_connections * (len(self._listeners) + 1)
        old = self._pool
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="control")
        if old is not None:
            old.shutdown(wait=False)

    @property
    def tcp_port(self) -> int | None:
        for listener in self._listeners:
            if listener.sock.family in (socket.AF_INET, socket.AF_INET6):
                return int(listener.sock.getsockname()[1])
        return None

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._cleanup(), loop).result(
                    timeout=self.limits.shutdown_timeout + 10
                )
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            if not thread.is_alive():
                loop.close()
        if self._pool is not None:
            # Handlers still running (an exec) finish on their own; their answer is dropped.
            self._pool.shutdown(wait=False, cancel_futures=True)
        for listener in self._listeners:
            listener.sock.close()
        self._listeners.clear()
        self._loop = self._thread = self._pool = None
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    async def _cleanup(self) -> None:
        for listener in self._listeners:
            if listener.runner is not None:
                await listener.runner.cleanup()

    # ------------------------------------------------------------------ one request

    async def _handle(self, listener: _Listener, request: web.BaseRequest) -> web.StreamResponse:
        guard = listener.server
        if guard is not None:
            guard.seen.add(request.protocol)
            guard.busy.add(request.protocol)
        try:
            resp, close = await self._respond(listener, request)
        finally:
            if guard is not None:
                guard.busy.discard(request.protocol)
        out = web.Response(
            status=resp.status, body=resp.encode(), headers={"Content-Type": resp.content_type}
        )
        if close:
            out.force_close()
        return out

    async def _respond(self, listener: _Listener, request: web.BaseRequest) -> tuple[Response, bool]:
        """The answer, and whether to close the connection (a body was left unread)."""
        parts = urlsplit(request.raw_path)
        headers = {k.lower(): v for k, v in request.headers.items()}
        req = Request(
            method=request.method,
            path=parts.path.rstrip("/") or "/",
            query=dict(parse_qsl(parts.query)),
            body=b"",
            headers=headers,
        )
        unread = request.body_exists
        try:
            caller = authenticate(
                trusted=listener.trusted,
                headers=headers,
                state_dir=self.state_dir,
                admin_token=self.admin_token,
                peer=peer_of(request.transport) if listener.trusted else None,
            )
        except HTTPError as exc:
            return Response(exc.status, {"error": exc.message, **exc.extra}), unread
        req.is_admin, req.bot_token_bot, req.anonymous = caller.is_admin, caller.bot, caller.anonymous
        found = self.router.resolve(req)
        if isinstance(found, Response):
            return found, unread
        try:
            req.body = await self._read_body(request, found.max_body or self.limits.max_body)
        except HTTPError as exc:
            return Response(exc.status, {"error": exc.message}), True
        loop = asyncio.get_running_loop()
        assert self._pool is not None
        resp = await loop.run_in_executor(self._pool, self._call, found, req)
        return resp, False

    async def _read_body(self, request: web.BaseRequest, limit: int) -> bytes:
        length = request.content_length
        if length is not None and length > limit:
            raise HTTPError(413, f"request body too large: {length} bytes (the limit here is {limit})")
        if not request.body_exists:
            return b""
        if request.headers.get("Expect", "").lower() == "100-continue":
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        buf = bytearray()
        try:
            async with asyncio.timeout(self.limits.body_timeout):
                while chunk := await request.content.read(65536):
                    buf += chunk
                    if len(buf) > limit:
                        raise HTTPError(413, f"request body too large (the limit here is {limit} bytes)")
        except TimeoutError:
            raise HTTPError(408, f"request body not received within {self.limits.body_timeout:g} s") from None
        except HTTPError:
            raise
        except Exception as exc:  # the client went away or sent a broken chunked body
            raise HTTPError(400, f"request body incomplete: {exc}") from None
        return bytes(buf)

    @staticmethod
    def _call(route: Route, req: Request) -> Response:
        try:
            return Router.call(route, req)
        except Exception:
            log.exception("control: %s %s failed", req.method, req.path)
            return Response(500, {"error": "internal error; see the flared log"})


def bind_unix(path: Path) -> socket.socket:
    """A unix socket only the daemon's user can connect to (mode 0600 before it listens)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, 0o600)
    except BaseException:
        sock.close()
        raise
    return sock


def bind_tcp(address: tuple[str, int]) -> socket.socket:
    host, port = address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def socket_reachable(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(1)
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()
