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
import re
import socket
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

FORMAT = 1

#: The one shape of a snapshot id, checked wherever an id comes from outside (a user, a
#: pointer, a listing) before it names an object: `20261124T055012Z-3f9a1c`.
ID_PATTERN = re.compile(r"[0-9]{8}T[0-9]{6}Z-[0-9a-f]{6}")


class InvalidSnapshotId(ValueError):
    """Not a snapshot id: never turned into a key (no `../`, no other bot's objects)."""


def valid_id(snapshot_id: object) -> bool:
    return isinstance(snapshot_id, str) and ID_PATTERN.fullmatch(snapshot_id) is not None


def check_id(snapshot_id: object) -> str:
    if not valid_id(snapshot_id):
        raise InvalidSnapshotId(
            f"{str(snapshot_id)[:80]!r} is not a snapshot id (ids look like 20261124T055012Z-3f9a1c; "
            "`flared snapshots` lists them)"
        )
    assert isinstance(snapshot_id, str)
    return snapshot_id


def blob_key(bot: str, snapshot_id: str) -> str:
    return f"{bot}/snapshots/{check_id(snapshot_id)}.sqsh"


def manifest_key(bot: str, snapshot_id: str) -> str:
    return f"{bot}/snapshots/{check_id(snapshot_id)}.json"


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


def _load(cls: Any, data: bytes, types: dict[str, type | tuple[type, ...]]) -> Any:
    """A dataclass from JSON; ValueError when it is not an object or a field has the wrong type."""
    raw = json.loads(data)
    if not isinstance(raw, dict):
        raise ValueError("not a JSON object")
    for name, want in types.items():
        value = raw.get(name)
        if name in raw and (not isinstance(value, want) or (want is int and isinstance(value, bool))):
            raise ValueError(f"field {name!r} has the wrong type")
    names = {f.name for f in fields(cls)}
    try:
        return cls(**{k: v for k, v in raw.items() if k in names})
    except TypeError as exc:
        raise ValueError(f"missing fields ({exc})") from None


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
    #: The stream position the home pairs with (``at``, RFC 3339; ``txids``: database -> TXID),
    #: None when the databases are in the blob (taken without streaming).
    stream: dict[str, Any] | None = None
    #: Disk blocks the files took (st_blocks * 512): a sparse file takes far less than its size,
    #: and unsquashfs writes it sparse again. None in manifests written before flared kept it.
    allocated_size: int | None = None
    format: int = FORMAT

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), indent=2).encode()

    @property
    def unpacked_size(self) -> int:
        """Room the unpacked home takes on disk (what a restore checks is free)."""
        return self.allocated_size if self.allocated_size is not None else self.raw_size

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        types: dict[str, type | tuple[type, ...]] = {
            "id": str,
            "bot": str,
            "content_digest": str,
            "file_count": int,
            "raw_size": int,
            "packed_size": int,
            "blob_sha256": str,
        }
        result: Manifest = _load(cls, data, types)
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
        """The pointer; its `id` may still be invalid (checked where it names an object)."""
        types: dict[str, type | tuple[type, ...]] = {
            "bot": str,
            "id": str,
            "generation": int,
            "content_digest": str,
        }
        result: Latest = _load(cls, data, types)
        return result
