"""The operator bot: answer latency, recovery, and idle cost.

Against the fake Slack on loopback, with a real `flared up` (supervisord,
flared, one Hermes gateway) and the operator program it runs:

- `status` DM -> answer posted, beside `GET /status` on the control socket
  and `flared status --json` (what the operator wraps, and what a shell
  would run), measured in the same run;
- `snapshot athena` DM -> final result posted, beside `POST /snapshots`
  straight to the control socket (a file in the home changes before each);
- SIGKILL of the operator -> its next answer (supervisord restarts it);
- the operator's idle RSS and CPU, beside a minimal slack-bolt Socket Mode
  app connected to the same fake Slack.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import idle_profile, pct, table

from flared.control.client import ControlClient
from tests.fakes.slack_server import FakeSlack, SlackApp, SlackUser
from tests.fixtures.flare import FlareUp, bot, run_cli

STATUS_RUNS = int(os.environ.get("BENCH_OPERATOR_RUNS", "20"))
SNAPSHOT_RUNS = max(3, STATUS_RUNS // 4)
IDLE_SECONDS = float(os.environ.get("BENCH_OPERATOR_IDLE", "30"))

MINIMAL_BOLT = """
import sys
from slack_bolt import App
from slack_bolt.adapter.socket_mode import SocketModeHandler
from slack_sdk import WebClient
bot_token, app_token, api_url = sys.argv[1:4]
app = App(client=WebClient(token=bot_token, base_url=api_url), token=bot_token)
@app.event("message")
def on_message(event, say):
    say(text="echo")
SocketModeHandler(app, app_token).start()
"""


def ask(slack: FakeSlack, app: SlackApp, user: SlackUser, text: str, contains: str) -> float:
    t0 = time.time()
    slack.dm(app, user, text)
    post = slack.wait_for_post(app, contains=contains, after=t0, timeout=120, final=False)
    return post.at - t0


def timed(fn: object, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        out.append(time.perf_counter() - t0)
    return out


def ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.0f} ms (p95 {pct(values, 95) * 1000:.0f} ms)"


def wait_state(flare: FlareUp, state: str, timeout: float = 60) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        op: dict[str, object] = flare.status()["operator"]
        if op["state"] == state or time.monotonic() > deadline:
            return op
        time.sleep(0.3)


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp, FakeSlack() as slack:
        app = slack.add_app("operator")
        alice = slack.add_user("alice")
        operator = {
            "slack": {"bot_token": app.bot_token, "app_token": app.app_token, "api_url": slack.api_url},
            "allowed_users": [alice.id],
        }
        flare = FlareUp(Path(tmp), [bot("athena")], operator=operator)
        flare.start()
        try:
            flare.wait_running("athena")
            slack.wait_connected(app, timeout=60)
            op = wait_state(flare, "RUNNING")
            client = ControlClient(flare.state_dir / "flared.sock")
            home = flare.state_dir / "bots" / "athena" / "home"
            (home / "memories").mkdir(exist_ok=True)

            ask(slack, app, alice, "status", "athena")  # warm up
            status_dm = [ask(slack, app, alice, "status", "athena") for _ in range(STATUS_RUNS)]
            status_api = timed(lambda: client.request("GET", "/status"), STATUS_RUNS)
            status_cli = timed(lambda: run_cli("status", "--json", "-c", str(flare.config_path)), 5)

            snap_dm, snap_api = [], []
            for i in range(SNAPSHOT_RUNS):
                (home / "memories" / "USER.md").write_text(f"dm run {i}\n")
                snap_dm.append(ask(slack, app, alice, "snapshot athena", "athena: snapshot `"))
                (home / "memories" / "USER.md").write_text(f"api run {i}\n")
                t0 = time.perf_counter()
                client.request("POST", "/snapshots", {"bot": "athena"}, timeout=600)
                snap_api.append(time.perf_counter() - t0)

            rss, cpu = idle_profile(int(str(op["pid"])), IDLE_SECONDS)

            connects = app.connect_count
            t0 = time.time()
            os.kill(int(str(op["pid"])), signal.SIGKILL)
            slack.wait_connected(app, timeout=120, min_count=connects + 1)
            slack.dm(app, alice, "status")
            back = slack.wait_for_post(app, contains="athena", after=t0, timeout=120, final=False).at - t0
        finally:
            flare.stop()

        base_app = slack.add_app("minimal")
        proc = subprocess.Popen(
            [sys.executable, "-c", MINIMAL_BOLT, base_app.bot_token, base_app.app_token, slack.api_url + "/"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            slack.wait_connected(base_app, timeout=60)
            base_rss, base_cpu = idle_profile(proc.pid, IDLE_SECONDS)
        finally:
            proc.terminate()
            proc.wait(timeout=10)

    print("## Operator bot (`bench/bench_operator.py`)\n")
    print(
        f"Fake Slack on loopback; medians of {STATUS_RUNS} `status` and {SNAPSHOT_RUNS} `snapshot` "
        f"runs; idle over {IDLE_SECONDS:.0f} s.\n"
    )
    rows = [
        ("`status` DM -> answer posted", ms(status_dm), f"{ms(status_api)} (`GET /status` on the socket)"),
        ("", "", f"{ms(status_cli)} (`flared status --json`, a new process)"),
        (
            "`snapshot athena` DM -> result posted (a file changed)",
            ms(snap_dm),
            f"{ms(snap_api)} (`POST /snapshots` on the socket)",
        ),
        ("operator SIGKILLed -> answering again", f"{back:.2f} s", "-"),
        ("idle RSS (peak)", f"{rss:.1f} MiB", f"{base_rss:.1f} MiB (minimal slack-bolt Socket Mode app)"),
        ("idle CPU", f"{cpu:.2f} %", f"{base_cpu:.2f} % (same app)"),
    ]
    print(table(["measure", "operator", "baseline"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
