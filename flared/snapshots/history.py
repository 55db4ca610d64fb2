"""Each bot's snapshot history: every attempt that did something, as JSON lines.

The store keeps only snapshots that made it; users also want to see when a
snapshot failed or was fenced, how big each was and how long it took, and
what triggered it (the admin page charts it). Unchanged results are not
recorded: an idle bot would fill the file with them. The file is bounded:
past ``MAX_LINES`` it is rewritten with the newest half.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections import deque
from pathlib import Path
from typing import Any

MAX_LINES = 2000
#: What a history line keeps of a snapshot result (never a secret: results carry none).
FIELDS = (
    "at",
    "id",
    "result",
    "trigger",
    "reason",
    "bytes_uploaded",
    "packed_size",
    "raw_size",
    "file_count",
    "seconds",
)
RECORDED = frozenset({"ok", "failed", "fenced"})

_lock = threading.Lock()


def history_path(snapshots_dir: Path, bot: str) -> Path:
    return snapshots_dir / "history" / f"{bot}.jsonl"


def record(path: Path, result: dict[str, Any]) -> None:
    """Append one snapshot result (ok, failed or fenced); other results are ignored."""
    if result.get("result") not in RECORDED:
        return
    entry = {k: result[k] for k in FIELDS if result.get(k) is not None}
    line = (json.dumps(entry, sort_keys=True) + "\n").encode()
    with _lock:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        if size > MAX_LINES * 400:  # cheap check first: only count lines when the file is big
            _trim(path)


def read(path: Path, limit: int = 200) -> list[dict[str, Any]]:
    """The newest ``limit`` entries, oldest first (a torn last line is skipped)."""
    try:
        with path.open(encoding="utf-8") as fh:
            lines = deque(fh, maxlen=max(1, limit))
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        with contextlib.suppress(ValueError):
            item = json.loads(line)
            if isinstance(item, dict):
                out.append(item)
    return out


def _trim(path: Path) -> None:
    with path.open(encoding="utf-8") as fh:
        lines = fh.readlines()
    if len(lines) <= MAX_LINES:
        return
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.writelines(lines[-MAX_LINES // 2 :])
    os.replace(tmp, path)
