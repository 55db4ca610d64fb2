"""Put a bot's newest good snapshot (or a chosen one) back in place of its Hermes home.

The old home is kept as ``home.previous``; a snapshot that fails its checks
is skipped for the next older one, and the result says so.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from flared.snapshots import crypto, pack
from flared.snapshots.catalog import Fence, list_ids, read_latest
from flared.snapshots.manifest import Manifest, blob_key, manifest_key, now_iso
from flared.snapshots.pipeline import clean_work
from flared.snapshots.stores import NotFound, Progress, Store, StoreError, StoreUnreachable
from flared.snapshots.stores.local import file_sha256

log = logging.getLogger("flared.snapshots")


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
