"""The committed supervisord config is what flared renders, and it really runs."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from flared.cli.validate import image_supervisord_conf
from flared.supervisor import Layout, SupervisorClient, render_supervisord_conf

ROOT = Path(__file__).parent.parent


def test_committed_image_config_is_current() -> None:
    assert (ROOT / "supervisord" / "supervisord.conf").read_text() == image_supervisord_conf(), (
        "stale supervisord/supervisord.conf: run `flared render supervisord --image > supervisord/supervisord.conf`"
    )


@pytest.mark.integration
def test_image_config_starts_outside_a_container(tmp_path: Path) -> None:
    """The image's start command with its paths redirected to a temp dir."""
    text = (ROOT / "supervisord" / "supervisord.conf").read_text()
    text = text.replace("/var/lib/hermes-flare", str(tmp_path / "state"))
    text = text.replace(
        "/opt/hermes-flare/.venv/bin/flared run -c /etc/hermes-flare/hermes-flare.yaml", "sleep 60"
    )
    layout = Layout(tmp_path / "state")
    layout.logs.mkdir(parents=True)
    layout.programs.mkdir(parents=True)
    conf = tmp_path / "supervisord.conf"
    conf.write_text(text)
    proc = subprocess.Popen([str(Path(sys.executable).parent / "supervisord"), "-n", "-c", str(conf)])
    try:
        client = SupervisorClient(layout.socket)
        client.wait_ready(20)
        deadline = time.monotonic() + 10
        states: list[str] = []
        while time.monotonic() < deadline:
            states = [p["statename"] for p in client.processes() if p["name"] == "flared"]
            if states == ["RUNNING"]:
                break
            time.sleep(0.1)
        assert states == ["RUNNING"]
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_rendered_config_has_socket_include_and_priorities(tmp_path: Path) -> None:
    text = render_supervisord_conf(Layout(tmp_path), flared_cmd=["flared", "run"])
    assert f"file={tmp_path}/supervisor/supervisor.sock" in text
    assert f"files={tmp_path}/supervisor/programs/*.conf" in text
    assert "priority=100" in text  # flared starts first and stops last
    assert "stopsignal=TERM" in text
