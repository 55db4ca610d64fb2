"""The secrets handoff: a 0600 file instead of an environment every program inherits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flared.config import handoff


def test_roundtrip_keeps_any_value(tmp_path: Path) -> None:
    values = {"A": "x=y", "MULTI": "one\ntwo", "UNI": "clé ✓", "EMPTY": ""}
    path = tmp_path / "run" / "flared.env"
    handoff.write(path, values)
    assert path.stat().st_mode & 0o777 == 0o600
    assert handoff.read(path) == values
    assert not list(path.parent.glob(".*tmp*"))


def test_base_and_secret_parts_split_the_environment() -> None:
    env = {"PATH": "/bin", "HOME": "/h", "SLACK_BOT_TOKEN": "xoxb-1", "FLARE_ENV_FILE": "/x"}
    assert handoff.base_env(env) == {"PATH": "/bin", "HOME": "/h"}
    assert handoff.secret_part(env) == {"SLACK_BOT_TOKEN": "xoxb-1"}
    assert handoff.base_env(env, HERMES_HOME="/b") == {"PATH": "/bin", "HOME": "/h", "HERMES_HOME": "/b"}


def test_a_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "flared.env"
    handoff.write(path, {"A": "1"})
    path.chmod(0o644)
    with pytest.raises(handoff.HandoffError, match="mode 0600"):
        handoff.read(path)
    with pytest.raises(handoff.HandoffError, match="does not exist"):
        handoff.read(tmp_path / "missing")


def test_adopted_secrets_reach_python_but_no_child(tmp_path: Path) -> None:
    """What `flared run` does at start: os.environ has them, a subprocess's environment does not."""
    path = tmp_path / "flared.env"
    handoff.write(path, {"PLANTED_SECRET": "s3cr3t-value", "PATH": "/should/not/win"})
    code = (
        "import json, os, subprocess; from flared.config import handoff\n"
        "taken = handoff.adopt()\n"
        "child = subprocess.run(['env'], capture_output=True, text=True).stdout\n"
        "mine = open('/proc/self/environ', 'rb').read().decode()\n"
        "print(json.dumps({'taken': taken, 'seen': os.environ.get('PLANTED_SECRET'),"
        " 'path': os.environ['PATH'], 'child': child, 'proc': mine}))\n"
    )
    env = {"PATH": os.environ["PATH"], "FLARE_ENV_FILE": str(path), "PYTHONPATH": str(Path.cwd())}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    got = json.loads(out.stdout)
    assert got["taken"] == ["PLANTED_SECRET"] and got["seen"] == "s3cr3t-value"
    assert got["path"] == os.environ["PATH"]  # the process's own value wins
    assert "s3cr3t-value" not in got["child"] and "s3cr3t-value" not in got["proc"]


def test_without_a_handoff_nothing_changes(tmp_path: Path) -> None:
    assert handoff.adopt({"PATH": "/bin"}) == []
    # supervisord started by hand from `flared render supervisord`: flared runs on what it inherited
    assert handoff.adopt({"FLARE_ENV_FILE": str(tmp_path / "never-written")}) == []
