"""Pure: a gateway that stopped answering -> restart it.

A stopped (SIGSTOP) or deadlocked gateway keeps its process: supervisord says
RUNNING and the files Hermes wrote while it still ran say ``running``, so
neither the reconcile nor :func:`flared.gateways.judge` can see it. flared
probes each ready gateway instead (its api_server's ``GET /health`` with a
deadline, and the age of Hermes' loop heartbeat) and restarts it after
``liveness.failures`` failed probes in a row. These functions decide; the
probing and the restart are :meth:`flared.gateways.Gateways.probe_liveness`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class HangWatch:
    """What flared has seen of one gateway run's probes."""

    pid: int = 0
    failures: int = 0  # failed probes in a row
    error: str | None = None  # what the last failed probe found
    since: float | None = None  # when the first of them failed

    def as_dict(self, now: float, needed: int) -> dict[str, Any]:
        return {
            "failures": self.failures,
            "restart_after": needed,
            "error": self.error,
            "since_s": round(now - self.since, 1) if self.since is not None else None,
        }


def probe_error(*, health: str | None, heartbeat_age: float | None, heartbeat_stale: float) -> str | None:
    """What one probe found wrong, or None when the gateway answered.

    ``health`` is what ``GET /health`` got wrong (None: it answered, or the
    bot has no API); ``heartbeat_age`` is the age of *this* run's heartbeat
    (None: it has written none yet, which says nothing).
    """
    if health is not None:
        return health
    if heartbeat_age is not None and heartbeat_age > heartbeat_stale:
        return f"Hermes' heartbeat is {heartbeat_age:.0f} s old (it rewrites it every 30 s)"
    return None


def assess(
    watch: HangWatch, pid: int, error: str | None, *, now: float, needed: int
) -> tuple[HangWatch, bool]:
    """One probe of run ``pid`` -> (what to remember, restart it now?).

    A new run starts with a clean slate; one answer forgets earlier failures,
    so a gateway that was only slow for a moment is left alone.
    """
    if pid != watch.pid:
        watch = HangWatch(pid=pid)
    if error is None:
        return HangWatch(pid=pid), False
    failures = watch.failures + 1
    after = HangWatch(pid, failures, error, watch.since if watch.since is not None else now)
    return after, failures >= needed


def not_answering(watch: HangWatch | None, needed: int) -> str | None:
    """The status line of a gateway whose last probes failed, or None."""
    if watch is None or not watch.failures:
        return None
    return (
        f"not answering: {watch.error} ({watch.failures} failed probe{'s' if watch.failures != 1 else ''} "
        f"in a row; flared restarts it after {needed})"
    )
