"""Time to an answered Slack message: from `flared up`, and from a dead container.

Against the fake Slack and the fake model on loopback (so the figures are
flared + Hermes, not the network):

- `flared up` -> the first DM answered (the DM is sent as soon as the bot's
  Socket Mode connection is up, as a waiting user would);
- kill -> restored bot answering: SIGKILL every process, delete the state
  dir (a new container), `flared up` again: restore, gateway, answer;
- baseline, same run: `hermes gateway run` started directly on a copy of the
  rendered Hermes home (no supervisord, no flared, no restore) -> first DM
  answered.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import table

from flared.config.models import BotConfig
from flared.hermes.home import hermes_executable
from tests.fakes import llm_server as llm
from tests.fakes.llm_server import FakeLLM
from tests.fakes.slack_server import FakeSlack, SlackApp, SlackUser
from tests.fixtures.flare import FlareUp, run_cli

RUNS = int(os.environ.get("BENCH_E2E_RUNS", "3"))
HAVE_SNAPSHOTS = (Path(__file__).resolve().parent.parent / "flared" / "snapshots" / "service.py").exists()


def answered(slack: FakeSlack, app: SlackApp, user: SlackUser, t0: float, text: str) -> tuple[float, float]:
    """(seconds to socket up, seconds to the answer), both from t0."""
    slack.wait_connected(app, timeout=120, min_count=app.connect_count + 1)
    connected = time.monotonic() - t0
    sent = time.time()
    slack.dm(app, user, text)
    slack.wait_for_post(app, contains="pong", after=sent, timeout=120, final=False)
    return connected, time.monotonic() - t0


def config(tmp: Path, slack: FakeSlack, app: SlackApp, user: SlackUser, model: FakeLLM) -> FlareUp:
    bot = {
        "name": "hermes",
        "model": {"provider": "custom", "base_url": model.base_url, "model": "bench-model"},
        "slack": {
            "bot_token": app.bot_token,
            "app_token": app.app_token,
            "allowed_users": [user.id],
            "api_url": slack.api_url,
        },
        "toolsets": ["terminal", "memory", "file"],
    }
    return FlareUp(tmp, [bot], snapshots={"every": "1h", "on_change": {"enabled": False}})


def flared_runs(slack: FakeSlack, model: FakeLLM, user: SlackUser, tmp: Path) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"connect": [], "first": [], "restored": []}
    for i in range(RUNS):
        app = slack.add_app(f"bench-{i}")
        flare = config(tmp / f"run{i}", slack, app, user, model)
        (tmp / f"run{i}").mkdir()
        t0 = time.monotonic()
        flare.start()
        try:
            connect, first = answered(slack, app, user, t0, "ping one")
            out["connect"].append(connect)
            out["first"].append(first)
            if HAVE_SNAPSHOTS:
                run_cli("snapshot", "--bot", "hermes", "-c", str(flare.config_path), timeout=120)
            flare.kill_all()
            shutil.rmtree(flare.state_dir)
            t1 = time.monotonic()
            flare.start()
            _, restored = answered(slack, app, user, t1, "ping two")
            out["restored"].append(restored)
        finally:
            flare.stop()
    return out


def baseline_runs(slack: FakeSlack, model: FakeLLM, user: SlackUser, tmp: Path) -> list[float]:
    """`hermes gateway run` alone on the Hermes home flared renders (fresh each run)."""
    from flared.config.loader import load_config
    from flared.hermes.home import deep_merge, flared_settings, render_config_yaml, render_env

    times = []
    for i in range(RUNS):
        app = slack.add_app(f"base-{i}")
        run_dir = tmp / f"base{i}"
        run_dir.mkdir()
        flare = config(run_dir, slack, app, user, model)
        flare.write_config()
        loaded = load_config(flare.config_path)
        bot: BotConfig = loaded.config.bots[0]
        settings, env = flared_settings(loaded.config, bot)
        home = run_dir / "home"
        home.mkdir()
        (home / "config.yaml").write_text(render_config_yaml({}, deep_merge(settings, {}), bot))
        (home / ".env").write_text(render_env(env))
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [hermes_executable(), "gateway", "run", "--no-supervise", "--external-supervisor"],
            env={**os.environ, "HERMES_HOME": str(home), "HOME": str(run_dir)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            _, first = answered(slack, app, user, t0, "ping base")
            times.append(first)
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    return times


def main() -> None:
    with FakeSlack() as slack, FakeLLM(models=("bench-model",)) as model:
        model.default = llm.Reply(text="pong", label="pong")
        user = slack.add_user("bench")
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            base = baseline_runs(slack, model, user, tmp)
            runs = flared_runs(slack, model, user, tmp)

    def med(xs: list[float]) -> str:
        return f"{statistics.median(xs):.2f} s" if xs else "-"

    restore_note = (
        "restore from the store" if HAVE_SNAPSHOTS else "no snapshot service in this build: no restore"
    )
    print("## Slack end to end (`bench/bench_e2e.py`)\n")
    print(f"Median of {RUNS} runs each; fake Slack and model on loopback.\n")
    print(
        table(
            ["measure", "flared", "baseline"],
            [
                [
                    "`flared up` -> Socket Mode connected",
                    med(runs["connect"]),
                    "-",
                ],
                [
                    "`flared up` -> first DM answered",
                    med(runs["first"]),
                    f"{med(base)} (`hermes gateway run` alone -> first DM answered)",
                ],
                [
                    f"kill -9 + new disk -> restored bot answers ({restore_note})",
                    med(runs["restored"]),
                    f"{med(base)} (same baseline)",
                ],
            ],
        )
    )


if __name__ == "__main__":
    main()
