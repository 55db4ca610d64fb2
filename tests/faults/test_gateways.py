"""Fault matrix, "Gateways": a gateway that cannot start is stopped and shown, not restarted forever.

Row: the bot's API port is held by another process. Hermes exits 78 (fatal
config) a few seconds after each start, later than supervisord's
``startsecs``, so supervisord alone would count every start a success and
restart it forever while `flared status` said RUNNING. Now flared stops it
at the first exit 78, shows it failed with Hermes' own error line and what
to edit (hermes-flare.yaml, not the config.yaml flared generates), and
starts it again on a config change or `flared restart`. Nothing is lost: the
bot's home and snapshots are untouched.

Row: a gateway hangs (SIGSTOP stands in for a deadlock). Its process lives,
so supervisord says RUNNING and Hermes' files say running. flared's liveness
probe (`GET /health` with a deadline) notices, status says it is not
answering, `flared chat` names the bot within its timeout, and after
``liveness.failures`` failed probes flared restarts it through supervisord.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
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


def test_a_hung_gateway_is_reported_named_by_chat_and_restarted(tmp_path: Any) -> None:
    port = free_port()
    # fast probes so the test takes seconds; ten failures leave a window (~20 s) to look at it hung
    liveness = {"every": "1s", "timeout": "1s", "failures": 10}
    with FlareUp(tmp_path, [bot("hermes", port)], liveness=liveness) as flare:
        st = wait_for(flare, lambda s: s.get("readiness") == "ready", 90, "ready")
        hung = int(st["pid"])
        os.kill(hung, signal.SIGSTOP)
        try:
            st = wait_for(flare, lambda s: s.get("readiness") == "unresponsive", 20, "seen not answering")
            assert st["state"] == "RUNNING" and st["pid"] == hung  # supervisord alone sees nothing wrong
            assert st["detail"].startswith("not answering: GET /health got no answer within 1 s (")
            assert st["detail"].endswith("flared restarts it after 10)")
            assert st["liveness"]["probe"]["error"] == "GET /health got no answer within 1 s"

            started = time.monotonic()
            chat = flare.cli("chat", "--timeout", "2", "hello", timeout=30)
            assert time.monotonic() - started < 15
            assert chat.returncode == 1, chat.stderr
            assert (
                f"flared chat: bot 'hermes' is not answering on http://127.0.0.1:{port} "
                "(GET /health got no answer within 2 s)" in chat.stderr
            )

            text = flare.cli("status")
            assert text.returncode == 0, text.stderr
            row = next(ln for ln in text.stdout.splitlines() if ln.startswith("hermes "))
            assert " unresponsive " in f" {row} "
            assert "gateway not answering: GET /health got no answer within 1 s" in text.stdout

            st = wait_for(
                flare,
                lambda s: s.get("readiness") == "ready" and s.get("pid") not in (None, hung),
                90,
                "restarted and ready again",
            )
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(hung, signal.SIGCONT)
        assert not os.path.exists(f"/proc/{hung}")  # ended, not left behind
        assert st["restarts"] >= 1
        again = st["liveness"]["restarts"]
        assert again["count"] == 1 and again["reason"] == "GET /health got no answer within 1 s"
        text = flare.cli("status")
        assert "restarted 1 time because it stopped answering (last " in text.stdout
        log = (flare.state_dir / "logs" / "flared.log").read_text()
        assert f"bot hermes: gateway (pid {hung}) stopped answering: GET /health got no answer" in log
        assert "restarting it" in log
        chat = flare.cli("chat", "--timeout", "5", "hello", timeout=30)
        assert "is not answering" not in chat.stderr  # it answers again (the model behind it is down)
