"""flared's control API: small JSON-over-HTTP on a unix socket (and TCP for the Worker).

The unix socket lives in the state dir with mode 0600, so only the daemon's
user reaches it; on TCP every request needs the control token. Gateways'
`flare` plugins use per-bot tokens that only open their own bot's routes,
and on the unix socket a gateway gets nothing else (who is admin and who is
a bot is decided in :mod:`flared.control.auth`, which any server calls).
The routes themselves live in :mod:`flared.api`, one module per capability.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import socketserver
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from flared.control.auth import Caller, ProcessTree, authenticate, bearer, peer_of

log = logging.getLogger("flared.control")

MAX_BODY = 8 * 1024 * 1024


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


class Router:
    def __init__(self) -> None:
        self.routes: list[Route] = []

    def add(
        self, method: str, path: str, handler: Handler, *, bot_access: bool = False, public: bool = False
    ) -> None:
        """``path`` may hold ``{name}`` segments, e.g. ``/leases/{id}/exec``."""
        regex = "^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", path) + "$"
        self.routes.append(Route(method.upper(), re.compile(regex), handler, bot_access, public))

    def route(
        self, method: str, path: str, *, bot_access: bool = False, public: bool = False
    ) -> Callable[[Handler], Handler]:
        def deco(fn: Handler) -> Handler:
            self.add(method, path, fn, bot_access=bot_access, public=public)
            return fn

        return deco

    def dispatch(self, req: Request) -> Response:
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
            try:
                out = r.handler(req)
            except HTTPError as exc:
                return Response(exc.status, {"error": exc.message, **exc.extra})
            return out if isinstance(out, Response) else Response(200, out)
        if allowed:
            return Response(405, {"error": f"method not allowed; use {', '.join(sorted(set(allowed)))}"})
        return Response(404, {"error": f"no such endpoint: {req.method} {req.path}"})


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("control: " + format, *args)

    def _handle(self) -> None:
        srv: Any = self.server
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._send(Response(413, {"error": "request body too large"}))
            return
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        req = Request(
            method=self.command,
            path=parts.path.rstrip("/") or "/",
            query=dict(parse_qsl(parts.query)),
            body=body,
            headers=headers,
        )
        caller = authenticate(
            token=bearer(headers.get("authorization")),
            state_dir=srv.state_dir,
            admin_token=srv.admin_token,
            unix=srv.trusted,
            peer=peer_of(self.connection) if srv.trusted else None,
            tree=srv.tree,
        )
        req.apply(caller)
        if caller.reject_all:
            self._send(Response(caller.status, {"error": caller.reason}))
            return
        try:
            resp = srv.router.dispatch(req)
        except Exception:
            log.exception("control: %s %s failed", req.method, req.path)
            resp = Response(500, {"error": "internal error; see the flared log"})
        self._send(resp)

    def _send(self, resp: Response) -> None:
        data = resp.encode()
        self.send_response(resp.status)
        self.send_header("Content-Type", resp.content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle


class _ServerMixin:
    router: Router
    state_dir: Path
    admin_token: str | None
    trusted: bool
    tree: ProcessTree | None


class UnixControlServer(_ServerMixin, socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self) -> tuple[Any, Any]:
        conn, _ = self.socket.accept()
        return conn, ("unix", 0)


class TCPControlServer(_ServerMixin, socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True


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
    ) -> None:
        """``tree`` tells gateways (bot rights only) from the admin on the unix socket."""
        self.router = router
        self.tree = tree
        self.state_dir = state_dir
        self.socket_path = socket_path
        self.tcp = tcp
        self.admin_token = admin_token
        self._servers: list[socketserver.BaseServer] = []
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        old = os.umask(0o177)
        try:
            unix = UnixControlServer(str(self.socket_path), _Handler)
        finally:
            os.umask(old)
        self._setup(unix, trusted=True)
        if self.tcp:
            if not self.admin_token:
                raise RuntimeError("control.port is set but no control token: set FLARE_CONTROL_TOKEN")
            tcp = TCPControlServer(self.tcp, _Handler)
            self._setup(tcp, trusted=False)

    def _setup(self, srv: Any, *, trusted: bool) -> None:
        srv.router = self.router
        srv.state_dir = self.state_dir
        srv.admin_token = self.admin_token
        srv.trusted = trusted
        srv.tree = self.tree
        t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.5}, daemon=True)
        t.start()
        self._servers.append(srv)
        self._threads.append(t)

    @property
    def tcp_port(self) -> int | None:
        for srv in self._servers:
            if isinstance(srv, TCPControlServer):
                return int(srv.server_address[1])
        return None

    def stop(self) -> None:
        for srv in self._servers:
            srv.shutdown()
            srv.server_close()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()


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
