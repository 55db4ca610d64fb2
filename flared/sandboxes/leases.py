"""A lease and the SQLite table that keeps leases across flared restarts.

The table lives in ``<state>/sandboxes/leases.db``, so a restarted flared
finds the leases it handed out (and destroys sandboxes no row claims). Each
row keeps the profile the lease was made with, without its token.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flared.config.models import SandboxProfile
from flared.sandboxes.types import SandboxError

log = logging.getLogger("flared.sandboxes")

SHARED_SESSION = "*"

SCHEMA = """
CREATE TABLE IF NOT EXISTS leases (
    id TEXT PRIMARY KEY,
    bot TEXT NOT NULL,
    session TEXT NOT NULL,
    profile_name TEXT NOT NULL,
    profile TEXT NOT NULL,
    provider_key TEXT NOT NULL,
    data TEXT NOT NULL,
    created_at REAL NOT NULL,
    last_used REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS leases_by_session ON leases (bot, profile_name, session);
"""


@dataclass
class Lease:
    id: str
    bot: str
    session: str
    profile_name: str
    profile: SandboxProfile
    provider_key: str
    data: dict[str, Any]
    created_at: float
    last_used: float
    busy: int = 0
    dirty: bool = False  # last_used not yet written to the table
    gone: bool = False
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def mode(self) -> str:
        return self.profile.mode

    def expired(self, now: float) -> str | None:
        if now - self.created_at >= self.profile.max_lifetime:
            return "max_lifetime"
        if not self.busy and now - self.last_used >= self.profile.idle_ttl:
            return "idle_ttl"
        return None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "bot": self.bot,
            "session": None if self.session == SHARED_SESSION else self.session,
            "profile": self.profile_name,
            "mode": self.mode,
            "provider": self.profile.provider,
            "workdir": self.profile.workdir,
            "created_at": round(self.created_at, 3),
            "last_used": round(self.last_used, 3),
            "idle_expires_in_s": round(max(0.0, self.last_used + self.profile.idle_ttl - time.time()), 1),
            "expires_in_s": round(max(0.0, self.created_at + self.profile.max_lifetime - time.time()), 1),
            "busy": self.busy,
        }


class LeaseTable:
    """The persisted leases; every method is a no-op while the table is closed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self.path.chmod(0o600)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def load(self) -> list[Lease]:
        if self._db is None:
            return []
        rows = self._db.execute(
            "SELECT id, bot, session, profile_name, profile, provider_key, data, created_at, last_used FROM leases"
        ).fetchall()
        out: list[Lease] = []
        for row in rows:
            try:
                profile = SandboxProfile.model_validate(json.loads(row[4]))
            except (ValueError, TypeError) as exc:
                log.warning("lease %s: unreadable row dropped: %s", row[0], exc)
                continue
            out.append(
                Lease(
                    id=row[0],
                    bot=row[1],
                    session=row[2],
                    profile_name=row[3],
                    profile=profile,
                    provider_key=row[5],
                    data=json.loads(row[6]),
                    created_at=row[7],
                    last_used=row[8],
                )
            )
        return out

    def insert(self, lease: Lease) -> None:
        if self._db is None:
            return
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO leases VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    lease.id,
                    lease.bot,
                    lease.session,
                    lease.profile_name,
                    _profile_json(lease.profile),
                    lease.provider_key,
                    json.dumps(lease.data),
                    lease.created_at,
                    lease.last_used,
                ),
            )

    def delete(self, lease_id: str) -> None:
        if self._db is None:
            return
        with self._db:
            self._db.execute("DELETE FROM leases WHERE id = ?", (lease_id,))

    def flush(self, leases: Iterable[Lease]) -> None:
        """Write last_used times (kept in memory between reaper ticks so a command costs no write)."""
        if self._db is None:
            return
        dirty = [x for x in leases if x.dirty and not x.gone]
        if not dirty:
            return
        with self._db:
            self._db.executemany(
                "UPDATE leases SET last_used = ? WHERE id = ?", [(x.last_used, x.id) for x in dirty]
            )
        for x in dirty:
            x.dirty = False


def take_lock(path: Path, wait: float) -> int:
    """One manager per state dir (the daemon, or `flared exec` without one): an flock on ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise SandboxError(
                    "another flared process is managing these sandboxes (the daemon, or a `flared exec`)"
                ) from None
            time.sleep(0.05)


def _profile_json(profile: SandboxProfile) -> str:
    """The profile as the lease keeps it; the bearer token is not stored (it comes from the config)."""
    data = profile.model_dump(mode="json", exclude={"token"})
    return json.dumps(data, sort_keys=True)
