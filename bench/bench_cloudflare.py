"""A redeployed YAML reaching a running Agent, beside restarting the Agent.

Runs the Agent container's start command on this machine (entrypoint ->
supervisord with the image's config -> flared, paths redirected, as
tests/test_images.py does) and measures:

- push: the Worker's cron sends `PUT /config` with a changed YAML (what
  worker/src/scheduled.ts does when the digests differ); time until flared's
  /healthz reports the new digest. No restart.
- baseline: applying the same change by starting a fresh container (what a
  restart-based deploy costs before any bot even restores): from the
  entrypoint's start to /healthz answering with the new digest.

Target: push p95 <= 1 s and well under the restart baseline.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import pct, table

from tests.test_images import container_start, get_json, put_config

PUSHES = int(os.environ.get("BENCH_PUSHES", "30"))
RESTARTS = int(os.environ.get("BENCH_RESTARTS", "5"))


def config_text(every_minutes: int) -> str:
    data: dict[str, Any] = {
        "version": 1,
        "snapshots": {"every": f"{every_minutes}m", "on_change": {"enabled": False}},
        "bots": [],
    }
    return f"# deploy {every_minutes}\n" + yaml.safe_dump(data)


def wait_digest(port: int, digest: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if get_json(f"http://127.0.0.1:{port}/healthz").get("config_digest") == digest:
                return
        time.sleep(0.01)
    raise TimeoutError(f"flared did not report {digest[:12]}")


def main() -> int:
    pushes: list[float] = []
    restarts: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-cf-") as tmp:
        base = Path(tmp)
        for sub in ["push", *(f"restart{i}" for i in range(RESTARTS))]:
            (base / sub).mkdir()
        first = config_text(60)
        with container_start(base / "push", first, group="default") as (_proc, port, _state):
            wait_digest(port, hashlib.sha256(first.encode()).hexdigest())
            for i in range(PUSHES):
                text = config_text(61 + i)
                digest = hashlib.sha256(text.encode()).hexdigest()
                t0 = time.monotonic()
                status, applied = put_config(port, text)
                wait_digest(port, digest)
                pushes.append(time.monotonic() - t0)
                assert status == 200 and applied, (status, applied)
        for i in range(RESTARTS):
            text = config_text(200 + i)
            digest = hashlib.sha256(text.encode()).hexdigest()
            t0 = time.monotonic()
            with container_start(base / f"restart{i}", text, group="default") as (_proc, port, _state):
                wait_digest(port, digest)
                restarts.append(time.monotonic() - t0)

    rows = [
        [
            "PUT /config (cron push, no restart)",
            len(pushes),
            f"{pct(pushes, 50) * 1000:.0f} ms",
            f"{pct(pushes, 95) * 1000:.0f} ms",
        ],
        [
            "baseline: fresh Agent start (entrypoint -> supervisord -> flared)",
            len(restarts),
            f"{pct(restarts, 50) * 1000:.0f} ms",
            f"{pct(restarts, 95) * 1000:.0f} ms",
        ],
    ]
    print("## Cloudflare config push (`bench/bench_cloudflare.py`)\n")
    print("A changed YAML until flared reports its digest, in the Agent's start command run on this")
    print("machine (no bots; a real container restart adds the image start and every bot's restore")
    print("and gateway start on top of the baseline).\n")
    print(table(["how", "runs", "p50", "p95"], rows))
    print("\nTarget: push p95 <= 1 s, with no restart.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
