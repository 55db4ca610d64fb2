"""Reconcile one bot's Hermes cron jobs with the jobs its YAML declares.

Runs as ``python -m flared.hermes.cron_store`` with ``HERMES_HOME`` set to the
bot's home: Hermes resolves its cron store, its timezone and the bot's
default model from that home at import time and caches them, so one process
per bot is the only way to use Hermes' own job store API faithfully. It
takes Hermes' cross-process jobs lock (the same flock the running gateway's
ticker uses), so editing while the gateway runs is safe.

stdin: ``{"jobs": [{"name", "prompt", "schedule", "deliver", "enabled"}]}``
stdout: ``{"created", "updated", "removed", "errors", "jobs", "timezone"}``

Jobs flared made carry ``"flared": {"name": ...}``; only those are updated
or removed. Jobs users made in chat have no marker and are never touched.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import sys
from typing import Any

MARK = "flared"


def schedule_key(schedule: Any) -> tuple[Any, ...]:
    """What makes two Hermes schedules the same (display text aside)."""
    if not isinstance(schedule, dict):
        return (None,)
    kind = schedule.get("kind")
    if kind == "cron":
        return (kind, " ".join(str(schedule.get("expr", "")).split()))
    if kind == "interval":
        return (kind, schedule.get("minutes"))
    return (kind, schedule.get("run_at"))


def is_ours(job: dict[str, Any]) -> bool:
    return isinstance(job.get(MARK), dict) and isinstance(job[MARK].get("name"), str)


def reconcile(desired: list[dict[str, Any]]) -> dict[str, Any]:
    hj: Any = importlib.import_module("cron.jobs")  # Hermes' job store; HERMES_HOME is this bot's home

    out: dict[str, Any] = {"created": [], "updated": [], "removed": [], "errors": {}, "jobs": {}}
    lock = getattr(hj, "_jobs_lock", None)  # Hermes' flock + thread lock, re-entrant within a thread
    with lock() if lock is not None else contextlib.nullcontext():
        ours: dict[str, dict[str, Any]] = {}
        for job in hj.load_jobs():
            if is_ours(job):
                ours.setdefault(job[MARK]["name"], job)
        for d in desired:
            name = d["name"]
            try:
                current = ours.pop(name, None)
                if current is None:
                    created = hj.create_job(
                        prompt=d["prompt"], schedule=d["schedule"], name=name, deliver=d.get("deliver")
                    )
                    hj.update_job(created["id"], {MARK: {"name": name}, **_enabled(d, created)})
                    out["created"].append(name)
                    continue
                updates = _updates(hj, current, d)
                if updates:
                    hj.update_job(current["id"], updates)
                    out["updated"].append(name)
            except Exception as exc:  # one bad job must not stop the others
                out["errors"][name] = str(exc) or type(exc).__name__
        for name, job in ours.items():
            hj.remove_job(job["id"])
            out["removed"].append(name)
        for job in hj.load_jobs():
            if is_ours(job):
                out["jobs"][job[MARK]["name"]] = {
                    k: job.get(k)
                    for k in (
                        "id",
                        "enabled",
                        "state",
                        "next_run_at",
                        "last_run_at",
                        "last_status",
                        "last_error",
                    )
                }
    out["timezone"] = _timezone()
    return out


def _updates(hj: Any, job: dict[str, Any], d: dict[str, Any]) -> dict[str, Any]:
    updates: dict[str, Any] = {}
    deliver = d.get("deliver") or job.get("deliver")  # unset in YAML: keep Hermes' default
    for key, value in (("prompt", d["prompt"]), ("name", d["name"]), ("deliver", deliver)):
        if job.get(key) != value:
            updates[key] = value
    if schedule_key(job.get("schedule")) != schedule_key(hj.parse_schedule(d["schedule"])):
        updates["schedule"] = d["schedule"]
    if bool(job.get("enabled", True)) != bool(d.get("enabled", True)):
        updates.update(_enabled(d, job))
    return updates


def _enabled(d: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
    if d.get("enabled", True):
        if job.get("enabled", True):
            return {}
        return {
            "enabled": True,
            "state": "scheduled",
            "paused_at": None,
            "paused_reason": None,
            "next_run_at": None,
        }
    hermes_time: Any = importlib.import_module("hermes_time")
    return {
        "enabled": False,
        "state": "paused",
        "paused_at": hermes_time.now().isoformat(),
        "paused_reason": "disabled in hermes-flare.yaml",
    }


def _timezone() -> str | None:
    try:
        tz = importlib.import_module("hermes_time").get_timezone()
    except Exception:
        return None
    return str(tz) if tz is not None else None


def main() -> int:
    try:
        spec = json.load(sys.stdin)
        desired = spec["jobs"]
        result = reconcile(desired)
    except Exception as exc:
        json.dump({"fatal": f"{type(exc).__name__}: {exc}"}, sys.stdout)
        return 1
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
