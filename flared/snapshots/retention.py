"""Which snapshots to delete: a pure function of the listing and the policy."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

#: A blob or manifest nobody points to is left alone this long: it may be another
#: writer's upload in flight. Our own crashed uploads are known by id and go at once.
ORPHAN_GRACE_S = 3600.0


def id_time(snapshot_id: str) -> float | None:
    """Creation time encoded in an id (`20261124T055012Z-3f9a1c`), or None if foreign."""
    try:
        return datetime.strptime(snapshot_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


@dataclass(frozen=True)
class Listed:
    """One snapshot id as the store lists it."""

    id: str
    has_blob: bool
    has_manifest: bool
    modified: float  # newest LastModified of its objects


@dataclass(frozen=True)
class Plan:
    expired: list[str]  # complete snapshots outside the policy
    orphans: list[str]  # partial or never-published uploads


def plan_deletions(
    listed: Iterable[Listed],
    *,
    latest_id: str | None,
    keep_last: int,
    max_age: float | None,
    now: float,
    protected: Iterable[str] = (),
    ours_in_flight: Iterable[str] = (),
) -> Plan:
    """Keep the newest `keep_last`; beyond them delete what is older than `max_age`.

    Never `latest`, never a protected id (a restore is reading it). Orphans: a
    blob without manifest or a manifest without blob, complete snapshots
    newer than `latest` that were never published, and our own uploads that
    never got confirmed as published; deleted at once when they are ours,
    after :data:`ORPHAN_GRACE_S` otherwise.
    """
    keep = {i for i in (latest_id, *protected) if i}
    own = set(ours_in_flight)
    items = sorted(listed, key=lambda x: x.id, reverse=True)
    latest_time = id_time(latest_id) if latest_id else None
    complete, orphans = [], []
    for item in items:
        if item.id in keep:
            continue
        unpublished = latest_time is not None and (id_time(item.id) or 0) > latest_time
        partial = not (item.has_blob and item.has_manifest)
        if partial or unpublished or item.id in own:
            if item.id in own or now - item.modified > ORPHAN_GRACE_S:
                orphans.append(item.id)
            continue
        complete.append(item)
    # `latest` counts towards the newest N it keeps.
    budget = keep_last - (1 if latest_id else 0)
    expired = []
    for index, item in enumerate(complete):
        if index < budget:
            continue
        created = id_time(item.id) or item.modified
        if max_age is not None and now - created > max_age:
            expired.append(item.id)
    return Plan(expired=expired, orphans=orphans)
