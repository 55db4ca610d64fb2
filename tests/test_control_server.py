"""The control API server: routing, unix-socket trust, TCP bearer auth, bot tokens."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from flared.control.client import ControlClient, ControlError, DaemonNotRunning
from flared.control.server import ControlServer, HTTPError, Request, Router
from flared.control.tokens import bot_token, verify_bot_token
from tests.fixtures.flare import free_port


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[ControlServer, Path]]:
    router = Router()
    router.add("GET", "/healthz", lambda r: {"ok": True}, public=True)
    router.add("GET", "/admin", lambda r: {"admin": r.is_admin})
    router.add("GET", "/mine/{bot}", lambda r: _mine(r), bot_access=True)
    router.add("POST", "/echo", lambda r: {"got": r.json()})
    sock = tmp_path / "c.sock"
    srv = ControlServer(
        router, state_dir=tmp_path, socket_path=sock, tcp=("127.0.0.1", free_port()), admin_token="t0ken"
    )
    srv.start()
    yield srv, sock
    srv.stop()


def _mine(r: Request) -> dict[str, str]:
    if not r.is_admin and r.bot_token_bot != r.params["bot"]:
        raise HTTPError(403, "not your bot")
    return {"bot": r.params["bot"]}


def tcp(srv: ControlServer, path: str, token: str | None = None) -> tuple[int, dict[str, object]]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.tcp_port or 0, timeout=5)
    conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
    resp = conn.getresponse()
    return resp.status, json.loads(resp.read())


def test_unix_socket_is_trusted_and_private(server: tuple[ControlServer, Path]) -> None:
    _, sock = server
    assert (sock.stat().st_mode & 0o777) == 0o600
    assert ControlClient(sock).request("GET", "/admin") == {"admin": True}


def test_tcp_needs_the_token(server: tuple[ControlServer, Path]) -> None:
    srv, _ = server
    assert tcp(srv, "/admin")[0] == 401
    assert tcp(srv, "/admin", "wrong")[0] == 401
    assert tcp(srv, "/admin", "t0ken") == (200, {"admin": True})
    assert tcp(srv, "/healthz")[0] == 200  # liveness needs no secret


def test_bot_token_opens_only_its_own_routes(server: tuple[ControlServer, Path], tmp_path: Path) -> None:
    _, sock = server
    tok = bot_token(tmp_path, "alpha")
    assert verify_bot_token(tmp_path, tok) == "alpha"
    as_bot = ControlClient(sock, token=tok)
    assert as_bot.request("GET", "/mine/alpha") == {"bot": "alpha"}
    with pytest.raises(ControlError) as info:
        as_bot.request("GET", "/mine/beta")
    assert info.value.status == 403
    with pytest.raises(ControlError) as info:
        as_bot.request("GET", "/admin")  # admin-only route
    assert info.value.status == 403
    forged = tok[:-4] + "0000"
    with pytest.raises(ControlError) as info:
        ControlClient(sock, token=forged).request("GET", "/mine/alpha")
    assert info.value.status == 401


def test_errors_are_json(server: tuple[ControlServer, Path]) -> None:
    _, sock = server
    c = ControlClient(sock)
    with pytest.raises(ControlError) as info:
        c.request("GET", "/nope")
    assert info.value.status == 404
    with pytest.raises(ControlError) as info:
        c.request("DELETE", "/healthz")
    assert info.value.status == 405
    with pytest.raises(ControlError) as info:
        c.request("POST", "/echo", raw=b"{not json")
    assert info.value.status == 400
    assert c.request("POST", "/echo", {"a": 1}) == {"got": {"a": 1}}


def test_client_reports_no_daemon(tmp_path: Path) -> None:
    with pytest.raises(DaemonNotRunning):
        ControlClient(tmp_path / "absent.sock").request("GET", "/healthz")
    (tmp_path / "stale.sock").touch()
    with pytest.raises(DaemonNotRunning):
        ControlClient(tmp_path / "stale.sock").request("GET", "/healthz")
