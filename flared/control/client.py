"""Client of flared's control API over its unix socket.

CLI commands use it when the daemon runs and fall back to direct work when
:class:`DaemonNotRunning` is raised.
"""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path
from typing import Any

from flared.config.loader import LoadedConfig
from flared.control.locate import socket_path


class DaemonNotRunning(Exception):
    """Nothing listens on the control socket."""


class ControlError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        message = body.get("error") if isinstance(body, dict) else None
        super().__init__(message or f"control API answered {status}")
        self.status = status
        self.body = body


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


class ControlClient:
    def __init__(self, path: Path, token: str | None = None) -> None:
        self.path = path
        self.token = token

    @classmethod
    def for_config(cls, loaded: LoadedConfig) -> ControlClient:
        return cls(socket_path(loaded))

    def request(
        self, method: str, path: str, body: Any = None, *, timeout: float = 30.0, raw: bytes | None = None
    ) -> Any:
        if not self.path.exists():
            raise DaemonNotRunning(str(self.path))
        conn = _UnixConnection(str(self.path), timeout)
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        payload = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        try:
            conn.request(method, path, body=payload, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except (ConnectionRefusedError, FileNotFoundError):
            raise DaemonNotRunning(str(self.path)) from None
        finally:
            conn.close()
        try:
            parsed: Any = json.loads(data) if data else None
        except ValueError:
            parsed = {"error": data.decode(errors="replace")}
        if resp.status >= 400:
            raise ControlError(resp.status, parsed)
        return parsed

    def running(self) -> bool:
        try:
            self.request("GET", "/healthz", timeout=2)
            return True
        except (DaemonNotRunning, ControlError, OSError):
            return False
