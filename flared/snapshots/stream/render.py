"""Litestream's configuration, derived from hermes-flare.yaml (pure: no I/O).

One Litestream process per container streams every streamed bot's SQLite
databases: one `dbs:` entry per bot with `dir` (its Hermes home), `pattern`,
`recursive` and `watch`, so `state.db`, `kanban.db`, `cron/executions.db`
and any database Hermes creates later are picked up. Each goes to
``<bot>/stream/<path in the home>`` in the same store as the snapshots
(file or S3/R2), beside ``<bot>/snapshots/`` and ``<bot>/latest.json``.

Litestream's working files (`meta-dir`, about a database's size each) live
under the state dir, never in the home: a snapshot or a restore must not see
them. Credentials are not in this text: the program's wrapper hands them to
Litestream in its environment (:mod:`flared.snapshots.stream.program`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from flared.config.models import HermesFlareConfig, StoreConfig
from flared.hermes.paths import BotPaths

#: Where a bot's stream lives in the store, beside its snapshots.
STREAM_PREFIX = "stream"


@dataclass(frozen=True)
class StreamLayout:
    """Litestream's files for one state dir (none of them in a Hermes home)."""

    state_dir: Path

    @property
    def root(self) -> Path:
        return self.state_dir / "stream"

    @property
    def config(self) -> Path:
        return self.root / "litestream.yml"

    @property
    def socket(self) -> Path:
        """Litestream's control socket: flared asks it what each database has shipped."""
        return self.root / "litestream.sock"

    def meta(self, bot: str) -> Path:
        return self.root / "meta" / bot

    @property
    def log(self) -> Path:
        return self.state_dir / "logs" / "litestream.log"


def stream_key(bot: str, rel: str = "") -> str:
    """The store key (below the store's root) of a bot's stream, or of one database's in it."""
    return f"{bot}/{STREAM_PREFIX}" + (f"/{rel}" if rel else "")


def replica(store: StoreConfig, key: str) -> dict[str, Any]:
    """Litestream's `replica:` for a key of this store (no credentials: see the runner)."""
    if store.url.startswith("file://"):
        return {"type": "file", "path": str(Path(store.url[len("file://") :]) / key)}
    bucket, _, prefix = store.url[len("s3://") :].partition("/")
    out: dict[str, Any] = {
        "type": "s3",
        "bucket": bucket,
        "path": "/".join(p for p in (prefix.strip("/"), key) if p),
        "region": store.region,
        "force-path-style": True,
    }
    if store.endpoint:
        out["endpoint"] = store.endpoint
    return out


def litestream_config(cfg: HermesFlareConfig, bots: Iterable[str]) -> dict[str, Any]:
    """The whole Litestream config for these bots (sorted, so the text is deterministic)."""
    stream = cfg.snapshots.stream
    layout = StreamLayout(Path(cfg.state_dir))
    interval = _go_duration(stream.interval)
    dbs = [
        {
            "dir": str(BotPaths.of(cfg.state_dir, bot).home),
            "pattern": stream.pattern,
            "recursive": True,
            "watch": True,
            "meta-dir": str(layout.meta(bot)),
            "monitor-interval": interval,
            "replica": {**replica(cfg.store, stream_key(bot)), "sync-interval": interval},
        }
        for bot in sorted(set(bots))
    ]
    return {
        "socket": {"enabled": True, "path": str(layout.socket), "permissions": 0o600},
        "snapshot": {"interval": "24h", "retention": _go_duration(stream.retention)},
        "logging": {"level": "info", "type": "text"},
        "dbs": dbs,
    }


def render(cfg: HermesFlareConfig, bots: Iterable[str]) -> str:
    return yaml.safe_dump(litestream_config(cfg, bots), sort_keys=True)


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _go_duration(seconds: float) -> str:
    """Go's time.ParseDuration knows h, m, s, ms (no days): milliseconds are exact enough."""
    return f"{round(seconds * 1000)}ms"
