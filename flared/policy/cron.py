"""Cron from hermes-flare.yaml: one loop over flared's own jobs and the agents' prompts.

Two kinds of ``cron:`` entries, each handled by its own class:

* **system jobs** (``action: snapshot | restart | prune | exec``) run here:
  :class:`flared.policy.system_jobs.SystemJobs`;
* **agent jobs** (``bot`` + ``prompt``) are reconciled into the bot's Hermes
  cron store and run by its gateway: :class:`flared.policy.agent_jobs.AgentJobs`.

:class:`CronService` ticks both from one thread, forwards config changes and
reports them in YAML order.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Protocol

from flared.config.loader import LoadedConfig
from flared.policy.agent_jobs import AgentBotState, AgentJobs, EditableHomes
from flared.policy.schedules import is_agent, iso
from flared.policy.system_jobs import (
    Clock,
    GatewayActions,
    LeaseActions,
    Runner,
    SnapshotActions,
    SystemJobs,
)

log = logging.getLogger("flared.cron")

TICK = 1.0
AGENT_CHECK_EVERY = 5.0  # how often each ready bot's Hermes job store is compared with the YAML


class GatewaysForCron(GatewayActions, EditableHomes, Protocol):
    """The gateway side as cron uses it: restart jobs, and which homes may be edited."""


class CronService:
    """System-job scheduler and agent-job reconciler for one daemon, on one thread."""

    def __init__(
        self,
        loaded: LoadedConfig,
        *,
        snapshots: SnapshotActions | None = None,
        leases: LeaseActions | None = None,
        gateways: GatewaysForCron | None = None,
        clock: Clock = time.time,
        runner: Runner | None = None,
        threaded: bool = True,
    ) -> None:
        self.loaded = loaded
        self.system = SystemJobs(
            loaded,
            snapshots=snapshots,
            leases=leases,
            gateways=gateways,
            clock=clock,
            runner=runner,
            threaded=threaded,
        )
        self.agents = AgentJobs(loaded, gateways, clock=clock)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_agent_check = 0.0
        self._agent_wanted = threading.Event()

    @property
    def clock(self) -> Clock:
        return self.system.clock

    @clock.setter
    def clock(self, clock: Clock) -> None:
        self.system.clock = self.agents.clock = clock

    @property
    def agent(self) -> dict[str, AgentBotState]:
        """Per-bot state of the agent-job sync."""
        return self.agents.bots

    # ------------------------------------------------------------------ driving both

    def begin(self, now: float | None = None) -> None:
        self.system.begin(now)

    def tick(self, now: float | None = None) -> list[str]:
        return self.system.tick(now)

    def check_agent_jobs(self, *, force: bool = False) -> None:
        self.agents.check_agent_jobs(force=force)

    def update(self, loaded: LoadedConfig) -> None:
        """A new config: system schedules recomputed, agent jobs re-synced on the next tick."""
        self.loaded = loaded
        self.system.update(loaded)
        self.agents.loaded = loaded
        self._agent_wanted.set()

    # ------------------------------------------------------------------ loop

    def start(self) -> None:
        self.begin()
        self._thread = threading.Thread(target=self._loop, name="cron", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
                now = time.monotonic()
                if self._agent_wanted.is_set() or now - self._last_agent_check >= AGENT_CHECK_EVERY:
                    self._agent_wanted.clear()
                    self._last_agent_check = now
                    self.check_agent_jobs()
            except Exception:
                log.exception("cron tick failed")
            self._stop.wait(TICK)

    # ------------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        now = self.clock()
        jobs: list[dict[str, Any]] = []
        for job in self.loaded.config.cron:
            entry: dict[str, Any] = {
                "name": job.name,
                "kind": "agent" if is_agent(job) else "system",
                "schedule": job.schedule,
                "timezone": job.timezone,
                "enabled": job.enabled,
                "bot": job.bot,
                "source": "yaml",
            }
            entry.update(self.agents.entry(job, now) if is_agent(job) else self.system.entry(job, now))
            jobs.append(entry)
        jobs += self.agents.own_jobs()
        return {"last_tick": iso(self.system.last_tick), "jobs": jobs}
