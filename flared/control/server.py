"""flared's control API: small JSON-over-HTTP on a unix socket (and TCP for the Worker).

HTTP/1.1 is h11's (python-hyper's protocol implementation, also under
uvicorn and httpx): it parses and frames every message and refuses what is
malformed (``Content-Length: -1`` or ``abc``, a head over ``max_head``).
asyncio serves the sockets. Around that, this module enforces what a
daemon's control port needs, all before a request's body is read:

- **who is calling** (:func:`authenticate`), from the listener and the
  headers alone. The unix socket lives in the state dir with mode 0600, so
  only the daemon's user reaches it; on TCP every request needs the control
  token. Gateways' `flare` plugins use per-bot tokens that only open their
  own bot's routes.
- **whether the route exists and the caller may use it** (:meth:`Router.resolve`);
- **how big the body may be** (:class:`Limits`, per route via ``max_body``):
  a declared length over the limit is answered 413 unread, a chunked body
  is cut off at the limit, and the whole body must arrive within
  ``body_timeout`` (408).

Connections are bounded too: a client has ``header_timeout`` to send its
first request head and ``keepalive_timeout`` for each later one, however
slowly the bytes trickle in; a response the client does not read within
``body_timeout`` closes the connection; and each listener keeps at most
``max_connections`` (at the cap the oldest idle connection is closed to
make room). Malformed requests get a JSON 400 and one log line.

Threads: the event loop runs in one thread; route handlers are synchronous
and may block for minutes (a snapshot, a restore, an exec), so each runs in
a thread pool with one worker per connection the listeners accept. A
request therefore never queues behind another one, and long calls cannot
starve ``/healthz``. Workers are made on demand and reused.

Why not aiohttp: its server works, but importing it costs flared about
11 MiB of idle RSS (measured by `bench/bench_control.py`), a fifth of the
daemon's budget. To add a listener (say a page on 127.0.0.1), bind a
socket and pass it to :meth:`ControlServer.listen` with its trust; a page
is a route whose handler returns ``Response(body=html_bytes,
content_type="text/html")``. The routes live in :mod:`flared.api`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
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
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import h11

from flared.control.tokens import verify_bot_token

log = logging.getLogger("flared.control")

MAX_BODY = 8 * 1024 * 1024
READ_CHUNK = 64 * 1024
LINGER_SECONDS = 2.0  # after answering early, how long unread body bytes are drained
LINGER_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """What one connection may cost the daemon. Defaults suit the CLI, plugins and the Worker."""

    max_body: int = MAX_BODY  # bytes, unless a route sets its own
    header_timeout: float = 10.0  # from connect to the first request's last header
    body_timeout: float = 15.0  # to receive a whole body once the headers are in
    keepalive_timeout: float = 15.0  # an idle keep-alive connection is closed after this
    max_connections: int = 128  # per listener
    backlog: int = 128
    max_head: int = 16 * 1024  # request line and headers, bytes
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


def peer_of(sock: Any) -> Peer | None:
    """Who is at the other end of a unix socket (None for TCP)."""
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    pid, uid, gid = struct.unpack("3i", raw)
    return Peer(pid, uid, gid)


# --------------------------------------------------------------------------- HTTP


class _Closed(Exception):
    """The connection is over: the client left or was too slow."""


class _TooSlow(_Closed):
    """A deadline passed before the client sent what it had to."""


@dataclass
class _Conn:
    task: asyncio.Task[None]
    busy: bool = False  # a request is being answered


@dataclass
class _Listener:
    name: str  # "unix" or "tcp" (logs)
    sock: socket.socket
    trusted: bool
    server: asyncio.AbstractServer | None = None
    conns: dict[asyncio.StreamWriter, _Conn] = field(default_factory=dict)  # oldest first


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
        # One worker per connection the listeners accept: no request ever waits for a thread.
        workers = self.limits.max_connections * len(self._listeners)
        old, self._pool = self._pool, concurrent.futures.ThreadPoolExecutor(workers, "control")
        if old is not None:
            old.shutdown(wait=False)

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, name="control-http", daemon=True)
            self._thread.start()
        return self._loop

    async def _serve(self, listener: _Listener) -> None:
        async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._admit(listener, writer, _Conn(task))
            try:
                await self._connection(listener, reader, writer)
            except asyncio.CancelledError:
                pass  # closed to make room, or the server stops: the end of this task, quietly
            except Exception:
                log.exception("control: connection on %s failed", listener.name)
            finally:
                listener.conns.pop(writer, None)
                writer.close()

        start = asyncio.start_unix_server if listener.sock.family == socket.AF_UNIX else asyncio.start_server
        listener.server = await start(
            connection, sock=listener.sock, backlog=self.limits.backlog, limit=READ_CHUNK
        )

    def _admit(self, listener: _Listener, writer: asyncio.StreamWriter, conn: _Conn) -> None:
        """Track a new connection; past the cap, close the oldest idle one (or this one)."""
        listener.conns[writer] = conn
        if len(listener.conns) > self.limits.max_connections:
            idle = [c for c in listener.conns.values() if not c.busy]
            victim = idle[0] if idle else conn
            log.info(
                "control: %d connections on %s (the cap); closing the %s",
                len(listener.conns),
                listener.name,
                "oldest idle one" if idle else "new one: every other one is busy",
            )
            victim.task.cancel()

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
                asyncio.run_coroutine_threadsafe(self._close(), loop).result(
                    timeout=self.limits.shutdown_timeout + 5
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

    async def _close(self) -> None:
        tasks = []
        for listener in self._listeners:
            if listener.server is not None:
                listener.server.close()
            for conn in listener.conns.values():
                if not conn.busy:
                    conn.task.cancel()
                tasks.append(conn.task)
        if tasks:
            await asyncio.wait(tasks, timeout=self.limits.shutdown_timeout)
        for task in tasks:
            task.cancel()

    # ------------------------------------------------------------------ one connection

    async def _connection(
        self, listener: _Listener, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Requests on one connection, one at a time, each head within its deadline."""
        lim = self.limits
        loop = asyncio.get_running_loop()
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=lim.max_head)
        deadline = loop.time() + lim.header_timeout
        state = listener.conns[writer]
        try:
            while True:
                event = await self._next_event(conn, reader, deadline)
                if not isinstance(event, h11.Request):
                    return  # the client closed between requests
                state.busy = True
                resp, close = await self._respond(listener, conn, reader, writer, event)
                await self._send(conn, writer, resp, close=close)
                state.busy = False
                if conn.their_state is h11.SEND_BODY:  # answered without reading it all
                    await _linger(reader, writer)
                    return
                if close or conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
                deadline = loop.time() + lim.keepalive_timeout
        except h11.RemoteProtocolError as exc:
            text = f"bad HTTP request: {exc}"
            log.info("control: refused a malformed request on %s: %s", listener.name, exc)
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                with contextlib.suppress(Exception):
                    await self._send(
                        conn, writer, Response(exc.error_status_hint, {"error": text}), close=True
                    )
                    await _linger(reader, writer)
        except (_Closed, ConnectionError, TimeoutError):
            return

    async def _next_event(self, conn: h11.Connection, reader: asyncio.StreamReader, deadline: float) -> Any:
        loop = asyncio.get_running_loop()
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            left = deadline - loop.time()
            if left <= 0:
                raise _TooSlow
            try:
                async with asyncio.timeout(left):
                    data = await reader.read(READ_CHUNK)
            except TimeoutError:
                raise _TooSlow from None
            conn.receive_data(data)  # b"" is the client closing

    async def _send(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, resp: Response, *, close: bool
    ) -> None:
        body = resp.encode()
        headers = [("Content-Type", resp.content_type), ("Content-Length", str(len(body)))]
        if close:
            headers.append(("Connection", "close"))
        parts = [
            conn.send(h11.Response(status_code=resp.status, headers=headers, reason=_reason(resp.status))),
            conn.send(h11.Data(data=body)),
            conn.send(h11.EndOfMessage()),
        ]
        writer.write(b"".join(p for p in parts if p))  # one write: head and body in one segment
        async with asyncio.timeout(self.limits.body_timeout):  # a client that never reads
            await writer.drain()

    # ------------------------------------------------------------------ one request

    async def _respond(
        self,
        listener: _Listener,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        event: h11.Request,
    ) -> tuple[Response, bool]:
        """The answer, and whether to close the connection after it (a body left unread)."""
        parts = urlsplit(event.target.decode("latin-1"))
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.headers}
        req = Request(
            method=event.method.decode("latin-1").upper(),
            path=parts.path.rstrip("/") or "/",
            query=dict(parse_qsl(parts.query)),
            body=b"",
            headers=headers,
        )
        unread = conn.their_state is h11.SEND_BODY
        try:
            caller = authenticate(
                trusted=listener.trusted,
                headers=headers,
                state_dir=self.state_dir,
                admin_token=self.admin_token,
                peer=peer_of(writer.get_extra_info("socket")) if listener.trusted else None,
            )
        except HTTPError as exc:
            return Response(exc.status, {"error": exc.message, **exc.extra}), unread
        req.is_admin, req.bot_token_bot, req.anonymous = caller.is_admin, caller.bot, caller.anonymous
        found = self.router.resolve(req)
        if isinstance(found, Response):
            return found, unread
        declared = None if "transfer-encoding" in headers else int(headers.get("content-length") or 0)
        try:
            limit = found.max_body or self.limits.max_body
            req.body = await self._read_body(conn, reader, writer, declared, limit)
        except HTTPError as exc:
            return Response(exc.status, {"error": exc.message}), True
        assert self._pool is not None
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._call, found, req), False

    async def _read_body(
        self,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        declared: int | None,  # Content-Length, which h11 has checked is a number
        limit: int,
    ) -> bytes:
        if declared is not None and declared > limit:
            raise HTTPError(413, f"request body too large: {declared} bytes (the limit here is {limit})")
        if conn.their_state is not h11.SEND_BODY:
            return b""
        if conn.they_are_waiting_for_100_continue:
            writer.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.body_timeout
        buf = bytearray()
        try:
            while True:
                event = await self._next_event(conn, reader, deadline)
                if isinstance(event, h11.Data):
                    buf += event.data
                    if len(buf) > limit:
                        raise HTTPError(413, f"request body too large (the limit here is {limit} bytes)")
                elif isinstance(event, h11.EndOfMessage):
                    return bytes(buf)
                else:
                    raise _Closed("client left mid-body")
        except _TooSlow:
            raise HTTPError(408, f"request body not received within {self.limits.body_timeout:g} s") from None

    @staticmethod
    def _call(route: Route, req: Request) -> Response:
        try:
            return Router.call(route, req)
        except Exception:
            log.exception("control: %s %s failed", req.method, req.path)
            return Response(500, {"error": "internal error; see the flared log"})


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read and drop what the client still sends, for a moment, before closing.

    Closing a socket with unread data resets it, and a client still sending
    its body would lose the answer (a 413, a 401). Bounded in time and bytes.
    """
    with contextlib.suppress(OSError, RuntimeError):
        writer.write_eof()
    loop = asyncio.get_running_loop()
    end, budget = loop.time() + LINGER_SECONDS, LINGER_BYTES
    with contextlib.suppress(OSError, TimeoutError):
        while budget > 0 and (left := end - loop.time()) > 0:
            async with asyncio.timeout(left):
                data = await reader.read(READ_CHUNK)
            if not data:
                return
            budget -= len(data)


def _reason(status: int) -> bytes:
    with contextlib.suppress(ValueError):
        return HTTPStatus(status).phrase.encode()
    return b""


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
