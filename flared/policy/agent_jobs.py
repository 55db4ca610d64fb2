"""The agents' scheduled prompts (``cron:`` entries with ``bot`` + ``prompt``).

They are reconciled into each bot's own Hermes cron store (see
:mod:`flared.hermes.cron_store`) once its state is restored; Hermes' gateway
runs them. Jobs flared made are marked, so jobs users create in chat are
never touched. The store is edited by a subprocess running Hermes' own code
under Hermes' lock; a cheap read of ``jobs.json`` decides whether that is
needed at all.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from flared.config import handoff
from flared.config.loader import LoadedConfig
from flared.config.models import BotConfig, CronJob
from flared.config.redact import redact_text
from flared.hermes.cron_store import MARK, is_ours, schedule_key
from flared.hermes.paths import BotPaths
from flared.policy.schedules import hermes_schedule, is_agent, timezone_note

log = logging.getLogger("flared.cron")

AGENT_SYNC_TIMEOUT = 60.0

Clock = Callable[[], float]


class EditableHomes(Protocol):
    """Which bots' Hermes homes may be edited now (restored, not held by a restore)."""

    def editable_homes(self) -> list[str]: ...


@dataclass
class AgentBotState:
    synced_at: float | None = None
    error: str | None = None
    errors: dict[str, str] = field(default_factory=dict)
    jobs: dict[str, Any] = field(default_factory=dict)
    timezone: str | None = None
    static_errors: set[str] = field(default_factory=set)  # YAML jobs Hermes cannot express
    failed_for: tuple[str, Any] | None = None  # inputs of the last sync that failed


class AgentJobs:
    """Keeps each bot's Hermes job store in step with the YAML's agent jobs."""

    def __init__(
        self, loaded: LoadedConfig, homes: EditableHomes | None = None, *, clock: Clock = time.time
    ) -> None:
        self.loaded = loaded
        self.homes = homes
        self.clock = clock
        self.bots: dict[str, AgentBotState] = {}

    def agent_jobs(self) -> list[CronJob]:
        return [j for j in self.loaded.config.cron if is_agent(j)]

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
        if self.homes is not None:
            return self.homes.editable_homes()
        return [b.name for b in self.loaded.config.bots if b.enabled]

    def check_agent_jobs(self, *, force: bool = False) -> None:
        for bot in self.agent_bots():
            try:
                self._check_bot(bot, force=force)
            except Exception as exc:
                log.exception("cron: agent jobs of bot %s", bot)
                self.bots.setdefault(bot, AgentBotState()).error = str(exc)

    def _check_bot(self, bot: str, *, force: bool) -> None:
        st = self.bots.setdefault(bot, AgentBotState())
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
        """Run :mod:`flared.hermes.cron_store` in the bot's home; record what it reports."""
        st = self.bots.setdefault(bot, AgentBotState())
        home = BotPaths.of(self.loaded.state_dir, bot).home
        env = handoff.base_env(HERMES_HOME=str(home))  # none of flared's secrets (config/handoff.py)
        proc = subprocess.run(
            [sys.executable, "-m", "flared.hermes.cron_store"],
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

    def own_jobs(self) -> list[dict[str, Any]]:
        """The jobs each enabled bot's agent made itself, read from its ``cron/jobs.json``."""
        out: list[dict[str, Any]] = []
        for bot in self.loaded.config.bots:
            if not bot.enabled:
                continue
            jobs = read_jobs(BotPaths.of(self.loaded.state_dir, bot.name).home / "cron" / "jobs.json")
            out += [own_entry(bot, j) for j in jobs or () if not is_ours(j)]
        return out

    def entry(self, job: CronJob, now: float) -> dict[str, Any]:
        assert job.bot is not None
        st = self.bots.get(job.bot)
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


def read_jobs(jobs_file: Path) -> list[dict[str, Any]] | None:
    """Hermes' ``cron/jobs.json``, read only (Hermes writes it atomically): [] when absent, None when unreadable."""
    try:
        data = json.loads(jobs_file.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError):
        return None
    jobs = data.get("jobs", []) if isinstance(data, dict) else data
    if not isinstance(jobs, list):
        return None
    return [j for j in jobs if isinstance(j, dict)]


def _needs_sync(jobs_file: Path, desired: list[dict[str, Any]]) -> bool:
    """Cheap read-only check: do flared's jobs in the bot's store match the YAML's?"""
    jobs = read_jobs(jobs_file)
    if jobs is None:
        return True
    ours = {j[MARK]["name"]: j for j in jobs if is_ours(j)}
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


def own_entry(bot: BotConfig, job: dict[str, Any]) -> dict[str, Any]:
    """A job the agent made itself (in chat, with its ``cronjob`` tool), as ``flared status`` lists it."""
    raw = job.get("schedule")
    schedule: dict[str, Any] = raw if isinstance(raw, dict) else {}
    asked = [str(t) for t in job.get("enabled_toolsets") or []]
    beyond = sorted(set(asked) - set(bot.toolsets))
    out: dict[str, Any] = {
        "name": str(job.get("name") or job.get("id") or "?"),
        "kind": "agent",
        "source": "hermes",
        "schedule": str(
            job.get("schedule_display") or schedule.get("display") or schedule.get("expr") or "?"
        ),
        "timezone": None,
        "enabled": bool(job.get("enabled", True)),
        "bot": bot.name,
        "hermes_id": job.get("id"),
        "next_run": job.get("next_run_at"),
        "last_run": job.get("last_run_at"),
        "last_result": job.get("last_status"),
        "last_error": job.get("last_error"),
        "toolsets": asked or None,
        "note": "made by the agent (not in hermes-flare.yaml)",
    }
    warnings = []
    if beyond:
        warnings.append(f"asks for toolsets the bot does not have ({', '.join(beyond)}): they are not given")
    if job.get("script"):
        # flared.plugin.scripts refuses it in the gateway; said here so the operator sees why it fails.
        warnings.append(
            f"runs a script ({job['script']}): cron scripts do not run on the host, every run fails"
        )
    if warnings:
        out["warning"] = "; ".join(warnings)
    return out


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
