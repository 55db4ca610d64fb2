"""The lean control client and finding the daemon's socket from a config path (no pydantic, no YAML)."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from flared.config.models import HermesFlareConfig
from flared.config.where import DEFAULT_STATE_DIR
from flared.control.client import ConnectionLost, ControlClient, ControlError, DaemonNotRunning
from flared.control.locate import daemon_socket, lenient_fields, publish_socket


def test_default_state_dir_matches_the_model() -> None:
    assert HermesFlareConfig.model_fields["state_dir"].default == DEFAULT_STATE_DIR


def test_lenient_fields_read_a_file_that_does_not_parse() -> None:
    text = "state_dir: ./somewhere  # here\ncontrol:\n  port: 1\n  socket: /run/f.sock\nbots: [\n"
    assert lenient_fields(text) == ("./somewhere", "/run/f.sock")
    assert lenient_fields("control: {port: 2, socket: '/r/s.sock'}\n") == (None, "/r/s.sock")
    assert lenient_fields("bots:\n  - socket: no\n") == (None, None)
    bomb = "a: &a [" + ",".join(["*a"] * 50) + "]\nstate_dir: /sd\n"
    assert lenient_fields(bomb) == ("/sd", None)  # never expanded


def test_daemon_socket_prefers_the_callers_env_then_the_pointer_then_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.delenv("FLARE_STATE_DIR", raising=False)
    monkeypatch.delenv("FLARE_CONTROL__SOCKET", raising=False)
    cfg = tmp_path / "hermes-flare.yaml"
    cfg.write_text("state_dir: ./st\nbots: [broken\n")
    assert daemon_socket(cfg) == tmp_path / "st" / "flared.sock"
    real = tmp_path / "elsewhere" / "flared.sock"
    real.parent.mkdir()
    real.touch()
    publish_socket(cfg, real)  # what the running daemon does
    assert daemon_socket(cfg) == real
    monkeypatch.setenv("FLARE_STATE_DIR", str(tmp_path / "mine"))
    assert daemon_socket(cfg) == tmp_path / "mine" / "flared.sock"


def serve_once(path: Path, answer: bytes) -> threading.Thread:
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)

    def run() -> None:
        conn, _ = srv.accept()
        conn.recv(65536)
        if answer:
            conn.sendall(answer)
        conn.close()
        srv.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_client_reads_content_length_and_chunked_answers(tmp_path: Path) -> None:
    sock = tmp_path / "s.sock"
    serve_once(sock, b'HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n{"ok": true}extra')
    assert ControlClient(sock).request("GET", "/x") == {"ok": True}
    os.unlink(sock)
    serve_once(
        sock,
        b'HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"err\r\nE\r\nor": "nope"}\n\r\n0\r\n\r\n',
    )
    with pytest.raises(ControlError) as err:
        ControlClient(sock).request("GET", "/x")
    assert err.value.status == 404 and str(err.value) == "nope"


def test_a_daemon_that_goes_away_mid_request_is_connection_lost(tmp_path: Path) -> None:
    sock = tmp_path / "s.sock"
    serve_once(sock, b"")
    with pytest.raises(ConnectionLost):
        ControlClient(sock).request("POST", "/exec", {"command": "sleep 60"})
    os.unlink(sock)
    serve_once(sock, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{")
    with pytest.raises(ConnectionLost, match="cut off"):
        ControlClient(sock).request("GET", "/x")


def test_nothing_listening_is_daemon_not_running(tmp_path: Path) -> None:
    with pytest.raises(DaemonNotRunning):
        ControlClient(tmp_path / "none.sock").request("GET", "/healthz")
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(stale))
    s.close()  # the file stays, nobody listens
    with pytest.raises(DaemonNotRunning):
        ControlClient(stale).request("GET", "/healthz")
