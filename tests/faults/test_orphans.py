"""kill -9 of supervisord: its programs must not run on unsupervised, and the next `flared up` works.

flared and the gateways died with supervisord before (they were reparented
and kept the sandboxes' lock and the bots' ports: the next `flared up`
crash-loops with a traceback). Real supervisord, flared and Hermes gateways.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from flared import orphans
from tests.fixtures.flare import FlareUp, bot

pytestmark = pytest.mark.integration


def supervisord_pid(flare: FlareUp) -> int:
    return int((flare.state_dir / "supervisor" / "supervisord.pid").read_text().split()[0])


def gone_within(pids: list[int], seconds: float) -> list[int]:
    """Those of ``pids`` still running after ``seconds``."""
    return orphans.wait_gone(pids, seconds)


def wait_ready(flare: FlareUp, name: str) -> dict[str, Any]:
    """RUNNING, then ready: the gateway's API answers (what `flared up` prints as ready)."""
    flare.wait_running(name, timeout=120)
    deadline = time.monotonic() + 60
    while (b := flare.bot_status(name))["readiness"] != "ready":
        assert time.monotonic() < deadline and b["readiness"] != "failed", b
        time.sleep(0.3)
    return b


def remember(flare: FlareUp, text: str) -> Path:
    memory = flare.state_dir / "bots" / "athena" / "home" / "memories" / "MEMORY.md"
    memory.parent.mkdir(parents=True, exist_ok=True)
    memory.write_text(text)
    return memory


def test_flared_and_gateways_die_with_supervisord_and_the_next_up_comes_up_clean(tmp_path: Path) -> None:
    port = bot("athena")["api"]["port"]
    flare = FlareUp(tmp_path, [bot("athena", port)])
    flare.start()
    try:
        before = flare.wait_running("athena", timeout=120)
        flared_pid = flare.status()["flared"]["pid"]
        memory = remember(flare, "the user's cat is called Ada")
        os.kill(supervisord_pid(flare), signal.SIGKILL)
        assert gone_within([flared_pid, before["pid"]], 15) == [], flare.read_logs()
        assert flare.proc is not None
        assert flare.proc.wait(60) == 128 + signal.SIGKILL
        assert orphans.find(flare.state_dir) == []
    finally:
        flare.stop()
    up_log = flare.log.read_text()
    assert "supervisord was killed (SIGKILL); waiting for " in up_log, up_log
    assert "athena: final snapshot " in up_log and "uploaded" in up_log, up_log  # the dying flared's
    flared_log = (flare.state_dir / "logs" / "flared.log").read_text()
    assert "supervisord is gone; waiting up to" in flared_log

    with FlareUp(tmp_path, [bot("athena", port)]) as again:
        after = wait_ready(again, "athena")
        assert after["readiness"] == "ready" and after["restarts"] == 0, after
        assert memory.read_text() == "the user's cat is called Ada"
        logs = again.read_logs()
    assert "Traceback" not in logs and "another flared process" not in logs, logs


# What a run of an older flared (without flared.lifeline) left after its supervisord died:
# a flared holding the sandboxes' lock and a gateway holding the bot's port, each with the
# environment supervisord gave it. Each notes the signal that ended it.
LEFTOVER = """
import fcntl, os, signal, socket, sys, time
what, note = sys.argv[1], sys.argv[2]
if what == "flared":
    path = os.path.join(os.environ["STATE"], "sandboxes", "manager.lock")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
else:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", int(sys.argv[3])))
    s.listen()
def ended(signum, _frame):
    with open(note, "a") as f:
        f.write(f"{what} {signal.Signals(signum).name} {time.monotonic()}\\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, ended)
signal.signal(signal.SIGINT, ended)
open(note + "." + what, "w").close()
while True:
    time.sleep(1)
"""


def test_the_next_up_ends_what_a_dead_supervisord_left_running(tmp_path: Path) -> None:
    """Leftovers that did not die with their supervisord are found by the next `flared up`, ended
    as supervisord would have (the gateway first, flared last), and it starts clean."""
    port = bot("athena")["api"]["port"]
    flare = FlareUp(tmp_path, [bot("athena", port)])
    state = flare.state_dir.resolve()
    home = state / "bots" / "athena" / "home"
    note = tmp_path / "ended"
    env = {**os.environ, "STATE": str(state)}
    left = [
        subprocess.Popen(
            [sys.executable, "-c", LEFTOVER, "flared", str(note)],
            env={**env, "FLARE_ENV_FILE": str(state / "supervisor" / "flared.env")},
            start_new_session=True,
        ),
        subprocess.Popen(
            [sys.executable, "-c", LEFTOVER, "gateway", str(note), str(port)],
            env={**env, "HERMES_HOME": str(home)},
            start_new_session=True,
        ),
    ]
    try:
        while not all(Path(f"{note}.{w}").exists() for w in ("flared", "gateway")):
            assert all(p.poll() is None for p in left)
            time.sleep(0.05)
        pids = [p.pid for p in left]
        assert sorted(o.pid for o in orphans.find(state)) == sorted(pids)
        with flare:
            after = wait_ready(flare, "athena")
            assert after["readiness"] == "ready", after
            logs = flare.read_logs()
        assert [p.wait(5) for p in left] == [0, 0]
    finally:
        for p in left:
            if p.poll() is None:
                p.kill()
    assert (
        f"lost its supervisord and left running: flared (pid {pids[0]}), the gateway of athena (pid {pids[1]})"
        in logs
    ), logs
    assert "ended; starting afresh" in logs, logs
    assert "Traceback" not in logs and "another flared process" not in logs, logs
    ended = [line.split()[:2] for line in note.read_text().splitlines()]
    assert ended == [["gateway", "SIGINT"], ["flared", "SIGTERM"]], ended


def test_in_the_image_a_killed_supervisord_still_ends_with_the_final_snapshot(tmp_path: Path) -> None:
    """The container ends when tini's child does: the watcher between them waits for flared's
    final snapshot (its disk goes with the container) and exits non-zero."""
    from tests.faults.test_shutdown import wait_ready as wait_container_ready
    from tests.test_images import container_start

    data: dict[str, Any] = {
        "version": 1,
        "state_dir": "./overridden-by-FLARE_STATE_DIR",
        "snapshots": {"every": "1h", "on_change": {"enabled": False}},
        "bots": [bot("athena")],
    }
    with container_start(tmp_path, yaml.safe_dump(data), group="default") as (proc, port, state):
        wait_container_ready(proc, port, tmp_path)
        (state / "bots" / "athena" / "home" / "MEMORY.md").write_text("said just before the kill")
        supervisord = int((state / "supervisor" / "supervisord.pid").read_text().split()[0])
        os.kill(supervisord, signal.SIGKILL)
        code = proc.wait(60)
        left = orphans.find(state)
    log = (tmp_path / "container.log").read_text()
    assert code == 128 + signal.SIGKILL, log
    assert left == [], left
    assert "supervisord was killed (SIGKILL); waiting for flared (pid " in log, log
    final = re.search(r"athena: final snapshot (\S+): ", log)
    assert final, log
    from flared.snapshots import restore as restoring
    from flared.snapshots.stores.local import LocalStore

    assert json.loads((tmp_path / "store" / "athena" / "latest.json").read_text())["id"] == final.group(1)
    out = tmp_path / "restored" / "home"
    res = restoring.restore(LocalStore(tmp_path / "store"), "athena", out, tmp_path / "work", key=None)
    assert res.id == final.group(1) and (out / "MEMORY.md").read_text() == "said just before the kill"
