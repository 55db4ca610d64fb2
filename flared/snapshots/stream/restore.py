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
import logging
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
from flared.snapshots.pack import PackError
from flared.snapshots.stores import Store, StoreError
from flared.snapshots.stream.base import BootPlan, base_key, fetch_base, follow_to, put_base, stale, wanted
from flared.snapshots.stream.program import litestream_env, litestream_executable
from flared.snapshots.stream.render import replica, stream_key

#: Databases restored at once (each `litestream restore` also fetches in parallel).
PARALLEL = 4
RESTORE_TIMEOUT = 600.0

log = logging.getLogger("flared.snapshots.stream")


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
    *,
    store: Store | None = None,
    plans: Mapping[str, BootPlan] | None = None,
) -> dict[str, Any]:
    """Restore these databases of the bot's stream into `staging` (raises StreamRestoreError).

    To the newest position, a database with a `plans` entry starts from its base in
    `store` (:mod:`flared.snapshots.stream.base`), the fast way; any failure there falls back to
    the plain restore. Returns what was done: ``{"databases": [...], "seconds": s,
    "from_base": [...]}``.
    """
    started = time.monotonic()
    if not dbs:
        return {"databases": [], "seconds": 0.0, "from_base": []}
    home = BotPaths.of(cfg.state_dir, bot).home
    work.mkdir(parents=True, exist_ok=True)
    config = _write_restore_config(cfg, bot, home, dbs, work)
    env = litestream_env(cfg.store, os.environ if environ is None else environ)
    exe = litestream_executable()
    try:
        with concurrent.futures.ThreadPoolExecutor(min(PARALLEL, len(dbs))) as pool:
            futures = {
                rel: pool.submit(
                    _restore_one,
                    exe,
                    config,
                    env,
                    home,
                    staging,
                    rel,
                    point,
                    (store, plans[rel])
                    if store is not None and plans and rel in plans and point is None
                    else None,
                )
                for rel in dbs
            }
            failed, from_base = [], []
            for rel, fut in futures.items():
                try:
                    if fut.result():
                        from_base.append(rel)
                except StreamRestoreError as exc:
                    failed.append(str(exc))
        if failed:
            raise StreamRestoreError("; ".join(failed))
    finally:
        config.unlink(missing_ok=True)
    return {"databases": dbs, "seconds": round(time.monotonic() - started, 3), "from_base": from_base}


def make_bases(
    cfg: HermesFlareConfig, store: Store, bot: str, work: Path, environ: Mapping[str, str] | None = None
) -> dict[str, int]:
    """Make the bases the bot's stream lacks: each database at its newest Litestream snapshot
    (:mod:`flared.snapshots.stream.base`), then drop its older bases. Reads the stream, never writes it.

    Returns the bytes uploaded per database made; raises StreamRestoreError or StoreError."""
    stream_keys = [o.key for o in store.list(stream_key(bot) + "/")]
    base_keys = [o.key for o in store.list(base_key(bot) + "/")]
    todo = wanted(bot, stream_keys, base_keys)
    if not todo:
        return {}
    home = BotPaths.of(cfg.state_dir, bot).home
    work.mkdir(parents=True, exist_ok=True)
    config = _write_restore_config(cfg, bot, home, sorted(todo), work)
    env = litestream_env(cfg.store, os.environ if environ is None else environ)
    argv = [litestream_executable(), "restore", "-config", str(config), "-no-expand-env"]
    done = {}
    try:
        for rel, txid in sorted(todo.items()):
            tmp = work / f".base-{rel.replace('/', '_')}"
            try:
                _restore_plain([*argv, "-o", str(tmp)], env, home, rel, tmp, Point(txids={rel: txid}))
                problem = quick_check(tmp)
                if problem is not None:
                    raise StreamRestoreError(f"{rel}: its snapshot fails quick_check: {problem}")
                done[rel] = put_base(store, base_key(bot, rel, txid), tmp, work)
            finally:
                _remove_db(tmp)
            for key in stale(bot, rel, txid, base_keys):
                store.delete(key)
    finally:
        config.unlink(missing_ok=True)
    return done


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
    exe: str,
    config: Path,
    env: dict[str, str],
    home: Path,
    staging: Path,
    rel: str,
    point: Point | None,
    base: tuple[Store, BootPlan] | None = None,
) -> bool:
    """Restore one database into `staging`; True when it came from its base."""
    final = staging / rel
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.restoring")
    argv = [exe, "restore", "-config", str(config), "-no-expand-env"]
    if base is not None:
        why = _from_base(argv, env, home / rel, tmp, *base)
        if why is None and (problem := quick_check(tmp)) is not None:
            why = f"the result fails quick_check: {problem}"
        if why is None:
            _place(tmp, final)
            return True
        _remove_db(tmp)
        log.warning("%s: its base could not be used (%s): restoring it from the stream's snapshot", rel, why)
    _restore_plain([*argv, "-o", str(tmp)], env, home, rel, tmp, point)
    _check_and_place(rel, tmp, final)
    return False


def _from_base(
    argv: list[str], env: dict[str, str], db: Path, tmp: Path, store: Store, plan: BootPlan
) -> str | None:
    """The database from its base, brought to the stream's newest TXID; None, or why not."""
    _remove_db(tmp)
    try:
        fetch_base(store, plan.key, tmp, tmp.parent)
    except (OSError, StoreError, PackError, ValueError) as exc:
        _remove_db(tmp)
        return str(exc)[:300]
    why = None if plan.target <= plan.start else follow_to(argv, db, tmp, plan.start, plan.target, env)
    if why is None:
        why = _wal_mode(tmp)
    if why is not None:
        _remove_db(tmp)
    return why


def _wal_mode(db: Path) -> str | None:
    """Put a followed database back in WAL mode; None, or why not.

    The LTX files Litestream writes after a restore carry a page 1 that says rollback
    journal; its plain restore writes WAL mode into the result, its follow mode does not.
    A database left so would take Hermes' commits in its rollback journal, which
    Litestream never sees (they would be lost with the machine)."""
    try:
        con = sqlite3.connect(db, isolation_level=None, timeout=5)
        try:
            mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        return f"could not put it in WAL mode: {exc}"
    return None if str(mode).lower() == "wal" else f"it stays in {mode} mode"


def _restore_plain(
    argv: list[str], env: dict[str, str], home: Path, rel: str, tmp: Path, point: Point | None
) -> None:
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


def _check_and_place(rel: str, tmp: Path, final: Path) -> None:
    problem = quick_check(tmp)
    if problem is not None:
        _remove_db(tmp)
        raise StreamRestoreError(f"{rel}: the restored database fails quick_check: {problem}")
    _place(tmp, final)


def _place(tmp: Path, final: Path) -> None:
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
    for p in (path, *(path.with_name(path.name + s) for s in ("-wal", "-shm", "-txid"))):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
