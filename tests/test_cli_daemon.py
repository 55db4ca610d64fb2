"""The CLI against a real running daemon: what the user sees in the terminal.

One `flared up` (real supervisord, flared and Hermes gateway) with a fake
OpenAI-compatible model serves every test here. The bot's API port comes
from an environment variable only the daemon has, so a command that finds
the API through the daemon works and one that reads the caller's
environment would not (issue 15, item 3).
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fakes import llm_server as llm
from tests.fakes.llm_server import FakeLLM
from tests.fixtures.flare import FLARED, FlareUp, free_port, run_cli

pytestmark = pytest.mark.integration

SECRET = "sk-uxtest-0123456789abcdef"
HEAVY = ("pydantic", "pydantic_core", "pydantic_settings", "rich", "boto3", "botocore", "yaml")
HERMES = ("run_agent", "gateway", "hermes_cli", "agent", "tools", "hermes_state")


class World:
    def __init__(self, flare: FlareUp, fake: FakeLLM, port: int) -> None:
        self.flare, self.fake, self.port = flare, fake, port

    def cli(self, *args: str, timeout: float = 120, env: dict[str, str] | None = None) -> Any:
        """``flared ARGS[0] -c CONFIG ARGS[1:]`` (before any ``--`` of exec)."""
        return run_cli(args[0], "-c", str(self.flare.config_path), *args[1:], timeout=timeout, env=env)

    @property
    def home(self) -> Path:
        return self.flare.state_dir / "bots" / "hermes" / "home"


def wait_until(probe: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            got = probe()
        except Exception as exc:  # the daemon restarting, say
            last, got = exc, None
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"{what} within {timeout}s (last error: {last})")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("daemon")
    port = free_port()
    entry = {
        "name": "hermes",
        "model": {"provider": "custom", "base_url": "", "model": "fake-model", "api_key": SECRET},
        "api": {"port": "${UXT_API_PORT}"},
        "toolsets": ["terminal", "memory"],
        "hermes": {"memory": {"nudge_interval": 0}, "skills": {"creation_nudge_interval": 0}},
    }
    with FakeLLM(models=("fake-model",), default=llm.text("hello from the fake")) as fake:
        entry["model"]["base_url"] = fake.base_url  # type: ignore[index]
        flare = FlareUp(tmp, [entry])
        os.environ["UXT_API_PORT"] = str(port)  # only the daemon gets it
        try:
            flare.start()
        finally:
            del os.environ["UXT_API_PORT"]
        try:
            wait_until(
                lambda: flare.bot_status("hermes").get("readiness") == "ready", 90, "the gateway ready"
            )
            yield World(flare, fake, port)
        finally:
            flare.stop()


# ---------------------------------------------------------------------- lean imports


def imported(*args: str, cfg: Path) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    out = subprocess.run(
        [*FLARED[:1], "-X", "importtime", *FLARED[1:], args[0], "-c", str(cfg), *args[1:]],
        capture_output=True,
        text=True,
        timeout=120,
    )
    mods = {
        line.rsplit("|", 1)[1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")
    }
    return out, mods


@pytest.mark.parametrize(
    "args",
    [
        ("status", "--json"),
        ("status",),
        ("exec", "--", "true"),
        ("leases",),
        ("snapshots",),
        ("snapshot",),
        ("logs", "-n", "1"),
        ("reload",),
        ("chat", "hi"),
    ],
    ids=lambda a: " ".join(a),
)
def test_daemon_path_imports_no_pydantic_rich_boto3_yaml_or_hermes(
    world: World, args: tuple[str, ...]
) -> None:
    out, mods = imported(*args, cfg=world.flare.config_path)
    assert out.returncode == 0, out.stderr[-2000:]
    heavy = sorted(m for m in mods if m.split(".")[0] in HEAVY + HERMES)
    assert heavy == [], f"`flared {' '.join(args)}` imported {heavy}"
    assert "flared.config.loader" not in mods and "flared.config.models" not in mods


# ---------------------------------------------------------------------- chat


def test_chat_finds_the_api_through_the_daemon_not_the_callers_env(world: World) -> None:
    assert "UXT_API_PORT" not in os.environ
    out = world.cli("chat", "hello")
    assert (out.returncode, out.stdout) == (0, "hello from the fake\n"), out.stderr
    assert re.search(r"\(continue with --session cli-[\w-]+\)", out.stderr)
    # The file alone cannot say where the API is: the offline path names the variable.
    offline = run_cli("validate", "-c", str(world.flare.config_path))
    assert offline.returncode == 2 and "UXT_API_PORT" in offline.stderr


def test_each_chat_is_a_new_conversation_unless_session(world: World) -> None:
    world.fake.clear()
    first = world.cli("chat", "remember the word pineapple")
    assert first.returncode == 0, first.stderr
    session = re.search(r"--session (\S+)\)", first.stderr).group(1)  # type: ignore[union-attr]
    again = world.cli("chat", "remember the word pineapple")
    other = re.search(r"--session (\S+)\)", again.stderr).group(1)  # type: ignore[union-attr]
    assert other != session, "two chats without --session landed in one conversation"
    cont = world.cli("chat", "--session", session, "which word?")
    assert cont.returncode == 0 and f"--session {session})" in cont.stderr
    turns = world.fake.agent_turns()
    assert "pineapple" in turns[-1].text  # the continued conversation carries its history
    assert "pineapple" not in turns[-2].text.replace(turns[-2].last_user_text, "")  # the second began fresh


def test_chat_refuses_a_session_the_bot_does_not_have(world: World) -> None:
    """An unknown --session used to start a new, empty conversation silently (issue 23)."""
    first = world.cli("chat", "hello")
    assert first.returncode == 0, first.stderr
    known = re.search(r"--session (\S+)\)", first.stderr).group(1)  # type: ignore[union-attr]
    turns = len(world.fake.agent_turns())
    out = world.cli("chat", "--session", "cli-no-such-talk", "which word?")
    assert out.returncode == 2, out.stderr
    assert out.stdout == ""
    assert "flared chat: bot 'hermes' has no conversation 'cli-no-such-talk' (its latest: " in out.stderr
    assert known in out.stderr and "nothing was sent. Leave out --session to start a new one." in out.stderr
    assert len(world.fake.agent_turns()) == turns  # the model was never asked
    js = world.cli("chat", "--json", "--session", "cli-no-such-talk", "hi")
    assert js.returncode == 2 and "has no conversation" in json.loads(js.stdout)["error"]
    cont = world.cli("chat", "--session", known, "again")
    assert cont.returncode == 0, cont.stderr


def test_chat_prints_the_providers_error_and_exits_1(world: World) -> None:
    world.fake.script(llm.error(401, "invalid x-api-key: check HERMES_FLARE_API_KEY"))
    out = world.cli("chat", "hello")
    assert out.returncode == 1, out.stdout + out.stderr
    assert out.stdout == ""
    assert "flared chat: bot 'hermes': the agent failed:" in out.stderr
    assert "401" in out.stderr or "invalid x-api-key" in out.stderr
    assert "Traceback" not in out.stderr

    world.fake.script(llm.error(401, "invalid x-api-key: check HERMES_FLARE_API_KEY"))
    js = world.cli("chat", "--json", "hello")
    assert js.returncode == 1
    data = json.loads(js.stdout)
    assert data["bot"] == "hermes" and data["reply"] is None and "the agent failed" in data["error"]


def test_chat_after_a_tool_prints_no_blank_lines(world: World) -> None:
    world.fake.script(
        llm.tool("terminal", {"command": "echo from-the-sandbox"}),
        llm.text("\n\nThe command said from-the-sandbox.\n\n"),
    )
    out = world.cli("chat", "run echo")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "The command said from-the-sandbox.\n"
    assert "[terminal]" in out.stderr  # what the agent ran, on stderr


# ---------------------------------------------------------------------- a broken file


def test_a_broken_file_does_not_stop_commands_that_need_only_the_daemon(world: World) -> None:
    cfg = world.flare.config_path
    good = cfg.read_text()
    data = yaml.safe_load(good)
    data["snapshots"]["evry"] = "5m"  # a typo
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    try:
        wait_until(lambda: world.flare.status()["config"].get("error"), 30, "the daemon saw the bad edit")
        for args in (
            ("leases",),
            ("snapshots",),
            ("snapshot",),
            ("exec", "--", "echo", "ok"),
            ("chat", "hi"),
        ):
            out = world.cli(*args)
            assert out.returncode == 0, f"flared {args}: {out.stderr}"
            notes = [ln for ln in out.stderr.splitlines() if "has 1 problem" in ln]
            assert len(notes) == 1, f"flared {args} should say so once:\n{out.stderr}"
            assert "the running daemon keeps its last good config" in notes[0]
            assert "nothing was changed" not in out.stderr
        st = world.cli("status")
        assert st.returncode == 0, st.stderr
        assert st.stdout.count("NOT applied") == 1 and "unknown key 'evry'" in st.stdout
        assert "problem" not in st.stderr and "nothing was changed" not in st.stdout + st.stderr
    finally:
        cfg.write_text(good)
    wait_until(lambda: not world.flare.status()["config"].get("error"), 30, "the good file back")


# ---------------------------------------------------------------------- status


def test_status_text_shows_readiness_api_and_no_stale_heartbeat(world: World) -> None:
    out = world.cli("status")
    assert out.returncode == 0, out.stderr
    row = next(ln for ln in out.stdout.splitlines() if ln.startswith("hermes "))
    assert "ready" in row and f"http://127.0.0.1:{world.port}/v1" in row
    data = world.flare.status()["bots"][0]
    assert data["readiness"] == "ready" and data["state"] == "RUNNING"
    assert data["hermes"]["pid"] == data["pid"]


# ---------------------------------------------------------------------- logs


def test_logs_show_flared_and_the_gateway_with_secrets_redacted(world: World) -> None:
    log = world.flare.state_dir / "bots" / "hermes" / "logs" / "gateway.log"
    with log.open("a") as fh:
        fh.write(f"ERROR test: the provider refused key {SECRET}\n")
    out = world.cli("logs", "-n", "5")
    assert out.returncode == 0, out.stderr
    assert "==> flared: " in out.stdout and "==> gateway-hermes: " in out.stdout
    assert "the provider refused key" in out.stdout and SECRET not in out.stdout

    follow = subprocess.Popen(
        [*FLARED, "logs", "-f", "--bot", "hermes", "-n", "0", "-c", str(world.flare.config_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.5)
        with log.open("a") as fh:
            fh.write(f"a new line with {SECRET}\n")
        assert follow.stdout is not None
        ready, _, _ = select.select([follow.stdout], [], [], 15)
        assert ready, "flared logs -f printed nothing"
        line = follow.stdout.readline()
        assert "a new line with" in line and SECRET not in line
    finally:
        follow.send_signal(signal.SIGINT)
        follow.wait(10)
    assert follow.returncode == 0


# ---------------------------------------------------------------------- progress


def on_a_terminal(*args: str, timeout: float = 120) -> tuple[int, str, str]:
    """Run a command with stderr on a pty (where progress shows); (rc, stdout, what the pty saw)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([*FLARED, *args], stdout=subprocess.PIPE, stderr=slave, text=True)
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r, _, _ = select.select([master], [], [], 0.2)
        if r:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
        elif proc.poll() is not None:
            break
    out, _ = proc.communicate(timeout=30)
    os.close(master)
    return proc.returncode, out, seen.decode(errors="replace")


def test_a_long_snapshot_and_restore_show_progress_through_the_daemon(world: World) -> None:
    for i in range(3):  # incompressible, so packing and copying take a moment
        (world.home / f"ux-big-{i}.bin").write_bytes(os.urandom(40 * 1024 * 1024))
    try:
        rc, out, tty = on_a_terminal("snapshot", "-c", str(world.flare.config_path))
        assert rc == 0, tty
        assert "hermes: snapshot" in out
        frames = [f for f in tty.split("\r") if f.startswith("hermes: snapshot")]
        assert frames, f"no progress shown: {tty!r}"
        assert any(re.search(r"(preparing|uploading|capturing|packing)", f) for f in frames), frames
        sid = re.search(r"snapshot (\S+):", out).group(1)  # type: ignore[union-attr]
        rc, out, tty = on_a_terminal("restore", "--id", sid, "-c", str(world.flare.config_path))
        assert rc == 0, tty
        assert f"hermes: restored {sid}" in out
        assert "hermes: restore" in tty
    finally:
        for i in range(3):
            (world.home / f"ux-big-{i}.bin").unlink(missing_ok=True)
    wait_until(lambda: world.flare.bot_status("hermes").get("readiness") == "ready", 60, "ready again")


# ---------------------------------------------------------------------- flared stops under a command


def test_exec_running_when_flared_stops_ends_with_a_message_not_a_traceback(world: World) -> None:
    proc = subprocess.Popen(
        [*FLARED, "exec", "-c", str(world.flare.config_path), "--", "sleep", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until(lambda: any(x["busy"] for x in json.loads(world.cli("leases", "--json").stdout)), 30, "busy")
    flared_pid = world.flare.status()["flared"]["pid"]
    os.kill(flared_pid, signal.SIGKILL)  # supervisord starts a new flared
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert "Traceback" not in err and "RemoteDisconnected" not in err
    assert "flared stopped while the command was running" in err
    wait_until(lambda: world.flare.status()["flared"]["pid"] != flared_pid, 60, "a new flared")
    wait_until(lambda: world.flare.bot_status("hermes").get("readiness") == "ready", 60, "ready again")
