"""One writer per bot for the stream too: `latest.json` is the fence, claimed at boot, watched after.

Litestream has no single-writer guard of its own: two machines streaming
one bot's databases to the same prefix corrupt the replica. The snapshots'
compare-and-swap on `latest.json` already decides who writes a bot, but it
is checked only when a snapshot is published. With streaming:

- a flared that restored a bot *claims* it: it moves `latest.json` (same
  snapshot, next generation, its own writer id) with a conditional write,
  so the previous writer's next look sees the move;
- every streaming flared *looks* at `latest.json` every
  `snapshots.stream.fence_check`; when it moved, the bot is fenced: its
  stream stops (and its snapshots, as before) until `flared restore` or
  `--takeover`;
- a new writer starts its stream only after one such period (plus a
  second) since its claim, so the old one has stopped before it starts.
"""

from __future__ import annotations

from flared.snapshots.catalog import Fence, read_latest
from flared.snapshots.manifest import Latest, host, latest_key, now_iso
from flared.snapshots.pipeline import WRITER
from flared.snapshots.stores import PreconditionFailed, Store


class Lost(Exception):
    """Another writer moved `latest.json` first: the message says who."""


def describe(latest: Latest | None) -> str:
    if latest is None:
        return "removed it"
    return f"moved it to {latest.id} (generation {latest.generation}, host {latest.host or '?'})"


def claim(store: Store, bot: str, fence: Fence) -> Fence | None:
    """Move `latest.json` to this writer (same snapshot, next generation); the new fence.

    A store without a pointer yet has nothing to claim: None.
    Raises :class:`Lost` when the pointer is no longer the one `fence` names.
    """
    latest, etag = read_latest(store, bot)
    if latest is None and fence.etag is None:
        return None
    if latest is None or etag != fence.etag:
        raise Lost(describe(latest))
    moved = Latest(bot, latest.id, latest.generation + 1, latest.content_digest, now_iso(), host(), WRITER)
    try:
        new_etag = store.put_bytes(latest_key(bot), moved.to_bytes(), if_match=etag)
    except PreconditionFailed:
        raise Lost(describe(read_latest(store, bot)[0])) from None
    return Fence(new_etag, moved.generation, moved.id)


def moved(store: Store, bot: str, fence: Fence) -> str | None:
    """None while `latest.json` is still the one `fence` names, else who moved it."""
    latest, etag = read_latest(store, bot)
    if etag == fence.etag:
        return None
    return describe(latest)
