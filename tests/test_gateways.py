"""The reconcile loop leaves an untouched Hermes home alone and repairs a damaged one."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.fixtures.flare import FlareUp, bot

pytestmark = pytest.mark.integration


def test_idle_reconcile_does_not_rewrite_and_repairs_drift(tmp_path: Path) -> None:
    with FlareUp(tmp_path, [bot("athena")]) as flare:
        first = flare.wait_running("athena")
        home = flare.state_dir / "bots" / "athena" / "home"
        env, config = home / ".env", home / "config.yaml"
        time.sleep(1)
        before = (env.stat().st_mtime_ns, config.stat().st_mtime_ns)
        time.sleep(5)  # two or three reconcile ticks
        assert (env.stat().st_mtime_ns, config.stat().st_mtime_ns) == before
        env.unlink()  # drift: flared puts it back at the next tick, same content, no restart
        deadline = time.monotonic() + 10
        while not env.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert env.exists() and oct(env.stat().st_mode & 0o777) == "0o600"
        assert flare.bot_status("athena")["pid"] == first["pid"]
