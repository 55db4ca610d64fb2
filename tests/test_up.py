"""`flared up` end to end with real supervisord and real Hermes gateways."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from pathlib import Path

import pytest

from flared.control.client import ControlClient
from tests.fixtures.flare import FlareUp, bot, free_port

pytestmark = pytest.mark.integration


def health(port: int) -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
        return dict(json.loads(r.read()))


def wait_health(port: int, timeout: float = 30) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if health(port).get("status") == "ok":
                return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"no /health on {port} within {timeout}s")


def test_two_bots_come_up_survive_kill9_and_follow_the_config(tmp_path: Path) -> None:
    pa, pb = free_port(), free_port()
    with FlareUp(tmp_path, [bot("alpha", pa), bot("beta", pb)]) as flare:
        a = flare.wait_running("alpha")
        b = flare.wait_running("beta")
        wait_health(pa)
        wait_health(pb)
        client = ControlClient(flare.state_dir / "flared.sock")
        assert client.request("GET", "/reconcile/plan") == {"actions": []}, "reconcile is not idempotent"

        # kill -9 one gateway: back within 5 s, the other untouched
        os.kill(a["pid"], signal.SIGKILL)
        killed = time.monotonic()
        deadline = killed + 5
        while time.monotonic() < deadline:
            st = flare.bot_status("alpha")
            if st["state"] == "RUNNING" and st["pid"] not in (None, a["pid"]):
                break
            time.sleep(0.1)
        else:
            raise AssertionError("gateway not back within 5 s of kill -9")
        assert time.monotonic() - killed <= 5
        wait_health(pa, timeout=20)
        assert flare.bot_status("beta")["pid"] == b["pid"]
        assert flare.bot_status("alpha")["restarts"] >= 1

        # remove beta from the file and reconcile: its program goes away
        flare.data["bots"] = [x for x in flare.data["bots"] if x["name"] == "alpha"]
        flare.write_config()
        out = flare.cli("reload", "--json")
        assert out.returncode == 0, out.stderr
        programs = flare.state_dir / "supervisor" / "programs"
        deadline = time.monotonic() + 30
        while (programs / "gateway-beta.conf").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not (programs / "gateway-beta.conf").exists()
        names = [x["name"] for x in flare.status()["bots"]]
        assert names == ["alpha"]
        with pytest.raises(OSError):
            health(pb)
        assert flare.bot_status("alpha")["state"] == "RUNNING"
        assert client.request("GET", "/reconcile/plan") == {"actions": []}

        # Ctrl-C: everything stops gracefully
        code = flare.stop(signal.SIGINT)
    assert code == 0
    home = flare.state_dir / "bots" / "alpha" / "home"
    assert (home / ".clean_shutdown").exists(), "gateway did not get a graceful SIGINT"
    log = (flare.state_dir / "logs" / "flared.log").read_text()
    assert "flared stopped" in log


def test_status_when_down_and_already_running_guard(tmp_path: Path) -> None:
    with FlareUp(tmp_path, [bot("solo")]) as flare:
        flare.wait_running("solo")
        again = flare.cli("up")
        assert again.returncode == 1
        assert "already running" in again.stderr
        st = flare.status()
        assert st["config"]["digest"]
        assert st["bots"][0]["hermes"]["heartbeat_age_s"] is not None or st["bots"][0]["state"] == "RUNNING"
    down = flare.status()
    assert down["daemon"] == "not running"
    assert down["bots"][0]["state"] == "STOPPED"


def test_up_with_bad_config_exits_2_and_starts_nothing(tmp_path: Path) -> None:
    cfg = tmp_path / "hermes-flare.yaml"
    cfg.write_text("bots:\n  - name: Bad_Name\n")
    flare = FlareUp(tmp_path)
    out = flare.cli("up")
    assert out.returncode == 2
    assert "bots[0].name" in out.stderr
    assert not (tmp_path / ".flare").exists()


def test_flared_restart_adopts_running_gateways(tmp_path: Path) -> None:
    """flared crashing or restarting must neither restart gateways nor restore over live state."""
    from flared.supervisor import Layout, SupervisorClient

    with FlareUp(tmp_path, [bot("keep")]) as flare:
        before = flare.wait_running("keep")
        sup = SupervisorClient(Layout(flare.state_dir).socket)
        old_flared = sup.process("flared")["pid"]
        os.kill(old_flared, signal.SIGKILL)  # supervisord restarts flared
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            info = sup.process("flared")
            if info["statename"] == "RUNNING" and info["pid"] != old_flared:
                break
            time.sleep(0.1)
        flare.wait_daemon()
        after = flare.wait_running("keep")
        assert after["pid"] == before["pid"]
        assert "adopting it" in (flare.state_dir / "logs" / "flared.log").read_text()
