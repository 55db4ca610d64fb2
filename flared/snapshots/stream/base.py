"""A ready-made copy of each streamed database at Litestream's newest snapshot: a fast cold boot.

Measured (bench/bench_stream.py, a 200 MB state.db): `litestream restore` turns its snapshot
(one LTX file) into a database page by page, about 2 s of one core, where unsquashfs of the
whole 500 MB home takes 0.5 s. So beside the stream flared keeps a *base* per database:
the database exactly at the TXID of Litestream's newest snapshot (level 9), made by
Litestream's own restore at that TXID and packed with squashfs, at
``<bot>/stream-base/<path in the home>/<TXID, 16 hex>.sqfs``. A new base is made when
Litestream writes a new snapshot (`snapshot.interval`, daily), off the boot path.

A cold boot to the newest position unpacks the base and lets Litestream apply only the
LTX files after its TXID: `litestream restore -f` resumes from a ``<db>-txid`` file (its
crash recovery for follow mode) and is stopped once that file names the newest TXID the
stream holds. Litestream 0.5.17 resumes only from a TXID no newer than its newest
snapshot, which is why a base sits exactly on one. Any doubt (no base for the newest
snapshot, a stall, an error) falls back to the plain `litestream restore`; the result is
checked with ``quick_check`` either way. Nothing here writes to the stream itself.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from flared.snapshots import pack
from flared.snapshots.stores import Store
from flared.snapshots.stores.local import file_sha256
from flared.snapshots.stream.render import stream_key

BASE_PREFIX = "stream-base"
#: A follow that applies nothing for this long is stuck (a gap it cannot bridge): fall back.
STALL_S = 10.0
POLL_S = 0.01
FOLLOW_INTERVAL = "10ms"

_LTX = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.ltx$")


@dataclass(frozen=True)
class StreamFile:
    """One LTX file of a database's stream, from a listing of the store."""

    rel: str  # the database's path in the home
    level: int
    min_txid: int
    max_txid: int


def base_key(bot: str, rel: str = "", txid: int | None = None) -> str:
    """The store key of a bot's bases, of one database's, or of one base."""
    key = f"{bot}/{BASE_PREFIX}" + (f"/{rel}" if rel else "")
    return key + (f"/{txid:016x}.sqfs" if txid is not None else "")


def stream_files(bot: str, keys: Iterable[str]) -> list[StreamFile]:
    """The LTX files a listing of the bot's stream holds (pure).

    Litestream keeps them at ``<db>/ltx/<level>/<min>-<max>.ltx`` on a file replica and at
    ``<db>/<level, 4 hex digits>/<min>-<max>.ltx`` on S3."""
    prefix = stream_key(bot) + "/"
    out = []
    for key in keys:
        if not key.startswith(prefix):
            continue
        parts = key[len(prefix) :].split("/")
        match = _LTX.match(parts[-1])
        if match is None or len(parts) < 3:
            continue
        rel_parts, level_text = parts[:-2], parts[-2]
        file_layout = bool(rel_parts) and rel_parts[-1] == "ltx"
        if file_layout:
            rel_parts = rel_parts[:-1]
        try:
            level = int(level_text) if file_layout else int(level_text, 16)
        except ValueError:
            continue
        if rel_parts:
            out.append(StreamFile("/".join(rel_parts), level, int(match[1], 16), int(match[2], 16)))
    return out


def newest_txids(files: Iterable[StreamFile]) -> dict[str, int]:
    """Per database, the newest TXID the stream holds at any level (pure)."""
    out: dict[str, int] = {}
    for f in files:
        out[f.rel] = max(out.get(f.rel, 0), f.max_txid)
    return out


def snapshot_txids(files: Iterable[StreamFile]) -> dict[str, int]:
    """Per database, the TXID of Litestream's newest snapshot (level 9) (pure)."""
    out: dict[str, int] = {}
    for f in files:
        if f.level == 9:
            out[f.rel] = max(out.get(f.rel, 0), f.max_txid)
    return out


def base_txids(bot: str, keys: Iterable[str]) -> dict[str, set[int]]:
    """Per database, the TXIDs of the bases a listing of ``base_key(bot)`` holds (pure)."""
    prefix = base_key(bot) + "/"
    out: dict[str, set[int]] = {}
    for key in keys:
        if not key.startswith(prefix) or not key.endswith(".sqfs"):
            continue
        rel, _, name = key[len(prefix) :].rpartition("/")
        try:
            txid = int(name.removesuffix(".sqfs"), 16)
        except ValueError:
            continue
        if rel:
            out.setdefault(rel, set()).add(txid)
    return out


def wanted(bot: str, stream_keys: Iterable[str], base_keys: Iterable[str]) -> dict[str, int]:
    """The bases to make (database -> TXID of its newest snapshot) (pure)."""
    have = base_txids(bot, base_keys)
    return {
        rel: txid
        for rel, txid in snapshot_txids(stream_files(bot, stream_keys)).items()
        if txid not in have.get(rel, set())
    }


@dataclass(frozen=True)
class BootPlan:
    """Restore a database from its base at `start`, then follow the stream to `target`."""

    key: str
    start: int
    target: int


def boot_plans(bot: str, stream_keys: Iterable[str], base_keys: Iterable[str]) -> dict[str, BootPlan]:
    """The databases whose newest snapshot has a base in the store (pure): the others
    (a base not made yet, or older than the snapshot) take the plain restore."""
    files = stream_files(bot, stream_keys)
    newest = newest_txids(files)
    have = base_txids(bot, base_keys)
    return {
        rel: BootPlan(base_key(bot, rel, txid), txid, max(txid, newest.get(rel, txid)))
        for rel, txid in snapshot_txids(files).items()
        if txid in have.get(rel, set())
    }


def stale(bot: str, rel: str, keep: int, base_keys: Iterable[str]) -> list[str]:
    """Keys of the database's bases other than the one at TXID `keep` (pure)."""
    return [base_key(bot, rel, t) for t in sorted(base_txids(bot, base_keys).get(rel, set())) if t != keep]


def follow_to(
    argv: list[str],
    db: Path,
    out: Path,
    start: int,
    target: int,
    env: Mapping[str, str],
    stall: float = STALL_S,
) -> str | None:
    """Bring the database at `out` (exactly at TXID `start`) to TXID `target` with
    `litestream restore -f`; `argv` is ``litestream restore -config ...``, `db` the
    database's path in the config.

    None when done, else why not (the caller falls back to a plain restore)."""
    marker = out.with_name(out.name + "-txid")
    marker.write_text(f"{start:016x}\n")
    cmd = [*argv, "-f", "-follow-interval", FOLLOW_INTERVAL, "-o", str(out), str(db)]
    log = out.with_name(out.name + ".log")  # a file, not a pipe: a long follow logs a line per batch
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, env=dict(env), stdin=subprocess.DEVNULL, stdout=fh, stderr=fh)
    reached, last, moved = start, start, time.monotonic()
    try:
        while reached < target:
            if proc.poll() is not None:
                said = log.read_text(errors="replace").strip().splitlines()[-1:] or [
                    f"exit {proc.returncode}"
                ]
                return f"litestream stopped following: {said[0][:300]}"
            with contextlib.suppress(OSError, ValueError):
                reached = int(marker.read_text().strip() or "0", 16)
            if reached != last:
                last, moved = reached, time.monotonic()
            elif time.monotonic() - moved > stall:
                return (
                    f"litestream applied nothing for {stall:.0f} s (at TXID {reached:016x} of {target:016x})"
                )
            time.sleep(POLL_S)
        return None
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        marker.unlink(missing_ok=True)
        log.unlink(missing_ok=True)


def fetch_base(store: Store, key: str, dest: Path, work: Path) -> None:
    """Download a base and unpack its database to `dest` (raises OSError, StoreError, PackError)."""
    blob = work / f".{dest.name}.base.sqfs"
    unpacked = work / f".{dest.name}.base"
    shutil.rmtree(unpacked, ignore_errors=True)
    try:
        local = store.local_path(key)
        if local is None:
            store.get_file(key, blob)
            local = blob
        pack.unpack(local, unpacked)
        (db,) = [p for p in unpacked.iterdir() if p.is_file()]
        os.replace(db, dest)
    finally:
        blob.unlink(missing_ok=True)
        shutil.rmtree(unpacked, ignore_errors=True)


def put_base(store: Store, key: str, db: Path, work: Path) -> int:
    """Pack a database and upload it as a base; returns the bytes uploaded."""
    blob = work / f".{db.name}.sqfs"
    blob.unlink(missing_ok=True)
    try:
        pack.pack_file(db, blob)
        info = store.put_file(key, blob, sha256=file_sha256(blob), metadata={}, consume=True)
        return int(info.size)
    finally:
        blob.unlink(missing_ok=True)
