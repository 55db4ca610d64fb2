"""What the store holds for a bot: its `latest` pointer, its snapshots, and retention.

Reading and pruning only; taking a snapshot is :mod:`.pipeline`, putting one
back is :mod:`.restore`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from flared.config.models import SnapshotsConfig
from flared.snapshots.manifest import (
    Latest,
    Manifest,
    blob_key,
    latest_key,
    manifest_key,
    snapshots_prefix,
    valid_id,
)
from flared.snapshots.retention import ORPHAN_GRACE_S, Listed, plan_deletions
from flared.snapshots.stores import NotFound, Store, StoreError


@dataclass(frozen=True)
class Fence:
    """What this writer last knew of `latest.json`; a snapshot may move it only from here."""

    etag: str | None  # None: the store holds no snapshot of this bot
    generation: int = 0
    snapshot_id: str | None = None


def own_unanswered_write(
    fence: Fence, latest: Latest | None, etag: str | None, unconfirmed: Iterable[str]
) -> Fence | None:
    """The fence to continue from when `latest.json` moved from `fence` by this machine's own
    write whose outcome it never learned (the reply was lost, and so was the read-back): it
    names a snapshot this state dir uploaded and never saw published, one generation on.
    None when it moved otherwise (another writer)."""
    if latest is None or etag is None or latest.id not in set(unconfirmed):
        return None
    if latest.generation != fence.generation + 1:
        return None
    return Fence(etag, latest.generation, latest.id)


class DamagedPointer(StoreError):
    """`latest.json` is there but unreadable: nobody may guess which snapshot it meant."""

    def __init__(self, bot: str, etag: str, detail: str) -> None:
        super().__init__(
            f"{latest_key(bot)} is damaged ({detail}): `flared snapshots --bot {bot}` lists the "
            f"snapshots; `flared restore --bot {bot} --id ID` restores one and repairs the pointer"
        )
        self.etag = etag


def read_latest(store: Store, bot: str) -> tuple[Latest | None, str | None]:
    """The pointer and its ETag; (None, None) when the store holds nothing for the bot."""
    try:
        data, etag = store.get_bytes(latest_key(bot))
    except NotFound:
        return None, None
    try:
        return Latest.from_bytes(data), etag
    except (ValueError, TypeError) as exc:
        raise DamagedPointer(bot, etag, str(exc)[:120]) from None


def read_latest_or_damaged(store: Store, bot: str) -> tuple[Latest | None, str | None, DamagedPointer | None]:
    """Like :func:`read_latest`, but a damaged pointer is returned, not raised (listing, repair)."""
    try:
        latest, etag = read_latest(store, bot)
    except DamagedPointer as exc:
        return None, exc.etag, exc
    return latest, etag, None


def encryption_key(policy: SnapshotsConfig) -> str | None:
    key = policy.encryption.key
    return key.get_secret_value() if key is not None else None


def left_out(policy: SnapshotsConfig) -> list[str]:
    """What snapshots leave out by pattern: the user's `exclude`, and the databases Litestream
    streams (they come back from the stream, at the position the manifest records)."""
    return [*policy.exclude, *([policy.stream.pattern] if policy.stream.enabled else [])]


def read_manifest(store: Store, bot: str, snapshot_id: str) -> Manifest:
    """A snapshot's manifest (NotFound, StoreError; ValueError when it is not a manifest)."""
    return Manifest.from_bytes(store.get_bytes(manifest_key(bot, snapshot_id))[0])


def list_ids(store: Store, bot: str) -> list[Listed]:
    groups: dict[str, dict[str, Any]] = {}
    prefix = snapshots_prefix(bot)
    for obj in store.list(prefix):
        name = obj.key[len(prefix) :]
        sid, dot, ext = name.rpartition(".")
        if not dot or ext not in {"sqsh", "json"} or not valid_id(sid):
            continue
        g = groups.setdefault(sid, {"blob": False, "manifest": False, "modified": 0.0, "size": 0})
        g["blob" if ext == "sqsh" else "manifest"] = True
        g["modified"] = max(g["modified"], obj.modified)
        if ext == "sqsh":
            g["size"] = obj.size
    return [Listed(sid, g["blob"], g["manifest"], g["modified"]) for sid, g in groups.items()]


def list_snapshots(store: Store, bot: str) -> list[dict[str, Any]]:
    """Complete snapshots, newest first, with what their manifests say (from the listing: a
    damaged `latest.json` marks none of them latest, see :func:`pointer_problem`)."""
    latest, _, _ = read_latest_or_damaged(store, bot)
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


def pointer_problem(store: Store, bot: str) -> str | None:
    """What is wrong with the bot's `latest.json`, if anything (for listings)."""
    latest, _, damaged = read_latest_or_damaged(store, bot)
    if damaged is not None:
        return str(damaged)
    if latest is not None and not valid_id(latest.id):
        return (
            f"{latest_key(bot)} names {latest.id[:80]!r}, which is not a snapshot id: a restore falls "
            f"back to the newest snapshot listed; `flared restore --bot {bot} --id ID` repairs it"
        )
    return None


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
    if latest is not None and not valid_id(latest.id):
        return {"expired": [], "orphans": []}  # nothing is known to be newest: delete nothing
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
