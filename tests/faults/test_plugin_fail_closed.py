"""Fault matrix, "Sandboxes and secrets" (docs/reliability.md): no gateway runs without a working flare plugin.

The ``flare`` plugin is what keeps cron scripts, skills' inline shell and
the host-side tools' paths off the host. Hermes catches a plugin's failure
and runs on without it, so two real gateways are broken from outside (a
``sitecustomize`` on ``PYTHONPATH``, test only: it can only make the plugin
fail, never skip a check):

- Hermes' cron script runner takes another argument (a later release): the
  plugin cannot wrap it. A job whose script is due at start is in the store;
  it must never run, and the gateway must not stay up;
- the plugin cannot be imported at all: flared's ``flare-guard`` hook ends
  the gateway before the due script runs; and with Hermes' hooks off too,
  flared's own check stops it.

Either way ``flared status`` says the gateway failed, and why.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.flare import FlareUp, bot

pytestmark = pytest.mark.integration

HOOKS = Path(__file__).with_name("hooks")

PLANTED = """
import pathlib, sys
pathlib.Path({marker!r}).write_text("ran on the host as " + sys.executable)
print("watchdog: ran")
"""

MAKE_JOB = """
import datetime
import cron.jobs as jobs
job = jobs.create_job(prompt=None, schedule="every 1h", name="due-watch", script="planted.py",
                      no_agent=True, deliver="local")
due = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=1)).isoformat()
jobs.update_job(job["id"], {"next_run_at": due})
"""


def settle(flare: FlareUp, timeout: float = 150) -> dict[str, Any]:
    """The bot's status once it is ready or failed (whichever comes first)."""
    deadline = time.monotonic() + timeout
    st: dict[str, Any] = {}
    while time.monotonic() < deadline:
        st = flare.bot_status("a")
        if st["readiness"] in {"ready", "failed"}:
            return st
        time.sleep(0.5)
    raise AssertionError(f"the gateway neither came up nor failed: {st}\n{flare.read_logs()}")


def stays_down(flare: FlareUp, seconds: float = 8) -> dict[str, Any]:
    """Once its process is gone (stopped as supervisord stops one), its status ``seconds`` later, asserting none ran meanwhile."""
    deadline = time.monotonic() + 45
    while flare.bot_status("a")["pid"]:
        assert time.monotonic() < deadline, f"the failed gateway was left running: {flare.bot_status('a')}"
        time.sleep(0.5)
    deadline = time.monotonic() + seconds
    st: dict[str, Any] = {}
    while time.monotonic() < deadline:
        st = flare.bot_status("a")
        assert st["readiness"] == "failed" and not st["pid"], st
        time.sleep(1)
    return st


def plant_due_script(tmp_path: Path) -> Path:
    """A ``no_agent`` job in the bot's store whose script (on the host) is due at once; returns its marker."""
    marker = tmp_path / "ESCAPED"
    home = tmp_path / "state" / "bots" / "a" / "home"
    (home / "scripts").mkdir(parents=True)
    (home / "scripts" / "planted.py").write_text(PLANTED.format(marker=str(marker)))
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "HERMES_HOME": str(home)}
    made = subprocess.run(
        [sys.executable, "-c", MAKE_JOB], env=env, capture_output=True, text=True, timeout=120
    )
    assert made.returncode == 0, made.stderr[-2000:]
    return marker


def test_a_plugin_that_cannot_wrap_ends_the_gateway_before_a_due_script_runs(tmp_path: Path) -> None:
    marker = plant_due_script(tmp_path)
    broken = {"PYTHONPATH": str(HOOKS / "break-signature")}
    with FlareUp(tmp_path, [bot("a", toolsets=["cronjob", "todo"])], env=broken) as flare:
        st = settle(flare)
        logs = flare.read_logs()
        assert st["readiness"] == "failed", f"the gateway runs without the plugin's guards: {st}\n{logs}"
        assert "the flare plugin's scripts feature did not install" in (st["error"] or ""), st
        assert "_run_job_script" in st["error"] and "exit 78" in st["error"], st
        assert "hermes-flare's plugin" in (st["hint"] or ""), st
        st = stays_down(flare)
        assert st["failure"]["kind"] == "fatal", st
        assert not marker.exists(), "a cron script ran on the host: " + marker.read_text()
        agent_log = (flare.state_dir / "bots" / "a" / "home" / "logs" / "agent.log").read_text(
            errors="replace"
        )
        assert "did not install" in agent_log and "flare plugin registered" not in agent_log


def test_a_gateway_whose_plugin_never_loaded_ends_before_a_due_script_runs(tmp_path: Path) -> None:
    """flared's ``flare-guard`` hook, which Hermes loads after its plugins, ends it (exit 78)."""
    marker = plant_due_script(tmp_path)
    broken = {"PYTHONPATH": str(HOOKS / "break-import")}
    with FlareUp(tmp_path, [bot("a", toolsets=["cronjob", "todo"])], env=broken) as flare:
        st = settle(flare)
        assert st["readiness"] == "failed", f"a gateway without the plugin was left running: {st}"
        assert "the flare plugin is not working in this gateway (it did not load)" in (st["error"] or ""), st
        st = stays_down(flare)
        assert st["failure"]["kind"] == "fatal", st
        assert not marker.exists(), "a cron script ran on the host: " + marker.read_text()


def test_a_gateway_running_without_the_plugin_is_stopped_by_flared(tmp_path: Path) -> None:
    """No plugin and no hooks (a Hermes that changed both): flared's own check stops it once Hermes runs."""
    broken = {"PYTHONPATH": str(HOOKS / "break-import-and-hooks")}
    with FlareUp(tmp_path, [bot("a", toolsets=["todo"])], env=broken) as flare:
        st = settle(flare)
        assert st["readiness"] == "failed", f"a gateway without the plugin was left running: {st}"
        assert "the flare plugin did not load in this gateway" in (st["error"] or ""), st
        assert "hermes-flare is not installed in this Python (test)" in st["error"], st
        st = stays_down(flare)
        logs = flare.read_logs()
        assert "flare plugin did not load" in logs and "not restarting" in logs, logs[-3000:]
