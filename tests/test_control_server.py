"""The control API server: routing, unix-socket trust, TCP bearer auth, bot tokens, limits, threads."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flared.control.client import ControlClient, ControlError, DaemonNotRunning
from flared.control.server import (
    ControlServer,
    HTTPError,
    Limits,
    Request,
    Router,
    bind_tcp,
)
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


# --------------------------------------------------------------------------- limits and threads


def raw(port: int, data: bytes, *, wait: float = 5.0, then: float = 0.0) -> bytes:
    """Send ``data`` on a fresh TCP connection; return all the server says until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(data)
        time.sleep(then)
        out = b""
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while chunk := s.recv(65536):
                out += chunk
    return out


@pytest.fixture
def quick(tmp_path: Path) -> Iterator[ControlServer]:
    """A server with short deadlines and a small connection cap."""
    gate = threading.Event()
    router = Router()
    router.add("GET", "/healthz", lambda r: {"ok": True}, public=True)
    router.add("POST", "/echo", lambda r: {"n": len(r.body)})
    router.add("POST", "/small", lambda r: {"n": len(r.body)}, max_body=10)
    router.add("POST", "/block", lambda r: {"released": gate.wait(30)})
    limits = Limits(header_timeout=1.0, body_timeout=1.0, keepalive_timeout=1.0, max_connections=4)
    srv = ControlServer(
        router,
        state_dir=tmp_path,
        socket_path=tmp_path / "q.sock",
        tcp=("127.0.0.1", free_port()),
        admin_token="t0ken",
        limits=limits,
    )
    srv.start()
    srv.gate = gate  # type: ignore[attr-defined]
    yield srv
    gate.set()
    srv.stop()


AUTH = b"Authorization: Bearer t0ken\r\n"


def test_auth_and_route_are_checked_before_the_body_is_read(quick: ControlServer) -> None:
    # the body is never sent: the answer comes from the head alone
    head = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n"
    assert raw(quick.tcp_port or 0, head).startswith(b"HTTP/1.1 401 ")
    head = b"POST /nope HTTP/1.1\r\nHost: x\r\n" + AUTH + b"Content-Length: 1000000\r\n\r\n"
    assert raw(quick.tcp_port or 0, head).startswith(b"HTTP/1.1 404 ")


def test_body_limits_per_route(quick: ControlServer) -> None:
    port = quick.tcp_port or 0
    ok = raw(port, b"POST /small HTTP/1.1\r\nHost: x\r\n" + AUTH + b"Content-Length: 3\r\n\r\nabc")
    assert b'{"n": 3}' in ok
    big = raw(port, b"POST /small HTTP/1.1\r\nHost: x\r\n" + AUTH + b"Content-Length: 11\r\n\r\n" + b"a" * 11)
    assert big.startswith(b"HTTP/1.1 413 ") and b"the limit here is 10" in big
    chunked = b"POST /small HTTP/1.1\r\nHost: x\r\n" + AUTH + b"Transfer-Encoding: chunked\r\n\r\n"
    chunked += b"8\r\naaaaaaaa\r\n" * 3 + b"0\r\n\r\n"
    assert raw(port, chunked).startswith(b"HTTP/1.1 413 ")


def test_a_short_body_gets_408_and_frees_the_connection(quick: ControlServer) -> None:
    t = time.monotonic()
    out = raw(
        quick.tcp_port or 0, b"POST /echo HTTP/1.1\r\nHost: x\r\n" + AUTH + b"Content-Length: 100\r\n\r\nab"
    )
    assert out.startswith(b"HTTP/1.1 408 ") and b"not received within 1 s" in out
    assert time.monotonic() - t < 5


def test_a_silent_or_trickling_client_is_dropped_after_the_header_deadline(quick: ControlServer) -> None:
    port = quick.tcp_port or 0
    t = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\n")
        closed = False
        for _ in range(40):  # a byte every 0.1 s never completes the head
            try:
                s.sendall(b"X")
            except OSError:
                closed = True
                break
            time.sleep(0.1)
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                if s.recv(1) == b"":
                    closed = True
                    break
            s.setblocking(True)
    assert closed, "a trickling client held its connection past the deadline"
    assert time.monotonic() - t < 3


def test_malformed_lengths_get_a_json_400(quick: ControlServer) -> None:
    for value in (b"-1", b"abc", b"1, 2"):
        out = raw(
            quick.tcp_port or 0, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: " + value + b"\r\n\r\n"
        )
        assert out.startswith(b"HTTP/1.1 400 "), out
        assert json.loads(out.split(b"\r\n\r\n", 1)[1])["error"].startswith("bad HTTP request")


def test_keep_alive_and_100_continue(quick: ControlServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", quick.tcp_port or 0, timeout=5)
    for _ in range(3):  # one connection, three requests
        conn.request("GET", "/healthz")
        assert conn.getresponse().read() == b'{"ok": true}\n'
    conn.close()
    with socket.create_connection(("127.0.0.1", quick.tcp_port or 0), timeout=5) as s:
        s.sendall(
            b"POST /echo HTTP/1.1\r\nHost: x\r\n"
            + AUTH
            + b"Expect: 100-continue\r\nContent-Length: 2\r\n\r\n"
        )
        assert s.recv(100).startswith(b"HTTP/1.1 100 ")
        s.sendall(b"hi")
        assert b'{"n": 2}' in s.recv(1000)


def test_at_the_cap_the_oldest_idle_connection_makes_room(quick: ControlServer) -> None:
    port = quick.tcp_port or 0
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(4)]
    time.sleep(0.2)
    assert raw(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").startswith(
        b"HTTP/1.1 200"
    )
    assert idle[0].recv(1) == b""  # the oldest was closed for it
    for s in idle:
        s.close()


def test_long_calls_do_not_starve_health_checks(quick: ControlServer, tmp_path: Path) -> None:
    """Long handlers (a snapshot, an exec) each hold a worker; /healthz still answers at once."""
    gate: threading.Event = quick.gate  # type: ignore[attr-defined]
    blocked = [
        threading.Thread(target=ControlClient(tmp_path / "q.sock").request, args=("POST", "/block"))
        for _ in range(3)
    ]
    for t in blocked:
        t.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    assert ControlClient(tmp_path / "q.sock").request("GET", "/healthz") == {"ok": True}
    assert tcp(quick, "/healthz")[0] == 200
    assert time.monotonic() - t0 < 1.0
    gate.set()
    for t in blocked:
        t.join(5)


def test_an_extra_listener_serves_the_same_routes(quick: ControlServer) -> None:
    """What a page on 127.0.0.1 would use: another socket, its own trust."""
    sock = bind_tcp(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    quick.listen(sock, name="page", trusted=False)
    out = raw(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 ")
    out = raw(port, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 401 ")  # untrusted: the token is needed
