"""Put a bot's newest good snapshot (or a chosen one) back in place of its Hermes home.

Two halves, so a running gateway is stopped only for the second:

- :func:`prepare` downloads, verifies, decrypts and unpacks into a staging dir
  beside the home, then checks what it unpacked (symlinks that resolve outside
  the home and special files are refused and reported). A snapshot that fails
  its checks is skipped for the next older one. A failure of this machine (no
  space, permission, I/O error) stops at once: no fallback, the home untouched,
  and the result says what is missing.
- :func:`commit` swaps the staging dir in. The old home is kept as
  ``home.previous``; an older ``home.previous`` is deleted only when its
  content is in a snapshot, and kept under a dated name otherwise.

Size: both halves and the home.previous bookkeeping share the staging,
trash and marker paths and the local-failure classification; the store side
is :mod:`.catalog`, the unpacking itself unsquashfs.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flared.snapshots import capture as cap
from flared.snapshots import crypto, pack
from flared.snapshots.catalog import Fence, list_ids, read_latest_or_damaged
from flared.snapshots.hashcache import HashCache
from flared.snapshots.manifest import (
    InvalidSnapshotId,
    Latest,
    Manifest,
    blob_key,
    check_id,
    host,
    latest_key,
    manifest_key,
    now_iso,
    valid_id,
)
from flared.snapshots.pipeline import WRITER, announce, clean_work, describe_os_error
from flared.snapshots.steps import StepTimer
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


class RestoreError(Exception):
    """One snapshot could not be restored (the message says why): try the next older one."""


class LocalFailure(Exception):
    """This machine could not restore (disk full, permission, I/O): stop, fall back to nothing."""

    def __init__(self, message: str, *, needed: int | None = None, free: int | None = None) -> None:
        super().__init__(message)
        self.needed = needed
        self.free = free


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
    refused: list[dict[str, str]] = field(default_factory=list)  # left out of the restored home
    kept: str | None = None  # an older unsaved home.previous kept under this name
    local: bool = False  # failed for a reason of this machine: nothing changed, no fallback tried
    needed_bytes: int | None = None
    free_bytes: int | None = None
    repaired: bool = False  # latest.json was damaged and now names this snapshot
    steps: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("fence")
        return out


@dataclass
class Prepared:
    """A snapshot unpacked and checked beside the home, ready to swap in."""

    bot: str
    id: str
    staging: Path
    manifest: Manifest
    fence: Fence
    fallback: list[dict[str, str]]
    refused: list[dict[str, str]]
    downloaded: int
    damaged_etag: str | None  # latest.json was damaged: repair it after the swap
    started: float
    steps: dict[str, float]


def rollback_path(home: Path) -> Path:
    return home.with_name(home.name + ".previous")


def staging_path(home: Path) -> Path:
    """Beside the home, on its filesystem: the swap is a rename."""
    return home.with_name(f".{home.name}.incoming")


def trash_path(home: Path) -> Path:
    return home.with_name(f".{home.name}.trash-{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}")


def empty_trash(home: Path) -> None:
    """Delete old homes already known to be in a snapshot, in a detached `rm` that outlives a CLI
    process: deleting a big tree is no reason to keep anyone waiting."""
    trash = [str(p) for p in home.parent.glob(f".{home.name}.trash-*")]
    if trash:
        subprocess.Popen(
            ["rm", "-rf", "--", *trash],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )


def _marker(previous: Path) -> Path:
    return previous.with_name(previous.name + ".json")


# ---------------------------------------------------------------------- prepare


def prepare(
    store: Store,
    bot: str,
    home: Path,
    work: Path,
    *,
    key: str | None,
    snapshot_id: str | None = None,
    progress: Progress | None = None,
    on_reading: Callable[[str | None], None] = lambda _id: None,
) -> Prepared | RestoreResult:
    """Unpack the newest good snapshot (or `snapshot_id`) beside `home`; the home is not touched.

    Returns a RestoreResult when there is nothing to swap in (empty store, every candidate
    failed, a local failure). Raises StoreUnreachable when the store cannot say what it
    holds: the caller must not mistake that for "nothing to restore".
    """
    started = time.monotonic()
    empty_trash(home)
    if snapshot_id is not None:
        try:
            check_id(snapshot_id)
        except InvalidSnapshotId as exc:
            return RestoreResult("failed", bot, error=str(exc), seconds=0.0)
    latest, etag, damaged = read_latest_or_damaged(store, bot)
    if damaged is not None and snapshot_id is None:
        return RestoreResult("failed", bot, error=str(damaged), seconds=round(time.monotonic() - started, 3))
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
        # A pointer naming no valid id cannot be compared: every snapshot listed is a candidate.
        newest = latest.id if valid_id(latest.id) else None
        yield from sorted(
            (
                i.id
                for i in list_ids(store, bot)
                if i.has_blob and i.has_manifest and (newest is None or i.id < newest)
            ),
            reverse=True,
        )

    failures: list[dict[str, str]] = []
    downloaded = 0
    staging = staging_path(home)
    steps: dict[str, float] = {}
    for sid in candidates():
        on_reading(sid)
        try:
            manifest, got = _unpack_one(store, bot, sid, home, staging, work, key, progress, steps)
            downloaded += got
            refused = _refuse_unsafe(staging)
        except StoreUnreachable:
            discard(staging)
            raise
        except LocalFailure as exc:
            discard(staging)
            log.error("bot %s: restore stopped: %s", bot, exc)
            return RestoreResult(
                "failed",
                bot,
                fallback=failures,
                error=f"restore stopped, nothing was changed: {exc}",
                fence=fence,
                local=True,
                needed_bytes=exc.needed,
                free_bytes=exc.free,
                seconds=round(time.monotonic() - started, 3),
            )
        except (RestoreError, InvalidSnapshotId, StoreError, pack.PackError, crypto.DecryptError) as exc:
            discard(staging)
            reason = str(exc)
            log.warning("bot %s: snapshot %s cannot be restored: %s", bot, sid, reason)
            failures.append({"id": sid, "reason": reason})
            continue
        finally:
            on_reading(None)
            shutil.rmtree(work, ignore_errors=True)
        if failures:
            log.warning("bot %s: restored %s instead of the newest snapshot", bot, sid)
        for r in refused:
            log.warning("bot %s: snapshot %s: refused %s: %s", bot, sid, r["path"], r["why"])
        return Prepared(
            bot=bot,
            id=sid,
            staging=staging,
            manifest=manifest,
            fence=fence,
            fallback=failures,
            refused=refused,
            downloaded=downloaded,
            damaged_etag=damaged.etag if damaged is not None else None,
            started=started,
            steps=steps,
        )
    return RestoreResult(
        "failed",
        bot,
        fallback=failures,
        error="no snapshot could be restored: " + "; ".join(f"{f['id']}: {f['reason']}" for f in failures),
        fence=fence,
        seconds=round(time.monotonic() - started, 3),
    )


def _mib(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MiB"


def _local(exc: OSError, needed: int, where: Path) -> LocalFailure:
    free = cap.free_bytes(where)
    text = describe_os_error(exc).replace(" (free some space there; nothing was changed)", "")
    if exc.errno in {errno.ENOSPC, errno.EDQUOT}:
        text += f"; the snapshot needs about {_mib(needed)} there, {_mib(free)} is free"
    return LocalFailure(text, needed=needed, free=free)


def _unpack_one(
    store: Store,
    bot: str,
    sid: str,
    home: Path,
    staging: Path,
    work: Path,
    key: str | None,
    progress: Progress | None,
    steps: dict[str, float],
) -> tuple[Manifest, int]:
    step = StepTimer(steps)
    try:
        raw = store.get_bytes(manifest_key(bot, sid))[0]
    except NotFound:
        raise RestoreError("its manifest is missing") from None
    try:
        manifest = Manifest.from_bytes(raw)
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
    # Room for the download (twice when sealed) and the unpacked tree, before moving a byte.
    download = manifest.packed_size * (2 if manifest.encrypted else 1)
    unpacked = manifest.unpacked_size
    try:
        clean_work(work)
        discard(staging)
        home.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _local(exc, download + unpacked, home.parent) from None
    same_fs = _dev(work) == _dev(home.parent)
    needs = [(work, download + unpacked)] if same_fs else [(work, download), (home.parent, unpacked)]
    for where, need in needs:
        free = cap.free_bytes(where)
        if free < need:
            raise LocalFailure(
                f"not enough space in {where}: the snapshot needs about {_mib(need)} there "
                f"({_mib(manifest.packed_size)} packed, {_mib(unpacked)} unpacked), {_mib(free)} is free",
                needed=need,
                free=free,
            )
    step("manifest")
    announce(
        progress, "unpacking" if store.local_path(blob_key(bot, sid)) else "downloading", manifest.packed_size
    )
    try:
        in_place = None if manifest.encrypted else store.local_path(blob_key(bot, sid))
        if in_place is not None:
            size = _unpack_in_place(in_place, manifest, staging, home, download + unpacked, step)
        else:
            size = _download_and_unpack(store, bot, sid, manifest, key, work, staging, home, progress, step)
    except OSError as exc:
        raise _local(exc, download + unpacked, work) from None
    return manifest, size


def _unpack(blob: Path | int, staging: Path, home: Path, needed: int, unpacked: int) -> None:
    try:
        pack.unpack(blob, staging)
    except pack.PackError as exc:
        if not exc.local:
            raise
        discard(staging)  # what it holds is no use: say how much is free without it
        free = cap.free_bytes(home.parent)
        text = str(exc)
        if "No space left" in text or "quota" in text:
            text += (
                f"; the snapshot needs about {_mib(unpacked)} unpacked in {home.parent}, {_mib(free)} is free"
            )
        raise LocalFailure(text, needed=needed, free=free) from None


def _unpack_in_place(
    src: Path, manifest: Manifest, staging: Path, home: Path, needed: int, step: Callable[[str], None]
) -> int:
    """A blob in a store on this machine: unsquashfs reads it where it is while a thread hashes
    the same open file; nothing is copied, and nothing is swapped in unless the hash matches."""
    try:
        fd = os.open(src, os.O_RDONLY)
    except FileNotFoundError:
        raise RestoreError("its blob is missing") from None
    except OSError as exc:
        raise StoreError(f"{src.name}: cannot read it: {exc.strerror}") from None
    try:
        size = os.fstat(fd).st_size
        if size != manifest.packed_size:
            raise RestoreError("its blob is damaged: size differs from the manifest")
        digest: list[str] = []
        failed: list[OSError] = []

        def hash_it() -> None:
            h = hashlib.sha256()
            offset = 0
            try:
                while chunk := os.pread(fd, 1024 * 1024, offset):
                    h.update(chunk)
                    offset += len(chunk)
            except OSError as exc:
                failed.append(exc)
            digest.append(h.hexdigest())

        hasher = threading.Thread(target=hash_it, name="restore-hash")
        hasher.start()
        try:
            _unpack(fd, staging, home, needed, manifest.unpacked_size)
        finally:
            hasher.join()
        if failed:
            raise StoreError(f"{src.name}: cannot read it: {failed[0].strerror}")
        if digest[0] != manifest.blob_sha256:
            raise RestoreError("its blob is damaged: sha256 differs from the manifest")
        step("unpack")
        return size
    finally:
        os.close(fd)


def _download_and_unpack(
    store: Store,
    bot: str,
    sid: str,
    manifest: Manifest,
    key: str | None,
    work: Path,
    staging: Path,
    home: Path,
    progress: Progress | None,
    step: Callable[[str], None],
) -> int:
    blob = work / f"{sid}.sqsh"
    try:
        got = store.get_file(blob_key(bot, sid), blob, size=manifest.packed_size, progress=progress)
    except NotFound:
        raise RestoreError("its blob is missing") from None
    step("download")
    needed = manifest.packed_size * (2 if manifest.encrypted else 1) + manifest.unpacked_size
    if got.sha256 is None and not manifest.encrypted:
        # Fetched in ranges, not hashed on the way: hash it while unsquashfs reads it.
        size = _unpack_in_place(blob, manifest, staging, home, needed, step)
        blob.unlink()
        return size
    size = blob.stat().st_size
    if size != manifest.packed_size or (got.sha256 or file_sha256(blob)) != manifest.blob_sha256:
        raise RestoreError("its blob is damaged: size or sha256 differs from the manifest")
    if manifest.encrypted:
        assert key is not None
        plain = work / f"{sid}.plain.sqsh"
        crypto.decrypt_file(blob, plain, key)
        blob.unlink()
        blob = plain
    step("verify")
    _unpack(blob, staging, home, needed, manifest.unpacked_size)
    blob.unlink()
    step("unpack")
    return size


def _dev(path: Path) -> int:
    for p in (path, *path.parents):
        with contextlib.suppress(OSError):
            return os.stat(p).st_dev
    return -1


def discard(path: Path) -> None:
    if path.exists() or path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)


def _refuse_unsafe(root: Path) -> list[dict[str, str]]:
    """Remove what a home must not hold from an unpacked snapshot; say what and why.

    Directory entry types come from readdir: only symlinks cost a syscall.
    """
    refused: list[dict[str, str]] = []
    root_real = os.path.realpath(root)
    stack = [str(root)]
    try:
        while stack:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    why = None
                    if entry.is_symlink():
                        real = os.path.realpath(entry.path)
                        if real != root_real and not real.startswith(root_real + os.sep):
                            why = f"a symlink to {os.readlink(entry.path)!r}, outside the home"
                    elif entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    elif not entry.is_file(follow_symlinks=False):
                        why = "a socket, fifo or device"
                    if why is not None:
                        os.unlink(entry.path)
                        refused.append({"path": os.path.relpath(entry.path, root), "why": why})
    except OSError as exc:
        raise _local(exc, 0, root) from None
    return refused


# ---------------------------------------------------------------------- commit


#: Decides whether the home about to become `home.previous` is held by a snapshot:
#: returns that snapshot's id (and the home's digest), or (None, digest).
SavedAs = Callable[[Path], tuple[str | None, str | None]]


def commit(
    prepared: Prepared, home: Path, *, saved_as: SavedAs | None, store: Store | None = None
) -> RestoreResult:
    """Swap the prepared tree in; keep the old home as home.previous (see :func:`swap_in`).

    With `saved_as` None no marker is written: the caller marks home.previous later
    (:func:`mark_previous`), off the critical path; until then it counts as unsaved."""
    mark = time.monotonic()
    kept = swap_in(prepared.staging, home, saved_as=saved_as, store=store, bot=prepared.bot)
    prepared.steps["swap"] = round(time.monotonic() - mark, 3)
    fence = prepared.fence
    repaired = False
    if prepared.damaged_etag is not None and store is not None:
        fence, repaired = _repair_pointer(store, prepared)
    return RestoreResult(
        "restored",
        prepared.bot,
        id=prepared.id,
        fallback=prepared.fallback,
        fence=fence,
        refused=prepared.refused,
        kept=str(kept) if kept else None,
        bytes_downloaded=prepared.downloaded,
        repaired=repaired,
        steps=prepared.steps,
        seconds=round(time.monotonic() - prepared.started, 3),
    )


def _repair_pointer(store: Store, p: Prepared) -> tuple[Fence, bool]:
    """latest.json was damaged: point it at what was just restored (only if nobody fixed it meanwhile)."""
    m = p.manifest
    generation = 1
    pointer = Latest(p.bot, p.id, generation, m.content_digest, now_iso(), host(), WRITER).to_bytes()
    try:
        etag = store.put_bytes(latest_key(p.bot), pointer, if_match=p.damaged_etag)
    except PreconditionFailed:
        log.warning("bot %s: latest.json changed while it was being repaired; left as it is", p.bot)
        return p.fence, False
    except StoreError as exc:
        log.warning("bot %s: could not repair latest.json: %s", p.bot, exc)
        return p.fence, False
    log.warning("bot %s: latest.json was damaged; it now names %s", p.bot, p.id)
    return Fence(etag, generation, p.id), True


def _saved_previous(previous: Path, store: Store | None, bot: str) -> bool:
    """Whether the store still holds the snapshot `home.previous`'s marker says has its content."""
    try:
        marker = json.loads(_marker(previous).read_text())
        sid, digest = marker["snapshot"], marker["digest"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if not valid_id(sid) or store is None:
        return False
    try:
        m = Manifest.from_bytes(store.get_bytes(manifest_key(bot, sid))[0])
    except (StoreError, ValueError, TypeError):
        return False
    return digest is None or m.content_digest == digest


def swap_in(
    staging: Path, home: Path, *, saved_as: SavedAs | None = None, store: Store | None = None, bot: str = ""
) -> Path | None:
    """Replace `home` with `staging`; the old home becomes home.previous.

    An existing home.previous is deleted only when its content is in a snapshot the
    store still holds (moved aside here, removed by :func:`empty_trash`); otherwise it is
    kept as `home.previous-<time>`, returned.
    """
    previous = rollback_path(home)
    kept: Path | None = None
    if previous.exists():
        if _saved_previous(previous, store, bot):
            previous.rename(trash_path(home))  # deleted by empty_trash(), after the swap
            _marker(previous).unlink(missing_ok=True)
        else:
            kept = previous.with_name(f"{previous.name}-{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}")
            previous.rename(kept)
            with contextlib.suppress(FileNotFoundError):
                _marker(previous).rename(_marker(kept))
            log.warning("%s holds state in no snapshot: kept as %s", previous, kept)
    if home.exists():
        sid, digest = saved_as(home) if saved_as is not None else (None, None)
        home.rename(previous)
        if saved_as is not None:
            _write_marker(previous, sid, digest)
    home.parent.mkdir(parents=True, exist_ok=True)
    try:
        staging.rename(home)
    except OSError:
        if previous.exists() and not home.exists():
            previous.rename(home)  # put the home back as it was
        raise
    home.chmod(0o700)  # it holds the bot's secrets once rendered
    return kept


def _write_marker(previous: Path, sid: str | None, digest: str | None) -> None:
    with contextlib.suppress(OSError):
        _marker(previous).write_text(json.dumps({"snapshot": sid, "digest": digest, "at": now_iso()}))


def tree_id(path: Path) -> tuple[int, int] | None:
    """Which directory `path` names now (device, inode): a later rename shows as a change."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def mark_previous(home: Path, moved: tuple[int, int], saved_as: SavedAs) -> bool:
    """After a swap: record which snapshot holds home.previous's content (its marker).

    Done after the restore answered, while nothing writes the tree any more (it was moved
    aside with the gateway stopped). Only when home.previous is still the tree `moved`
    aside: a restore in between has already kept it under a dated name, and a marker
    written now would describe another tree. Until the marker exists, home.previous
    counts as unsaved (kept), so a late or lost marker never deletes anything.
    """
    previous = rollback_path(home)
    if tree_id(previous) != moved or _marker(previous).exists():
        return False
    sid, digest = saved_as(previous)
    if tree_id(previous) != moved:
        return False
    _write_marker(previous, sid, digest)
    return True


def home_saved_as(
    home: Path,
    rules: cap.Rules,
    cache: Path | None,
    known: dict[str, str],
    scratch: Path,
    fingerprint: tuple[str, str] | None = None,
) -> tuple[str | None, str | None]:
    """Which snapshot holds `home`'s content: by the stat `fingerprint` (fingerprint, id) the last
    snapshot recorded, else by the content digest among `known` (digest -> id)."""
    try:
        walked = cap.walk(home, rules)
        if fingerprint is not None and walked.fingerprint() == fingerprint[0]:
            return fingerprint[1], None
        digest = cap.capture(walked, HashCache(cache, scratch)).digest
    except (OSError, cap.DatabaseCopyFailed) as exc:
        log.warning("could not digest %s (%s): it is kept as if unsaved", home, exc)
        return None, None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return known.get(digest), digest


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
    saved_as: SavedAs | None = None,
    before_commit: Callable[[Prepared], str | None] | None = None,
) -> RestoreResult:
    """Restore the newest good snapshot (or `snapshot_id`) into `home`: prepare, then commit.

    `before_commit` completes the staging dir (the streamed databases); an error it
    returns fails the restore with the home untouched.
    Raises StoreUnreachable when the store cannot say what it holds.
    """
    prepared = prepare(
        store, bot, home, work, key=key, snapshot_id=snapshot_id, progress=progress, on_reading=on_reading
    )
    if isinstance(prepared, RestoreResult):
        return prepared
    error = before_commit(prepared) if before_commit is not None else None
    if error is not None:
        discard(prepared.staging)
        seconds = round(time.monotonic() - prepared.started, 3)
        return RestoreResult(
            "failed", bot, id=prepared.id, error=error, fence=prepared.fence, seconds=seconds
        )
    try:
        return commit(prepared, home, saved_as=saved_as or (lambda _h: (None, None)), store=store)
    except OSError as exc:
        discard(prepared.staging)
        return RestoreResult(
            "failed",
            bot,
            error=f"restore stopped, the home is as it was: {describe_os_error(exc)}",
            fence=prepared.fence,
            local=True,
        )
