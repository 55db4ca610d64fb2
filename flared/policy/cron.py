"""Cron from hermes-flare.yaml: flared's own jobs, and the agents' scheduled prompts.

Two kinds of ``cron:`` entries:

* **system jobs** (``action: snapshot | restart | prune | exec``) run here,
  scheduled with croniter in the job's timezone. One run of a job at a time
  (a due time that finds the previous run still going is skipped and
  counted). Next-run times persist in ``<state_dir>/cron/state.json``, so a
  run missed while flared was down is detected at start: run once then with
  ``catch_up: true``, else skipped and reported.
* **agent jobs** (``bot`` + ``prompt``) are reconciled into that bot's own
  Hermes cron store (see :mod:`flared.hermes_cron`) once its state is
  restored; Hermes' gateway runs them. Jobs flared made are marked, so jobs
  users create in chat are never touched.

The scheduler's clock is injectable and :meth:`CronService.tick` takes the
time, so tests drive schedules without sleeping.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from croniter import croniter

from flared.config import CronJob, parse_duration
from flared.hermes import BotPaths
from flared.hermes_cron import MARK, is_ours, schedule_key
from flared.loader import LoadedConfig
from flared.redact import redact_text

if TYPE_CHECKING:
    from flared.daemon import Daemon

log = logging.getLogger("flared.cron")

TICK = 1.0
AGENT_CHECK_EVERY = 5.0  # how often each ready bot's Hermes job store is compared with the YAML
AGENT_SYNC_TIMEOUT = 60.0
OUTPUT_TAIL = 2000

Clock = Callable[[], float]


# --------------------------------------------------------------------------- schedules


def is_agent(job: CronJob) -> bool:
    return job.prompt is not None


def _every(schedule: str) -> float | None:
    text = schedule.strip()
    if text.lower().startswith("every"):
        return parse_duration(text[5:].strip())
    return None


def next_run(job: CronJob, after: float, last_run: float | None = None) -> float:
    """The first scheduled time strictly after ``after`` (epoch seconds).

    ``every`` schedules count from the last run (or from ``after`` when the
    job never ran); cron expressions are evaluated in the job's timezone, so
    ``0 9 * * *`` means 09:00 there, across DST changes.
    """
    interval = _every(job.schedule)
    if interval is not None:
        base = last_run if last_run is not None else after
        nxt = base + interval
        while nxt <= after:
            nxt += interval
        return nxt
    start = datetime.fromtimestamp(after, ZoneInfo(job.timezone))
    return float(croniter(job.schedule, start).get_next(float))


def spec_digest(job: CronJob) -> str:
    """Changes when a job's schedule changes: its next run is recomputed then."""
    text = json.dumps([job.schedule, job.timezone, job.enabled], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def hermes_schedule(job: CronJob) -> str:
    """A schedule Hermes' own parser accepts: cron expressions as is, `every` in whole minutes."""
    interval = _every(job.schedule)
    if interval is None:
        return " ".join(job.schedule.split())
    if interval < 60 or interval % 60:
        raise ValueError(
            f"agent job {job.name!r}: Hermes runs agent jobs at minute granularity; "
            f"use a whole number of minutes (e.g. 'every 5m'), not {job.schedule!r}"
        )
    return f"every {int(interval // 60)}m"


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat() if ts is not None else None


# --------------------------------------------------------------------------- system jobs


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


@dataclass
class AgentBotState:
    synced_at: float | None = None
    error: str | None = None
    errors: dict[str, str] = field(default_factory=dict)
    jobs: dict[str, Any] = field(default_factory=dict)
    timezone: str | None = None
    static_errors: set[str] = field(default_factory=set)  # YAML jobs Hermes cannot express
    failed_for: tuple[str, Any] | None = None  # inputs of the last sync that failed


Runner = Callable[[CronJob], dict[str, Any]]


class CronService:
    """System-job scheduler and agent-job reconciler for one daemon."""

    def __init__(
        self,
        loaded: LoadedConfig,
        daemon: Any = None,
        *,
        clock: Clock = time.time,
        runner: Runner | None = None,
        threaded: bool = True,
    ) -> None:
        self.loaded = loaded
        self.daemon = daemon
        self.clock = clock
        self.runner: Runner = runner or self.run_action
        self.threaded = threaded
        self.path = loaded.state_dir / "cron" / "state.json"
        self.jobs: dict[str, JobState] = {}
        self.agent: dict[str, AgentBotState] = {}
        self.last_tick: float | None = None
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_agent_check = 0.0
        self._agent_wanted = threading.Event()
        self._load()

    # ------------------------------------------------------------------ config

    def system_jobs(self) -> dict[str, CronJob]:
        return {j.name: j for j in self.loaded.config.cron if not is_agent(j)}

    def agent_jobs(self) -> list[CronJob]:
        return [j for j in self.loaded.config.cron if is_agent(j)]

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
                            "at": _iso(st.next_run),
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
        self._agent_wanted.set()

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
        result = {**result, "at": _iso(started_at), "seconds": round(time.monotonic() - t0, 3)}
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
        d = self.daemon
        bots = [job.bot] if job.bot else [b.name for b in self.loaded.config.bots if b.enabled]
        if job.action in ("snapshot", "prune"):
            svc = getattr(d, "snapshots", None)
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
            d.restart_gateway(job.bot)
            return {"result": "ok", "bots": {job.bot: "restarted"}}
        if job.action == "exec":
            leases = getattr(d, "leases", None)
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

    # ------------------------------------------------------------------ agent jobs

    def desired_agent_jobs(self, bot: str) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """The Hermes-side jobs a bot should have, and YAML jobs that cannot be expressed."""
        out: list[dict[str, Any]] = []
        errors: dict[str, str] = {}
        for job in self.agent_jobs():
            if job.bot != bot:
                continue
            try:
                schedule = hermes_schedule(job)
            except ValueError as exc:
                errors[job.name] = str(exc)
                continue
            out.append(
                {
                    "name": job.name,
                    "prompt": job.prompt,
                    "schedule": schedule,
                    "deliver": job.deliver,
                    "enabled": job.enabled,
                }
            )
        return out, errors

    def agent_bots(self) -> list[str]:
        """Bots whose Hermes home may be edited now: enabled, restored, not held."""
        d = self.daemon
        ready = getattr(d, "ready", None)
        held: set[str] = getattr(d, "held", set())
        names = [b.name for b in self.loaded.config.bots if b.enabled]
        return [n for n in names if (ready is None or n in ready) and n not in held]

    def check_agent_jobs(self, *, force: bool = False) -> None:
        for bot in self.agent_bots():
            try:
                self._check_bot(bot, force=force)
            except Exception as exc:
                log.exception("cron: agent jobs of bot %s", bot)
                self.agent.setdefault(bot, AgentBotState()).error = str(exc)

    def _check_bot(self, bot: str, *, force: bool) -> None:
        st = self.agent.setdefault(bot, AgentBotState())
        desired, errors = self.desired_agent_jobs(bot)
        jobs_file = BotPaths.of(self.loaded.state_dir, bot).home / "cron" / "jobs.json"
        if not force and not _needs_sync(jobs_file, desired):
            st.errors = {**errors, **{k: v for k, v in st.errors.items() if k not in st.static_errors}}
            st.static_errors = set(errors)
            return
        signature = (json.dumps(desired, sort_keys=True), _stat(jobs_file))
        if not force and st.failed_for == signature:
            return  # the same inputs failed last time: wait for the YAML or the store to change
        self.sync_bot(bot, desired, errors)
        failed = st.error is not None or bool(set(st.errors) - set(errors))
        st.failed_for = (signature[0], _stat(jobs_file)) if failed else None

    def sync_bot(self, bot: str, desired: list[dict[str, Any]], errors: dict[str, str]) -> AgentBotState:
        """Run :mod:`flared.hermes_cron` in the bot's home; record what it reports."""
        st = self.agent.setdefault(bot, AgentBotState())
        home = BotPaths.of(self.loaded.state_dir, bot).home
        env = {**os.environ, "HERMES_HOME": str(home)}
        proc = subprocess.run(
            [sys.executable, "-m", "flared.hermes_cron"],
            input=json.dumps({"jobs": desired}),
            capture_output=True,
            text=True,
            env=env,
            timeout=AGENT_SYNC_TIMEOUT,
            check=False,
        )
        try:
            out = json.loads(proc.stdout)
        except ValueError:
            tail = redact_text(proc.stderr.strip()[-500:], self.loaded.config)
            st.error = f"Hermes cron sync failed (exit {proc.returncode}): {tail}"
            log.error("cron: bot %s: %s", bot, st.error)
            return st
        if "fatal" in out:
            st.error = f"Hermes cron sync failed: {out['fatal']}"
            log.error("cron: bot %s: %s", bot, st.error)
            return st
        st.error = None
        st.errors = {**errors, **out.get("errors", {})}
        st.jobs = out.get("jobs", {})
        st.timezone = out.get("timezone")
        st.static_errors = set(errors)
        st.synced_at = self.clock()
        for what in ("created", "updated", "removed"):
            for name in out.get(what, []):
                log.info("cron: bot %s: agent job %s %s in Hermes", bot, name, what)
        for name, err in st.errors.items():
            log.error("cron: bot %s: agent job %s: %s", bot, name, err)
        return st

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
        with self._lock:
            for job in self.loaded.config.cron:
                entry: dict[str, Any] = {
                    "name": job.name,
                    "kind": "agent" if is_agent(job) else "system",
                    "schedule": job.schedule,
                    "timezone": job.timezone,
                    "enabled": job.enabled,
                    "bot": job.bot,
                }
                if is_agent(job):
                    entry.update(self._agent_entry(job, now))
                else:
                    st = self.jobs.get(job.name)
                    entry.update(
                        {
                            "action": job.action,
                            "catch_up": job.catch_up,
                            "running": bool(st and st.running),
                            "next_run": _iso(st.next_run) if st else None,
                            "next_run_in_s": round(st.next_run - now, 1) if st and st.next_run else None,
                            "last_run": _iso(st.last_run) if st else None,
                            "last_result": st.last_result if st else None,
                            "runs": st.runs if st else 0,
                            "skipped": st.skipped if st else 0,
                        }
                    )
                jobs.append(entry)
        return {"last_tick": _iso(self.last_tick), "jobs": jobs}

    def _agent_entry(self, job: CronJob, now: float) -> dict[str, Any]:
        assert job.bot is not None
        st = self.agent.get(job.bot)
        out: dict[str, Any] = {"deliver": job.deliver, "synced": False}
        if st is None:
            out["note"] = "waiting for the bot's state to be restored"
            return out
        if st.error:
            out["error"] = st.error
        if job.name in st.errors:
            out["error"] = st.errors[job.name]
        hermes = st.jobs.get(job.name)
        if hermes:
            out.update(
                {
                    "synced": True,
                    "hermes_id": hermes.get("id"),
                    "next_run": hermes.get("next_run_at"),
                    "last_run": hermes.get("last_run_at"),
                    "last_result": hermes.get("last_status"),
                    "last_error": hermes.get("last_error"),
                }
            )
        note = timezone_note(job, st.timezone, now)
        if note:
            out["warning"] = note
        return out


def timezone_note(job: CronJob, hermes_tz: str | None, now: float) -> str | None:
    """Hermes runs a bot's cron expressions in the bot's timezone; say so when it differs."""
    if _every(job.schedule) is not None:
        return None
    when = datetime.fromtimestamp(now, UTC)
    want = when.astimezone(ZoneInfo(job.timezone)).utcoffset()
    have = when.astimezone(ZoneInfo(hermes_tz)).utcoffset() if hermes_tz else when.astimezone().utcoffset()
    if want == have:
        return None
    return (
        f"Hermes runs this bot's cron expressions in {hermes_tz or 'the server timezone'}, not "
        f"{job.timezone}; set `timezone: {job.timezone}` under the bot's `hermes:` section"
    )


def _needs_sync(jobs_file: Path, desired: list[dict[str, Any]]) -> bool:
    """Cheap read-only check (Hermes writes jobs.json atomically): do flared's jobs match?"""
    try:
        data = json.loads(jobs_file.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        return bool(desired)
    except (OSError, ValueError):
        return True
    jobs = data.get("jobs", []) if isinstance(data, dict) else data
    if not isinstance(jobs, list):
        return True
    ours = {j[MARK]["name"]: j for j in jobs if isinstance(j, dict) and is_ours(j)}
    if set(ours) != {d["name"] for d in desired}:
        return True
    for d in desired:
        j = ours[d["name"]]
        if j.get("prompt") != d["prompt"] or j.get("name") != d["name"]:
            return True
        if d["deliver"] is not None and j.get("deliver") != d["deliver"]:
            return True
        if bool(j.get("enabled", True)) != bool(d["enabled"]):
            return True
        if schedule_key(j.get("schedule")) != _hermes_key(d["schedule"]):
            return True
    return False


def _stat(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _hermes_key(schedule: str) -> tuple[Any, ...]:
    """schedule_key of what Hermes' parse_schedule makes of our rendering, without importing Hermes."""
    if schedule.startswith("every "):
        return ("interval", int(schedule[6:-1]))
    return ("cron", schedule)


# --------------------------------------------------------------------------- daemon hooks


def start(daemon: Daemon) -> CronService:
    service = CronService(daemon.loaded, daemon)
    daemon.cron = service
    service.start()
    return service


def update(daemon: Daemon, loaded: LoadedConfig) -> None:
    service = getattr(daemon, "cron", None)
    if service is not None:
        service.update(loaded)


def status(daemon: Daemon) -> dict[str, Any] | None:
    service = getattr(daemon, "cron", None)
    return service.status() if service is not None else None


def render_status(con: Any, cron: dict[str, Any]) -> None:
    """The cron part of `flared status` (human form)."""
    from rich.table import Table

    jobs = cron.get("jobs") or []
    if not jobs:
        return
    table = Table(box=None, pad_edge=False, title=None)
    for col in ("cron job", "kind", "schedule", "next run", "last run", "result", "note"):
        table.add_column(col)
    for j in jobs:
        last = j.get("last_result")
        result = last.get("result") if isinstance(last, dict) else last
        note = j.get("error") or j.get("warning") or j.get("note") or ""
        if isinstance(last, dict) and last.get("result") != "ok":
            note = note or last.get("error") or last.get("reason") or ""
        if not j.get("enabled", True):
            note = "disabled"
        kind = j["kind"] if j["kind"] == "agent" else str(j.get("action"))
        table.add_row(
            j["name"],
            f"{kind} ({j['bot']})" if j.get("bot") else kind,
            j["schedule"],
            str(j.get("next_run") or "-")[:19],
            str(j.get("last_run") or "-")[:19],
            str(result or "-"),
            str(note),
        )
    con.print(table)
