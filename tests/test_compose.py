"""compose.yaml at the root, brought up with podman-compose as a VPS user would (issue 23).

The user's path of docs/vps.md: the Agent image (built here FROM the local
stand-in base, scripts/agent-image), the committed compose.yaml unchanged,
a YAML of their own and a .env with the secret. The model is the fake
OpenAI-compatible server on this host, reached as `host.containers.internal`.
Then: chat through the bot's API, the terminal tool in a bubblewrap sandbox
inside the container, the logs in `podman logs` (redacted), the health check,
`down` (the final snapshot lands on the store volume, which the engine made
root's), the state volume deleted, `up` again: the memory comes back from
the store. And without compose.yaml's security option the terminal refuses
to run anything, saying what to add.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fakes import llm_server as llm
from tests.fakes.llm_server import FakeLLM
from tests.fixtures.flare import free_port
from tests.fixtures.podman import AgentContainer, agent_image, podman, podman_env

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
SECRET = "sk-compose-0123456789abcdef"


@pytest.fixture(scope="module")
def image() -> str:
    ref, seconds = agent_image()
    print(f"\n[agent image] {ref} ready in {seconds:.1f} s")
    return ref


@pytest.fixture
def fake() -> Iterator[FakeLLM]:
    """The model, on every interface: a container reaches this host through its bridge."""
    server = FakeLLM(models=("fake-model",), default=llm.text("hello from the fake"))
    server.server.host = "0.0.0.0"
    server.server.port = free_port()
    with server:
        yield server


def user_yaml(fake: FakeLLM) -> str:
    return yaml.safe_dump(
        {
            "version": 1,
            "state_dir": "./.flare",  # the image puts it on the state volume
            "snapshots": {"every": "1h", "on_change": {"enabled": False}},
            "sandboxes": {"default": {"provider": "local", "mode": "per-session"}},
            "bots": [
                {
                    "name": "hermes",
                    "sandbox": "default",
                    "model": {
                        "provider": "custom",
                        "model": "fake-model",
                        "api_key": "${HERMES_FLARE_API_KEY}",
                        "base_url": f"http://host.containers.internal:{fake.server.port}/v1",
                    },
                    "api": {"port": 8642},
                    "toolsets": ["terminal", "memory"],
                }
            ],
        },
        sort_keys=False,
    )


def wait_ready(container: str, timeout: float = 120) -> dict[str, Any]:
    """The bot's status once the daemon in ``container`` says its gateway is ready."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        res = podman("exec", "-u", "hermes", container, "flared", "status", "--json", check=False)
        last = res.stdout + res.stderr
        if res.returncode == 0:
            bots = json.loads(res.stdout).get("bots") or []
            if bots and bots[0].get("readiness") == "ready":
                return dict(bots[0])
        time.sleep(1)
    logs = podman("logs", container, check=False)
    raise AssertionError(f"the bot was not ready in {timeout}s: {last}\n{logs.stdout[-3000:]}")


class Compose:
    """`podman-compose -p PROJECT ...` in the user's directory; `down -v` whatever happens."""

    def __init__(self, workdir: Path, image: str) -> None:
        self.workdir = workdir
        self.project = f"flare-{uuid.uuid4().hex[:8]}"
        self.env = {**podman_env(), "HERMES_FLARE_IMAGE": image}
        self.container = f"{self.project}_hermes-flare_1"

    def __call__(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        exe = shutil.which("podman-compose")
        if exe is None:
            pytest.fail("podman-compose is missing: `./scripts/setup --test` installs it")
        res = subprocess.run(
            [exe, "-p", self.project, *args],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert res.returncode == 0, (
            f"podman-compose {' '.join(args)}: {res.stdout[-2000:]}{res.stderr[-2000:]}"
        )
        return res

    def flared(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """`docker compose exec -u hermes hermes-flare flared ARGS` as docs/vps.md says."""
        return podman("exec", "-u", "hermes", self.container, "flared", *args, timeout=timeout, check=False)

    def wait_ready(self, timeout: float = 120) -> dict[str, Any]:
        return wait_ready(self.container, timeout)

    def cleanup(self) -> None:
        exe = shutil.which("podman-compose")
        if exe:
            subprocess.run(
                [exe, "-p", self.project, "down", "-v"],
                cwd=self.workdir,
                env=self.env,
                capture_output=True,
                timeout=300,
            )
        podman("network", "rm", f"{self.project}_default", check=False)


def test_compose_chats_sandboxes_logs_and_keeps_the_memory_on_a_fresh_container(
    tmp_path: Path, image: str, fake: FakeLLM
) -> None:
    shutil.copy(ROOT / "compose.yaml", tmp_path / "compose.yaml")
    (tmp_path / "hermes-flare.yaml").write_text(user_yaml(fake))
    (tmp_path / ".env").touch(mode=0o600)
    (tmp_path / ".env").write_text(f"HERMES_FLARE_API_KEY={SECRET}\n")
    compose = Compose(tmp_path, image)
    try:
        compose("up", "-d")
        compose.wait_ready()

        # Chat through the bot's API, from inside the container.
        first = compose.flared("chat", "remember the word pineapple")
        assert (first.returncode, first.stdout) == (0, "hello from the fake\n"), first.stderr
        session = re.search(r"--session (\S+)\)", first.stderr).group(1)  # type: ignore[union-attr]
        assert fake.requests[-1].headers.get("Authorization") == f"Bearer {SECRET}"

        # The terminal tool runs in a bubblewrap sandbox: its own uid, no state dir.
        fake.script(
            llm.tool("terminal", {"command": "id -u; ls /var/lib/hermes-flare || echo no-state-dir"}),
            llm.echo_tool_result("ran: "),
        )
        ran = compose.flared("chat", "run it")
        assert ran.returncode == 0, ran.stderr
        assert "ran: " in ran.stdout and "1000" in ran.stdout and "no-state-dir" in ran.stdout, ran.stdout

        # `podman logs`: flared's lines and the gateway's, prefixed, the secret redacted.
        logs = podman("logs", compose.container)
        text = logs.stdout + logs.stderr
        assert re.search(r"^\[flared\] .* bot hermes: state ready, starting its gateway", text, re.M), text
        assert "[gateway-hermes] " in text
        assert SECRET not in text
        assert podman("healthcheck", "run", compose.container, check=False).returncode == 0

        # `restart` (what docs/vps.md says after an edit): flared restores-or-keeps before
        # any gateway starts, never one from the last container's program files.
        compose("restart")
        deadline = time.monotonic() + 120
        while podman("logs", compose.container).stdout.count("bot hermes: state ready") < 2:
            assert time.monotonic() < deadline, podman("logs", compose.container).stdout[-3000:]
            time.sleep(1)
        assert "adopting it (no restore)" not in podman("logs", compose.container).stdout
        compose.wait_ready()

        # Stop (the final snapshot goes to the store volume, created root-owned by podman) ...
        compose("down")
        # ... and a new machine: only the store volume is left.
        podman("volume", "rm", f"{compose.project}_state")
        compose("up", "-d")
        compose.wait_ready()
        restored = podman("logs", compose.container).stdout
        assert re.search(r"^\[flared\] .* bot hermes: restored snapshot \S+", restored, re.M), restored
        again = compose.flared("chat", "--session", session, "which word?")
        assert again.returncode == 0, again.stderr
        assert "pineapple" in fake.agent_turns()[-1].text  # the conversation came back from the store
    finally:
        compose.cleanup()


def test_without_the_security_option_the_terminal_refuses_with_the_fix(
    tmp_path: Path, image: str, fake: FakeLLM
) -> None:
    """podman's masked /proc: bubblewrap cannot mount a fresh one; nothing runs unsandboxed."""
    text = user_yaml(fake)
    env = {
        "FLARE_CONFIG_B64": base64.b64encode(text.encode()).decode(),
        "HERMES_FLARE_API_KEY": SECRET,
        "FLARE_STORE__URL": "file:///var/lib/hermes-flare-store",
    }
    with AgentContainer(image, env, tmp_path) as c:
        wait_ready(c.name)
        out = podman(
            "exec",
            "-u",
            "hermes",
            c.name,
            "flared",
            "exec",
            "--bot",
            "hermes",
            "--",
            "touch",
            "/tmp/ran",
            check=False,
        )
        assert out.returncode == 1, out.stdout + out.stderr
        assert (
            "the sandbox cannot start here (bwrap: Can't mount proc on /newroot/proc: Operation not "
            "permitted); commands are not run outside it."
        ) in out.stderr, out.stderr
        assert "`--security-opt systempaths=unconfined`" in out.stderr
        assert 'docs/vps.md, "The terminal sandbox"' in out.stderr
        assert podman("exec", c.name, "test", "-e", "/tmp/ran", check=False).returncode == 1
