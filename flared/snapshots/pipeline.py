"""One snapshot of one bot, start to end; no threads, no timers.

Order of writes: blob, verify, manifest, then `latest` by a conditional
write. A crash at any point leaves `latest` pointing at a complete, verified
snapshot; what was uploaded before the crash is an orphan that
:func:`flared.snapshots.catalog.prune` removes later.
"""

from __future__ import annotations

import contextlib
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from flared import __version__
from flared.config.models import SnapshotsConfig
from flared.snapshots import capture as cap
from flared.snapshots import crypto, pack
from flared.snapshots.catalog import Fence, encryption_key, read_latest
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
    patterns = cap.exclusions(job.policy.exclude, encrypted=key is not None)
    if not job.home.is_dir():
        return SnapshotResult("skipped", bot, reason="the bot has no Hermes home yet")
    fp = cap.fingerprint(job.home, patterns)
    if not job.force and latest is not None and fp is not None and fp == job.fingerprint:
        return SnapshotResult("unchanged", bot, id=latest.id, fence=job.fence, fingerprint=fp)

    clean_work(job.work)
    sid = new_id()
    steps: dict[str, float] = {}
    mark = time.monotonic()

    def step(name: str) -> None:
        nonlocal mark
        now = time.monotonic()
        steps[name] = round(now - mark, 3)
        mark = now

    try:
        captured = cap.capture(job.home, job.work / f"capture-{sid}", patterns)
        step("capture")
        if latest is not None and latest.content_digest == captured.digest:
            return SnapshotResult(
                "unchanged", bot, id=latest.id, fence=job.fence, fingerprint=fp, steps=steps
            )
        blob = job.work / f"{sid}.sqsh"
        pack.pack(captured.root, blob, job.policy.compression)
        shutil.rmtree(captured.root, ignore_errors=True)
        step("pack")
        if key is not None:
            sealed = job.work / f"{sid}.sqsh.enc"
            crypto.encrypt_file(blob, sealed, key)
            blob.unlink()
            blob = sealed
        size = blob.stat().st_size
        sha = file_sha256(blob)
        job.on_in_flight(sid)
        info = store.put_file(
            blob_key(bot, sid), blob, sha256=sha, metadata={"bot": bot, "id": sid}, progress=job.progress
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
        )
    except (StoreError, pack.PackError, OSError) as exc:
        reason = str(exc) if not isinstance(exc, OSError) else f"{exc.strerror or exc}: {exc.filename or ''}"
        return SnapshotResult("failed", bot, reason=reason)
    finally:
        shutil.rmtree(job.work, ignore_errors=True)
