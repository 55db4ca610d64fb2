"""One snapshot of one bot, start to end; no threads, no timers.

Steps: walk (stat only; an unchanged fingerprint stops here), hash (cached
per file; an unchanged digest stops here), pack straight from the home,
upload, verify, manifest, then `latest` by a conditional write. A crash at
any point leaves `latest` pointing at a complete, verified snapshot; what was
uploaded before the crash is an orphan that
:func:`flared.snapshots.catalog.prune` removes later.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from stat import S_ISREG
from typing import Any

from flared import __version__
from flared.config.models import SnapshotsConfig
from flared.snapshots import capture as cap
from flared.snapshots import crypto, pack
from flared.snapshots.catalog import Fence, encryption_key, read_latest
from flared.snapshots.hashcache import HashCache
from flared.snapshots.manifest import (
    Latest,
    Manifest,
    blob_key,
    host,
    latest_key,
    manifest_key,
    new_id,
    now_iso,
)
from flared.snapshots.steps import StepTimer
from flared.snapshots.stores import PreconditionFailed, Progress, Store, StoreError
from flared.snapshots.stores.local import file_sha256

#: Identifies this flared process in `latest.json` (which writer moved it).
WRITER = uuid.uuid4().hex[:12]


def hermes_version() -> str:
    try:
        return metadata.version("hermes-agent")
    except metadata.PackageNotFoundError:
        return "unknown"


@dataclass
class SnapshotResult:
    result: str  # ok | unchanged | fenced | failed | skipped
    bot: str
    id: str | None = None
    reason: str | None = None
    bytes_uploaded: int = 0
    seconds: float = 0.0
    packed_size: int | None = None
    raw_size: int | None = None
    file_count: int | None = None
    at: str = field(default_factory=now_iso)
    fence: Fence | None = None
    fingerprint: str | None = None
    steps: dict[str, float] = field(default_factory=dict)  # seconds per step: where the time went
    left_out: list[dict[str, str]] = field(default_factory=list)  # beyond the rules: path and why
    hashed_bytes: int = 0  # file contents read to hash them (0: every hash came from the cache)
    copied: list[str] = field(default_factory=list)  # databases backed up this time (not reused)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("fence")
        out.pop("fingerprint")
        return out


@dataclass
class SnapshotJob:
    store: Store
    bot: str
    home: Path
    work: Path
    policy: SnapshotsConfig
    fence: Fence
    fingerprint: str | None = None  # of the home when `fence` was last confirmed unchanged
    progress: Progress | None = None
    on_in_flight: Callable[[str], None] = lambda _id: None
    force: bool = False  # skip the stat fast path
    cache: Path | None = None  # where content hashes and database copies are kept between runs


def clean_work(work: Path) -> None:
    """Remove what a killed snapshot or restore left in the scratch dir."""
    if work.exists():
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)


def take_snapshot(job: SnapshotJob) -> SnapshotResult:
    started = time.monotonic()
    result = _take(job)
    result.seconds = round(time.monotonic() - started, 3)
    return result


def announce(progress: object, name: str, total: int | None = None) -> None:
    """Tell a progress callback that takes named steps (the control API's board) what begins."""
    step = getattr(progress, "step", None)
    if callable(step):
        step(name, total)


def describe_os_error(exc: OSError) -> str:
    """An OSError in words a user acts on: what, where, and for a full disk what to do."""
    where = f": {exc.filename}" if exc.filename else ""
    text = f"{exc.strerror or exc}{where}"
    if exc.errno in {errno.ENOSPC, errno.EDQUOT}:
        text += " (free some space there; nothing was changed)"
    return text


#: Walk, hash and pack again this often when files move under mksquashfs' feet.
PACK_ATTEMPTS = 3


def _moved(captured: cap.Captured) -> str | None:
    """A file mksquashfs read from the home that is no longer the file the walk hashed."""
    home = str(captured.home)
    for e in captured.entries:
        if e.kind != "f" or not e.source.startswith(home):
            continue
        try:
            st = os.lstat(e.source)
        except FileNotFoundError:
            return e.rel
        if not S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (e.st.st_dev, e.st.st_ino):
            return e.rel
    return None


def _take(job: SnapshotJob) -> SnapshotResult:
    bot, store = job.bot, job.store
    try:
        latest, etag = read_latest(store, bot)
    except StoreError as exc:
        return SnapshotResult("failed", bot, reason=str(exc))
    if etag != job.fence.etag:
        who = (
            f"{latest.id} (generation {latest.generation}, host {latest.host or '?'})"
            if latest
            else "nothing"
        )
        return SnapshotResult(
            "fenced",
            bot,
            reason=f"another writer moved latest.json to {who}; snapshots of this bot are paused "
            f"until `flared restore --bot {bot}` takes that state or `flared snapshot --bot {bot} "
            "--takeover` claims the bot",
        )
    key = encryption_key(job.policy)
    rules = cap.rules(job.policy.exclude, encrypted=key is not None)
    if not job.home.is_dir():
        return SnapshotResult("skipped", bot, reason="the bot has no Hermes home yet")
    steps: dict[str, float] = {}
    step = StepTimer(steps)
    skip = _inside_home(job.home, job.work, job.cache)
    try:
        walked = cap.walk(job.home, rules, skip=skip)
        fp = walked.fingerprint()
        step("walk")
        if not job.force and latest is not None and fp is not None and fp == job.fingerprint:
            return SnapshotResult(
                "unchanged", bot, id=latest.id, fence=job.fence, fingerprint=fp, steps=steps
            )
        clean_work(job.work)
        cache = HashCache(job.cache, job.work)
        captured = cap.capture(walked, cache)
        step("hash")
        left_out = [{"path": p, "why": w} for p, w in captured.left_out]
        if latest is not None and latest.content_digest == captured.digest:
            return SnapshotResult(
                "unchanged",
                bot,
                id=latest.id,
                fence=job.fence,
                fingerprint=fp,
                steps=steps,
                left_out=left_out,
                hashed_bytes=captured.hashed_bytes,
                copied=captured.backed_up,
            )
        sid = new_id()
        blob = job.work / f"{sid}.sqsh"
        announce(job.progress, "packing")
        for attempt in range(1, PACK_ATTEMPTS + 1):
            try:
                pack.pack(captured, blob, job.policy.compression, scratch=job.work)
                moved = _moved(captured)
            except pack.PackError as exc:
                if not exc.vanished or attempt == PACK_ATTEMPTS:
                    raise
                moved = "a file"
            if moved is None:
                break
            if attempt == PACK_ATTEMPTS:
                return SnapshotResult(
                    "failed",
                    bot,
                    reason=f"{moved} kept changing while it was packed; the next snapshot tries again",
                )
            step("pack")
            walked = cap.walk(job.home, rules, skip=skip)
            fp = walked.fingerprint()
            captured = cap.capture(walked, cache)
            step("hash")
        step("pack")
        if key is not None:
            sealed = job.work / f"{sid}.sqsh.enc"
            crypto.encrypt_file(blob, sealed, key)
            blob.unlink()
            blob = sealed
        size = blob.stat().st_size
        sha = file_sha256(blob)
        step("checksum")
        job.on_in_flight(sid)
        announce(job.progress, "uploading", size)
        info = store.put_file(
            blob_key(bot, sid),
            blob,
            sha256=sha,
            metadata={"bot": bot, "id": sid},
            progress=job.progress,
            consume=True,
        )
        step("upload")
        if info.size != size or (info.sha256 is not None and info.sha256 != sha):
            with contextlib.suppress(StoreError):
                store.delete(blob_key(bot, sid))
            return SnapshotResult("failed", bot, id=sid, reason="upload verification failed: size or sha256")
        manifest = Manifest(
            id=sid,
            bot=bot,
            created_at=now_iso(),
            content_digest=captured.digest,
            file_count=captured.files,
            raw_size=captured.raw_size,
            packed_size=size,
            blob_sha256=sha,
            compression=job.policy.compression.algorithm,
            encrypted=key is not None,
            key_id=crypto.key_id(key) if key is not None else None,
            flared_version=__version__,
            hermes_version=hermes_version(),
            host=host(),
            parent=latest.id if latest else None,
            databases=captured.databases,
            allocated_size=captured.allocated_size,
        )
        body = manifest.to_bytes()
        store.put_bytes(manifest_key(bot, sid), body)
        generation = (latest.generation if latest else 0) + 1
        pointer = Latest(bot, sid, generation, captured.digest, now_iso(), host(), WRITER).to_bytes()
        try:
            if etag is None:
                new_etag = store.put_bytes(latest_key(bot), pointer, if_none_match=True)
            else:
                new_etag = store.put_bytes(latest_key(bot), pointer, if_match=etag)
        except PreconditionFailed:
            for k in (manifest_key(bot, sid), blob_key(bot, sid)):
                with contextlib.suppress(StoreError):
                    store.delete(k)
            return SnapshotResult(
                "fenced",
                bot,
                reason="another writer moved latest.json during this snapshot; nothing was overwritten",
            )
        step("publish")
        return SnapshotResult(
            "ok",
            bot,
            steps=steps,
            id=sid,
            bytes_uploaded=size + len(body) + len(pointer),
            packed_size=size,
            raw_size=captured.raw_size,
            file_count=captured.files,
            fence=Fence(new_etag, generation, sid),
            fingerprint=fp,
            left_out=left_out,
            hashed_bytes=captured.hashed_bytes,
            copied=captured.backed_up,
        )
    except StoreError as exc:
        return SnapshotResult("failed", bot, reason=str(exc), steps=steps)
    except pack.PackError as exc:
        return SnapshotResult("failed", bot, reason=str(exc), steps=steps)
    except OSError as exc:
        return SnapshotResult("failed", bot, reason=describe_os_error(exc), steps=steps)
    finally:
        shutil.rmtree(job.work, ignore_errors=True)


def _inside_home(home: Path, *dirs: Path | None) -> list[str]:
    """Scratch dirs that live inside the home (never snapshot them into themselves)."""
    out = []
    for d in dirs:
        if d is None:
            continue
        with contextlib.suppress(ValueError, OSError):
            out.append(d.resolve().relative_to(home.resolve()).as_posix())
    return out
