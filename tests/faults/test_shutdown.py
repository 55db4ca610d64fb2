"""Stopping with a store that does not answer: the final snapshot is bounded, and a miss is an error.

supervisord exits 0 whatever its programs did, and a SIGKILL at the end of
its stopwaitsecs says nothing: these tests stall the store during the final
snapshot and check that flared ends it at its deadline by itself, names the
deadline, and that `flared stop`, `flared up` and the image's start command
all exit 1 naming the bot, while the store keeps its last good snapshot.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from flared.config.loader import load_config
from flared.snapshots import catalog
from flared.snapshots.service import SnapshotService
from tests.fixtures.faultproxy import FaultProxy
from tests.fixtures.flare import FlareUp, bot
from tests.fixtures.s3server import shared_server, store_config
from tests.test_images import container_start, get_json

pytestmark = pytest.mark.integration


def test_a_stalled_store_ends_the_final_snapshot_at_its_deadline_and_stop_and_up_exit_1(
    tmp_path: Path,
) -> None:
    with store_config() as section:
        pass
    stalled = {"on": False}
    with FaultProxy(shared_server().endpoint, lambda _m, _p: "stall" if stalled["on"] else None) as proxy:
        section.update(endpoint=proxy.endpoint, timeout="20s")
        snapshots = {"every": "1h", "on_change": {"enabled": False}, "shutdown_budget": "4s"}
        with FlareUp(tmp_path, [bot("athena")], store=section, snapshots=snapshots) as flare:
            flare.wait_running("athena", timeout=120)
            home = flare.state_dir / "bots" / "athena" / "home"
            first = flare.cli("snapshot", "--json")
            assert first.returncode == 0, first.stderr
            (home / "after-the-last-snapshot.md").write_text("only on this disk")
            stalled["on"] = True
            asked = time.monotonic()
            stop = flare.cli("stop", timeout=120)
            took = time.monotonic() - asked
            up_code = flare.proc.wait(30) if flare.proc else None
            logs = flare.read_logs()
            supervisord_log = (flare.state_dir / "logs" / "supervisord.log").read_text()
        stalled["on"] = False
        store = SnapshotService(load_config(flare.config_path)).store
        latest, _ = catalog.read_latest(store, "athena")

    said = "athena: final snapshot TIMED OUT: still waiting for the store or for the bot's lock when the "
    said += "deadline of 4 s (snapshots.shutdown_budget) was hit; the store's latest is still "
    assert stop.returncode == 1, stop.stdout + stop.stderr
    assert said in stop.stdout, stop.stdout
    assert "error: the final snapshot of athena did not happen" in stop.stderr, stop.stderr
    assert up_code == 1, logs
    assert said in logs and "error: the final snapshot of athena did not happen" in logs
    # flared ended it by itself at its deadline: exit 1, no SIGKILL from supervisord (35 s).
    assert "stopped: flared (exit status 1)" in supervisord_log, supervisord_log
    assert "SIGKILL" not in supervisord_log, supervisord_log
    assert took < 30, took
    # Nothing lost: the store keeps the last good snapshot, the change is still on disk.
    assert latest is not None and latest.id in first.stdout
    assert (home / "after-the-last-snapshot.md").read_text() == "only on this disk"


def test_the_image_start_command_exits_1_when_the_final_snapshot_misses_supervisords_deadline(
    tmp_path: Path,
) -> None:
    """The image's supervisord gives flared `stopwaitsecs` (here 8 s): the final snapshot gets that
    less 5 s, not the longer `shutdown_budget`, and the container's exit says which bot and why."""
    data: dict[str, Any] = {
        "version": 1,
        "state_dir": "./overridden-by-FLARE_STATE_DIR",
        "snapshots": {"every": "1h", "on_change": {"enabled": False}, "shutdown_budget": "1m"},
        "bots": [bot("athena")],
    }
    with container_start(tmp_path, yaml.safe_dump(data), group="default", stopwaitsecs=8) as (
        proc,
        port,
        state,
    ):
        wait_ready(proc, port, tmp_path)
        (state / "bots" / "athena" / "home" / "note.md").write_text("said after the last snapshot")
        # The store's directory hangs (as a dead network mount does) when the snapshot publishes.
        (tmp_path / "store").mkdir(exist_ok=True)
        store_lock = os.open(tmp_path / "store" / ".lock", os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(store_lock, fcntl.LOCK_EX)
        try:
            os.kill(proc.pid, signal.SIGTERM)  # what tini forwards from the runtime
            code = proc.wait(60)
        finally:
            os.close(store_lock)
    log = (tmp_path / "container.log").read_text()
    assert code == 1, log
    assert (
        "athena: final snapshot TIMED OUT: still publishing when the deadline of 3 s (supervisord's "
        "stopwaitsecs for flared, 8 s, less 5 s to exit) was hit" in log
    ), log
    assert "error: the final snapshot of athena did not happen" in log, log
    flared_log = (state / "logs" / "flared.log").read_text()
    assert "snapshots.shutdown_budget (60 s) does not fit: final snapshots get 3 s" in flared_log


def wait_ready(proc: Any, port: int, tmp_path: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, (tmp_path / "container.log").read_text()
        with contextlib.suppress(OSError, ValueError):
            status = get_json(f"http://127.0.0.1:{port}/status", token="image-test-token")
            bots = status.get("bots") or []
            assert isinstance(bots, list)
            if bots and bots[0]["state"] == "RUNNING" and bots[0]["snapshots"]["phase"] == "ready":
                return
        time.sleep(0.3)
    raise AssertionError("the bot did not come up:\n" + (tmp_path / "container.log").read_text())
