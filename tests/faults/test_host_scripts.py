"""Fault matrix, "Sandboxes and secrets" (docs/reliability.md): cron scripts never run on the host.

Hermes' cron scheduler runs a job's ``script`` (a ``no_agent`` watchdog, or
a pre-run data script) with ``subprocess.run`` inside the gateway: on the
host, next to the bot's ``.env``, not in a sandbox. The agent may make such
jobs with its ``cronjob`` tool. A real gateway on the fake model: the agent
writes a script to ``<home>/scripts/`` with ``write_file`` (it lands in its
sandbox, not on the host), makes a ``no_agent`` job and a pre-run job on a
script that *is* on the host (planted by the test: anything that ever lands
there, an operator's file or a future tool's), and runs them. Jobs written
into the store by other means (a restore, ``hermes cron``) are run by the
ticker. The planted script writes a marker on the host when it runs: it
never may.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.llm_server import FakeLLM, LLMRequest, text, tools
from tests.fixtures.flare import FlareUp, bot

pytestmark = pytest.mark.integration

TURN = "SCHEDULE-THE-WATCHDOG"
REFUSED = "cron scripts do not run on the host"

PLANTED = """
import pathlib, sys
pathlib.Path({marker!r}).write_text("ran on the host as " + sys.executable)
print("watchdog: ran")
"""

MAKE_JOBS = """
import datetime, sys
import cron.jobs as jobs
made = [
    jobs.create_job(prompt=None, schedule="every 1h", name="store-watch", script="planted.py",
                    no_agent=True, deliver="local"),
    jobs.create_job(prompt="STORE-PRERUN: summarise the data", schedule="every 1h",
                    name="store-prerun", script="planted.py", deliver="local"),
]
due = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=1)).isoformat()
for job in made:
    jobs.update_job(job["id"], {"next_run_at": due})
"""


def jobs_of(home: Path) -> dict[str, dict[str, Any]]:
    data = json.loads((home / "cron" / "jobs.json").read_text())
    jobs = data.get("jobs", []) if isinstance(data, dict) else data
    return {str(j.get("name")): j for j in jobs}


def tool_results(llm: FakeLLM) -> list[str]:
    out: list[str] = []
    for req in llm.requests:
        for m in req.messages:
            if m.get("role") == "tool" and isinstance(m.get("content"), str):
                out.append(m["content"])
    return out


def test_no_cron_script_runs_on_the_host(tmp_path: Path) -> None:
    marker = tmp_path / "ESCAPED"

    def turn(r: LLMRequest) -> bool:
        return r.is_agent_turn and TURN in r.last_user_text

    with FakeLLM(models=("fake-model",), default=text("done")) as llm:
        model = {"provider": "custom", "base_url": llm.base_url, "model": "fake-model"}
        toolsets = ["cronjob", "file", "terminal", "todo"]
        with FlareUp(tmp_path, [bot("a", model=model, toolsets=toolsets)]) as flare:
            flare.wait_ready("a", timeout=120)
            home = flare.state_dir / "bots" / "a" / "home"
            scripts = home / "scripts"
            scripts.mkdir(exist_ok=True)
            (scripts / "planted.py").write_text(PLANTED.format(marker=str(marker)))
            writer = PLANTED.format(marker=str(marker))
            llm.script(
                tools(
                    ("write_file", {"path": str(scripts / "agent-wrote.py"), "content": writer}),
                    (
                        "cronjob",
                        {
                            "action": "create",
                            "name": "agent-watch",
                            "schedule": "every 1h",
                            "script": "planted.py",
                            "no_agent": True,
                            "deliver": "local",
                        },
                    ),
                    (
                        "cronjob",
                        {
                            "action": "create",
                            "name": "agent-prerun",
                            "schedule": "every 1h",
                            "prompt": "AGENT-PRERUN: summarise the data",
                            "script": "planted.py",
                            "deliver": "local",
                        },
                    ),
                    when=turn,
                ),
                tools(
                    ("cronjob", {"action": "run", "job_id": "agent-watch"}),
                    ("cronjob", {"action": "run", "job_id": "agent-prerun"}),
                    when=turn,
                ),
                text("scheduled", when=turn),
            )
            chat = flare.cli("chat", "--bot", "a", TURN, timeout=240)
            assert chat.returncode == 0, chat.stderr + flare.read_logs()
            assert not (scripts / "agent-wrote.py").exists(), "write_file wrote on the host"
            assert not marker.exists(), "the agent's cron job ran a script on the host: " + marker.read_text()
            results = "\n".join(tool_results(llm))
            assert REFUSED in results, results[-3000:]

            # Jobs that reach the store by other means run on the ticker: refused at run time.
            env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "HERMES_HOME": str(home)}
            made = subprocess.run(
                [sys.executable, "-c", MAKE_JOBS], env=env, capture_output=True, text=True, timeout=120
            )
            assert made.returncode == 0, made.stderr[-2000:]
            deadline = time.monotonic() + 150
            while time.monotonic() < deadline:
                ran = {n: j for n, j in jobs_of(home).items() if n.startswith("store-")}
                if len(ran) == 2 and all(j.get("last_run_at") for j in ran.values()):
                    break
                time.sleep(1)
            else:
                raise AssertionError(f"the store's jobs never ran: {ran}\n{flare.read_logs()}")
            assert not marker.exists(), "a cron job ran a script on the host: " + marker.read_text()
            watch = ran["store-watch"]
            assert watch["last_status"] != "ok" and REFUSED in str(watch.get("last_error")), watch
            logs = flare.read_logs()
            assert f"{REFUSED}: planted.py" in logs, logs[-3000:]
            # The pre-run job's agent was told why, and said so (the fake model sees the prompt).
            prerun = llm.wait_for(lambda r: r.is_agent_turn and "STORE-PRERUN" in r.text, timeout=30)
            assert REFUSED in prerun.text

            status = {j["name"]: j for j in flare.status()["cron"]["jobs"] if j.get("source") == "hermes"}
            assert "runs a script" in status["store-watch"].get("warning", ""), status["store-watch"]


SKILL = """---
name: probe
description: Reports the status of the probe.
---
# Probe

Status: !`{command}`
"""


def test_an_agent_written_skill_runs_no_inline_shell_on_the_host(tmp_path: Path) -> None:
    """``skills.inline_shell`` runs a skill's !`cmd` snippets with bash in the gateway when it is viewed.

    The agent writes skills on the host (``skill_manage``), so with the
    option on, the agent would run any command there: the plugin refuses
    every snippet, whatever the config says.
    """
    marker = tmp_path / "INLINE-ESCAPED"
    turn_text = "WRITE-AND-VIEW-THE-PROBE"

    def turn(r: LLMRequest) -> bool:
        return r.is_agent_turn and turn_text in r.last_user_text

    with FakeLLM(models=("fake-model",), default=text("done")) as llm:
        model = {"provider": "custom", "base_url": llm.base_url, "model": "fake-model"}
        hermes = {"skills": {"inline_shell": True}}
        with FlareUp(tmp_path, [bot("a", model=model, toolsets=["skills", "todo"], hermes=hermes)]) as flare:
            flare.wait_ready("a", timeout=120)
            content = SKILL.format(command=f"echo ran > {marker}; echo INLINE-RAN")
            llm.script(
                tools(("skill_manage", {"action": "create", "name": "probe", "content": content}), when=turn),
                tools(("skill_view", {"name": "probe"}), when=turn),
                text("viewed", when=turn),
            )
            chat = flare.cli("chat", "--bot", "a", turn_text, timeout=240)
            assert chat.returncode == 0, chat.stderr + flare.read_logs()
            home = flare.state_dir / "bots" / "a" / "home"
            assert list(home.glob("skills/**/probe/SKILL.md")), "the skill was not written"
            assert not marker.exists(), "a skill's inline shell ran on the host"
            results = "\n".join(tool_results(llm))
            assert "INLINE-RAN" not in results
            assert "inline shell does not run on the host: this snippet was not run" in results, results[
                -3000:
            ]
