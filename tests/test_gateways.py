"""Gateways: the reconcile loop leaves an untouched Hermes home alone and repairs a damaged one;
crash loops and exit 78 are judged from supervisord's process info (pure); readiness."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from flared.gateways import (
    BACKOFF_CAP_S,
    FAST_EXIT_S,
    PLUGIN_NOT_LOADED,
    STABLE_S,
    Failure,
    RunWatch,
    backoff_delay,
    clean_error,
    failure_hint,
    gateway_error,
    judge,
    plugin_problem,
    readiness,
)
from flared.hermes.liveness import startup_failed_at
from tests.fixtures.flare import FlareUp, bot


@pytest.mark.integration
def test_idle_reconcile_does_not_rewrite_and_repairs_drift(tmp_path: Path) -> None:
    with FlareUp(tmp_path, [bot("athena")]) as flare:
        first = flare.wait_running("athena")
        home = flare.state_dir / "bots" / "athena" / "home"
        env, config = home / ".env", home / "config.yaml"
        time.sleep(1)
        before = (env.stat().st_mtime_ns, config.stat().st_mtime_ns)
        time.sleep(5)  # two or three reconcile ticks
        assert (env.stat().st_mtime_ns, config.stat().st_mtime_ns) == before
        env.unlink()  # drift: flared puts it back at the next tick, same content, no restart
        deadline = time.monotonic() + 10
        while not env.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert env.exists() and oct(env.stat().st_mode & 0o777) == "0o600"
        assert flare.bot_status("athena")["pid"] == first["pid"]


# ---------------------------------------------------------------------- pure: crash loops and readiness


def proc(
    state: str, start: float, stop: float = 0.0, code: int | None = 0, now: float | None = None
) -> dict[str, Any]:
    return {
        "statename": state,
        "start": start,
        "stop": stop,
        "exitstatus": code,
        "now": now if now is not None else max(start, stop) + 0.5,
        "pid": 100 if state == "RUNNING" else 0,
    }


def test_judge_exit_78_is_fatal_at_once_even_after_startsecs() -> None:
    w, v = judge(RunWatch(), proc("RUNNING", 1000))
    assert v is None and w.seen
    w, v = judge(w, proc("EXITED", 1000, 1004, code=78))  # ran 4 s: supervisord counted it started
    assert v == "fatal"


def test_judge_exit_78_seen_only_after_a_respawn_is_still_fatal() -> None:
    w, _ = judge(RunWatch(), proc("RUNNING", 1000))
    w, v = judge(w, proc("STARTING", 1005, 1004, code=78))  # supervisord already restarted it
    assert v == "fatal"


def test_judge_counts_fast_exits_and_calls_a_loop_on_the_third() -> None:
    w, _ = judge(RunWatch(), proc("RUNNING", 1000))
    verdicts = []
    t = 1000.0
    for _ in range(3):
        w, v = judge(w, proc("STARTING", t + 4, t + 3, code=1))
        verdicts.append(v)
        t += 4
    assert verdicts == [None, None, "loop"]


def test_judge_a_long_run_resets_the_count_and_an_intentional_stop_is_not_an_exit() -> None:
    w, _ = judge(RunWatch(), proc("RUNNING", 1000))
    w, _ = judge(w, proc("STARTING", 1004, 1003, code=1))
    assert w.fast_exits == 1
    w, v = judge(w, proc("STARTING", 1004 + FAST_EXIT_S + 10, 1004 + FAST_EXIT_S + 9, code=1))
    assert v is None and w.fast_exits == 0  # that run lasted longer than FAST_EXIT_S
    w, v = judge(w, proc("STOPPED", w.start, w.start + 1, code=0))
    assert v is None and w.fast_exits == 0
    w, _ = judge(w, proc("STARTING", 2000, 2001, code=1))
    w, _ = judge(w, proc("RUNNING", 2002, 2001, now=2002 + STABLE_S + 1))
    assert w.fast_exits == 0  # stable for STABLE_S


def test_judge_first_look_does_not_count_history_but_sees_a_fatal_exit() -> None:
    _, v = judge(RunWatch(), proc("RUNNING", 1000, 900, code=1))
    assert v is None
    _, v = judge(RunWatch(), proc("EXITED", 1000, 1003, code=78))
    assert v == "fatal"
    _, v = judge(RunWatch(seen=True, start=1, stop=2), proc("FATAL", 1000, 1001, code=1))
    assert v == "loop"


def test_judge_a_startup_failure_recorded_by_hermes_is_fatal_though_supervisord_lost_the_code() -> None:
    # Hermes exited 78 within startsecs: supervisord keeps no exit status (reports 0)
    # and respawns; three such runs used to be judged a crash loop.
    w, _ = judge(RunWatch(), proc("STARTING", 1000))
    w, v = judge(w, proc("STARTING", 1002, 1001, code=0), startup_failed_at=1000.4)
    assert v == "fatal"
    _, v = judge(RunWatch(), proc("BACKOFF", 1000, 1001, code=0), startup_failed_at=1000.7)
    assert v == "fatal"  # first look
    # A record from an earlier run says nothing about this one.
    w, _ = judge(RunWatch(), proc("RUNNING", 1000))
    w, v = judge(w, proc("STARTING", 1005, 1004, code=1), startup_failed_at=900.0)
    assert v is None


def test_startup_failed_at_reads_hermes_record(tmp_path: Path) -> None:
    assert startup_failed_at(tmp_path) is None
    (tmp_path / "gateway_state.json").write_text(
        json.dumps({"gateway_state": "startup_failed", "updated_at": "2026-11-26T22:29:34.741000+00:00"})
    )
    assert startup_failed_at(tmp_path) == datetime(2026, 11, 26, 22, 29, 34, 741000, tzinfo=UTC).timestamp()
    (tmp_path / "gateway_state.json").write_text(json.dumps({"gateway_state": "running", "updated_at": "x"}))
    assert startup_failed_at(tmp_path) is None
    (tmp_path / "gateway_state.json").write_text("{not json")
    assert startup_failed_at(tmp_path) is None


def test_backoff_is_exponential_and_capped() -> None:
    delays = [backoff_delay(n) for n in range(1, 10)]
    assert delays[:4] == [10.0, 20.0, 40.0, 80.0]
    assert max(delays) == BACKOFF_CAP_S and delays == sorted(delays)


def test_clean_error_drops_hermes_advice_about_config_yaml() -> None:
    raw = (
        "api_server: Port 8642 already in use. Set platforms.api_server.port in config.yaml to a "
        "different value, then `/platform resume api_server`."
    )
    assert clean_error(raw) == "api_server: Port 8642 already in use"
    assert clean_error("No Anthropic credentials found.") == "No Anthropic credentials found."


def test_gateway_error_prefers_gateway_state_then_the_logs_last_error(tmp_path: Path) -> None:
    home, log = tmp_path / "home", tmp_path / "gateway.log"
    home.mkdir()
    log.write_text(
        "INFO x: fine\nERROR gateway.run: something broke. Edit config.yaml to fix\nINFO y: after\n"
    )
    assert gateway_error(home, log) == "something broke"
    (home / "gateway_state.json").write_text(
        '{"gateway_state": "startup_failed", "exit_reason": "slack: invalid_auth", "platforms": {}}'
    )
    assert gateway_error(home, log) == "slack: invalid_auth"
    assert gateway_error(tmp_path / "none", tmp_path / "none.log") is None


def test_failure_hint_names_hermes_flare_yaml_and_what_to_run(tmp_path: Path) -> None:
    cfg = tmp_path / "hermes-flare.yaml"
    port = failure_hint("hermes", "api_server: Port 8642 already in use", cfg, 0, "fatal")
    assert port == (
        f"another process holds port 8642: stop it, or set bots[0].api.port in {cfg}; "
        "then `flared restart --bot hermes`"
    )
    other = failure_hint("b", "weird", cfg, 2, "fatal")
    assert f"config.yaml from {cfg}: fix bots[2] there" in other
    assert "flared restart --bot b" in failure_hint("b", None, cfg, 1, "loop")
    plugin = failure_hint("b", "the flare plugin's scripts feature did not install (x)", cfg, 1, "fatal")
    assert (
        plugin.startswith("the gateway must run with hermes-flare's plugin")
        and "flared restart --bot b" in plugin
    )


def test_plugin_problem() -> None:
    """A gateway counts as having the flare plugin only with the plugin's record of its own run."""
    assert plugin_problem({"registered": {"pid": 7, "at": 100.2}}, 7, 100) is None
    assert plugin_problem({"registered": {"pid": 7, "at": 99.5}}, 7, 100) is None  # whole-second start
    for record in (None, {}, {"registered": {"pid": 8, "at": 100.2}}, {"registered": {"pid": 7, "at": 90}}):
        assert plugin_problem(record, 7, 100) == PLUGIN_NOT_LOADED
    failed = {"registered": {"ok": False, "pid": 7, "at": 100.2, "error": "scripts did not install"}}
    assert plugin_problem(failed, 7, 100) == "scripts did not install"
    hermes = ["2026-12-06 21:46:22,012 WARNING hermes_cli.plugins: Failed to load plugin 'flare': No module"]
    said = plugin_problem(None, 7, 100, hermes)
    assert said == f"{PLUGIN_NOT_LOADED}; Hermes says: Failed to load plugin 'flare': No module"


def test_readiness() -> None:
    running = {"statename": "RUNNING", "pid": 42, "start": 100}
    plugin = {"registered": {"pid": 42, "at": 102.5, "features": ["cron"]}}
    ok = {"pid": 42, "gateway_state": "running", "platforms": {"api_server": "connected"}, "plugin": plugin}
    kw = {"enabled": True, "phase": "ready", "held": False, "failure": None, "has_api": True}
    assert readiness(proc=running, liveness=ok, **kw) == ("ready", "")  # type: ignore[arg-type]
    for record in (None, {"registered": {"pid": 41, "at": 102.5}}, {"registered": {"pid": 42, "at": 50}}):
        # no plugin, another run's record (a restored snapshot's): not ready, and the tick fails it
        no_plugin = dict(ok, plugin=record)
        assert readiness(proc=running, liveness=no_plugin, **kw) == (  # type: ignore[arg-type]
            "starting",
            "checking the flare plugin",
        )
    stale = dict(ok, pid=41)  # the previous run's file
    assert readiness(proc=running, liveness=stale, **kw)[0] == "starting"  # type: ignore[arg-type]
    connecting = dict(ok, platforms={"api_server": "connecting"})
    assert readiness(proc=running, liveness=connecting, **kw)[0] == "starting"  # type: ignore[arg-type]
    bad = dict(ok, gateway_state="startup_failed")
    assert readiness(proc=running, liveness=bad, **kw)[0] == "failed"  # type: ignore[arg-type]
    restoring = dict(kw, phase="restoring")
    assert readiness(proc=None, liveness={}, **restoring) == ("starting", "restoring")  # type: ignore[arg-type]
    failed = dict(kw, failure=Failure("fatal", 78, "port taken", 0.0))
    assert readiness(proc=None, liveness={}, **failed) == ("failed", "port taken")  # type: ignore[arg-type]
    assert readiness(proc=None, liveness={}, **dict(kw, enabled=False))[0] == "stopped"  # type: ignore[arg-type]
    hung = readiness(proc=running, liveness=ok, not_answering="not answering: x", **kw)  # type: ignore[arg-type]
    assert hung == ("unresponsive", "not answering: x")
    reviving = readiness(proc=running, liveness=ok, reviving=True, **kw)  # type: ignore[arg-type]
    assert reviving == ("starting", "restarting it: it stopped answering")
