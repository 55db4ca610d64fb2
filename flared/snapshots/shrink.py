"""When a home lost most of what the snapshot it descends from held: not published as `latest`.

A home deleted while its gateway runs (`rm -rf <state>/bots/B/home`) is
re-rendered by flared with a config and little else; published, it would
replace every conversation in `latest` with a few kilobytes. The rule, in
docs/snapshots.md, compares the captured home with the manifest of its
*basis* (the snapshot it was restored from, else `latest`):

- a database the basis held is gone from the home (Hermes never deletes
  one: `state.db` holds every session), or
- the home's content (databases by their consistent copy) is under a
  quarter of the basis' and at least 256 KiB smaller: deleting sessions,
  memories or a few files stays well above that; a home re-created around a
  fresh `state.db` does not.

Pure: the caller reads the manifest and says which paths still exist.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from flared.config.units import human_bytes
from flared.snapshots.manifest import Manifest

#: Content below this fraction of the basis' counts as lost ...
FRACTION = 0.25
#: ... when at least this much went (small homes swing by whole files).
MIN_LOST_BYTES = 256 * 1024


def losses(
    basis: Manifest,
    databases: Iterable[str],
    raw_size: int,
    exists: Callable[[str], bool],
    *,
    compare_size: bool = True,
) -> list[str]:
    """What the home lost of `basis`, in words; empty when it may be published.

    `databases`: what this capture holds as databases; `exists(rel)`: whether a path is still
    in the home (a database left out by a new `snapshots.exclude` is not lost).
    `compare_size` False: the basis' size counts what this capture leaves out on purpose (the
    first snapshot after streaming was turned on: the databases now live in the stream).
    """
    now = set(databases)
    gone = [d for d in basis.databases if d not in now and not exists(d)]
    out = []
    if gone:
        out.append(f"{', '.join(gone)} {'is' if len(gone) == 1 else 'are'} gone")
    if compare_size and raw_size < basis.raw_size * FRACTION and basis.raw_size - raw_size >= MIN_LOST_BYTES:
        out.append(f"{human_bytes(raw_size)} of content left of {human_bytes(basis.raw_size)}")
    return out


def refusal(bot: str, basis: Manifest, latest_id: str, lost: list[str]) -> str:
    """The reason a shrunk home was not published, with both ways out."""
    restore = f"flared restore --bot {bot}" + ("" if basis.id == latest_id else f" --id {basis.id}")
    return (
        f"not published: this home lost most of what snapshot {basis.id} held ({'; '.join(lost)}); "
        f"latest stays {latest_id}. `{restore}` puts that snapshot back (this home is kept as "
        f"home.previous); if the loss is meant, `flared snapshot --bot {bot} --accept-shrink` publishes it"
    )
