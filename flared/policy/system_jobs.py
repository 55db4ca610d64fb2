"""flared's own cron jobs (``action: snapshot | restart | prune | exec``), run here.

Scheduled with croniter in the job's timezone. One run of a job at a time (a
due time that finds the previous run still going is skipped and counted).
Next-run times persist in ``<state_dir>/cron/state.json``, so a run missed
while flared was down is detected at start: run once then with
``catch_up: true``, else skipped and reported. The clock is injectable and
:meth:`SystemJobs.tick` takes the time, so tests drive schedules without
sleeping.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from flared.config.loader import LoadedConfig
from flared.config.models import CronJob
from flared.config.redact import redact_text
from flared.policy.schedules import is_agent, iso, next_run, spec_digest
from flared.sandboxes.types import ExecResult

log = logging.getLogger("flared.cron")

OUTPUT_TAIL = 2000

Clock = Callable[[], float]
Runner = Callable[[CronJob], dict[str, Any]]


class SnapshotActions(Protocol):
    """What `snapshot` and `prune` jobs need of the snapshot service."""

    def snapshot(self, bot: str, reason: str) -> dict[str, Any]: ...
    def prune(self, bot: str) -> dict[str, Any]: ...


class LeaseActions(Protocol):
    """What `exec` jobs need of the lease manager."""

    def run(self, bot: str, session_key: str | None, command: str) -> tuple[dict[str, Any], ExecResult]: ...


class GatewayActions(Protocol):
    """What `restart` jobs need of the gateways."""

    def restart(self, bot: str) -> None: ...


@dataclass
class JobState:
    name: str
    spec: str
    next_run: float | None = None
    last_run: float | None = None
    last_result: dict[str, Any] | None = None
    running: bool = False
    runs: int = 0
    skipped: int = 0

    def persisted(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "next_run": self.next_run,
            "last_run": self.last_run,
            "last_result": self.last_result,
            "runs": self.runs,
            "skipped": self.skipped,
        }


class SystemJobs:
    """Schedules and runs the system jobs of one daemon."""

    def __init__(
        self,
        loaded: LoadedConfig,
        *,
        snapshots: SnapshotActions | None = None,
        leases: LeaseActions | None = None,
        gateways: GatewayActions | None = None,
        clock: Clock = time.time,
        runner: Runner | None = None,
        threaded: bool = True,
    ) -> None:
        self.loaded = loaded
        self.snapshots = snapshots
        self.leases = leases
        self.gateways = gateways
        self.clock = clock
        self.runner: Runner = runner or self.run_action
        self.threaded = threaded
        self.path = loaded.state_dir / "cron" / "state.json"
        self.jobs: dict[str, JobState] = {}
        self.last_tick: float | None = None
        self._lock = threading.RLock()
        self._load()

    def system_jobs(self) -> dict[str, CronJob]:
        return {j.name: j for j in self.loaded.config.cron if not is_agent(j)}

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            data = {}
        for name, d in (data.get("jobs") or {}).items() if isinstance(data, dict) else []:
            with contextlib.suppress(TypeError, KeyError):
                self.jobs[name] = JobState(
                    name=name,
                    spec=d["spec"],
                    next_run=d.get("next_run"),
                    last_run=d.get("last_run"),
                    last_result=d.get("last_result"),
                    runs=int(d.get("runs") or 0),
                    skipped=int(d.get("skipped") or 0),
                )

    def _save(self) -> None:
        with self._lock:
            data = {"jobs": {n: s.persisted() for n, s in self.jobs.items()}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, self.path)

    def begin(self, now: float | None = None) -> None:
        """Reconcile persisted state with the YAML at start; handle runs missed while down."""
        now = self.clock() if now is None else now
        with self._lock:
            jobs = self.system_jobs()
            for name in list(self.jobs):
                if name not in jobs:
                    del self.jobs[name]
            for name, job in jobs.items():
                st = self.jobs.get(name)
                spec = spec_digest(job)
                if st is None or st.spec != spec or st.next_run is None:
                    self.jobs[name] = JobState(
                        name, spec, next_run=next_run(job, now) if job.enabled else None
                    )
                    if st is not None:
                        self.jobs[name].last_run, self.jobs[name].last_result = st.last_run, st.last_result
                        self.jobs[name].runs, self.jobs[name].skipped = st.runs, st.skipped
                    continue
                if job.enabled and st.next_run <= now:  # due while flared was down
                    if job.catch_up:
                        log.info("cron %s: a run was missed while flared was down; catching up", name)
                        st.next_run = now
                    else:
                        log.info("cron %s: a run was missed while flared was down; skipped", name)
                        st.skipped += 1
                        st.last_result = {
                            "result": "skipped",
                            "reason": "missed while flared was down (catch_up: false)",
                            "at": iso(st.next_run),
                        }
                        st.next_run = next_run(job, now, st.last_run)
        self._save()

    def update(self, loaded: LoadedConfig) -> None:
        """A new config: new jobs scheduled, changed schedules recomputed, removed ones dropped."""
        now = self.clock()
        with self._lock:
            self.loaded = loaded
            jobs = self.system_jobs()
            for name in list(self.jobs):
                if name not in jobs:
                    del self.jobs[name]
            for name, job in jobs.items():
                st = self.jobs.get(name)
                spec = spec_digest(job)
                if st is None:
                    self.jobs[name] = JobState(
                        name, spec, next_run=next_run(job, now) if job.enabled else None
                    )
                elif st.spec != spec:
                    st.spec = spec
                    st.next_run = next_run(job, now, st.last_run) if job.enabled else None
        self._save()

    # ------------------------------------------------------------------ running system jobs

    def tick(self, now: float | None = None) -> list[str]:
        """Start every due job; return the names started. Called each second by the loop."""
        now = self.clock() if now is None else now
        started: list[str] = []
        changed = False
        with self._lock:
            self.last_tick = now
            jobs = self.system_jobs()
            for name, st in self.jobs.items():
                job = jobs.get(name)
                if job is None or not job.enabled or st.next_run is None or st.next_run > now:
                    continue
                changed = True
                if st.running:
                    st.skipped += 1
                    log.warning("cron %s: still running at its next due time; this run is skipped", name)
                    st.next_run = next_run(job, now, st.last_run)
                    continue
                st.running = True
                st.last_run = now
                st.next_run = next_run(job, now, now)
                started.append(name)
        if changed:
            self._save()
        for name in started:
            job = jobs[name]
            if self.threaded:
                threading.Thread(target=self._run, args=(job, now), name=f"cron-{name}", daemon=True).start()
            else:
                self._run(job, now)
        return started

    def _run(self, job: CronJob, started_at: float) -> None:
        t0 = time.monotonic()
        try:
            result = self.runner(job)
        except Exception as exc:
            log.exception("cron %s failed", job.name)
            result = {"result": "failed", "error": str(exc) or type(exc).__name__}
        result = {**result, "at": iso(started_at), "seconds": round(time.monotonic() - t0, 3)}
        level = logging.INFO if result.get("result") == "ok" else logging.ERROR
        log.log(level, "cron %s: %s", job.name, result.get("result"))
        with self._lock:
            st = self.jobs.get(job.name)
            if st is not None:
                st.running = False
                st.runs += 1
                st.last_result = result
        self._save()

    def run_action(self, job: CronJob) -> dict[str, Any]:
        """What a system job does, through the daemon's services."""
        bots = [job.bot] if job.bot else [b.name for b in self.loaded.config.bots if b.enabled]
        if job.action in ("snapshot", "prune"):
            svc = self.snapshots
            if svc is None:
                return {"result": "skipped", "reason": "the snapshot service is not running"}
            results: dict[str, dict[str, Any]] = {}
            for bot in bots:
                if job.action == "snapshot":
                    r = svc.snapshot(bot, "cron")
                    results[bot] = {
                        k: r[k] for k in ("result", "id", "reason", "error") if r.get(k) is not None
                    }
                else:
                    r = svc.prune(bot)
                    results[bot] = (
                        {"result": "failed", "error": r["error"]}
                        if r.get("error")
                        else {
                            "result": "ok",
                            "deleted": len(r.get("expired") or []),
                            "leftovers": len(r.get("orphans") or []),
                        }
                    )
            bad = [b for b, r in results.items() if r.get("result") in {"failed", "fenced"}]
            return {"result": "failed" if bad else "ok", "bots": results}
        if job.action == "restart":
            assert job.bot is not None
            if self.gateways is None:
                return {"result": "skipped", "reason": "the gateways are not managed here"}
            self.gateways.restart(job.bot)
            return {"result": "ok", "bots": {job.bot: "restarted"}}
        if job.action == "exec":
            leases = self.leases
            if leases is None:
                return {"result": "skipped", "reason": "the sandbox service is not running"}
            assert job.bot is not None and job.command
            _lease, res = leases.run(job.bot, f"cron:{job.name}", shlex.join(job.command))
            return {
                "result": "ok" if res.exit_code == 0 else "failed",
                "exit_code": res.exit_code,
                "timed_out": res.timed_out,
                "stdout": redact_text(res.stdout[-OUTPUT_TAIL:], self.loaded.config),
                "stderr": redact_text(res.stderr[-OUTPUT_TAIL:], self.loaded.config),
            }
        return {"result": "failed", "error": f"unknown action {job.action!r}"}

    def entry(self, job: CronJob, now: float) -> dict[str, Any]:
        """A system job's part of `flared status`."""
        with self._lock:
            st = self.jobs.get(job.name)
            return {
                "action": job.action,
                "catch_up": job.catch_up,
                "running": bool(st and st.running),
                "next_run": iso(st.next_run) if st else None,
                "next_run_in_s": round(st.next_run - now, 1) if st and st.next_run else None,
                "last_run": iso(st.last_run) if st else None,
                "last_result": st.last_result if st else None,
                "runs": st.runs if st else 0,
                "skipped": st.skipped if st else 0,
            }
