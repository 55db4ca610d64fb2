"""What the snapshot service knows of one bot, and the part of it that survives a restart.

Per bot it keeps the *fence* (what this flared last knew of the store's
`latest.json`). No snapshot is taken while the fence is unknown. The
persisted part lives in `<state_dir>/snapshots/<bot>.json`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from flared.snapshots.catalog import Fence


@dataclass
class BotState:
    name: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    phase: str = "booting"  # booting | restoring | waiting for store | restore failed | ready
    fence: Fence | None = None  # None: not yet known, snapshots gated
    gate: str | None = None  # why snapshots are gated
    fenced: str | None = None  # another writer moved latest.json
    fingerprint: str | None = None
    store: str | None = None  # the store `fence`, `fenced` and `fingerprint` are about
    elsewhere: dict[str, dict[str, Any]] = field(default_factory=dict)  # the same, per store used before
    in_flight: list[str] = field(default_factory=list)
    basis: str | None = None  # the snapshot the home was restored from, when not `latest`
    shrunk: str | None = None  # the last snapshot was refused: the home lost most of its basis
    last: dict[str, Any] | None = None
    last_ok: dict[str, Any] | None = None
    restore: dict[str, Any] | None = None
    last_attempt: float = 0.0
    last_prune: float = 0.0
    last_change: float | None = None
    due_now: bool = False
    running: bool = False
    reading: str | None = None
    claimed_at: float = 0.0  # when this flared claimed latest.json for the stream (see .claim)
    #: The streamed databases' (device, inode) since the bot became ready: one replaced outside
    #: a restore (a deleted home) must not be streamed over its good replica.
    stream_ids: dict[str, tuple[int, int]] = field(default_factory=dict)
    stream_lost: str | None = None  # why the bot's stream is stopped (until a restore or an accept)
    on_ready: Callable[[str], None] | None = None

    def pointer(self) -> dict[str, Any]:
        """What this flared knows of one store's `latest.json` for the bot."""
        return {
            "fence": asdict(self.fence) if self.fence else None,
            "fingerprint": self.fingerprint,
            "fenced": self.fenced,
        }

    def take_pointer(self, record: dict[str, Any]) -> None:
        self.fence = Fence(**record["fence"]) if record.get("fence") else None
        self.fingerprint = record.get("fingerprint")
        self.fenced = record.get("fenced")

    def persisted(self) -> dict[str, Any]:
        return {
            **self.pointer(),
            "store": self.store,
            "elsewhere": self.elsewhere,
            "in_flight": self.in_flight,
            "basis": self.basis,
            "last": self.last,
            "last_ok": self.last_ok,
            "stream_lost": self.stream_lost,
        }
