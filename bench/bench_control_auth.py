"""What telling gateways from the admin costs a control request on the unix socket.

A: ``GET /leases`` through a ControlServer whose unix socket decides from the
peer's process tree (``SO_PEERCRED`` + its ancestors in /proc, supervisord's
programs cached), as ``flared run`` does; the peer is an admin client, whose
whole ancestry is walked (the longest path). B (baseline): the same request on a
server without the tree (every same-uid peer is admin). Pairs run back to
back, A then B, so load from other processes hits both alike.
"""

from __future__ import annotations

import statistics
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
from flared.control.auth import ProcessTree
from flared.control.client import ControlClient
from flared.control.server import ControlServer, Router
from flared.sandboxes.manager import LeaseManager

N = 400
MODEL = {"provider": "custom", "base_url": "http://127.0.0.1:9/v1", "model": "m"}


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        data = {"version": 1, "state_dir": str(tmp / "state"), "bots": [{"name": "bench", "model": MODEL}]}
        (tmp / "hermes-flare.yaml").write_text(yaml.safe_dump(data))
        manager = LeaseManager(load_config(tmp / "hermes-flare.yaml"))
        manager.start()
        router = Router()
        lease_routes.register(router, manager)
        # The operator's CLI, as under `flared up`: not under supervisord, so its whole ancestry is walked.
        tree = ProcessTree(lambda: (-1, {10**9: "gateway-x"}))
        servers = {
            "tree": ControlServer(router, state_dir=tmp / "state", socket_path=tmp / "a.sock", tree=tree),
            "none": ControlServer(router, state_dir=tmp / "state", socket_path=tmp / "b.sock"),
        }
        for s in servers.values():
            s.start()
        clients = {k: ControlClient(s.socket_path) for k, s in servers.items()}
        times: dict[str, list[float]] = {"tree": [], "none": []}

        def one(kind: str) -> None:
            t = time.perf_counter()
            clients[kind].request("GET", "/leases")
            times[kind].append(time.perf_counter() - t)

        for _ in range(20):  # warm-up
            one("tree")
            one("none")
        times = {"tree": [], "none": []}
        for _ in range(N):
            one("tree")
            one("none")
        for s in servers.values():
            s.stop()
        manager.stop()
    ratios = [a / b for a, b in zip(times["tree"], times["none"], strict=True)]

    def row(label: str, xs: list[float]) -> list[Any]:
        return [label, f"{statistics.median(xs) * 1000:.2f}", f"{pct(xs, 90) * 1000:.2f}"]

    print(
        f"`GET /leases` on the unix socket, {N} pairs after 20 warm-up pairs, each pair A then B. "
        "Times in ms.\n"
    )
    print(
        table(
            ["what", "median", "p90"],
            [
                row("A: peer decided from its process tree (flared run)", times["tree"]),
                row("B: baseline, no process tree", times["none"]),
            ],
        )
    )
    print(
        f"\nA/B: median of pair ratios {statistics.median(ratios):.2f}x "
        f"(min {min(ratios):.2f}x, max {max(ratios):.2f}x, {len(ratios)} pairs)."
    )


if __name__ == "__main__":
    main()
