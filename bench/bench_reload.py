"""Hot reload latency, beside a full `flared up` restart measured in the same run.

- policy: over N edits of `snapshots.every` (written by rename, as editors
  do), the time from the write to the control API reporting the new config
  applied (the watcher notices, settles, loads, validates, diffs, applies);
- bot restart: from an edit of one bot's model to its new gateway answering
  `/health` (includes the snapshot taken before the restart);
- baseline: stopping `flared up` and starting it again until both gateways
  answer `/health`: what a config change cost before hot reload.
Targets: policy p95 <= 1 s; bot restart <= 5 s.
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import pct, table

from flared.config.loader import digest_text
from flared.control.client import ControlClient
from tests.fixtures.flare import FlareUp, bot, free_port

POLICY_EDITS = int(os.environ.get("BENCH_RELOAD_EDITS", "50"))
MODEL_EDITS = int(os.environ.get("BENCH_RELOAD_MODEL_EDITS", "5"))
BASELINE_RUNS = int(os.environ.get("BENCH_RELOAD_BASELINE_RUNS", "2"))


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
            return bool(json.loads(r.read()).get("status") == "ok")
    except OSError:
        return False


def wait(probe: Any, timeout: float, what: str, step: float = 0.005) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return
        time.sleep(step)
    raise SystemExit(f"bench_reload: {what} within {timeout}s")


def write(flare: FlareUp, data: dict[str, Any]) -> str:
    """Write by rename (as editors do); return the new file's digest."""
    flare.write_config(data)
    return digest_text(flare.config_path.read_text())


def applied(client: ControlClient, digest: str) -> bool:
    last = client.request("GET", "/status")["config"].get("last_reload") or {}
    return bool(last.get("config_digest") == digest and last.get("applied"))


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        ports = {"alpha": free_port(), "beta": free_port()}
        flare = FlareUp(tmp, [bot("alpha", ports["alpha"]), bot("beta", ports["beta"])])
        flare.start()
        try:
            for port in ports.values():
                wait(lambda p=port: healthy(p), 120, "gateways answering", 0.05)
            client = ControlClient(flare.state_dir / "flared.sock")
            data = copy.deepcopy(flare.data)

            policy: list[float] = []
            for i in range(POLICY_EDITS):
                data["snapshots"]["every"] = f"{600 + i}s"
                t0 = time.monotonic()
                digest = write(flare, data)
                wait(lambda dg=digest: applied(client, dg), 10, "the policy edit applied")
                policy.append(time.monotonic() - t0)
                time.sleep(0.2)
            assert (
                client.request("GET", "/config")["config"]["snapshots"]["every"]
                == f"{600 + POLICY_EDITS - 1}s"
            )

            def bot_status(name: str) -> dict[str, Any]:
                """In-process, so the poller's own start-up does not compete with the gateway's."""
                return next(b for b in client.request("GET", "/status")["bots"] if b["name"] == name)

            restarts: list[float] = []
            for i in range(MODEL_EDITS):
                old_pid = bot_status("beta")["pid"]
                alpha_pid = bot_status("alpha")["pid"]
                data["bots"][1]["model"]["model"] = f"model-{i}"
                t0 = time.monotonic()
                write(flare, data)

                def new_gateway_answers(old: int = old_pid) -> bool:
                    st = bot_status("beta")
                    return (
                        st["state"] == "RUNNING" and st["pid"] not in (None, old) and healthy(ports["beta"])
                    )

                wait(new_gateway_answers, 60, "the restarted gateway answering", 0.05)
                restarts.append(time.monotonic() - t0)
                assert bot_status("alpha")["pid"] == alpha_pid, "an unchanged bot restarted"

            baseline: list[float] = []
            for _ in range(BASELINE_RUNS):
                t0 = time.monotonic()
                flare.stop()
                flare.start()
                for port in ports.values():
                    wait(lambda p=port: healthy(p), 120, "gateways answering after restart", 0.02)
                baseline.append(time.monotonic() - t0)
        finally:
            flare.stop()

    base = statistics.median(baseline)
    print("## Hot reload (`bench/bench_reload.py`)\n")
    print(
        f"Two bots under real supervisord and Hermes gateways; edits written by rename and picked up by "
        f"the file watcher. Baseline: the same change applied by stopping `flared up` and starting it "
        f"again (median of {BASELINE_RUNS}), until both gateways answer `/health`.\n"
    )
    print(
        table(
            ["measure", "hot reload", "baseline (full restart)", "target"],
            [
                [
                    f"`snapshots.every` edit -> applied, p50 ({POLICY_EDITS} edits)",
                    f"{pct(policy, 50):.3f} s",
                    f"{base:.2f} s",
                    "-",
                ],
                [
                    f"`snapshots.every` edit -> applied, p95 ({POLICY_EDITS} edits)",
                    f"{pct(policy, 95):.3f} s",
                    f"{base:.2f} s",
                    "<= 1 s",
                ],
                [
                    f"bot model edit -> its new gateway answers `/health`, median ({MODEL_EDITS} edits)",
                    f"{statistics.median(restarts):.2f} s",
                    f"{base:.2f} s",
                    "<= 5 s",
                ],
                [
                    f"bot model edit -> its new gateway answers `/health`, max ({MODEL_EDITS} edits)",
                    f"{max(restarts):.2f} s",
                    f"{base:.2f} s",
                    "<= 5 s",
                ],
                ["gateways restarted per policy edit", "0", "2", "0"],
            ],
        )
    )


if __name__ == "__main__":
    main()
