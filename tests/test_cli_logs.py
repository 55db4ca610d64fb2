"""`flared logs --mirror`: what the Agent image runs so `docker logs` / `podman logs` show the logs.

Issue 23, item 2: everything went to files in the state volume and the
container's log was empty. The mirror is a real `flared logs --mirror`
process here; the files are written as supervisord and Hermes write them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import yaml

from tests.fixtures.flare import FLARED

SECRET = "sk-mirror-0123456789abcdef"


def wait_for_text(path: Path, text: str, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = path.read_text()
        if text in got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not in {path.read_text()!r}")


def test_mirror_copies_new_lines_prefixed_and_redacted(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "logs").mkdir(parents=True)
    old = state / "logs" / "flared.log"
    old.write_text("from the last run of the container\n")
    # The entrypoint notes where each log ended when the container started; flared may
    # write before the mirror first looks (supervisord starts both at once).
    (state / "logs" / ".start-offsets").write_text(f"{old.stat().st_size} {old}\n")
    with old.open("a") as fh:
        fh.write("INFO flared: starting, before the mirror looked\n")
    bot = {
        "name": "hermes",
        "model": {"provider": "custom", "base_url": "http://127.0.0.1:9/v1", "model": "m"},
    }
    bot["model"]["api_key"] = "${MIRROR_KEY}"
    cfg = tmp_path / "hermes-flare.yaml"
    cfg.write_text(yaml.safe_dump({"version": 1, "state_dir": str(state), "bots": [bot]}))
    # The secrets arrive as flared gets them: the handoff file, not the environment.
    handoff = tmp_path / "flared.env"
    fd = os.open(handoff, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, f"MIRROR_KEY={SECRET}\0".encode())
    os.close(fd)
    out = tmp_path / "stdout"
    env = {k: v for k, v in os.environ.items() if k != "MIRROR_KEY"}
    with out.open("w") as fh:
        proc = subprocess.Popen(
            [*FLARED, "logs", "--mirror", "-c", str(cfg)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env={**env, "FLARE_ENV_FILE": str(handoff)},
        )
    try:
        wait_for_text(out, f"[logs] following flared's log and 1 gateway log(s) in {state}\n", 60)
        with old.open("a") as fh:
            fh.write("INFO flared: hermes restored\nINFO half a li")
        wait_for_text(out, "[flared] INFO flared: hermes restored\n")
        gateway = state / "bots" / "hermes" / "logs" / "gateway.log"
        gateway.parent.mkdir(parents=True)
        gateway.write_text(f"ERROR provider refused key {SECRET}\n")  # a log that appears later
        wait_for_text(out, "[gateway-hermes] ERROR provider refused key ")
        with old.open("a") as fh:
            fh.write("ne, finished\nINFO final snapshot 20260101T000000Z-abcdef\n")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        proc.kill()
        proc.wait()
    text = out.read_text()
    assert "from the last run" not in text  # the volume's old lines are not repeated
    assert text.startswith("[flared] INFO flared: starting, before the mirror looked\n")
    assert SECRET not in text
    assert "[flared] INFO half a line, finished\n" in text  # whole lines only
    assert text.rstrip().endswith("[flared] INFO final snapshot 20260101T000000Z-abcdef")
