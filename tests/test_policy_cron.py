"""Cron: schedules in timezones, the system-job scheduler on an injected clock, and
agent jobs reconciled into a real Hermes job store."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from flared.config.loader import LoadedConfig, load_config
from flared.config.models import CronJob
from flared.policy.cron import CronService
from flared.policy.schedules import hermes_schedule, next_run, timezone_note


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def job(**kw: Any) -> CronJob:
    base: dict[str, Any] = {"name": "j", "schedule": "0 * * * *", "action": "prune"}
    base.update(kw)
    return CronJob.model_validate(base)


# --------------------------------------------------------------------------- schedules


def test_cron_expressions_follow_the_jobs_timezone_across_dst() -> None:
    nine_berlin = job(schedule="0 9 * * *", timezone="Europe/Berlin")
    assert next_run(nine_berlin, ts("2026-01-15T00:00:00")) == ts("2026-01-15T08:00:00")  # CET
    assert next_run(nine_berlin, ts("2026-07-15T00:00:00")) == ts("2026-07-15T07:00:00")  # CEST
    assert next_run(job(schedule="0 9 * * *"), ts("2026-07-15T00:00:00")) == ts("2026-07-15T09:00:00")


def test_next_run_is_strictly_after() -> None:
    hourly = job(schedule="0 * * * *")
    assert next_run(hourly, ts("2026-01-01T10:00:00")) == ts("2026-01-01T11:00:00")


def test_every_counts_from_the_last_run_and_never_lands_in_the_past() -> None:
    every = job(schedule="every 2h")
    t = ts("2026-01-01T10:00:00")
    assert next_run(every, t) == t + 7200
    assert next_run(every, t, last_run=t - 600) == t + 6600
    assert next_run(every, t + 10 * 3600, last_run=t) == t + 12 * 3600


def test_hermes_schedule_rendering() -> None:
    assert hermes_schedule(job(schedule="0  9 * * 1-5", bot="a", prompt="p", action=None)) == "0 9 * * 1-5"
    assert hermes_schedule(job(schedule="every 2h", bot="a", prompt="p", action=None)) == "every 120m"
    with pytest.raises(ValueError, match="minute granularity"):
        hermes_schedule(job(schedule="every 90s", bot="a", prompt="p", action=None))


# --------------------------------------------------------------------------- system jobs


class Clock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def loaded_with(
    tmp_path: Path, cron: list[dict[str, Any]], bots: list[dict[str, Any]] | None = None
) -> LoadedConfig:
    path = tmp_path / "hermes-flare.yaml"
    data = {"version": 1, "state_dir": str(tmp_path / "state"), "bots": bots or [], "cron": cron}
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


class Recorder:
    def __init__(self, result: str = "ok") -> None:
        self.calls: list[str] = []
        self.result = result

    def __call__(self, j: CronJob) -> dict[str, Any]:
        self.calls.append(j.name)
        if self.result == "raise":
            raise RuntimeError("boom")
        return {"result": self.result}


def service(tmp_path: Path, cron: list[dict[str, Any]], clock: Clock, runner: Any) -> CronService:
    svc = CronService(loaded_with(tmp_path, cron), clock=clock, runner=runner, threaded=False)
    svc.begin()
    return svc


HOURLY = {"name": "hourly", "schedule": "0 * * * *", "action": "prune"}


def test_runs_when_due_and_only_then(tmp_path: Path) -> None:
    clock, rec = Clock(ts("2026-01-01T10:30:00")), Recorder()
    svc = service(tmp_path, [HOURLY], clock, rec)
    assert svc.tick(ts("2026-01-01T10:59:59")) == []
    assert svc.tick(ts("2026-01-01T11:00:00")) == ["hourly"]
    assert svc.tick(ts("2026-01-01T11:00:30")) == []
    assert svc.tick(ts("2026-01-01T12:00:01")) == ["hourly"]
    assert rec.calls == ["hourly", "hourly"]
    st = {j["name"]: j for j in svc.status()["jobs"]}["hourly"]
    assert st["last_result"]["result"] == "ok" and st["runs"] == 2
    assert st["last_run"] == "2026-01-01T12:00:01+00:00"
    assert st["next_run"] == "2026-01-01T13:00:00+00:00"
    assert svc.status()["last_tick"] == "2026-01-01T12:00:01+00:00"


def test_disabled_jobs_never_run(tmp_path: Path) -> None:
    clock, rec = Clock(ts("2026-01-01T10:30:00")), Recorder()
    svc = service(tmp_path, [{**HOURLY, "enabled": False}], clock, rec)
    svc.tick(ts("2026-01-02T10:30:00"))
    assert rec.calls == []


def test_failures_are_recorded(tmp_path: Path) -> None:
    clock = Clock(ts("2026-01-01T10:30:00"))
    svc = service(tmp_path, [HOURLY], clock, Recorder("raise"))
    svc.tick(ts("2026-01-01T11:00:00"))
    last = svc.status()["jobs"][0]["last_result"]
    assert last["result"] == "failed" and last["error"] == "boom"


def test_two_runs_of_one_job_never_overlap(tmp_path: Path) -> None:
    release, started = threading.Event(), threading.Event()
    calls: list[float] = []

    def slow(j: CronJob) -> dict[str, Any]:
        calls.append(1)
        started.set()
        assert release.wait(10)
        return {"result": "ok"}

    clock = Clock(ts("2026-01-01T10:30:00"))
    svc = CronService(loaded_with(tmp_path, [HOURLY]), clock=clock, runner=slow, threaded=True)
    svc.begin()
    assert svc.tick(ts("2026-01-01T11:00:00")) == ["hourly"]
    assert started.wait(5)
    assert svc.tick(ts("2026-01-01T12:00:00")) == []  # still running: this occurrence is skipped
    st = svc.status()["jobs"][0]
    assert st["running"] and st["skipped"] == 1 and st["next_run"] == "2026-01-01T13:00:00+00:00"
    release.set()
    for _ in range(100):
        if not svc.status()["jobs"][0]["running"]:
            break
        threading.Event().wait(0.02)
    assert svc.tick(ts("2026-01-01T13:00:00")) == ["hourly"]
    assert len(calls) == 2


@pytest.mark.parametrize("catch_up", [True, False])
def test_a_run_missed_while_down_runs_once_at_start_only_with_catch_up(
    tmp_path: Path, catch_up: bool
) -> None:
    entry = {**HOURLY, "catch_up": catch_up}
    clock, rec = Clock(ts("2026-01-01T10:30:00")), Recorder()
    service(tmp_path, [entry], clock, rec)  # first life: next run 11:00 persisted
    # flared was down from 10:30 to 14:10: three runs missed
    clock.now = ts("2026-01-01T14:10:00")
    rec2 = Recorder()
    svc = service(tmp_path, [entry], clock, rec2)
    ran = svc.tick(clock.now)
    assert ran == (["hourly"] if catch_up else [])
    assert svc.tick(clock.now + 1) == []  # once, not once per missed run
    st = svc.status()["jobs"][0]
    assert st["next_run"] == "2026-01-01T15:00:00+00:00"
    if not catch_up:
        assert st["last_result"]["result"] == "skipped" and "missed" in st["last_result"]["reason"]
        assert st["skipped"] == 1


def test_a_restart_before_the_due_time_misses_nothing(tmp_path: Path) -> None:
    clock, rec = Clock(ts("2026-01-01T10:30:00")), Recorder()
    service(tmp_path, [{**HOURLY, "catch_up": True}], clock, rec)
    clock.now = ts("2026-01-01T10:45:00")
    svc = service(tmp_path, [{**HOURLY, "catch_up": True}], clock, rec)
    assert svc.tick(clock.now) == []
    assert svc.tick(ts("2026-01-01T11:00:00")) == ["hourly"]


def test_update_adds_reschedules_and_drops(tmp_path: Path) -> None:
    clock, rec = Clock(ts("2026-01-01T10:30:00")), Recorder()
    svc = service(
        tmp_path, [HOURLY, {"name": "gone", "schedule": "0 3 * * *", "action": "prune"}], clock, rec
    )
    clock.now = ts("2026-01-01T10:40:00")
    svc.update(
        loaded_with(
            tmp_path,
            [
                {**HOURLY, "schedule": "*/15 * * * *"},
                {"name": "new", "schedule": "every 5m", "action": "snapshot"},
            ],
        )
    )
    jobs = {j["name"]: j for j in svc.status()["jobs"]}
    assert set(jobs) == {"hourly", "new"}
    assert jobs["hourly"]["next_run"] == "2026-01-01T10:45:00+00:00"
    assert jobs["new"]["next_run"] == "2026-01-01T10:45:00+00:00"
    assert "gone" not in json.loads((tmp_path / "state" / "cron" / "state.json").read_text())["jobs"]
    assert sorted(svc.tick(ts("2026-01-01T10:45:00"))) == ["hourly", "new"]


class Daemonish:
    """The daemon surface system jobs use, recording calls (snapshot/restart are the
    snapshot service's and supervisor's own tests' business)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.snapshots = self
        self.leases: Any = None

    def snapshot(self, bot: str, reason: str) -> dict[str, Any]:
        self.calls.append(("snapshot", bot))
        return {"result": "failed" if bot == "bad" else "ok", "id": "x", "reason": reason}

    def prune(self, bot: str) -> dict[str, Any]:
        self.calls.append(("prune", bot))
        return {"bot": bot, "expired": ["s1", "s2"], "orphans": []}

    def restart(self, bot: str) -> None:
        self.calls.append(("restart", bot))


def bots(*names: str) -> list[dict[str, Any]]:
    return [{"name": n, "model": {"provider": "custom", "base_url": "http://127.0.0.1:9/v1"}} for n in names]


def test_system_actions_reach_the_services(tmp_path: Path) -> None:
    d = Daemonish()
    cron = [
        {"name": "snap-all", "schedule": "every 1m", "action": "snapshot"},
        {"name": "prune-one", "schedule": "every 1m", "action": "prune", "bot": "a"},
        {"name": "bounce", "schedule": "every 1m", "action": "restart", "bot": "bad"},
    ]
    svc = CronService(
        loaded_with(tmp_path, cron, bots("a", "bad")), snapshots=d, gateways=d, clock=Clock(0), threaded=False
    )
    svc.begin(0)
    assert sorted(svc.tick(60)) == ["bounce", "prune-one", "snap-all"]
    assert sorted(d.calls) == [("prune", "a"), ("restart", "bad"), ("snapshot", "a"), ("snapshot", "bad")]
    res = {j["name"]: j["last_result"] for j in svc.status()["jobs"]}
    assert res["snap-all"]["result"] == "failed"  # one bot's snapshot failed
    assert res["prune-one"]["result"] == "ok"
    assert res["prune-one"]["bots"] == {"a": {"result": "ok", "deleted": 2, "leftovers": 0}}
    assert res["bounce"]["result"] == "ok"


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")
def test_exec_runs_in_the_bots_sandbox(tmp_path: Path) -> None:
    manager = pytest.importorskip("flared.sandboxes.manager")
    loaded = loaded_with(
        tmp_path,
        [
            {
                "name": "hello",
                "schedule": "every 1m",
                "action": "exec",
                "bot": "a",
                "command": ["sh", "-c", "echo hi; exit 3"],
            }
        ],
        bots("a"),
    )
    (loaded.state_dir / "bots" / "a" / "home").mkdir(parents=True)
    d = Daemonish()
    d.leases = manager.LeaseManager(loaded)
    d.leases.start()
    try:
        svc = CronService(loaded, leases=d.leases, clock=Clock(0), threaded=False)
        svc.begin(0)
        svc.tick(60)
    finally:
        d.leases.stop()
    last = svc.status()["jobs"][0]["last_result"]
    assert last["result"] == "failed" and last["exit_code"] == 3 and last["stdout"] == "hi\n"


# --------------------------------------------------------------------------- agent jobs (real Hermes store)


def hermes(home: Path, code: str) -> Any:
    """Run Hermes' own cron API in the bot's home, the way a chat `cronjob` tool call would."""
    out = subprocess.run(
        [sys.executable, "-c", f"import json\nfrom cron import jobs\n{code}"],
        env={**os.environ, "HERMES_HOME": str(home)},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout) if out.stdout.strip() else None


def hermes_jobs(home: Path) -> dict[str, dict[str, Any]]:
    return {j["name"]: j for j in json.loads((home / "cron" / "jobs.json").read_text())["jobs"]}


def agent(name: str, **kw: Any) -> dict[str, Any]:
    return {"name": name, "bot": "a", "prompt": f"do {name}", "schedule": "0 9 * * 1-5", **kw}


def test_agent_jobs_are_reconciled_and_chat_jobs_left_alone(tmp_path: Path) -> None:
    loaded = loaded_with(
        tmp_path,
        [
            agent("brief", deliver="slack:C0123"),
            agent("hourly", schedule="every 1h"),
            agent("bad", schedule="every 30s"),
        ],
        bots("a"),
    )
    home = loaded.state_dir / "bots" / "a" / "home"
    home.mkdir(parents=True)
    hermes(home, "print(json.dumps(jobs.create_job(prompt='user made', schedule='every 3h', name='mine')))")
    svc = CronService(loaded, clock=Clock(0), threaded=False)

    svc.check_agent_jobs()
    jobs = hermes_jobs(home)
    assert set(jobs) == {"mine", "brief", "hourly"}
    assert "flared" not in jobs["mine"]
    assert jobs["brief"]["flared"] == {"name": "brief"}
    assert jobs["brief"]["deliver"] == "slack:C0123" and jobs["brief"]["schedule"]["expr"] == "0 9 * * 1-5"
    assert jobs["hourly"]["schedule"] == {"kind": "interval", "minutes": 60, "display": "every 60m"}
    st = {j["name"]: j for j in svc.status()["jobs"]}
    assert st["brief"]["synced"] and st["brief"]["hermes_id"] == jobs["brief"]["id"]
    assert st["brief"]["next_run"] == jobs["brief"]["next_run_at"]
    assert "minute granularity" in st["bad"]["error"] and not st["bad"]["synced"]
    # the agent's own job (made in chat) is listed too, never taken for a YAML one
    assert st["mine"]["source"] == "hermes" and st["brief"]["source"] == "yaml"
    assert st["mine"]["bot"] == "a" and st["mine"]["hermes_id"] == jobs["mine"]["id"]
    assert st["mine"]["schedule"] == "every 180m" and st["mine"]["next_run"] == jobs["mine"]["next_run_at"]

    # in step: a second check reads jobs.json and runs nothing
    synced_at = svc.agent["a"].synced_at
    svc.clock = Clock(99)
    svc.check_agent_jobs()
    assert svc.agent["a"].synced_at == synced_at
    assert "minute granularity" in svc.agent["a"].errors["bad"]

    # edit, disable, remove; a chat edit of the user's job survives
    hermes(home, f"jobs.update_job({jobs['mine']['id']!r}, {{'prompt': 'user edited'}})")
    svc.update(
        loaded_with(
            tmp_path, [agent("brief", prompt="new words", deliver="slack:C0123", enabled=False)], bots("a")
        )
    )
    svc.check_agent_jobs()
    after = hermes_jobs(home)
    assert set(after) == {"mine", "brief"}
    assert after["brief"]["id"] == jobs["brief"]["id"], "an update must keep the Hermes job (its history)"
    assert after["brief"]["prompt"] == "new words"
    assert after["brief"]["enabled"] is False and after["brief"]["state"] == "paused"
    assert after["mine"]["prompt"] == "user edited"

    # a restore that brings back an old jobs.json is put right on the next check
    (home / "cron" / "jobs.json").write_text(json.dumps({"jobs": list(jobs.values())}))
    svc.check_agent_jobs()
    assert set(hermes_jobs(home)) == {"mine", "brief"}
    assert hermes_jobs(home)["brief"]["prompt"] == "new words"


def test_timezone_note() -> None:
    cron_job = job(schedule="0 9 * * *", timezone="Europe/Berlin", action=None, bot="a", prompt="p")
    now = ts("2026-01-15T12:00:00")
    assert "Europe/Berlin" in (timezone_note(cron_job, "UTC", now) or "")
    assert timezone_note(cron_job, "Europe/Paris", now) is None  # same offset
    assert (
        timezone_note(
            job(schedule="every 1h", timezone="Asia/Tokyo", action=None, bot="a", prompt="p"), "UTC", now
        )
        is None
    )


def test_an_agent_job_with_a_script_or_wider_toolsets_is_flagged() -> None:
    from flared.config.models import BotConfig
    from flared.policy.agent_jobs import own_entry

    bot = BotConfig.model_validate({"name": "a", "toolsets": ["todo"]})
    both = own_entry(bot, {"id": "1", "script": "w.sh", "enabled_toolsets": ["browser"]})
    assert both["warning"] == (
        "asks for toolsets the bot does not have (browser): they are not given; "
        "runs a script (w.sh): cron scripts do not run on the host, every run fails"
    )
    assert "warning" not in own_entry(bot, {"id": "2", "enabled_toolsets": ["todo"]})
