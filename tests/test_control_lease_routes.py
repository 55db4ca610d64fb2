"""Lease routes on a real control server, bot-token scoping, and the `flared exec` / `leases` CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from flared.api import leases as lease_routes
from flared.config.loader import LoadedConfig, load_config
from flared.control.client import ControlClient, ControlError
from flared.control.locate import socket_path
from flared.control.server import ControlServer, Router
from flared.control.tokens import bot_token
from flared.sandboxes.manager import LeaseManager

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")

MODEL = {"provider": "custom", "base_url": "http://127.0.0.1:9/v1", "model": "m"}


def write_config(tmp_path: Path, profile: dict[str, Any] | None = None) -> Path:
    data = {
        "version": 1,
        "state_dir": str(tmp_path / "state"),
        "sandboxes": {
            "default": profile or {"mode": "per-session", "max_leases": 3, "acquire_timeout": "0.2s"}
        },
        "bots": [{"name": "alpha", "model": MODEL}, {"name": "beta", "model": MODEL}],
    }
    path = tmp_path / "hermes-flare.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class Served:
    def __init__(self, loaded: LoadedConfig) -> None:
        self.loaded = loaded
        self.manager = LeaseManager(loaded)
        self.manager.start()
        router = Router()
        lease_routes.register(router, self.manager)
        self.path = socket_path(loaded)
        self.server = ControlServer(router, state_dir=loaded.state_dir, socket_path=self.path)
        self.server.start()

    def client(self, bot: str | None = None) -> ControlClient:
        return ControlClient(self.path, bot_token(self.loaded.state_dir, bot) if bot else None)

    def close(self) -> None:
        self.server.stop()
        for lease in self.manager.list():
            self.manager.release(lease["id"])
        self.manager.stop()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    s = Served(load_config(write_config(tmp_path)))
    yield s
    s.close()


def test_acquire_exec_release(served: Served) -> None:
    c = served.client()
    lease = c.request("POST", "/leases", {"bot": "alpha", "session": "s1"})
    assert lease["created"] and lease["bot"] == "alpha"
    again = c.request("POST", "/leases", {"bot": "alpha", "session": "s1"})
    assert again["id"] == lease["id"] and not again["created"]
    out = c.request(
        "POST", f"/leases/{lease['id']}/exec", {"command": "cat; pwd", "stdin": "in\n", "cwd": "/workspace/d"}
    )
    assert out == {**out, "exit_code": 0, "stdout": "in\n/workspace/d\n", "stderr": "", "truncated": False}
    assert [x["id"] for x in c.request("GET", "/leases")["leases"]] == [lease["id"]]
    assert c.request("DELETE", f"/leases/{lease['id']}") == {"id": lease["id"], "released": True}
    with pytest.raises(ControlError) as err:
        c.request("POST", f"/leases/{lease['id']}/exec", {"command": "true"})
    assert err.value.status == 404


def test_one_shot_exec(served: Served) -> None:
    out = served.client().request(
        "POST", "/exec", {"bot": "alpha", "session": "s", "command": "echo hi; exit 4"}
    )
    assert out["exit_code"] == 4 and out["stdout"] == "hi\n" and out["lease"].startswith("fl-default-")


def test_bot_token_sees_and_uses_only_its_bot(served: Served) -> None:
    alpha, beta = served.client("alpha"), served.client("beta")
    la = alpha.request("POST", "/leases", {"session": "s"})  # the bot comes from the token
    assert la["bot"] == "alpha"
    lb = beta.request("POST", "/exec", {"session": "s", "command": "true"})
    assert beta.request("GET", "/leases")["leases"][0]["bot"] == "beta"
    assert [x["id"] for x in alpha.request("GET", "/leases?bot=beta")["leases"]] == [la["id"]]
    for method, path, body in [
        ("POST", f"/leases/{la['id']}/exec", {"command": "true"}),
        ("DELETE", f"/leases/{la['id']}", None),
    ]:
        with pytest.raises(ControlError) as err:
            beta.request(method, path, body)
        assert err.value.status == 404
    with pytest.raises(ControlError) as err:
        beta.request("POST", "/exec", {"bot": "alpha", "command": "true"})
    assert err.value.status == 403
    assert lb["lease"] != la["id"]
    forged = ControlClient(served.path, "flb_alpha_" + "0" * 40)
    with pytest.raises(ControlError) as err:
        forged.request("GET", "/leases")
    assert err.value.status == 401


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"bot": "alpha"}, "command must be a non-empty string"),
        ({"bot": "alpha", "command": 5}, "command must be a non-empty string"),
        ({"bot": "alpha", "command": "true", "timeout": -1}, "timeout must be"),
        ({"bot": "alpha", "command": "true", "timeout": "10"}, "timeout must be"),
        ({"bot": "alpha", "command": "true", "cwd": "rel"}, "cwd must be an absolute path"),
        ({"bot": "alpha", "command": "true", "env": {"A": 1}}, "env must be an object of strings"),
        ({"command": "true"}, "bot is required"),
        ({"bot": "ghost", "command": "true"}, "no bot named 'ghost'"),
    ],
)
def test_bad_requests_are_400(served: Served, body: dict[str, Any], message: str) -> None:
    with pytest.raises(ControlError) as err:
        served.client().request("POST", "/exec", body)
    assert err.value.status == 400 and message in err.value.body["error"]


def test_capacity_is_429_with_the_agent_readable_message(served: Served) -> None:
    import threading
    import time

    c = served.client()
    held = c.request("POST", "/leases", {"bot": "alpha", "session": "s0"})
    t = threading.Thread(target=served.manager.exec, args=(held["id"], "sleep 2"))
    t.start()
    time.sleep(0.3)
    # Asked not to wait: at once, why (alpha holds its share, 3 leases split over 2 bots).
    with pytest.raises(ControlError) as err:
        c.request("POST", "/exec", {"bot": "alpha", "session": "s9", "command": "true", "wait": False})
    assert err.value.status == 429 and err.value.body["waiting"] is True
    assert "waiting for a sandbox: bot 'alpha' has 1 leases of profile 'default'" in err.value.body["error"]
    assert "max_leases_per_bot 1: max_leases 3 split over 2 bot(s)" in err.value.body["error"]
    # Waiting, up to acquire_timeout.
    with pytest.raises(ControlError) as err:
        c.request("POST", "/exec", {"bot": "alpha", "session": "s9", "command": "true"})
    assert err.value.status == 429 and "waiting" not in err.value.body
    assert "sandbox capacity reached: bot 'alpha' has 1 leases in use" in err.value.body["error"]
    # The other bot's share is untouched.
    assert c.request("POST", "/exec", {"bot": "beta", "session": "b", "command": "echo b"})["stdout"] == "b\n"
    with pytest.raises(ControlError) as err:
        c.request("POST", "/exec", {"bot": "beta", "command": "true", "wait": "no"})
    assert err.value.status == 400
    t.join()


def test_not_json_body(served: Served) -> None:
    with pytest.raises(ControlError) as err:
        served.client().request("POST", "/exec", raw=b"{nope")
    assert err.value.status == 400


# ---------------------------------------------------------------- CLI


def cli(config: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flared", args[0], "-c", str(config), *args[1:]],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_through_the_daemon(served: Served, tmp_path: Path) -> None:
    config = tmp_path / "hermes-flare.yaml"
    r = cli(config, "exec", "--bot", "alpha", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (r.returncode, r.stdout, r.stderr) == (3, "out\n", "err\n")
    r = cli(config, "exec", "--bot", "alpha", "--", "cat > f && wc -c < f", stdin="12345")
    assert r.stdout.strip() == "5"
    leases = served.manager.list(bot="alpha")
    assert [x["session"] for x in leases] == ["cli"]  # both commands used the cli session's lease
    r = cli(config, "leases", "--json")
    assert [x["id"] for x in json.loads(r.stdout)] == [leases[0]["id"]]
    r = cli(config, "leases")
    assert leases[0]["id"] in r.stdout and "per-session" in r.stdout
    r = cli(config, "leases", "--release", leases[0]["id"])
    assert r.returncode == 0 and served.manager.list() == []


def test_cli_without_daemon_runs_in_process(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    r = cli(config, "exec", "--bot", "beta", "--json", "--", "whoami")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["stdout"] == "sandbox\n" and out["exit_code"] == 0
    r = cli(config, "leases", "--json")
    assert [x["id"] for x in json.loads(r.stdout)] == [out["lease"]]  # kept for the next start


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    r = cli(config, "exec", "--", "true")
    assert r.returncode == 2 and "--bot is required" in r.stderr and "Traceback" not in r.stderr
    r = cli(config, "exec", "--bot", "alpha")
    assert r.returncode == 2 and "no command given" in r.stderr
    r = cli(config, "exec", "--bot", "nope", "--", "true")
    assert r.returncode == 2 and "no bot named 'nope'" in r.stderr
