"""Fault matrix, "Sandboxes and secrets" (docs/reliability.md): a bot's ``toolsets`` through cron.

The agent makes cron jobs itself (its ``cronjob`` tool calls Hermes'
``create_job``): one asks for toolsets the bot was not given, one names
none. A real gateway runs both, on the fake model server, and every tool the
model is offered in those runs must be one of the bot's. ``flared status``
lists both jobs, with a warning on the one that asked for more.

The agent delegates (``delegate_task``), naming toolsets, roles and an ACP
command in its arguments: each subagent is offered only the bot's tools.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fakes.llm_server import FakeLLM, LLMRequest, text
from tests.fixtures.flare import FlareUp, bot

pytestmark = pytest.mark.integration

BOT_TOOLSETS = ["todo", "file"]
WIDER = ["terminal", "browser", "code_execution", "delegation", "web", "hermes-cli", "todo"]
#: Tools of the toolsets above that the bot must never be offered (core tools of Hermes' default set).
FORBIDDEN = {
    "terminal",
    "process",
    "browser_navigate",
    "execute_code",
    "delegate_task",
    "web_search",
    "web_extract",
}

MAKE_JOBS = """
import json, datetime, sys
import cron.jobs as jobs
wider = json.loads(sys.argv[1])
made = [
    jobs.create_job(prompt="WIDE-JOB: summarise", schedule="every 1h", name="wide", enabled_toolsets=wider),
    jobs.create_job(prompt="PLAIN-JOB: summarise", schedule="every 1h", name="plain"),
]
due = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=1)).isoformat()
for job in made:
    jobs.update_job(job["id"], {"next_run_at": due})
"""


def bot_tools(toolsets: list[str] = BOT_TOOLSETS) -> set[str]:
    """Every tool the bot's toolsets hold, by Hermes' own resolution."""
    code = "import json, sys; from toolsets import resolve_toolset; "
    code += "print(json.dumps(sorted({t for ts in sys.argv[1:] for t in resolve_toolset(ts)})))"
    out = subprocess.run([sys.executable, "-c", code, *toolsets], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_an_agent_made_cron_job_gets_only_the_bots_toolsets(tmp_path: Path) -> None:
    with FakeLLM(models=("fake-model",), default=text("done")) as llm:
        model = {"provider": "custom", "base_url": llm.base_url, "model": "fake-model"}
        with FlareUp(tmp_path, [bot("a", model=model, toolsets=BOT_TOOLSETS)]) as flare:
            flare.wait_ready("a", timeout=120)
            home = flare.state_dir / "bots" / "a" / "home"
            env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "HERMES_HOME": str(home)}
            # The gateway is held still while the jobs are made (its ticker must not run them and
            # be torn down mid-run), then killed: the one supervisord starts runs due jobs at once.
            old = flare.bot_status("a")["pid"]
            os.kill(old, signal.SIGSTOP)
            try:
                made = subprocess.run(
                    [sys.executable, "-c", MAKE_JOBS, json.dumps(WIDER)],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
            finally:
                os.kill(old, signal.SIGKILL)
            assert made.returncode == 0, made.stderr[-2000:]

            def run_of(tag: str) -> LLMRequest:
                try:
                    return llm.wait_for(lambda r: r.is_agent_turn and tag in r.text, timeout=120)
                except TimeoutError:
                    raise AssertionError(f"the {tag} never ran\n{flare.read_logs()}") from None

            allowed = bot_tools()
            assert {"todo", "read_file"} <= allowed
            problems = []
            for tag in ("WIDE-JOB", "PLAIN-JOB"):
                offered = set(run_of(tag).tool_names)
                if offered - allowed:
                    problems.append(
                        f"{tag} was offered {sorted(offered - allowed)} beyond the bot's toolsets"
                    )
                if "todo" not in offered:
                    problems.append(f"{tag} lost the bot's own tools: {sorted(offered)}")
            assert not problems, "\n".join(problems)
            assert not FORBIDDEN & allowed  # the check above could see them
            dropped = (
                "asked for toolsets the bot does not have (browser, code_execution, delegation, hermes-cli"
            )
            assert dropped in flare.read_logs()

            status = flare.status()
            own = {j["name"]: j for j in status["cron"]["jobs"] if j.get("source") == "hermes"}
            assert set(own) == {"wide", "plain"}, status["cron"]
            assert own["wide"]["bot"] == "a" and own["wide"]["schedule"] == "every 60m"
            assert "browser" in own["wide"]["warning"] and "not given" in own["wide"]["warning"]
            assert "warning" not in own["plain"]
            shown = flare.cli("status")
            assert shown.returncode == 0, shown.stderr
            assert "wide" in shown.stdout and "agent's own" in shown.stdout


DELEGATING = ["todo", "file", "delegation"]
TURN = "DELEGATE-THE-RESEARCH"


def test_a_subagent_gets_no_toolset_the_bot_does_not_have(tmp_path: Path) -> None:
    """``delegate_task``: the model names toolsets, roles and ACP commands; children get the bot's tools only.

    Hermes 0.19 gives the model no ``toolsets`` argument (children inherit the
    parent's) and strips ``acp_command``/``acp_args`` from tasks; this holds it
    to that through a real gateway, so a Hermes that starts honouring them fails here.
    """
    from tests.fakes.llm_server import tools

    wider = ["terminal", "browser", "web", "code_execution", "hermes-cli", "todo"]

    def turn(r: LLMRequest) -> bool:
        return r.is_agent_turn and TURN in r.last_user_text

    with FakeLLM(models=("fake-model",), default=text("child done")) as llm:
        model = {"provider": "custom", "base_url": llm.base_url, "model": "fake-model"}
        with FlareUp(tmp_path, [bot("a", model=model, toolsets=DELEGATING)]) as flare:
            flare.wait_ready("a", timeout=120)
            llm.script(
                tools(
                    ("delegate_task", {"goal": "CHILD-ONE: look it up", "toolsets": wider}),
                    (
                        "delegate_task",
                        {
                            "tasks": [
                                {
                                    "goal": "CHILD-TWO: look it up",
                                    "toolsets": wider,
                                    "role": "orchestrator",
                                    "acp_command": "sh",
                                    "acp_args": ["-c", f"touch {tmp_path / 'ESCAPED'}"],
                                }
                            ],
                            "role": "orchestrator",
                            "toolsets": wider,
                        },
                    ),
                    when=turn,
                ),
                text("delegated", when=turn),
            )
            chat = flare.cli("chat", "--bot", "a", TURN, timeout=240)
            assert chat.returncode == 0, chat.stderr + flare.read_logs()
            allowed = bot_tools(DELEGATING)
            assert {"todo", "read_file", "delegate_task"} <= allowed
            assert not (FORBIDDEN - {"delegate_task"}) & allowed
            for tag in ("CHILD-ONE", "CHILD-TWO"):
                try:
                    child = llm.wait_for(_turn_of(tag), timeout=60)
                except TimeoutError:
                    raise AssertionError(f"{tag} never ran\n{flare.read_logs()}") from None
                offered = set(child.tool_names)
                assert offered <= allowed - {"delegate_task"}, f"{tag} got {sorted(offered - allowed)}"
                assert "todo" in offered, f"{tag} lost the bot's own tools: {sorted(offered)}"
            assert not (tmp_path / "ESCAPED").exists(), "a task's acp_command ran on the host"


def _turn_of(tag: str) -> Callable[[LLMRequest], bool]:
    return lambda r: r.is_agent_turn and tag in r.text
