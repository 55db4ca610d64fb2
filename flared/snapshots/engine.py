"""One snapshot or one restore of one bot, start to end; no threads, no timers.

Order of writes on snapshot: blob, verify, manifest, then `latest` by a
conditional write. A crash at any point leaves `latest` pointing at a
complete, verified snapshot; what was uploaded before the crash is an orphan
that :func:`prune` removes later.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from flared import __version__
from flared.config.models import SnapshotsConfig
from flared.snapshots import capture as cap
from flared.snapshots import crypto, pack
from flared.snapshots.manifest import (
    Latest,
    Manifest,
    blob_key,
    host,
    latest_key,
    manifest_key,
    new_id,
    now_iso,
    snapshots_prefix,
)
from flared.snapshots.retention import ORPHAN_GRACE_S, Listed, plan_deletions
from flared.snapshots.stores import (
    NotFound,
    PreconditionFailed,
    Progress,
    Store,
    StoreError,
    StoreUnreachable,
)
from flared.snapshots.stores.local import file_sha256

log = logging.getLogger("flared.snapshots")

#: Identifies this flared process in `latest.json` (which writer moved it).
WRITER = uuid.uuid4().hex[:12]


def hermes_version() -> str:
    try:
        return metadata.version("hermes-agent")
    except metadata.PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class Fence:
    """What this writer last knew of `latest.json`; a snapshot may move it only from here."""

    etag: str | None  # None: the store holds no snapshot of this bot
    generation: int = 0
    snapshot_id: str | None = None


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


def read_latest(store: Store, bot: str) -> tuple[Latest | None, str | None]:
    """The pointer and its ETag; (None, None) when the store holds nothing for the bot."""
    try:
        data, etag = store.get_bytes(latest_key(bot))
    except NotFound:
        return None, None
    try:
        return Latest.from_bytes(data), etag
    except (ValueError, TypeError) as exc:
        raise StoreError(f"{latest_key(bot)} is not a valid pointer: {exc}") from None


def encryption_key(policy: SnapshotsConfig) -> str | None:
    key = policy.encryption.key
    return key.get_secret_value() if key is not None else None


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


# ---------------------------------------------------------------------- listing and retention


def list_ids(store: Store, bot: str) -> list[Listed]:
    groups: dict[str, dict[str, Any]] = {}
    prefix = snapshots_prefix(bot)
    for obj in store.list(prefix):
        name = obj.key[len(prefix) :]
        sid, dot, ext = name.rpartition(".")
        if not dot or ext not in {"sqsh", "json"} or "/" in sid:
            continue
        g = groups.setdefault(sid, {"blob": False, "manifest": False, "modified": 0.0, "size": 0})
        g["blob" if ext == "sqsh" else "manifest"] = True
        g["modified"] = max(g["modified"], obj.modified)
        if ext == "sqsh":
            g["size"] = obj.size
    return [Listed(sid, g["blob"], g["manifest"], g["modified"]) for sid, g in groups.items()]


def list_snapshots(store: Store, bot: str) -> list[dict[str, Any]]:
    """Complete snapshots, newest first, with what their manifests say."""
    latest, _ = read_latest(store, bot)
    out = []
    for item in sorted(list_ids(store, bot), key=lambda x: x.id, reverse=True):
        if not (item.has_blob and item.has_manifest):
            continue
        try:
            m = Manifest.from_bytes(store.get_bytes(manifest_key(bot, item.id))[0])
        except NotFound:
            continue
        except (ValueError, TypeError):
            out.append({"id": item.id, "bot": bot, "error": "unreadable manifest", "latest": False})
            continue
        out.append(
            {
                "id": m.id,
                "bot": bot,
                "created_at": m.created_at,
                "packed_size": m.packed_size,
                "raw_size": m.raw_size,
                "file_count": m.file_count,
                "digest": m.content_digest,
                "encrypted": m.encrypted,
                "host": m.host,
                "latest": latest is not None and latest.id == m.id,
            }
        )
    return out


def prune(
    store: Store,
    bot: str,
    policy: SnapshotsConfig,
    *,
    protected: Iterable[str] = (),
    ours_in_flight: Iterable[str] = (),
    now: float | None = None,
) -> dict[str, list[str]]:
    latest, _ = read_latest(store, bot)
    listing = list_ids(store, bot)
    plan = plan_deletions(
        listing,
        latest_id=latest.id if latest else None,
        keep_last=policy.keep.last,
        max_age=policy.keep.max_age,
        now=time.time() if now is None else now,
        protected=protected,
        ours_in_flight=ours_in_flight,
    )
    own = set(ours_in_flight)
    store.clean_incomplete(snapshots_prefix(bot), own, ORPHAN_GRACE_S)
    for sid in [*plan.expired, *plan.orphans]:
        # Manifest first: a blob without manifest is an orphan the next run removes.
        store.delete(manifest_key(bot, sid))
        store.delete(blob_key(bot, sid))
    # Ours that never reached the store at all are done with, too.
    finished = [i for i in own if i not in {x.id for x in listing}]
    return {"expired": plan.expired, "orphans": [*plan.orphans, *finished]}


# ---------------------------------------------------------------------- restore


class RestoreError(Exception):
    """One snapshot could not be restored (the message says why)."""


@dataclass
class RestoreResult:
    result: str  # restored | empty | failed
    bot: str
    id: str | None = None
    fallback: list[dict[str, str]] = field(default_factory=list)  # candidates that failed, and why
    error: str | None = None
    seconds: float = 0.0
    bytes_downloaded: int = 0
    at: str = field(default_factory=now_iso)
    fence: Fence | None = None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("fence")
        return out


def rollback_path(home: Path) -> Path:
    return home.with_name(home.name + ".previous")


def swap_in(staging: Path, home: Path) -> None:
    """Replace `home` with `staging`, keeping the old home as the one rollback copy."""
    previous = rollback_path(home)
    if previous.exists():
        shutil.rmtree(previous)
    if home.exists():
        home.rename(previous)
    home.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(home)


def restore(
    store: Store,
    bot: str,
    home: Path,
    work: Path,
    *,
    key: str | None,
    snapshot_id: str | None = None,
    progress: Progress | None = None,
    on_reading: Callable[[str | None], None] = lambda _id: None,
) -> RestoreResult:
    """Restore the newest good snapshot (or `snapshot_id`) into `home`.

    Raises StoreUnreachable when the store cannot say what it holds: the
    caller must not mistake that for "nothing to restore".
    """
    started = time.monotonic()
    latest, etag = read_latest(store, bot)
    fence = Fence(etag, latest.generation if latest else 0, latest.id if latest else None)
    if latest is None and snapshot_id is None:
        return RestoreResult("empty", bot, fence=fence, seconds=round(time.monotonic() - started, 3))

    def candidates() -> Iterator[str]:
        if snapshot_id is not None:
            yield snapshot_id
            return
        assert latest is not None
        yield latest.id
        # Only when the newest failed: list the store for older ones (no LIST on the happy path).
        yield from sorted(
            (i.id for i in list_ids(store, bot) if i.has_blob and i.has_manifest and i.id < latest.id),
            reverse=True,
        )

    failures: list[dict[str, str]] = []
    downloaded = 0
    for sid in candidates():
        on_reading(sid)
        try:
            downloaded += _restore_one(store, bot, sid, home, work, key, progress)
        except StoreUnreachable:
            raise
        except (RestoreError, StoreError, pack.PackError, crypto.DecryptError, OSError) as exc:
            reason = str(exc)
            log.warning("bot %s: snapshot %s cannot be restored: %s", bot, sid, reason)
            failures.append({"id": sid, "reason": reason})
            continue
        finally:
            on_reading(None)
            shutil.rmtree(work, ignore_errors=True)
        if failures:
            log.warning("bot %s: restored %s instead of the newest snapshot", bot, sid)
        return RestoreResult(
            "restored",
            bot,
            id=sid,
            fallback=failures,
            fence=fence,
            bytes_downloaded=downloaded,
            seconds=round(time.monotonic() - started, 3),
        )
    return RestoreResult(
        "failed",
        bot,
        fallback=failures,
        error="no snapshot could be restored: " + "; ".join(f"{f['id']}: {f['reason']}" for f in failures),
        fence=fence,
        seconds=round(time.monotonic() - started, 3),
    )


def _restore_one(
    store: Store, bot: str, sid: str, home: Path, work: Path, key: str | None, progress: Progress | None
) -> int:
    clean_work(work)
    try:
        manifest = Manifest.from_bytes(store.get_bytes(manifest_key(bot, sid))[0])
    except NotFound:
        raise RestoreError("its manifest is missing") from None
    except (ValueError, TypeError):
        raise RestoreError("its manifest is not valid JSON") from None
    if manifest.encrypted:
        if key is None:
            raise RestoreError("it is encrypted: set snapshots.encryption.key to the key it was taken with")
        if manifest.key_id and manifest.key_id != crypto.key_id(key):
            raise RestoreError(
                f"it was encrypted with another key (key id {manifest.key_id}, "
                f"configured key id {crypto.key_id(key)}): set snapshots.encryption.key to that key"
            )
    blob = work / f"{sid}.sqsh"
    try:
        got = store.get_file(blob_key(bot, sid), blob, size=manifest.packed_size, progress=progress)
    except NotFound:
        raise RestoreError("its blob is missing") from None
    size = blob.stat().st_size
    if size != manifest.packed_size or (got.sha256 or file_sha256(blob)) != manifest.blob_sha256:
        raise RestoreError("its blob is damaged: size or sha256 differs from the manifest")
    if manifest.encrypted:
        assert key is not None
        plain = work / f"{sid}.plain.sqsh"
        crypto.decrypt_file(blob, plain, key)
        blob.unlink()
        blob = plain
    staging = work / "tree"
    pack.unpack(blob, staging)
    blob.unlink()
    swap_in(staging, home)
    return size
