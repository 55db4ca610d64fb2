"""Fault rows for the control API: hostile or broken HTTP on TCP and on the unix socket.

One real `flared up` (supervisord + flared, control on TCP with a token)
serves every row. Each row sends its fault on both listeners and asserts
that flared kept answering on both, that its RSS stayed within a bound of
what it was before, and that its open fds came back (nothing held). The
last row stops flared itself and checks what the CLI says about it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from flared.control.client import ControlClient
from flared.control.server import LINGER_SECONDS, Limits
from tests.fixtures.flare import FlareUp, free_port

pytestmark = pytest.mark.integration

TOKEN = "fault-matrix-token"
LIMITS = Limits()
RSS_BOUND = 50 * 1024 * 1024


class Daemon:
    def __init__(self, flare: FlareUp, port: int) -> None:
        self.flare = flare
        self.port = port
        self.sock = flare.state_dir / "flared.sock"
        self.pid = int(flare.status()["flared"]["pid"])

    def connect(self, where: str) -> socket.socket:
        if where == "tcp":
            return socket.create_connection(("127.0.0.1", self.port), timeout=10)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(str(self.sock))
        return s

    def rss(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def fd_targets(self) -> list[str]:
        out = []
        for fd in sorted(os.listdir(f"/proc/{self.pid}/fd"), key=int):
            with contextlib.suppress(OSError):
                out.append(f"{fd} -> {os.readlink(f'/proc/{self.pid}/fd/{fd}')}")
        return out

    def answers(self) -> None:
        """/healthz on both listeners, each within a second."""
        t = time.monotonic()
        assert ControlClient(self.sock).request("GET", "/healthz", timeout=2)["ok"] is True
        with self.connect("tcp") as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert read_all(s).startswith(b"HTTP/1.1 200 ")
        assert time.monotonic() - t < 2, "flared answered slowly"


def read_all(s: socket.socket) -> bytes:
    out = b""
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while chunk := s.recv(65536):
            out += chunk
    return out


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("server-faults")
    port = free_port()
    with FlareUp(tmp, [], control={"port": port, "token": TOKEN}) as flare:
        yield Daemon(flare, port)
        log = (flare.state_dir / "logs" / "flared.log").read_text(errors="replace")
        assert "Traceback" not in log, log[-4000:]


@pytest.fixture
def watch(daemon: Daemon) -> Iterator[Callable[[], None]]:
    """Samples RSS while the row runs; after it, checks the bound and that fds came back."""
    daemon.answers()
    rss0, fds0 = daemon.rss(), daemon.fds()
    before = daemon.fd_targets()
    peak = [rss0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            with contextlib.suppress(OSError, AssertionError):
                peak[0] = max(peak[0], daemon.rss())

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    yield daemon.answers
    stop.set()
    t.join()
    assert peak[0] - rss0 < RSS_BOUND, f"RSS grew by {(peak[0] - rss0) >> 20} MiB"
    # A connection the row left may wait out its longest deadline, then linger; on a busy
    # machine the thread that closes it may be late. A leak stays open past all of that.
    deadline = time.monotonic() + max(LIMITS.header_timeout, LIMITS.body_timeout) + LINGER_SECONDS + 10
    while daemon.fds() > fds0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert daemon.fds() <= fds0, f"connections were left open: {before} -> {daemon.fd_targets()}"
    daemon.answers()


def auth(where: str) -> bytes:
    return b"" if where == "unix" else f"Authorization: Bearer {TOKEN}\r\n".encode()


def send_while_reading(s: socket.socket, head: bytes, chunk: bytes, times: int) -> tuple[int, bytes]:
    """Send ``head`` then ``chunk`` up to ``times`` times while a thread reads the answer
    (a server that answers early and closes would otherwise reset it away). Returns
    (bytes sent after the head, the answer)."""
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(read_all(s)), daemon=True)
    s.sendall(head)
    reader.start()
    sent = 0
    with contextlib.suppress(OSError):
        for _ in range(times):
            s.sendall(chunk)
            sent += len(chunk)
    reader.join(30)
    return sent, got[0] if got else b""


def status_and_body(raw: bytes) -> tuple[int, Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body) if body else None


BOTH = pytest.mark.parametrize("where", ["tcp", "unix"])


@BOTH
@pytest.mark.parametrize("value", [b"-1", b"abc"])
def test_bad_content_length_is_a_json_400(daemon: Daemon, watch: Any, where: str, value: bytes) -> None:
    head = b"POST /exec HTTP/1.1\r\nHost: x\r\n" + auth(where) + b"Content-Length: " + value + b"\r\n\r\n"
    with daemon.connect(where) as s:
        _, answer = send_while_reading(s, head, b"x" * 65536, 16)  # what a `read(-1)` would wait for
        status, body = status_and_body(answer)
    assert status == 400
    assert body["error"].startswith("bad HTTP request")
    watch()


@BOTH
def test_a_short_body_is_timed_out_and_does_not_block_others(daemon: Daemon, watch: Any, where: str) -> None:
    with daemon.connect(where) as s:
        s.sendall(b"POST /exec HTTP/1.1\r\nHost: x\r\n" + auth(where) + b"Content-Length: 1000\r\n\r\n{")
        t = time.monotonic()
        watch()  # answers while the short body is pending
        s.settimeout(LIMITS.body_timeout + 10)
        status, body = status_and_body(read_all(s))
    assert status == 408, body
    assert time.monotonic() - t < LIMITS.body_timeout + 5


@BOTH
def test_a_huge_declared_body_is_refused_unread(daemon: Daemon, watch: Any, where: str) -> None:
    with daemon.connect(where) as s:
        s.sendall(
            b"PUT /config HTTP/1.1\r\nHost: x\r\n" + auth(where) + b"Content-Length: 10737418240\r\n\r\n"
        )
        status, body = status_and_body(read_all(s))
    assert status == 413 and "too large" in body["error"]
    watch()


@BOTH
def test_a_huge_chunked_body_is_cut_off_at_the_limit(daemon: Daemon, watch: Any, where: str) -> None:
    chunk = b"%x\r\n%s\r\n" % (1 << 20, b"a" * (1 << 20))
    head = b"POST /exec HTTP/1.1\r\nHost: x\r\n" + auth(where) + b"Transfer-Encoding: chunked\r\n\r\n"
    with daemon.connect(where) as s:
        _, answer = send_while_reading(s, head, chunk, 100)  # 100 MiB offered; the limit is 8 MiB
        status, body = status_and_body(answer)
    assert status == 413, body
    watch()


def test_600_mib_without_a_token_is_refused_before_reading(daemon: Daemon, watch: Any) -> None:
    """The probe that took flared from 112 MB to 727 MB: now a 401 from the head alone."""
    head = b"POST /exec HTTP/1.1\r\nHost: x\r\nContent-Length: 629145600\r\n\r\n"
    with daemon.connect("tcp") as s:
        sent, answer = send_while_reading(s, head, b"a" * (1 << 20), 600)
        status, body = status_and_body(answer)
    assert status == 401, body
    assert sent < 600 << 20, "flared read the whole unauthenticated body"
    watch()


@BOTH
def test_slowloris_connections_are_dropped_and_others_still_answered(
    daemon: Daemon, watch: Any, where: str
) -> None:
    n = 200  # more than the per-listener cap
    conns = []
    for _ in range(n):
        with contextlib.suppress(OSError):
            c = daemon.connect(where)
            c.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            conns.append(c)
    t = time.monotonic()
    dropped = 0
    while time.monotonic() - t < LIMITS.header_timeout + 5 and dropped < len(conns):
        watch()  # the cap and the deadline keep room for real callers
        dropped = 0
        for c in conns:
            try:
                c.sendall(b"X-Slow: 1\r\n")  # a header line now and then, never the end
                c.setblocking(False)
                try:
                    dropped += c.recv(1) == b""
                except BlockingIOError:
                    pass
                finally:
                    c.setblocking(True)
            except OSError:
                dropped += 1
        time.sleep(1)
    for c in conns:
        c.close()
    assert dropped == len(conns), f"{len(conns) - dropped} slow connections were still open"


def test_a_stopped_flared_is_named_with_how_to_resume_it_not_a_traceback(daemon: Daemon) -> None:
    """Row: flared is SIGSTOPped (Ctrl-Z, a debugger): its socket still takes connections."""
    import signal
    import subprocess

    from tests.fixtures.flare import FLARED

    cfg = str(daemon.flare.config_path)
    os.kill(daemon.pid, signal.SIGSTOP)
    try:
        runs = [
            subprocess.Popen(
                [*FLARED, *args, "-c", cfg], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            for args in (["status"], ["chat", "--json", "hello"])
        ]
        outs = [p.communicate(timeout=60) for p in runs]
    finally:
        os.kill(daemon.pid, signal.SIGCONT)
    resume = (
        f"did not answer within 10 s: it is stopped (SIGSTOP, or Ctrl-Z in its terminal); "
        f"`kill -CONT {daemon.pid}` resumes it\n"
    )
    for name, p, (_, stderr) in zip(("status", "chat"), runs, outs, strict=True):
        assert p.returncode == 1, stderr
        assert "Traceback" not in stderr
        assert stderr.endswith(f"flared {name}: flared (pid {daemon.pid}) {resume}"), stderr
    assert outs[0][0] == ""
    assert json.loads(outs[1][0])["error"] == f"flared (pid {daemon.pid}) {resume}".rstrip("\n")
    daemon.answers()
