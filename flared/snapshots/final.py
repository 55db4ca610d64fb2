"""The final snapshots at a stop: their deadline, and what their results mean.

At a stop supervisord (the image's, or the one `flared up` starts) stops the
gateways first, then sends flared SIGTERM and SIGKILLs it ``stopwaitsecs``
later; the container runtime SIGKILLs whatever is left its own grace period
after its SIGTERM (Cloudflare: 15 minutes; `podman stop`/`docker stop`: 10 s
unless ``-t``). A SIGKILL says nothing about what was lost, so the final
snapshots get ``snapshots.shutdown_budget``, cut to what supervisord leaves
(its ``stopwaitsecs`` for flared less :data:`EXIT_MARGIN_S`): flared always
exits by itself, says which deadline was hit, and exits non-zero when a final
snapshot that was due failed or did not finish.

Stdlib only: `flared up`'s watcher and `flared stop` read the results too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: What flared keeps of supervisord's stopwaitsecs to write its stop record and exit.
EXIT_MARGIN_S = 5.0

#: Results of a final snapshot that was due and did not publish the bot's state.
NOT_SAVED = frozenset({"failed", "timed out"})


@dataclass(frozen=True)
class Deadline:
    """How long the final snapshots may take, and which setting said so."""

    seconds: float
    source: str

    def __str__(self) -> str:
        return f"{self.seconds:g} s ({self.source})"


def final_snapshot_deadline(budget: float, stopwaitsecs: int | None) -> Deadline:
    """``snapshots.shutdown_budget``, unless supervisord would SIGKILL flared before it ends."""
    own = Deadline(budget, "snapshots.shutdown_budget")
    if stopwaitsecs is None:
        return own
    room = max(stopwaitsecs - EXIT_MARGIN_S, 1.0)
    if room >= budget:
        return own
    return Deadline(
        room,
        f"supervisord's stopwaitsecs for flared, {stopwaitsecs} s, less {EXIT_MARGIN_S:g} s to exit",
    )


def not_saved(finals: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The final snapshots that were due and did not happen: what makes a stop exit non-zero."""
    return [r for r in finals if r.get("result") in NOT_SAVED]


def not_saved_line(finals: list[dict[str, Any]]) -> str | None:
    """One line for the end of a stop whose final snapshots did not all happen, else None."""
    bad = not_saved(finals)
    if not bad:
        return None
    bots = ", ".join(str(r.get("bot")) for r in bad)
    return (
        f"the final snapshot of {bots} did not happen (why: above): the store keeps the snapshot "
        "before it (if any); what changed since is only on this disk (`flared snapshot` tries again)"
    )
