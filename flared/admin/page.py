"""The admin page on 127.0.0.1: its files, its sign-in, and the control API behind `/api`.

The page is the same static files the Worker serves at `/admin` on
Cloudflare, and it calls the same `/api/*` paths. Here one listener of the
control server (see :meth:`flared.control.server.ControlServer.listen`)
serves them with its own sign-in, because a TCP port on loopback is open to
every local user and to every web page in the user's browser:

- a request whose ``Host`` is not this listener's loopback address is
  refused before anything else (a DNS-rebinding page names its own host);
- ``/api/*`` needs a session token (:mod:`flared.admin.sessions`), sent as
  ``Authorization: Bearer`` by the page's script, never a cookie, so
  another site cannot make the browser act (no CSRF); a session is an admin
  of the control API, as `flared` on the unix socket is;
- a session comes only from a one-time link token (``POST
  /api/admin/session``), which `flared up` and `flared admin` print after
  asking the daemon over the unix socket (``POST /admin/link``), so only the
  daemon's own user can sign in;
- state-changing requests from another origin are refused (``Origin`` /
  ``Sec-Fetch-Site``), and every one that is served goes to the audit log.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

from flared.admin.sessions import AdminSessions
from flared.control.auth import Caller, bearer
from flared.control.server import HTTPError, Request, Response, Route, Router

STATIC = Path(__file__).parent / "static"
FILES = {"index.html": "text/html; charset=utf-8", "admin.js": "text/javascript", "admin.css": "text/css"}
_SHARED = json.loads((Path(__file__).parent / "headers.json").read_text())
CSP: str = "; ".join(_SHARED["csp"])
HEADERS: dict[str, str] = {"Content-Security-Policy": CSP, **_SHARED["headers"]}
ACTOR = "admin page (local)"
SIGN_IN = "sign in: open the URL `flared up` printed, or run `flared admin` for a new one"
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass
class AdminPage:
    """One local admin listener: ``api`` is the daemon's router, ``port`` the bound port."""

    api: Router
    sessions: AdminSessions
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/admin/"

    def link(self) -> str:
        """A sign-in URL that works once (the token rides in the fragment, never sent in a URL)."""
        return f"{self.url}#token={self.sessions.new_link()}"

    # ------------------------------------------------------------------ who is calling

    def hosts(self) -> set[str]:
        names = {self.host, "localhost", "127.0.0.1"} if self.host != "::1" else {"[::1]", "localhost"}
        return {f"{n}:{self.port}" for n in names}

    def authenticate(self, headers: dict[str, str]) -> Caller:
        host = headers.get("host", "")
        if host not in self.hosts():
            return Caller(
                anonymous=True,
                reason=f"this is flared's admin page on {self.url}; Host {host or '(none)'} is not it",
                status=403,
                reject_all=True,
            )
        token = bearer(headers.get("authorization"))
        if token and self.sessions.valid(token):
            return Caller(admin=True)
        return Caller(anonymous=True, reason=SIGN_IN, status=401)

    def actor(self, req: Request) -> str | None:
        return ACTOR if req.is_admin else None

    # ------------------------------------------------------------------ routes

    def router(self) -> Router:
        return _PageRouter(self)

    def serve_file(self, name: str) -> Response:
        return Response(200, (STATIC / name).read_bytes(), FILES[name], dict(HEADERS))

    def session(self, req: Request) -> dict[str, str]:
        data = req.json()
        once = data.get("token") if isinstance(data, dict) else None
        if not isinstance(once, str) or not once:
            raise HTTPError(400, 'send {"token": "<the token in the URL flared printed>"}')
        session = self.sessions.exchange(once)
        if session is None:
            raise HTTPError(
                401, "that sign-in link was already used or has expired: run `flared admin` for a new one"
            )
        return {"session": session}


class _PageRouter(Router):
    """The page's own routes, and ``/api/<path>`` resolved in the daemon's router as ``/<path>``."""

    def __init__(self, page: AdminPage) -> None:
        super().__init__()
        self.page = page
        self.add("GET", "/", lambda req: _redirect("/admin/"), public=True)
        self.add("GET", "/admin", self._index, public=True)
        for name in ("admin.js", "admin.css"):
            self.add("GET", f"/admin/{name}", functools.partial(_file, page, name), public=True)
        self.add("POST", "/api/admin/session", page.session, public=True, max_body=4096)

    def _index(self, req: Request) -> Response:
        if not req.target.endswith("/"):  # the page's files are relative to /admin/
            return _redirect("/admin/")
        return self.page.serve_file("index.html")

    def resolve(self, req: Request) -> Route | Response:
        if req.method in MUTATING and not _same_origin(req, self.page):
            return Response(403, {"error": "refused: this request came from another site"})
        if req.path.startswith("/api/") and req.path != "/api/admin/session":
            req.path = req.path.removeprefix("/api")
            if not req.is_admin:  # nothing of the API, not even its public routes, without a session
                return Response(req.auth_status, {"error": req.auth_error or SIGN_IN})
            return self.page.api.resolve(req)
        return super().resolve(req)


def _file(page: AdminPage, name: str, req: Request) -> Response:
    return page.serve_file(name)


def _redirect(location: str) -> Response:
    return Response(301, b"", "text/plain", {"Location": location, **HEADERS})


def _same_origin(req: Request, page: AdminPage) -> bool:
    site = req.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = req.headers.get("origin")
    return origin is None or origin.removeprefix("http://") in page.hosts()
