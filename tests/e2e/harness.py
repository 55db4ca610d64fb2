"""Shared pieces of the end-to-end suite: the fakes, the bots, and probes of a bot's state.

One ``flared up`` (supervisord + flared + two real ``hermes gateway run``)
serves every scenario that does not need a fresh container; the scenario
that kills the container runs last and brings up its own.
"""

from __future__ import annotations

import importlib.util
import json
import sqlite3
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.fakes import llm_server as llm
from tests.fakes.llm_server import FakeLLM, LLMRequest
from tests.fakes.slack_server import FakeSlack, SlackApp, SlackUser
from tests.fixtures.flare import FlareUp, free_port, run_cli

BOTS = ("alpha", "beta")
INSTALL_PATH = sys.prefix  # where Hermes is installed in the agent; the sandbox must not see it


def have(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


SNAPSHOTS = have("flared.snapshots.service")
SANDBOXES = have("flared.plugin.terminal") and have("flared.sandboxes.manager")
S3_FIXTURE = have("tests.fixtures.s3server")


def model_name(bot: str) -> str:
    return f"model-{bot}"


def for_bot(bot: str) -> Callable[[LLMRequest], bool]:
    """A scripted reply only the given bot's agent turns may consume."""
    return lambda r: r.is_agent_turn and r.body.get("model") == model_name(bot)


def turn_with(bot: str, text: str) -> Callable[[LLMRequest], bool]:
    return lambda r: for_bot(bot)(r) and text in r.last_user_text


@dataclass
class World:
    """Everything a scenario needs."""

    slack: FakeSlack
    llm: FakeLLM
    apps: dict[str, SlackApp]
    alice: SlackUser  # allowed on both bots
    mallory: SlackUser  # allowed nowhere
    flare: FlareUp
    store: dict[str, Any]

    def home(self, bot: str) -> Path:
        return self.flare.state_dir / "bots" / bot / "home"

    def dm(self, bot: str, text: str, user: SlackUser | None = None) -> float:
        """Send a DM; returns the time it was sent (for ``wait_for_post(after=...)``)."""
        sent = time.time()
        self.slack.dm(self.apps[bot], user or self.alice, text)
        return sent

    def reply(self, bot: str, after: float, contains: str | None = None, timeout: float = 60) -> str:
        app = self.apps[bot]
        post = self.slack.wait_for_post(
            app,
            channel=self.slack.dm_channel(app, self.alice),
            contains=contains,
            after=after,
            timeout=timeout,
            predicate=lambda p: "home channel" not in p.text.lower(),
        )
        return self.slack.current_text(post)

    def ask(self, bot: str, text: str, *replies: llm.Reply, contains: str, timeout: float = 60) -> str:
        """Script the model's replies, DM the bot, return its answer once it contains ``contains``."""
        self.llm.script(*replies)
        return self.reply(bot, self.dm(bot, text), contains=contains, timeout=timeout)

    def cli(self, *args: str, timeout: float = 120) -> Any:
        out = run_cli(*args, "--json", "-c", str(self.flare.config_path), timeout=timeout)
        assert out.returncode == 0, f"flared {' '.join(args)} failed ({out.returncode}):\n{out.stderr}"
        return json.loads(out.stdout)

    def snapshots(self, bot: str) -> list[dict[str, Any]]:
        data = self.cli("snapshots", "--bot", bot)
        items = data.get("snapshots", data) if isinstance(data, dict) else data
        return list(items)


def bot_entry(
    bot: str, world_slack: FakeSlack, app: SlackApp, llm_url: str, allowed: list[str]
) -> dict[str, Any]:
    return {
        "name": bot,
        "api": {"port": free_port()},  # `flared chat` talks to it
        "model": {"provider": "custom", "base_url": llm_url, "model": model_name(bot)},
        "slack": {
            "bot_token": app.bot_token,
            "app_token": app.app_token,
            "allowed_users": allowed,
            "api_url": world_slack.api_url,
        },
        "toolsets": ["terminal", "memory", "file", "session_search"],
        "hermes": {
            # Side calls Hermes would make to the same fake model; off so they do not
            # blur what the tests count (each is its own request, never an agent turn).
            "memory": {"nudge_interval": 0},
            "skills": {"creation_nudge_interval": 0},
        },
    }


def messages(home: Path) -> list[tuple[str, str]]:
    """(role, content) of every message in the bot's state.db (read-only, WAL-safe)."""
    db = home / "state.db"
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return [(r, c or "") for r, c in con.execute("SELECT role, content FROM messages ORDER BY id")]
    finally:
        con.close()


def wait_until(probe: Callable[[], Any], timeout: float, what: str, every: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"{what} within {timeout}s (last: {last!r})")
