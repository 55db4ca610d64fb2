"""What the store holds per bot, and the names it holds it under.

    <prefix>/<bot>/snapshots/<id>.sqsh   the blob (squashfs, maybe encrypted)
    <prefix>/<bot>/snapshots/<id>.json   its manifest
    <prefix>/<bot>/latest.json           pointer to the newest good snapshot

`latest.json` moves only by conditional write, so two writers on one bot
cannot both win; its `generation` counts the moves.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

FORMAT = 1


def blob_key(bot: str, snapshot_id: str) -> str:
    return f"{bot}/snapshots/{snapshot_id}.sqsh"


def manifest_key(bot: str, snapshot_id: str) -> str:
    return f"{bot}/snapshots/{snapshot_id}.json"


def latest_key(bot: str) -> str:
    return f"{bot}/latest.json"


def snapshots_prefix(bot: str) -> str:
    return f"{bot}/snapshots/"


def new_id(now: datetime | None = None) -> str:
    """Sortable by time, unique across hosts: `20261124T055012Z-3f9a1c`."""
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%S}Z-{os.urandom(3).hex()}"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def host() -> str:
    return socket.gethostname()


def _load(cls: Any, data: bytes) -> Any:
    raw = json.loads(data)
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in raw.items() if k in names})


@dataclass
class Manifest:
    id: str
    bot: str
    created_at: str
    content_digest: str
    file_count: int
    raw_size: int
    packed_size: int
    blob_sha256: str
    compression: str
    encrypted: bool = False
    key_id: str | None = None
    flared_version: str = ""
    hermes_version: str = ""
    host: str = ""
    parent: str | None = None
    databases: list[str] = field(default_factory=list)
    format: int = FORMAT

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), indent=2).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        result: Manifest = _load(cls, data)
        return result


@dataclass
class Latest:
    bot: str
    id: str
    generation: int
    content_digest: str
    updated_at: str
    host: str = ""
    writer: str = ""
    format: int = FORMAT

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), indent=2).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Latest:
        result: Latest = _load(cls, data)
        return result
