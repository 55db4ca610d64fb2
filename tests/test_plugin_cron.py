"""The flare plugin's cron feature: a job's own ``enabled_toolsets`` narrows the bot's, never widens.

One case runs Hermes' real resolver (``cron.scheduler``) in a clean
subprocess with the plugin installed and the bot's rendered settings; the
others check the wrapper's edges on a stand-in resolver.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from flared.config.models import BotConfig
from flared.hermes.settings import render_toolsets
from flared.plugin import cron as cron_feature

PROBE = r"""
import json, sys
import cron.scheduler as scheduler
from flared.plugin import cron as feature
cfg, jobs = json.loads(sys.stdin.read())
feature.install(None)
feature.install(None)  # idempotent: wrapped once
assert not hasattr(scheduler._resolve_cron_enabled_toolsets.__wrapped__, "__wrapped__")
print(json.dumps([scheduler._resolve_cron_enabled_toolsets(j, cfg) for j in jobs]))
"""


@pytest.mark.integration
def test_hermes_resolver_is_held_to_the_bots_toolsets(tmp_path: Path) -> None:
    bot = BotConfig.model_validate({"name": "a", "toolsets": ["todo", "file"]})
    cfg: dict[str, Any] = {**render_toolsets(bot), "mcp_servers": {"notes": {"command": "true"}}}
    jobs: list[dict[str, Any]] = [
        {"id": "none"},
        {"id": "wider", "enabled_toolsets": ["browser", "terminal", "hermes-cli", "todo"]},
        {"id": "narrower", "enabled_toolsets": ["file"]},
        {"id": "mcp-only", "enabled_toolsets": ["notes", "code_execution"]},
        {"id": "no-mcp", "enabled_toolsets": ["todo", "no_mcp"]},
    ]
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "HERMES_HOME": str(tmp_path / "home")}
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        input=json.dumps([cfg, jobs]),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = dict(zip((j["id"] for j in jobs), json.loads(out.stdout.strip().splitlines()[-1]), strict=True))
    assert set(got["none"]) - {"kanban"} == {"todo", "file", "notes"}
    assert sorted(got["wider"]) == ["notes", "todo"]
    assert sorted(got["narrower"]) == ["file", "notes"]
    assert got["mcp-only"] == ["notes"]
    assert got["no-mcp"] == ["todo"]


def test_a_platform_list_that_cannot_be_resolved_gives_no_tools(caplog: pytest.LogCaptureFixture) -> None:
    """Hermes falls back to every tool (None) when resolution fails; the wrapper gives none."""
    resolve = cron_feature.clamp(lambda job, cfg: None)
    assert resolve({"id": "j"}, {}) == []
    assert resolve({"id": "j", "enabled_toolsets": ["terminal"]}, {}) == []
    assert "runs with no tools" in caplog.text


def test_a_dropped_toolset_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    def original(job: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
        return list(job.get("enabled_toolsets") or ["todo", "file"])

    resolve = cron_feature.clamp(original)
    assert resolve({"id": "j1", "enabled_toolsets": ["browser", "file"]}, {}) == ["file"]
    assert "cron job j1 asked for toolsets the bot does not have (browser); it runs with file" in caplog.text
    assert resolve({"id": "j2", "enabled_toolsets": []}, {}) == ["todo", "file"]
