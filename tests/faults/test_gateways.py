"""Fault matrix, "Gateways": a gateway that cannot start is stopped and shown, not restarted forever.

Row: the bot's API port is held by another process. Hermes exits 78 (fatal
config) a few seconds after each start, later than supervisord's
``startsecs``, so supervisord alone would count every start a success and
restart it forever while `flared status` said RUNNING. Now flared stops it
at the first exit 78, shows it failed with Hermes' own error line and what
to edit (hermes-flare.yaml, not the config.yaml flared generates), and
starts it again on a config change or `flared restart`. Nothing is lost: the
bot's home and snapshots are untouched.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.fixtures.flare import FlareUp, bot, free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def held_port() -> Iterator[tuple[int, socket.socket]]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    try:
        yield s.getsockname()[1], s
    finally:
        s.close()


def wait_for(flare: FlareUp, probe: Any, timeout: float, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    st: dict[str, Any] = {}
    while time.monotonic() < deadline:
        st = flare.bot_status("hermes")
        if probe(st):
            return st
        time.sleep(0.3)
    raise AssertionError(f"{what} within {timeout}s; last status: {json.dumps(st, indent=1)[:3000]}")


def test_port_taken_gateway_is_failed_with_its_error_then_recovers(tmp_path: Any, held_port: Any) -> None:
    port, holder = held_port
    with FlareUp(tmp_path, [bot("hermes", port)]) as flare:
        st = wait_for(flare, lambda s: s.get("state") == "FAILED", 60, "the gateway stopped as failed")
        assert st["readiness"] == "failed"
        # 78 when supervisord kept the status; None when Hermes failed within startsecs
        # (supervisord forgets it) and flared went by Hermes' own startup_failed record.
        assert st["failure"]["kind"] == "fatal", json.dumps(st, indent=1)
        assert st["failure"]["exit_code"] in (78, None)
        how = "exit 78" if st["failure"]["exit_code"] else "at start-up"
        assert st["error"] == f"api_server: Port {port} already in use"
        assert "config.yaml" not in st["error"]
        assert f"set bots[0].api.port in {flare.config_path}" in st["hint"]
        assert st["log"].endswith("bots/hermes/logs/gateway.log")

        # Not restarted: no new process, no restarts, for several of Hermes' start times.
        time.sleep(8)
        later = flare.bot_status("hermes")
        assert later["state"] == "FAILED" and later["pid"] is None and later["restarts"] == st["restarts"]

        text = flare.cli("status")
        assert text.returncode == 0, text.stderr
        row = next(ln for ln in text.stdout.splitlines() if ln.startswith("hermes "))
        assert " failed " in f" {row} "
        assert (
            f"gateway failed ({how}; waits for a config change or a restart): api_server: Port {port} "
            in (text.stdout)
        )
        assert f"fix: another process holds port {port}: stop it, or set bots[0].api.port in" in text.stdout
        assert "log: " in text.stdout and "flared logs --bot hermes" in text.stdout
        log = (flare.state_dir / "logs" / "flared.log").read_text()
        fatal = (
            "gateway exited 78 (fatal config)"
            if how == "exit 78"
            else "gateway failed to start (fatal config)"
        )
        assert fatal in log and "flared restart --bot hermes" in log
        up = flare.log.read_text()
        assert f"hermes: gateway failed: api_server: Port {port} already in use" in up

        # The port is free again: an explicit restart brings it up.
        holder.close()
        out = flare.cli("restart", "--bot", "hermes")
        assert out.returncode == 0, out.stderr
        wait_for(flare, lambda s: s.get("readiness") == "ready", 60, "ready after `flared restart`")

        # A config change also retries a failed gateway: take the port, fail, then edit the port.
        flare.stop()
        with socket.socket() as again:
            again.bind(("127.0.0.1", port))
            again.listen()
            flare.start()
            wait_for(flare, lambda s: s.get("state") == "FAILED", 60, "failed again")
            flare.data["bots"][0]["api"]["port"] = free_port()
            flare.write_config()
            st = wait_for(flare, lambda s: s.get("readiness") == "ready", 90, "ready after the edit")
            assert st["failure"] is None
