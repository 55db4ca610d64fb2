"""Sandboxes inside a real `flared up`: the daemon's lease manager, the CLI through it, the
gateway's plugin reporting its backend, and a restart that keeps the lease table."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.fixtures.flare import FlareUp, bot, run_cli


def exec_cli(flare: FlareUp, *args: str) -> subprocess.CompletedProcess[str]:
    """`flared exec -c FILE ...` (FlareUp.cli appends -c, which would land in the command)."""
    return run_cli("exec", "-c", str(flare.config_path), *args)


pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
]


def test_exec_through_the_daemon_and_plugin_status(tmp_path: Path) -> None:
    with FlareUp(tmp_path, [bot("alpha")], sandboxes={"default": {"mode": "per-session"}}) as flare:
        flare.wait_running("alpha")
        r = exec_cli(flare, "--bot", "alpha", "--", "whoami")
        assert (r.returncode, r.stdout) == (0, "sandbox\n"), r.stderr
        status = flare.status()
        leases = status["leases"]
        assert [(x["bot"], x["session"]) for x in leases] == [("alpha", "cli")]
        deadline = time.monotonic() + 30  # the gateway records its plugin once Hermes loaded it
        plugin: dict[str, object] = {}
        while time.monotonic() < deadline:
            plugin = flare.bot_status("alpha")["hermes"].get("plugin") or {}
            if "terminal" in plugin:
                break
            time.sleep(0.3)
        assert plugin.get("terminal", {}).get("ok") is True, flare.read_logs()  # type: ignore[union-attr]
        flare.stop()
        flare.start()  # flared restarts: the lease is still known, and still works
        flare.wait_running("alpha")
        r = flare.cli("leases", "--json")
        assert [x["id"] for x in json.loads(r.stdout)] == [leases[0]["id"]]
        r = exec_cli(flare, "--bot", "alpha", "--json", "--", "true")
        assert json.loads(r.stdout)["lease"] == leases[0]["id"]


def test_exec_that_must_wait_says_so_at_once(tmp_path: Path) -> None:
    """Issue 13 item 11: `flared exec` prints why it waits (profile, limit) before it waits."""
    import os
    import sys

    profile = {"mode": "per-session", "max_leases": 1, "acquire_timeout": "30s"}
    with FlareUp(tmp_path, [bot("alpha")], sandboxes={"default": profile}) as flare:
        flare.wait_running("alpha")
        base = [sys.executable, "-m", "flared", "exec", "-c", str(flare.config_path)]
        holder = subprocess.Popen([*base, "--session", "s1", "--", "sleep 3"], stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not any(x["busy"] for x in flare.status()["leases"]):
            assert time.monotonic() < deadline, flare.read_logs()
            time.sleep(0.1)
        started = time.monotonic()
        waiter = subprocess.Popen(
            [*base, "--session", "s2", "--", "echo ok"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ},
        )
        assert waiter.stderr is not None
        first = waiter.stderr.readline()
        told = time.monotonic() - started
        out, _ = waiter.communicate(timeout=60)
        holder.wait(30)
        assert first.startswith("flared exec: waiting for a sandbox: all 1 leases of profile 'default'"), (
            first
        )
        assert "(max_leases 1)" in first and "up to 30s" in first
        assert told < 2.5, f"said so after {told:.1f}s"  # the holder's `sleep 3` was still running
        assert out == "ok\n" and waiter.returncode == 0
