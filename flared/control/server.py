"""flared's control API: small JSON-over-HTTP on a unix socket (and TCP for the Worker).

HTTP/1.1 is h11's (python-hyper's protocol implementation, also under
uvicorn and httpx): it parses and frames every message and refuses what is
malformed (``Content-Length: -1`` or ``abc``, a head over ``max_head``).
Around it, this module enforces what a daemon's control port needs, all
before a request's body is read:

- **who is calling**, from the listener, the bearer token and (on the unix
  socket) the connected process: decided in :mod:`flared.control.auth`.
  The unix socket lives in the state dir with mode 0600, so only the
  daemon's user reaches it; on TCP every request needs the control token.
  Gateways' `flare` plugins use per-bot tokens that only open their own
  bot's routes, and on the unix socket a gateway gets nothing else.
- **whether the route exists and the caller may use it** (:meth:`Router.resolve`);
- **how big the body may be** (:class:`Limits`, per route via ``max_body``):
  a declared length over the limit is answered 413 unread, a chunked body
  is cut off at the limit, and the whole body must arrive within
  ``body_timeout`` (408).

Connections are bounded too: a client has ``header_timeout`` to send its
first request head and ``keepalive_timeout`` for each later one, however
slowly the bytes trickle in; a response the client does not read within
``body_timeout`` closes the connection; each listener keeps at most
``max_connections`` (at the cap the oldest idle connection is closed to
make room), with a listen backlog of ``backlog``. Malformed requests get a
JSON 400 and one log line, never a traceback.

Threads: each listener has one thread that accepts, and each connection
is served, request after request, by a thread of its own (at most
``max_connections`` per listener), as the old server did per request.
Route handlers are synchronous and may block for minutes (a snapshot, a
restore, an exec); they run on their connection's thread, so a request
never queues behind another one and long calls cannot starve ``/healthz``.
No request crosses threads (an event loop handing requests to a pool cost
about a millisecond per exec on a busy machine), and whatever a handler
keeps per thread (a supervisord connection) ends with its connection
instead of piling up in long-lived pool workers.

Why not aiohttp: its server works, but importing it costs flared about
11 MiB of idle RSS (measured by `bench/bench_control.py`), a fifth of the
daemon's budget. To add a listener (say a page on 127.0.0.1), bind a
socket and pass it to :meth:`ControlServer.listen` with its trust; a page
is a route whose handler returns ``Response(body=html_bytes,
content_type="text/html")``. The routes live in :mod:`flared.api`.

Size: routing and HTTP framing stay together because every limit spans
both: a route decides the body limit and the caller's rights before a byte
of the body is read, which the connection loop then enforces.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import h11

from flared.control.auth import Caller, ProcessTree, authenticate, bearer, peer_of

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
    backlog: int = 1024  # the kernel caps it at net.core.somaxconn; a full unix backlog fails connect()
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
    anonymous: bool = False  # no credentials this route accepts (see control/auth.py)
    auth_error: str | None = None
    auth_status: int = 401
    target: str = ""  # the path as sent (``path`` drops a trailing slash)

    def apply(self, caller: Caller) -> None:
        """Take what :func:`flared.control.auth.authenticate` decided."""
        self.is_admin, self.bot_token_bot, self.anonymous = caller.admin, caller.bot, caller.anonymous
        self.auth_error, self.auth_status = caller.reason, caller.status

    def json(self) -> Any:
        if not self.body:
            return {}
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            raise HTTPError(400, "request body is not valid JSON") from None


@dataclass
class Response:
    """An answer; a ``stream`` (an iterator of byte chunks) is sent chunked as it is produced."""

    status: int = 200
    body: Any = None
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)  # extra response headers
    stream: Iterator[bytes] | None = None

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
                    return Response(
                        req.auth_status, {"error": req.auth_error or "missing or wrong bearer token"}
                    )
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


# --------------------------------------------------------------------------- HTTP


class _Closed(Exception):
    """The connection is over: the client left or was too slow."""


class _TooSlow(_Closed):
    """A deadline passed before the client sent what it had to."""


@dataclass
class _Conn:
    busy: bool = False  # a request is being answered


#: Decides who calls on a listener with its own sign-in: the request's headers -> a Caller.
Authenticator = Callable[[dict[str, str]], Caller]
#: Who to name in the audit log for a state-changing request (None: not audited here).
ActorOf = Callable[[Request], str | None]


@dataclass
class _Listener:
    name: str  # "unix", "tcp" (logs)
    sock: socket.socket
    trusted: bool
    router: Router | None = None  # None: the server's
    auth: Authenticator | None = None  # None: control/auth.py's decision
    actor: ActorOf | None = None
    thread: threading.Thread | None = None
    conns: dict[socket.socket, _Conn] = field(default_factory=dict)  # oldest first


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
        tree: ProcessTree | None = None,
        limits: Limits | None = None,
        audit: Callable[[str, Request, Response], None] | None = None,
    ) -> None:
        """``tree`` tells gateways (bot rights only) from the admin on the unix socket;
        ``audit`` records the state-changing requests of listeners that name an actor."""
        self.router = router
        self.audit = audit
        self.tree = tree
        self.state_dir = state_dir
        self.socket_path = socket_path
        self.tcp = tcp
        self.admin_token = admin_token
        self.limits = limits or Limits()
        self._listeners: list[_Listener] = []
        self._lock = threading.Lock()  # the listeners' connection tables
        self._stopping = threading.Event()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Bind (errors raise here, in the caller's thread), then serve from background threads."""
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
            self.listen(tcp, name="tcp", trusted=False, actor=worker_actor)

    def listen(
        self,
        sock: socket.socket,
        *,
        name: str,
        trusted: bool,
        router: Router | None = None,
        auth: Authenticator | None = None,
        actor: ActorOf | None = None,
    ) -> None:
        """Serve a router (default: the server's) on an already bound socket.

        ``trusted``: a unix socket whose peer process decides (no token needed to
        be admin); ``auth``: this listener's own sign-in instead of tokens.
        """
        sock.listen(self.limits.backlog)
        listener = _Listener(name, sock, trusted, router, auth, actor)
        listener.thread = threading.Thread(
            target=self._accept, args=(listener,), name=f"control-{name}", daemon=True
        )
        self._listeners.append(listener)
        listener.thread.start()

    @property
    def tcp_port(self) -> int | None:
        for listener in self._listeners:
            if listener.sock.family in (socket.AF_INET, socket.AF_INET6):
                return int(listener.sock.getsockname()[1])
        return None

    def stop(self) -> None:
        """Stop accepting, close idle connections, give requests in flight a moment."""
        self._stopping.set()
        for listener in self._listeners:
            _shut(listener.sock)  # wakes its accept()
            if listener.thread is not None:
                listener.thread.join(timeout=5)
            listener.sock.close()
        deadline = time.monotonic() + self.limits.shutdown_timeout
        while time.monotonic() < deadline:
            with self._lock:
                conns = [(s, c) for x in self._listeners for s, c in x.conns.items()]
            for s, c in conns:
                if not c.busy:
                    _shut(s)
            if not conns:
                break
            time.sleep(0.05)
        with self._lock:
            for s in [s for x in self._listeners for s in x.conns]:
                _shut(s)  # a handler still running (an exec) finishes; its answer is dropped
        self._listeners.clear()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    # ------------------------------------------------------------------ connections

    def _accept(self, listener: _Listener) -> None:
        while not self._stopping.is_set():
            try:
                sock, _ = listener.sock.accept()
            except OSError as exc:
                if self._stopping.is_set():
                    return
                log.warning("control: accept on %s failed: %s", listener.name, exc)  # EMFILE...
                self._stopping.wait(0.1)
                continue
            if self._admit(listener, sock):
                threading.Thread(
                    target=self._connection,
                    args=(listener, sock),
                    name=f"control-{listener.name}-conn",
                    daemon=True,
                ).start()

    def _admit(self, listener: _Listener, sock: socket.socket) -> bool:
        """Track a new connection; past the cap, close the oldest idle one (or this one)."""
        with self._lock:
            listener.conns[sock] = _Conn()
            if len(listener.conns) <= self.limits.max_connections:
                return True
            idle = [s for s, c in listener.conns.items() if not c.busy and s is not sock]
            log.info(
                "control: %d connections on %s (the cap); closing the %s",
                len(listener.conns),
                listener.name,
                "oldest idle one" if idle else "new one: every other one is busy",
            )
            if idle:
                _shut(idle[0])  # its thread sees the end and leaves
                return True
            del listener.conns[sock]
        sock.close()
        return False

    def _forget(self, listener: _Listener, sock: socket.socket) -> None:
        with self._lock:
            listener.conns.pop(sock, None)

    def _connection(self, listener: _Listener, sock: socket.socket) -> None:
        """Requests on one connection, one at a time, each head within its deadline."""
        lim = self.limits
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=lim.max_head)
        state = listener.conns.get(sock) or _Conn()
        deadline = time.monotonic() + lim.header_timeout
        try:
            while True:
                event = self._next_event(conn, sock, deadline)
                if not isinstance(event, h11.Request):
                    return  # the client closed between requests
                state.busy = True
                resp, close = self._respond(listener, conn, sock, event)
                self._send(conn, sock, resp, close=close)
                state.busy = False
                if conn.their_state is h11.SEND_BODY:  # answered without reading it all
                    _linger(sock)
                    return
                if close or conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
                deadline = time.monotonic() + lim.keepalive_timeout
        except h11.RemoteProtocolError as exc:
            text = f"bad HTTP request: {exc}"
            log.info("control: refused a malformed request on %s: %s", listener.name, exc)
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                with contextlib.suppress(OSError, h11.LocalProtocolError):
                    self._send(conn, sock, Response(exc.error_status_hint, {"error": text}), close=True)
                    _linger(sock)
        except (_Closed, OSError):
            return
        except Exception:
            log.exception("control: connection on %s failed", listener.name)
        finally:
            self._forget(listener, sock)
            sock.close()

    def _next_event(self, conn: h11.Connection, sock: socket.socket, deadline: float) -> Any:
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            left = deadline - time.monotonic()
            if left <= 0:
                raise _TooSlow
            sock.settimeout(left)
            try:
                data = sock.recv(READ_CHUNK)
            except TimeoutError:
                raise _TooSlow from None
            conn.receive_data(data)  # b"" is the client closing

    def _send(self, conn: h11.Connection, sock: socket.socket, resp: Response, *, close: bool) -> None:
        if resp.stream is not None:
            self._send_stream(conn, sock, resp, resp.stream, close=close)
            return
        body = resp.encode()
        headers = [("Content-Type", resp.content_type), ("Content-Length", str(len(body)))]
        headers += list(resp.headers.items())
        if close:
            headers.append(("Connection", "close"))
        parts = [
            conn.send(h11.Response(status_code=resp.status, headers=headers, reason=_reason(resp.status))),
            conn.send(h11.Data(data=body)),
            conn.send(h11.EndOfMessage()),
        ]
        sock.settimeout(self.limits.body_timeout)  # a client that never reads
        sock.sendall(b"".join(p for p in parts if p))  # one write: head and body in one segment

    def _send_stream(
        self,
        conn: h11.Connection,
        sock: socket.socket,
        resp: Response,
        stream: Iterator[bytes],
        *,
        close: bool,
    ) -> None:
        """Chunked: each piece reaches the client when it is made (a chat's tokens)."""
        headers = [("Content-Type", resp.content_type), ("Transfer-Encoding", "chunked")]
        headers += list(resp.headers.items())
        if close:
            headers.append(("Connection", "close"))
        sock.settimeout(self.limits.body_timeout)  # a client that never reads
        try:
            head = conn.send(
                h11.Response(status_code=resp.status, headers=headers, reason=_reason(resp.status))
            )
            sock.sendall(head or b"")
            for piece in stream:
                if piece:
                    sock.sendall(conn.send(h11.Data(data=piece)) or b"")
            sock.sendall(conn.send(h11.EndOfMessage()) or b"")
        finally:
            closer = getattr(stream, "close", None)
            if closer is not None:
                closer()

    # ------------------------------------------------------------------ one request

    def _respond(
        self, listener: _Listener, conn: h11.Connection, sock: socket.socket, event: h11.Request
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
            target=parts.path,
        )
        unread = conn.their_state is h11.SEND_BODY
        if listener.auth is not None:
            caller = listener.auth(headers)
        else:
            caller = authenticate(
                token=bearer(headers.get("authorization")),
                state_dir=self.state_dir,
                admin_token=self.admin_token,
                unix=listener.trusted,
                peer=peer_of(sock) if listener.trusted else None,
                tree=self.tree,
            )
        req.apply(caller)
        if caller.reject_all:
            return Response(caller.status, {"error": caller.reason}), unread
        router = listener.router or self.router
        found = router.resolve(req)
        if isinstance(found, Response):
            return found, unread
        declared = None if "transfer-encoding" in headers else int(headers.get("content-length") or 0)
        try:
            limit = found.max_body or self.limits.max_body
            req.body = self._read_body(conn, sock, declared, limit)
        except HTTPError as exc:
            return Response(exc.status, {"error": exc.message}), True
        resp = self._call(found, req)
        self._audit(listener, req, resp)
        return resp, False

    def _audit(self, listener: _Listener, req: Request, resp: Response) -> None:
        if self.audit is None or listener.actor is None or req.method in ("GET", "HEAD"):
            return
        actor = listener.actor(req)
        if actor is not None:
            try:
                self.audit(actor, req, resp)
            except Exception:  # the action happened; a full disk must not turn it into a 500
                log.exception("control: could not record %s %s in the audit log", req.method, req.path)

    def _read_body(
        self,
        conn: h11.Connection,
        sock: socket.socket,
        declared: int | None,  # Content-Length, which h11 has checked is a number
        limit: int,
    ) -> bytes:
        if declared is not None and declared > limit:
            raise HTTPError(413, f"request body too large: {declared} bytes (the limit here is {limit})")
        if conn.their_state is not h11.SEND_BODY:
            return b""
        if conn.they_are_waiting_for_100_continue:
            sock.sendall(conn.send(h11.InformationalResponse(status_code=100, headers=[])) or b"")
        deadline = time.monotonic() + self.limits.body_timeout
        buf = bytearray()
        try:
            while True:
                event = self._next_event(conn, sock, deadline)
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


#: The header by which the Worker says who asked (the Access email, or "api-token").
ACTOR_HEADER = "x-flare-actor"


def worker_actor(req: Request) -> str | None:
    """On TCP only the control token (the Worker) may name someone; a bot's own calls are its bot."""
    if req.is_admin:
        return (req.headers.get(ACTOR_HEADER) or "control-token")[:200]
    return None


def _shut(sock: socket.socket) -> None:
    """End a socket's traffic from another thread: a blocked accept() or recv() returns."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _linger(sock: socket.socket) -> None:
    """Read and drop what the client still sends, for a moment, before closing.

    Closing a socket with unread data resets it, and a client still sending
    its body would lose the answer (a 413, a 401). Bounded in time and bytes.
    """
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
        end, budget = time.monotonic() + LINGER_SECONDS, LINGER_BYTES
        while budget > 0 and (left := end - time.monotonic()) > 0:
            sock.settimeout(left)
            data = sock.recv(READ_CHUNK)
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
