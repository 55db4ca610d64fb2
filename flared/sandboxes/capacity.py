"""Pure: may a bot have a new lease of a profile now, must an idle one make room, or must it wait?

Two limits bind a profile's live leases: ``max_leases`` for all bots
together and a per-bot share (``max_leases_per_bot``, by default
``max_leases`` split evenly among the enabled bots that use the profile), so
one bot cannot take every lease from another. At a limit, an idle lease (no
command running) is reclaimed, least recently used first, before anyone
waits: a bot at its share reclaims one of its own; a bot under its share,
when the profile is full, reclaims its own or one of a bot holding more
leases than it does. Only when every candidate is running a command does the
caller wait, and the message says why, naming the profile and the limits.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class LeaseView(Protocol):
    """What the decision needs of a lease (:class:`flared.sandboxes.leases.Lease` has it)."""

    @property
    def id(self) -> str: ...
    @property
    def bot(self) -> str: ...
    @property
    def busy(self) -> int: ...
    @property
    def last_used(self) -> float: ...


@dataclass(frozen=True)
class Limits:
    profile: str
    max_leases: int
    per_bot: int
    per_bot_default: bool  # derived from max_leases and the bots using the profile
    bots: int  # enabled bots using the profile

    def per_bot_text(self) -> str:
        text = f"max_leases_per_bot {self.per_bot}"
        if self.per_bot_default:
            text += f": max_leases {self.max_leases} split over {self.bots} bot(s)"
        return text


def limits(profile: str, max_leases: int, max_leases_per_bot: int | None, bots: int) -> Limits:
    if max_leases_per_bot is not None:
        return Limits(profile, max_leases, min(max_leases_per_bot, max_leases), False, bots)
    return Limits(profile, max_leases, max(1, max_leases // max(1, bots)), True, bots)


@dataclass(frozen=True)
class Create:
    pass


@dataclass(frozen=True)
class Reclaim:
    lease_id: str


@dataclass(frozen=True)
class Wait:
    message: str  # "waiting for a sandbox: ..." (said at once)
    detail: str  # what "sandbox capacity reached: ..." says if the wait times out


Decision = Create | Reclaim | Wait


def decide(live: Sequence[LeaseView], bot: str, lim: Limits) -> Decision:
    """``live``: the profile's leases that are not gone."""
    held = Counter(x.bot for x in live)
    mine = held[bot]

    def lru(candidates: list[LeaseView]) -> Reclaim | None:
        idle = sorted((x for x in candidates if x.busy == 0), key=lambda x: x.last_used)
        return Reclaim(idle[0].id) if idle else None

    if mine >= lim.per_bot and lim.per_bot < lim.max_leases:
        own = lru([x for x in live if x.bot == bot])
        if own is not None:
            return own
        return Wait(
            f"waiting for a sandbox: bot {bot!r} has {mine} leases of profile {lim.profile!r}, "
            f"all running commands ({lim.per_bot_text()})",
            f"bot {bot!r} has {mine} leases in use, all running commands "
            f"(profile {lim.profile!r}: {lim.per_bot_text()}, max_leases {lim.max_leases})",
        )
    if len(live) >= lim.max_leases:
        richer = lru([x for x in live if x.bot == bot or held[x.bot] > mine])
        if richer is not None:
            return richer
        running = sum(1 for x in live if x.busy > 0)
        state = "running commands" if running == len(live) else f"in use ({running} running commands)"
        return Wait(
            f"waiting for a sandbox: all {len(live)} leases of profile {lim.profile!r} are {state} "
            f"(max_leases {lim.max_leases})",
            f"{len(live)} leases in use, {running} running commands "
            f"(profile {lim.profile!r} allows {lim.max_leases}, {lim.per_bot} per bot)",
        )
    return Create()
