"""Start-up time and idle cost of flared, beside supervisord alone.

- time from `flared up` to the gateway's /health answering, vs supervisord
  alone reaching RUNNING over XML-RPC with the same base config;
- flared's idle RSS and CPU over 60 s, vs supervisord's in the same window.
Targets: RSS <= 60 MB, CPU <= 0.5 %.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import idle_profile, table

from flared.supervisor import Layout, SupervisorClient, render_supervisord_conf

IDLE_SECONDS = float(os.environ.get("BENCH_IDLE_SECONDS", "60"))
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def supervisord_alone(tmp: Path) -> tuple[float, int, subprocess.Popen[bytes]]:
    layout = Layout(tmp / "baseline")
    layout.logs.mkdir(parents=True)
    layout.programs.mkdir(parents=True)
    layout.conf.write_text(render_supervisord_conf(layout, flared_cmd=["sleep", "3600"]))
    t0 = time.monotonic()
    proc = subprocess.Popen([str(BIN / "supervisord"), "-n", "-c", str(layout.conf)], start_new_session=True)
    SupervisorClient(layout.socket).wait_ready(30)
    return time.monotonic() - t0, proc.pid, proc


def flared_up(tmp: Path) -> tuple[float, int, subprocess.Popen[bytes]]:
    port = free_port()
    cfg = tmp / "hermes-flare.yaml"
    cfg.write_text(
        f"state_dir: {tmp / 'state'}\n"
        f"store: {{url: 'file://{tmp / 'store'}'}}\n"
        "bots:\n  - name: hermes\n"
        "    model: {provider: custom, base_url: 'http://127.0.0.1:9/v1', model: m}\n"
        f"    api: {{port: {port}}}\n"
    )
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [str(BIN / "flared"), "up", "-c", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                if json.loads(r.read()).get("status") == "ok":
                    break
        except OSError:
            pass
        if time.monotonic() - t0 > 120:
            raise SystemExit("gateway never answered /health")
        time.sleep(0.05)
    elapsed = time.monotonic() - t0
    flared_pid = int(subprocess.check_output(["pgrep", "-f", f"flared run -c {cfg}"]).split()[0])
    return elapsed, flared_pid, proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    os.kill(proc.pid, signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        base_t, base_pid, base_proc = supervisord_alone(tmp)
        up_t, flared_pid, up_proc = flared_up(tmp)
        time.sleep(5)  # let start-up work settle
        try:
            import threading

            res: dict[str, tuple[float, float]] = {}
            t = threading.Thread(target=lambda: res.__setitem__("sup", idle_profile(base_pid, IDLE_SECONDS)))
            t.start()
            res["flared"] = idle_profile(flared_pid, IDLE_SECONDS)
            t.join()
        finally:
            stop(up_proc)
            stop(base_proc)
    f_rss, f_cpu = res["flared"]
    s_rss, s_cpu = res["sup"]
    print("## Start-up and idle cost (`bench/bench_up.py`)\n")
    print(
        table(
            ["measure", "flared", "baseline", "target"],
            [
                [
                    "`flared up` -> gateway `/health` answers",
                    f"{up_t:.2f} s",
                    f"{base_t:.2f} s (supervisord alone ready)",
                    "-",
                ],
                [
                    f"idle RSS (peak over {IDLE_SECONDS:.0f} s)",
                    f"{f_rss:.1f} MiB",
                    f"{s_rss:.1f} MiB (supervisord)",
                    "<= 60 MB",
                ],
                [
                    f"idle CPU (over {IDLE_SECONDS:.0f} s)",
                    f"{f_cpu:.2f} %",
                    f"{s_cpu:.2f} % (supervisord)",
                    "<= 0.5 %",
                ],
            ],
        )
    )


if __name__ == "__main__":
    main()
