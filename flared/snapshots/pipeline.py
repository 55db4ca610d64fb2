"""One snapshot of one bot, start to end; no threads, no timers.

Steps: walk (stat only; an unchanged fingerprint stops here), hash (cached
per file; an unchanged digest stops here; a home that lost most of its last
snapshot stops here too, :mod:`.shrink`), pack straight from the home,
upload, verify, manifest, then `latest` by a conditional write (a lost reply
recognised as this writer's own). A crash at
any point leaves `latest` pointing at a complete, verified snapshot; what was
uploaded before the crash is an orphan that
:func:`flared.snapshots.catalog.prune` removes later.
"""

from __future__ import annotations

import contextlib
import errno
import logging
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

from flared.build import release
from flared.config.models import SnapshotsConfig
from flared.snapshots import capture as cap
from flared.snapshots import catalog, crypto, pack, shrink
from flared.snapshots.catalog import Fence, encryption_key, read_latest, read_manifest
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
from flared.snapshots.stores import NotFound, PreconditionFailed, Progress, Store, StoreError
from flared.snapshots.stores.local import file_sha256

log = logging.getLogger("flared.snapshots")

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
    shrink: list[str] = field(default_factory=list)  # not published: what the home lost (:mod:`.shrink`)
    needed_bytes: int | None = None  # a database copy that did not fit: what it needs
    free_bytes: int | None = None  # and what was free there

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
    unconfirmed: tuple[str, ...] = ()  # ids this state dir uploaded and has not seen published
    basis: str | None = None  # the snapshot the home was restored from, when not `latest`
    accept_shrink: bool = False  # publish a home that lost most of its basis (:mod:`.shrink`)
    #: The stream's position now (taken before the walk): what the manifest pairs the home with.
    stream_position: Callable[[], dict[str, Any] | None] | None = None


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
    own = (
        catalog.own_unanswered_write(job.fence, latest, etag, job.unconfirmed)
        if etag != job.fence.etag
        else None
    )
    if own is not None:
        job.fence = own
        log.warning(
            "bot %s: latest.json names %s, the snapshot this flared published without hearing the "
            "store's reply: continuing from it",
            bot,
            job.fence.snapshot_id,
        )
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
    rules = cap.rules(catalog.left_out(job.policy), encrypted=key is not None)
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
        position = job.stream_position() if job.stream_position is not None else None
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
        if latest is not None and not job.accept_shrink:
            refused = _refuse_shrink(job, latest, captured)
            if refused is not None:
                refused.steps, refused.left_out = steps, left_out
                return refused
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
            flared_version=release(),
            hermes_version=hermes_version(),
            host=host(),
            parent=latest.id if latest else None,
            databases=captured.databases,
            stream=position,
            allocated_size=captured.allocated_size,
        )
        body = manifest.to_bytes()
        announce(job.progress, "publishing")
        store.put_bytes(manifest_key(bot, sid), body)
        generation = (latest.generation if latest else 0) + 1
        pointer = Latest(bot, sid, generation, captured.digest, now_iso(), host(), WRITER).to_bytes()
        try:
            new_etag = _move_latest(store, bot, sid, pointer, etag)
        except StoreError as exc:
            return SnapshotResult("failed", bot, id=sid, reason=str(exc), steps=steps)
        if new_etag is None:
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
    except cap.DatabaseCopyFailed as exc:
        return SnapshotResult(
            "failed", bot, reason=str(exc), steps=steps, needed_bytes=exc.needed, free_bytes=exc.free
        )
    except OSError as exc:
        return SnapshotResult("failed", bot, reason=describe_os_error(exc), steps=steps)
    finally:
        shutil.rmtree(job.work, ignore_errors=True)


def _refuse_shrink(job: SnapshotJob, latest: Latest, captured: cap.Captured) -> SnapshotResult | None:
    """A failed result when the home lost most of what its basis snapshot held, else None.

    Without a readable basis manifest there is nothing to compare with: published."""
    basis_id = job.basis or latest.id
    try:
        basis = read_manifest(job.store, job.bot, basis_id)
    except (NotFound, ValueError) as exc:
        log.warning("bot %s: no manifest of %s to compare with (%s)", job.bot, basis_id, exc)
        return None
    # A basis with its databases inside against a capture that streams them: sizes differ by design.
    streamed_now = job.stream_position is not None and basis.stream is None
    lost = shrink.losses(
        basis,
        captured.databases,
        captured.raw_size,
        lambda rel: os.path.lexists(job.home / rel),
        compare_size=not streamed_now,
    )
    if not lost:
        return None
    return SnapshotResult(
        "failed",
        job.bot,
        reason=shrink.refusal(job.bot, basis, latest.id, lost),
        shrink=lost,
        raw_size=captured.raw_size,
        file_count=captured.files,
    )


def _move_latest(store: Store, bot: str, sid: str, pointer: bytes, etag: str | None) -> str | None:
    """Move `latest.json` from `etag` to `pointer` (naming `sid`): its new ETag, or None when
    another writer moved it first.

    A write the store applied but whose reply was lost looks like a failure, or (the SDK
    retries) like another writer's move: the pointer is read back, and naming `sid` it is
    this write. When even that read fails, StoreError says the outcome is unknown; the next
    snapshot tells (:func:`.catalog.own_unanswered_write`), and nothing is deleted meanwhile.
    """
    try:
        if etag is None:
            return store.put_bytes(latest_key(bot), pointer, if_none_match=True)
        return store.put_bytes(latest_key(bot), pointer, if_match=etag)
    except StoreError as exc:
        try:
            now, now_etag = read_latest(store, bot)
        except StoreError:
            raise StoreError(
                f"{exc}; whether latest.json now names {sid} is unknown (the store did not answer): "
                "the next snapshot finds out, nothing was deleted"
            ) from None
        if now is not None and now.id == sid and now_etag is not None:
            log.warning("bot %s: the store applied latest.json -> %s although its reply was lost", bot, sid)
            return now_etag
        if isinstance(exc, PreconditionFailed):
            return None
        raise


def _inside_home(home: Path, *dirs: Path | None) -> list[str]:
    """Scratch dirs that live inside the home (never snapshot them into themselves)."""
    out = []
    for d in dirs:
        if d is None:
            continue
        with contextlib.suppress(ValueError, OSError):
            out.append(d.resolve().relative_to(home.resolve()).as_posix())
    return out
