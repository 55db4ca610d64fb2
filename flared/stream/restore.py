"""Put a bot's streamed databases into a restore's staging dir: `litestream restore`, in parallel.

A restore is one consistent point: the home from the snapshot, each database
from the stream, at its newest position (the default) or at the position
the snapshot recorded when it was taken (`flared restore --id`: the manifest's
``stream``). Every database is restored beside its final place, checked with
``PRAGMA quick_check`` and only then renamed into the staging dir; the
caller swaps the staging dir in while Litestream does not watch the home.

A database the stream holds that cannot be restored fails the whole restore:
starting with it missing would let Hermes create an empty one and Litestream
ship that over the good replica.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from flared.config.models import HermesFlareConfig
from flared.hermes.paths import BotPaths
from flared.stream.program import litestream_env, litestream_executable
from flared.stream.render import replica, stream_key

#: Databases restored at once (each `litestream restore` also fetches in parallel).
PARALLEL = 4
RESTORE_TIMEOUT = 600.0


class StreamRestoreError(Exception):
    """A streamed database could not be restored (the message names it and says why)."""


@dataclass(frozen=True)
class Point:
    """Where in the stream to restore to: newest (both None), a time, or per-database TXIDs."""

    at: str | None = None  # RFC 3339
    txids: Mapping[str, int] | None = None
    earliest: Mapping[str, int] | None = None  # the oldest position the stream holds, per database

    @classmethod
    def of_manifest(cls, stream: Mapping[str, Any] | None) -> Point | None:
        """The point a snapshot recorded; None when it was taken without streaming."""
        if not stream:
            return None
        txids = {str(k): int(v) for k, v in (stream.get("txids") or {}).items()}
        return cls(at=stream.get("at"), txids=txids)


def streamed_databases(bot: str, keys: Iterable[str]) -> list[str]:
    """Home-relative paths of the databases a listing of the bot's stream holds (pure).

    Litestream keeps a database's LTX files at ``<db>/ltx/<level>/<file>.ltx`` on a file
    replica and at ``<db>/<level, 4 hex digits>/<file>.ltx`` on S3.
    """
    prefix = stream_key(bot) + "/"
    found = set()
    for key in keys:
        if not key.startswith(prefix) or not key.endswith(".ltx"):
            continue
        parts = key[len(prefix) :].split("/")[:-2]  # without the level and the file
        if parts and parts[-1] == "ltx":
            parts = parts[:-1]
        if parts:
            found.add("/".join(parts))
    return sorted(found)


def earliest_txids(bot: str, keys: Iterable[str]) -> dict[str, int]:
    """Per database, the oldest position the stream can restore (pure): the newest TXID of
    its earliest file that starts at transaction 1 (a Litestream snapshot or the first L0)."""
    prefix = stream_key(bot) + "/"
    out: dict[str, int] = {}
    for key in keys:
        if not key.startswith(prefix) or not key.endswith(".ltx"):
            continue
        parts = key[len(prefix) :].split("/")
        first, _, last = parts[-1].removesuffix(".ltx").partition("-")
        rel_parts = parts[:-2]
        if rel_parts and rel_parts[-1] == "ltx":
            rel_parts = rel_parts[:-1]
        try:
            start, end = int(first, 16), int(last, 16)
        except ValueError:
            continue
        if rel_parts and start == 1:
            rel = "/".join(rel_parts)
            out[rel] = min(out.get(rel, end), end)
    return out


def restore_into(
    cfg: HermesFlareConfig,
    bot: str,
    dbs: list[str],
    staging: Path,
    work: Path,
    point: Point | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Restore these databases of the bot's stream into `staging` (raises StreamRestoreError).

    Returns what was done: ``{"databases": [...], "seconds": s}``.
    """
    started = time.monotonic()
    if not dbs:
        return {"databases": [], "seconds": 0.0}
    home = BotPaths.of(cfg.state_dir, bot).home
    work.mkdir(parents=True, exist_ok=True)
    config = _write_restore_config(cfg, bot, home, dbs, work)
    env = litestream_env(cfg.store, os.environ if environ is None else environ)
    exe = litestream_executable()
    try:
        with concurrent.futures.ThreadPoolExecutor(min(PARALLEL, len(dbs))) as pool:
            futures = {
                rel: pool.submit(_restore_one, exe, config, env, home, staging, rel, point) for rel in dbs
            }
            failed = []
            for fut in futures.values():
                try:
                    fut.result()
                except StreamRestoreError as exc:
                    failed.append(str(exc))
        if failed:
            raise StreamRestoreError("; ".join(failed))
    finally:
        config.unlink(missing_ok=True)
    return {"databases": dbs, "seconds": round(time.monotonic() - started, 3)}


def _write_restore_config(cfg: HermesFlareConfig, bot: str, home: Path, dbs: list[str], work: Path) -> Path:
    """A Litestream config naming each database by its path in the home, with its replica."""
    data = {
        "dbs": [{"path": str(home / rel), "replica": replica(cfg.store, stream_key(bot, rel))} for rel in dbs]
    }
    fd, name = tempfile.mkstemp(prefix="litestream-restore-", suffix=".yml", dir=work)
    with os.fdopen(fd, "w") as fh:
        yaml.safe_dump(data, fh)
    return Path(name)


def _restore_one(
    exe: str, config: Path, env: dict[str, str], home: Path, staging: Path, rel: str, point: Point | None
) -> None:
    final = staging / rel
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.restoring")
    argv = [exe, "restore", "-config", str(config), "-no-expand-env", "-o", str(tmp)]
    error = "no position to restore"
    for where in _positions(rel, point):
        _remove_db(tmp)
        try:
            run = subprocess.run(
                [*argv, *where, str(home / rel)],
                env=env,
                capture_output=True,
                text=True,
                timeout=RESTORE_TIMEOUT,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            _remove_db(tmp)
            raise StreamRestoreError(
                f"{rel}: litestream restore took longer than {RESTORE_TIMEOUT:.0f} s"
            ) from None
        if run.returncode == 0 and tmp.is_file():
            break
        last = (run.stderr or run.stdout).strip().splitlines()[-1:] or [f"exit {run.returncode}"]
        error = last[0][:300]
    else:
        _remove_db(tmp)
        raise StreamRestoreError(f"{rel}: litestream restore failed: {error}")
    problem = quick_check(tmp)
    if problem is not None:
        _remove_db(tmp)
        raise StreamRestoreError(f"{rel}: the restored database fails quick_check: {problem}")
    _remove_db(final)  # the snapshot's copy, if it had one: the stream's is the newer
    os.replace(tmp, final)


def _positions(rel: str, point: Point | None) -> list[list[str]]:
    """The `litestream restore` arguments to try, in order, for one database.

    The newest position; or the snapshot's: its TXID (not shipped yet if the machine died
    within a second of the snapshot), then its time, then the oldest the stream holds
    (the database was created, or first shipped, after the snapshot was taken)."""
    if point is None:
        return [[]]
    out = []
    txid = (point.txids or {}).get(rel)
    if txid is not None:
        out.append(["-txid", f"{txid:016x}"])
    if point.at:
        out.append(["-timestamp", point.at])
    earliest = (point.earliest or {}).get(rel)
    if earliest is not None:
        out.append(["-txid", f"{earliest:016x}"])
    return out or [[]]


def move_into(src: Path, dest: Path) -> str | None:
    """Move databases restored into `src` (by :func:`restore_into`) to the same paths under
    `dest`, replacing the copies (and their -wal/-shm) there; None, or what went wrong."""
    if not src.is_dir():
        return None
    try:
        for db in sorted(p for p in src.rglob("*") if p.is_file() and not p.name.startswith(".")):
            target = dest / db.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            _remove_db(target)
            os.replace(db, target)
    except OSError as exc:
        return f"the streamed databases could not be moved into place: {exc.strerror or exc}"
    return None


def quick_check(db: Path) -> str | None:
    """None when SQLite's quick_check passes, else its first complaint."""
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            rows = con.execute("PRAGMA quick_check").fetchall()
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        return str(exc)
    first = str(rows[0][0]) if rows else "no answer"
    return None if first == "ok" else first


def _remove_db(path: Path) -> None:
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
