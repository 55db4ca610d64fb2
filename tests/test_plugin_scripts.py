"""The flare plugin's scripts feature: cron scripts and skills' inline shell never run on the host.

One case installs it over Hermes' real ``cron.scheduler``,
``tools.cronjob_tools`` and skill preprocessing in a clean subprocess and
runs a script and an inline-shell snippet that would write markers; the
others check the wrappers' edges.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from flared.plugin import scripts

PROBE = r"""
import json, sys
import cron.scheduler as scheduler
import tools.cronjob_tools as tool
from flared.plugin import scripts
marker = sys.argv[1]
scripts.install(None)
scripts.install(None)  # idempotent: wrapped once
assert not hasattr(scheduler._run_job_script.__wrapped__, "__wrapped__")
from hermes_constants import get_hermes_home
d = get_hermes_home() / "scripts"
d.mkdir(parents=True, exist_ok=True)
(d / "w.py").write_text(f"open({marker!r}, 'w').write('ran')\n")
job = {"id": "j1", "name": "w", "no_agent": True, "script": "w.py"}
ok, doc, final, err = scheduler.run_job(job)
prerun = scheduler._build_job_prompt({"id": "j2", "prompt": "go", "script": "w.py"})
made = json.loads(tool.cronjob(action="create", schedule="every 1h", name="x", script="w.py", no_agent=True))
cleared = tool._validate_cron_script_path("")
from agent.skill_commands import _expand_inline_shell
inline = _expand_inline_shell(f"status: !`touch {marker}-inline; echo up`", None, 5)
print(json.dumps({"ok": ok, "err": err, "prerun": prerun, "made": made, "cleared": cleared, "inline": inline}))
"""


@pytest.mark.integration
def test_hermes_runs_no_cron_script_and_its_tool_makes_no_script_job(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "HERMES_HOME": str(tmp_path / "home")}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(marker)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert not marker.exists()
    assert got["ok"] is False and got["err"].startswith(f"{scripts.REFUSED}: w.py was not run")
    assert "## Script Error" in got["prerun"] and scripts.REFUSED in got["prerun"]
    assert got["made"]["success"] is False and scripts.REFUSED in got["made"]["error"]
    assert got["cleared"] is None
    assert not Path(f"{marker}-inline").exists() and "up" not in got["inline"]
    assert got["inline"].startswith(f"status: [{scripts.INLINE_REFUSED}: this snippet was not run")
    assert f"{scripts.REFUSED}: w.py" in out.stderr  # the gateway log names the script


def test_a_moved_hermes_name_refuses_to_load(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("fake_scheduler")

    def _run_job_script(path: str, timeout: int) -> tuple[bool, str]:
        return True, "ran"

    fake._run_job_script = _run_job_script  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_scheduler", fake)
    monkeypatch.setattr(scripts, "SCHEDULER", "fake_scheduler")
    with pytest.raises(RuntimeError, match="it could run code on the host"):
        scripts.install(None)
    assert fake._run_job_script is _run_job_script


def test_clearing_a_script_stays_allowed() -> None:
    validate = scripts.refuse_scripts(lambda script: None)
    assert validate(None) is None and validate("  ") is None
    assert scripts.REFUSED in (validate("a.sh") or "")
