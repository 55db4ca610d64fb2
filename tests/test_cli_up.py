"""`flared up` in the terminal: what it prints at boot and at Ctrl-C; `flared stop`; offline status and logs.

Issue 15, item 6: after Ctrl-C the prompt used to just return, and "restored
snapshot X" after a cold boot was only in flared's log.
"""

from __future__ import annotations

import re
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.flare import FlareUp, bot

pytestmark = pytest.mark.integration

SECRET = "sk-uxup-abcdef0123456789"


def wait_for(probe: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = probe()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"{what} within {timeout}s")


def printed(flare: FlareUp, since: int = 0) -> str:
    return flare.log.read_text()[since:]


def test_boot_and_stop_print_what_they_did(tmp_path: Path) -> None:
    entry = bot("hermes")
    entry["model"]["api_key"] = SECRET
    flare = FlareUp(tmp_path, [entry])
    flare.start()
    try:
        wait_for(lambda: "hermes: ready: chat API on http://" in printed(flare), 90, "ready printed")
        first = printed(flare)
        assert "hermes: started fresh: the store held no snapshot" in first
        (flare.state_dir / "bots" / "hermes" / "home" / "notes.txt").write_text("remember me\n")

        # Editing the file: one line per edit, applied (what changed) or refused (where).
        good = flare.config_path.read_text()
        assert "every: 1h" in good
        flare.config_path.write_text(good.replace("every: 1h", "every: 2h"))
        wait_for(
            lambda: "config edit applied: snapshots: every -> applied live" in printed(flare), 30, "applied"
        )
        flare.config_path.write_text(good.replace("every: 1h", "every: soon"))
        refused = wait_for(
            lambda: re.search(
                r"config edit refused, the running config stays: (\S+):(\d+):(\d+): snapshots\.every: ",
                printed(flare),
            ),
            30,
            "refused",
        )
        assert refused.group(1) == str(flare.config_path)
        line, col = int(refused.group(2)), int(refused.group(3))
        assert flare.config_path.read_text().splitlines()[line - 1][col - 1 :].startswith("soon")
        flare.config_path.write_text(good.replace("every: 1h", "every: 2h"))

        # `flared stop` from another terminal: both terminals say what the final snapshot did.
        out = flare.cli("stop")
        assert out.returncode == 0, out.stderr
        assert "stopping hermes-flare" in out.stderr
        sid = re.search(r"hermes: final snapshot (\S+): [\d.]+ KiB uploaded in [\d.]+ s", out.stdout)
        assert sid, out.stdout
        assert out.stdout.rstrip().endswith("hermes-flare stopped")
        assert flare.proc is not None and flare.proc.wait(30) == 0
        assert f"hermes: final snapshot {sid.group(1)}:" in printed(flare)
        assert printed(flare).rstrip().endswith("hermes-flare stopped")

        # Stopped: status says so and what the last stop did; logs still readable, redacted.
        down = flare.cli("status")
        assert down.returncode == 0, down.stderr
        assert down.stdout.startswith("flared not running")
        assert f"hermes: final snapshot {sid.group(1)}" in down.stdout
        gw_log = flare.state_dir / "bots" / "hermes" / "logs" / "gateway.log"
        with gw_log.open("a") as fh:
            fh.write(f"ERROR x: leaked {SECRET}\n")
        logs = flare.cli("logs", "--bot", "hermes", "-n", "3")
        assert logs.returncode == 0, logs.stderr
        assert "ERROR x: leaked" in logs.stdout and SECRET not in logs.stdout
        again = flare.cli("stop")
        assert again.returncode == 1 and "hermes-flare is not running" in again.stderr

        # Cold boot on a new machine: the home is gone, the store has it.
        shutil.rmtree(flare.state_dir / "bots" / "hermes" / "home")
        mark = len(flare.log.read_text())
        flare.start()
        line = wait_for(
            lambda: re.search(
                r"hermes: restored snapshot (\S+) \(taken \S+ before\) in [\d.]+ s", printed(flare, mark)
            ),
            90,
            "the restore printed",
        )
        assert line.group(1) == sid.group(1)
        assert (flare.state_dir / "bots" / "hermes" / "home" / "notes.txt").read_text() == "remember me\n"
        status = flare.cli("status")
        assert f"restored snapshot {sid.group(1)} (taken" in status.stdout

        # Ctrl-C in the terminal of `flared up`.
        wait_for(lambda: "hermes: ready" in printed(flare, mark), 90, "ready again")
        mark = len(flare.log.read_text())
        assert flare.stop(signal.SIGINT) == 0
        tail = printed(flare, mark)
        assert "stopping hermes-flare: gateways first, then a final snapshot of each bot" in tail
        assert re.search(
            r"hermes: final snapshot: unchanged since \S+, nothing uploaded|hermes: final snapshot \S+:", tail
        )
        assert tail.rstrip().endswith("hermes-flare stopped")
    finally:
        flare.stop()
