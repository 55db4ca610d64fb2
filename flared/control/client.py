"""Client of flared's control API over its unix socket.

CLI commands use it when the daemon runs and fall back to direct work when
:class:`DaemonNotRunning` is raised. It speaks the little HTTP/1.1 it needs
over a plain socket (one request per connection, ``Connection: close``):
`http.client` alone (ssl, email) costs ~30 ms of import, a quarter of what
a command that talks to the daemon may take (docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import json
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flared.config.loader import LoadedConfig


class DaemonNotRunning(Exception):
    """Nothing listens on the control socket."""


class ConnectionLost(Exception):
    """The daemon went away while it was handling the request (flared stopped or crashed)."""


class DaemonNotAnswering(TimeoutError):
    """The daemon's socket took the request but no answer came in time (flared stopped or stuck).

    A TimeoutError, so code that treats any OSError as "not reachable" keeps
    doing so; the CLI prints its message instead of a traceback.
    """


def _not_answering(sock: socket.socket, timeout: float) -> DaemonNotAnswering:
    """Which process holds the socket and, when it is stopped, how to resume it."""
    import struct

    pid = 0
    with contextlib.suppress(OSError, struct.error):
        pid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
    who = f"flared (pid {pid})" if pid else "flared"
    if pid and _process_state(pid) == "T":
        return DaemonNotAnswering(
            f"{who} did not answer within {timeout:g} s: it is stopped (SIGSTOP, or Ctrl-Z in its "
            f"terminal); `kill -CONT {pid}` resumes it"
        )
    return DaemonNotAnswering(
        f"{who} did not answer within {timeout:g} s: it is busy or stuck; its log says why "
        "(`flared logs --flared`)"
    )


def _process_state(pid: int) -> str | None:
    """The one-letter state in /proc/PID/stat (``T``: stopped), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = stat[stat.rfind(")") + 2 :]
    return rest[:1] or None


class ControlError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        message = body.get("error") if isinstance(body, dict) else None
        super().__init__(message or f"control API answered {status}")
        self.status = status
        self.body = body


def _exchange(path: str, request: bytes, timeout: float) -> tuple[int, bytes]:
    """Send one request on a new connection; (status, body). Raises the errors below."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            raise DaemonNotRunning(path) from None
        except TimeoutError:  # its listen backlog is full: nobody accepts
            raise _not_answering(s, timeout) from None
        try:
            s.sendall(request)
            chunks = []
            while True:
                data = s.recv(65536)
                if not data:
                    break
                chunks.append(data)
        except (ConnectionResetError, BrokenPipeError) as exc:
            raise ConnectionLost(str(exc) or type(exc).__name__) from None
        except TimeoutError:
            raise _not_answering(s, timeout) from None
    finally:
        s.close()
    return _parse(b"".join(chunks))


def _parse(raw: bytes) -> tuple[int, bytes]:
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        raise ConnectionLost("the daemon closed the connection before it answered")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ConnectionLost(f"not an HTTP answer: {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = _dechunk(body)
    elif "content-length" in headers:
        n = int(headers["content-length"])
        if len(body) < n:
            raise ConnectionLost(f"the answer was cut off after {len(body)} of {n} bytes")
        body = body[:n]
    return int(parts[1]), body


def _dechunk(data: bytes) -> bytes:
    out: list[bytes] = []
    pos = 0
    while True:
        end = data.find(b"\r\n", pos)
        if end < 0:
            raise ConnectionLost("the answer was cut off")
        size = int(data[pos:end].split(b";")[0] or b"0", 16)
        if size == 0:
            return b"".join(out)
        out.append(data[end + 2 : end + 2 + size])
        if len(out[-1]) < size:
            raise ConnectionLost("the answer was cut off")
        pos = end + 2 + size + 2


class ControlClient:
    def __init__(self, path: Path, token: str | None = None) -> None:
        self.path = path
        self.token = token

    @classmethod
    def for_config(cls, loaded: LoadedConfig) -> ControlClient:
        from flared.control.locate import socket_path

        return cls(socket_path(loaded))

    @classmethod
    def for_file(cls, config_path: Path) -> ControlClient:
        """The daemon that runs ``config_path``, found without validating the file."""
        from flared.control.locate import daemon_socket

        return cls(daemon_socket(config_path))

    def request(
        self, method: str, path: str, body: Any = None, *, timeout: float = 30.0, raw: bytes | None = None
    ) -> Any:
        if not self.path.exists():
            raise DaemonNotRunning(str(self.path))
        payload = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
        head = [
            f"{method} {path} HTTP/1.1",
            "Host: localhost",
            "Connection: close",
            "Content-Type: application/json",
            f"Content-Length: {len(payload)}",
        ]
        if self.token:
            head.append(f"Authorization: Bearer {self.token}")
        request = ("\r\n".join(head) + "\r\n\r\n").encode() + payload
        status, data = _exchange(str(self.path), request, timeout)
        try:
            parsed: Any = json.loads(data) if data else None
        except ValueError:
            parsed = {"error": data.decode(errors="replace")}
        if status >= 400:
            raise ControlError(status, parsed)
        return parsed

    def running(self) -> bool:
        try:
            self.request("GET", "/healthz", timeout=2)
            return True
        except (DaemonNotRunning, ConnectionLost, ControlError, OSError):
            return False
