"""Sandbox latency: lease + first command and a warm command per mode, beside raw bubblewrap.

The baseline is the very bwrap command line the local provider builds
(same binds, namespaces and environment), run with ``subprocess.run`` and
nothing else: what a command costs with no lease manager, no limits, no
output capture. Target: a warm command <= 1.5x that baseline.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import pct, table

from flared.api import leases as lease_routes
from flared.config.loader import load_config
from flared.config.models import SandboxProfile
from flared.control.client import ControlClient
from flared.control.locate import socket_path
from flared.control.server import ControlServer, Router
from flared.sandboxes.manager import LeaseManager
from flared.sandboxes.providers.local import LocalProvider, sandbox_root
from flared.sandboxes.types import ExecRequest

N = 60
MODEL = {"provider": "custom", "base_url": "http://127.0.0.1:9/v1", "model": "m"}


def ms(samples: list[float]) -> tuple[float, float]:
    return statistics.median(samples) * 1000, pct(samples, 90) * 1000


def timed(fn: Any, n: int = N) -> list[float]:
    fn()  # warm caches
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def interleaved(fn: Any, base: Any, n: int = N) -> tuple[list[float], list[float]]:
    """Time ``fn`` and the baseline alternately, so load from other processes hits both alike."""
    fn()
    base()
    a: list[float] = []
    b: list[float] = []
    for _ in range(n):
        for f, out in ((fn, a), (base, b)):
            t = time.perf_counter()
            f()
            out.append(time.perf_counter() - t)
    return a, b


def manager(tmp: Path, mode: str) -> LeaseManager:
    root = tmp / mode
    root.mkdir()
    data = {
        "version": 1,
        "state_dir": str(root / "state"),
        "sandboxes": {"default": {"mode": mode, "max_leases": 1000}},
        "bots": [{"name": "bench", "model": MODEL}],
    }
    (root / "hermes-flare.yaml").write_text(yaml.safe_dump(data))
    m = LeaseManager(load_config(root / "hermes-flare.yaml"))
    m.start()
    return m


def main() -> None:
    rows: list[list[str]] = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        raw_provider = LocalProvider(sandbox_root(tmp / "raw"))
        raw_id = "fl-default-rawbaseline0"
        raw_data = raw_provider.create(raw_id, SandboxProfile())
        argv = raw_provider.argv(raw_id, SandboxProfile(), ExecRequest(command="true", cwd="/workspace"))
        argv = [*argv[: argv.index("--")], "--", "/bin/true"]  # the same sandbox, no shell
        uid = int(raw_data.get("uid", os.getuid()))
        as_lease: dict[str, Any] = (
            {"user": uid, "group": uid, "extra_groups": []} if os.geteuid() == 0 else {}
        )

        def raw_run() -> None:
            subprocess.run(argv, check=True, **as_lease)

        raw_all: list[float] = []
        per_session = manager(tmp, "per-session")
        lease = per_session.acquire("bench", "warm")

        def add(label: str, fn: Any, n: int = N) -> float:
            """A row: median, p90 and min, and the median of its run/raw ratios (pairs run back to back)."""
            samples, raw = interleaved(fn, raw_run, n)
            raw_all.extend(raw)
            med, p90 = ms(samples)
            ratio = statistics.median(a / b for a, b in zip(samples, raw, strict=True))
            best = min(samples) / min(raw)
            rows.append(
                [
                    label,
                    f"{med:.1f}",
                    f"{p90:.1f}",
                    f"{min(samples) * 1000:.1f}",
                    f"{ratio:.2f}x",
                    f"{best:.2f}x",
                ]
            )
            return ratio

        warm = add("warm command, per-session (manager.exec)", lambda: per_session.exec(lease["id"], "true"))

        # the plugin's path: POST /exec over the control socket
        router = Router()
        lease_routes.register(router, per_session)
        sock = socket_path(per_session.loaded)
        server = ControlServer(router, state_dir=per_session.loaded.state_dir, socket_path=sock)
        server.start()
        client = ControlClient(sock)
        body = {"bot": "bench", "session": "warm", "command": "true"}
        add("warm command, per-session, through POST /exec", lambda: client.request("POST", "/exec", body))
        server.stop()

        counter = iter(range(10**6))
        add(
            "new session: lease + first command",
            lambda: per_session.run("bench", f"s{next(counter)}", "true"),
        )
        per_session_leases = per_session.list()
        for x in per_session_leases:
            per_session.release(x["id"])
        per_session.stop()

        shared = manager(tmp, "shared")

        def shared_first() -> None:
            got = shared.run("bench", None, "true")
            shared.release(got[0]["id"])  # so the next run makes a fresh shared lease

        add("shared: lease + first command + release", shared_first, n=15)
        shared_lease = shared.acquire("bench", None)
        add("warm command, shared", lambda: shared.exec(shared_lease["id"], "true"))
        shared.release(shared_lease["id"])
        shared.stop()

        per_command = manager(tmp, "per-command")
        pc = add("per-command: lease + command + destroy", lambda: per_command.run("bench", "s", "true"))
        per_command.stop()
        raw_provider.destroy(raw_id, raw_data)

    raw_med, raw_p90 = ms(raw_all)
    rows.insert(
        0,
        [
            "raw `bwrap ... /bin/true`",
            f"{raw_med:.1f}",
            f"{raw_p90:.1f}",
            f"{min(raw_all) * 1000:.1f}",
            "1.00x",
            "1.00x",
        ],
    )
    print(
        f"Local provider (bubblewrap), command `true`; {N} runs per row after one warm-up, each run "
        "followed by one raw `bwrap` run of the same sandbox (same binds, namespaces, uid; `/bin/true` with "
        "no shell and no lease manager). Ratio: median of those run/raw pairs, so load from other "
        "processes hits both alike; best: fastest run / fastest raw run. Times in ms.\n"
    )
    print(table(["what", "median", "p90", "min", "ratio to raw", "best vs best"], rows))
    verdict = "meets" if warm <= 1.5 else "misses"
    print(
        f"\nWarm command: {warm:.2f}x raw bubblewrap ({verdict} the <= 1.5x target). "
        f"Per-command mode: {pc:.2f}x raw, i.e. {(pc - warm) * raw_med:.1f} ms more per command than a "
        "warm lease (making and removing the lease directory)."
    )


if __name__ == "__main__":
    main()
