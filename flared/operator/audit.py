"""Every operator command and its result, as JSON lines in the state dir."""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from flared.config.redact import redact_text


def audit_path(state_dir: Path) -> Path:
    return state_dir / "operator" / "audit.jsonl"


class AuditLog:
    def __init__(self, path: Path, config: Any = None) -> None:
        self.path = path
        self.config = config  # to redact any secret that slips into a detail
        self._lock = threading.Lock()

    def append(
        self, user: str, command: str, args: list[str], result: str, detail: str = ""
    ) -> dict[str, Any]:
        entry = {
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "user": user,
            "command": command,
            "args": [redact_text(a, self.config)[:200] for a in args],
            "result": result,
            "detail": redact_text(detail, self.config)[:500],
        }
        line = json.dumps(entry) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)
        return entry


def tail(path: Path, n: int = 10) -> list[dict[str, Any]]:
    """The last `n` entries (skipping any torn line)."""
    try:
        with path.open() as fh:
            lines = deque(fh, maxlen=n)
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out
