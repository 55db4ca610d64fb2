"""The local admin page's listener, over real HTTP on loopback: files, sign-in, Host and origin checks, audit."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flared.admin.page import CSP, SIGN_IN, AdminPage
from flared.admin.sessions import AdminSessions
from flared.control.server import ControlServer, HTTPError, Request, Response, Router, bind_tcp
from flared.operator.audit import AuditLog, audit_path, tail


class Page:
    def __init__(self, tmp: Path) -> None:
        api = Router()
        api.add("GET", "/status", lambda req: {"bots": [{"name": "hermes"}]})
        api.add("GET", "/healthz", lambda req: {"ok": True}, public=True)

        def restore(req: Request) -> dict[str, Any]:
            raise HTTPError(409, "bot hermes: no snapshot abc123 in the store")

        api.add("POST", "/bots/{name}/restore", restore)
        api.add("POST", "/snapshot", lambda req: {"results": []})
        self.audit = AuditLog(audit_path(tmp))

        def record(actor: str, req: Request, resp: Response) -> None:
            status = "ok" if resp.status < 400 else "refused"
            detail = resp.body.get("error", "") if isinstance(resp.body, dict) else ""
            self.audit.append(actor, f"{req.method} {req.path}", [], status, detail)

        self.server = ControlServer(api, state_dir=tmp, socket_path=tmp / "flared.sock", audit=record)
        self.server.start()
        sock = bind_tcp(("127.0.0.1", 0))
        self.page = AdminPage(api, AdminSessions(), "127.0.0.1", sock.getsockname()[1])
        self.server.listen(
            sock,
            name="admin",
            trusted=False,
            router=self.page.router(),
            auth=self.page.authenticate,
            actor=self.page.actor,
        )
        self.tmp = tmp

    def call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.page.port, timeout=10)
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers=headers or {})
        resp = conn.getresponse()
        out = resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        conn.close()
        return out

    def sign_in(self) -> str:
        once = self.page.link().split("#token=", 1)[1]
        status, _, body = self.call("POST", "/api/admin/session", {"token": once})
        assert status == 200, body
        session: str = json.loads(body)["session"]
        return session


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Page]:
    p = Page(tmp_path)
    try:
        yield p
    finally:
        p.server.stop()


def test_files_are_served_with_a_strict_policy_and_hold_no_data(page: Page) -> None:
    status, headers, body = page.call("GET", "/admin/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert headers["content-security-policy"] == CSP and "script-src 'self'" in CSP
    assert headers["x-frame-options"] == "DENY" and headers["cache-control"] == "no-store"
    assert b'<script type="module" src="admin.js">' in body
    for name, kind in (("admin.js", "text/javascript"), ("admin.css", "text/css")):
        status, headers, _ = page.call("GET", f"/admin/{name}")
        assert status == 200 and headers["content-type"] == kind
    # the page's files are relative to /admin/: the bare path and / redirect there
    for path in ("/admin", "/"):
        status, headers, _ = page.call("GET", path)
        assert status == 301 and headers["location"] == "/admin/"
    assert page.call("GET", "/admin/../flared.sock")[0] == 404


def test_without_a_session_the_api_gives_nothing_not_even_public_routes(page: Page) -> None:
    for path in ("/api/status", "/api/healthz"):
        status, _, body = page.call("GET", path)
        assert status == 401 and json.loads(body)["error"] == SIGN_IN
    status, _, _ = page.call("GET", "/api/status", headers={"Authorization": "Bearer made-up"})
    assert status == 401


def test_a_link_signs_in_once_and_the_session_reaches_the_daemons_routes(page: Page) -> None:
    once = page.page.link().split("#token=", 1)[1]
    status, _, body = page.call("POST", "/api/admin/session", {"token": once})
    session = json.loads(body)["session"]
    status, _, body = page.call("GET", "/api/status", headers={"Authorization": f"Bearer {session}"})
    assert status == 200 and json.loads(body) == {"bots": [{"name": "hermes"}]}
    status, _, body = page.call("POST", "/api/admin/session", {"token": once})
    assert status == 401 and "already used" in json.loads(body)["error"]
    assert page.call("POST", "/api/admin/session", {"nope": 1})[0] == 400


def test_another_host_name_is_refused_before_anything_dns_rebinding(page: Page) -> None:
    session = page.sign_in()
    status, _, body = page.call(
        "GET",
        "/api/status",
        headers={"Host": f"evil.example:{page.page.port}", "Authorization": f"Bearer {session}"},
    )
    assert status == 403 and "is not it" in json.loads(body)["error"]
    assert page.call("GET", "/admin/", headers={"Host": "evil.example"})[0] == 403
    assert page.call("GET", "/admin/", headers={"Host": f"localhost:{page.page.port}"})[0] == 200


def test_state_changes_from_another_site_are_refused(page: Page) -> None:
    auth = {"Authorization": f"Bearer {page.sign_in()}"}
    for extra in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
        status, _, body = page.call("POST", "/api/snapshot", {}, headers={**auth, **extra})
        assert status == 403 and "another site" in json.loads(body)["error"]
    same = {"Origin": f"http://127.0.0.1:{page.page.port}", "Sec-Fetch-Site": "same-origin"}
    assert page.call("POST", "/api/snapshot", {}, headers={**auth, **same})[0] == 200
    assert tail(audit_path(page.tmp), 10) and all(
        e["command"] == "POST /snapshot" for e in tail(audit_path(page.tmp))
    )


def test_actions_are_audited_with_who_did_them_and_refusals_with_the_reason(page: Page) -> None:
    auth = {"Authorization": f"Bearer {page.sign_in()}"}
    page.call("GET", "/api/status", headers=auth)  # reads are not actions
    page.call("POST", "/api/snapshot", {}, headers=auth)
    status, _, body = page.call("POST", "/api/bots/hermes/restore", {"id": "abc123"}, headers=auth)
    assert status == 409 and "no snapshot abc123" in json.loads(body)["error"]
    entries = tail(audit_path(page.tmp), 10)
    assert [(e["user"], e["command"], e["result"]) for e in entries] == [
        ("admin page (local)", "POST /snapshot", "ok"),
        ("admin page (local)", "POST /bots/hermes/restore", "refused"),
    ]
    assert "no snapshot abc123" in entries[1]["detail"]


def test_the_workers_requests_are_audited_with_the_access_email_it_names(tmp_path: Path) -> None:
    api = Router()
    api.add("POST", "/reload", lambda req: {"result": "applied"})
    api.add("GET", "/status", lambda req: {})
    seen: list[tuple[str, str, int]] = []
    server = ControlServer(
        api,
        state_dir=tmp_path,
        socket_path=tmp_path / "flared.sock",
        tcp=("127.0.0.1", 0),
        admin_token="t0ken-for-the-worker",
        audit=lambda actor, req, resp: seen.append((actor, f"{req.method} {req.path}", resp.status)),
    )
    server.start()
    try:
        port = server.tcp_port
        assert port is not None

        def call(method: str, headers: dict[str, str]) -> int:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request(method, "/reload" if method == "POST" else "/status", body=b"{}", headers=headers)
            status = conn.getresponse().status
            conn.close()
            return status

        token = {"Authorization": "Bearer t0ken-for-the-worker"}
        assert call("POST", {**token, "X-Flare-Actor": "ops@example.com"}) == 200
        assert call("POST", token) == 200
        assert call("GET", {**token, "X-Flare-Actor": "ops@example.com"}) == 200
        assert call("POST", {"X-Flare-Actor": "mallory@example.com"}) == 401  # no token: no say
    finally:
        server.stop()
    assert seen == [("ops@example.com", "POST /reload", 200), ("control-token", "POST /reload", 200)]
