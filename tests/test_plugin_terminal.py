"""The flare terminal backend, driven through Hermes' own tool functions.

Hermes' terminal, file and execute_code tools are called directly with the
plugin installed against a real flared lease manager on a real control
socket; each command must run in a bubblewrap lease. Without the plugin, or
with a plugin that refuses an unexpected Hermes, the same calls must fail
and leave no trace in the agent's own environment.
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from flared.api import leases as lease_routes
from flared.config.loader import load_config
from flared.control.locate import socket_path
from flared.control.server import ControlServer, Router
from flared.plugin import terminal
from flared.sandboxes.manager import LeaseManager

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")

MODEL = {"provider": "custom", "base_url": "http://127.0.0.1:9/v1", "model": "m"}


def test_hermes_version_and_wrapped_names_are_the_checked_ones() -> None:
    """Fails on a Hermes upgrade: re-check the wrapped names, then bump HERMES_CHECKED."""
    assert importlib.metadata.version("hermes-agent") == terminal.HERMES_CHECKED
    info = terminal.check_hermes()
    assert info["hermes"] == terminal.HERMES_CHECKED and "warning" not in info
    from tools import code_execution_tool, file_tools, terminal_tool

    # the three call sites that build environments look the factory up at call time
    for module in (terminal_tool, file_tools, code_execution_tool):
        assert "_create_environment" in Path(module.__file__ or "").read_text()


def test_rendered_selection_cannot_run_locally() -> None:
    cfg = terminal.hermes_config()["terminal"]
    assert cfg["backend"] != "local" and cfg["ssh_host"].endswith(".invalid")
    env = terminal.gateway_env(Path("/tmp/state"), "alpha")
    assert env["TERMINAL_ENV"] == cfg["backend"] and env["FLARE_BOT_TOKEN"].startswith("flb_alpha_")
    assert "FLARE_CONTROL_SOCKET" not in env  # flared.hermes renders it from control.socket


# ---------------------------------------------------------------------------- fixtures


def _config(tmp_path: Path, **profile: Any) -> dict[str, Any]:
    return {
        "version": 1,
        "state_dir": str(tmp_path / "state"),
        "sandboxes": {"default": {"mode": "per-session", **profile}},
        "bots": [{"name": "alpha", "model": MODEL}],
    }


@pytest.fixture
def flared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SimpleNamespace]:
    """A lease manager behind a real control socket, and a gateway-like environment for bot alpha."""
    (tmp_path / "hermes-flare.yaml").write_text(yaml.safe_dump(_config(tmp_path)))
    loaded = load_config(tmp_path / "hermes-flare.yaml")
    manager = LeaseManager(loaded)
    manager.start()
    router = Router()
    lease_routes.register(router, manager)
    server = ControlServer(router, state_dir=loaded.state_dir, socket_path=socket_path(loaded))
    server.start()
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HERMES_HOME", str(home))
    monkeypatch.setenv(terminal.ENV_SOCKET, str(socket_path(loaded)))
    for key, value in terminal.gateway_env(loaded.state_dir, "alpha").items():
        monkeypatch.setenv(key, value)
    _reset_hermes_envs()
    yield SimpleNamespace(manager=manager, home=home, tmp=tmp_path)
    _reset_hermes_envs()
    terminal.uninstall()
    server.stop()
    for lease in manager.list():
        manager.release(lease["id"])
    manager.stop()


def _reset_hermes_envs() -> None:
    from tools import file_tools, terminal_tool

    with terminal_tool._env_lock:
        terminal_tool._active_environments.clear()
        terminal_tool._last_activity.clear()
    file_tools.clear_file_ops_cache()


def _session(key: str) -> Any:
    from gateway.session_context import clear_session_vars, set_session_vars

    class Ctx:
        def __enter__(self) -> None:
            # no platform: Hermes applies its gateway approval prompts to neither backend here
            self.tokens = set_session_vars(session_key=key, session_id=key)

        def __exit__(self, *exc: object) -> None:
            clear_session_vars(self.tokens)

    return Ctx()


def run_terminal(command: str, task_id: str = "default") -> dict[str, Any]:
    from tools.terminal_tool import terminal_tool

    out: dict[str, Any] = json.loads(terminal_tool(command=command, task_id=task_id))
    return out


# ---------------------------------------------------------------------------- through the plugin


def test_terminal_tool_runs_in_a_lease(flared: SimpleNamespace) -> None:
    terminal.install(None)
    with _session("slack:C1:t1"):
        out = run_terminal("whoami; pwd; ls /work 2>&1 | head -1")
    assert out["exit_code"] == 0, out
    lines = out["output"].splitlines()
    assert lines[:2] == ["sandbox", "/workspace"]
    assert "No such file" in lines[2]
    leases = flared.manager.list()
    assert [(x["bot"], x["session"]) for x in leases] == [("alpha", "slack:C1:t1")]
    status = json.loads((flared.home / "state" / "flare-plugin.json").read_text())
    assert status["terminal"]["ok"] is True


def test_sessions_get_their_own_lease_and_cwd(flared: SimpleNamespace) -> None:
    terminal.install(None)
    with _session("s-one"):
        assert run_terminal("mkdir -p proj && cd proj && echo one > f")["exit_code"] == 0
        out = run_terminal("pwd; cat f")  # Hermes carries the cwd to the next command
    assert out["output"].splitlines() == ["/workspace/proj", "one"]
    with _session("s-two"):
        out = run_terminal("pwd; cat proj/f 2>&1")
    assert out["output"].splitlines()[0] == "/workspace" and "No such file" in out["output"]
    assert {x["session"] for x in flared.manager.list()} == {"s-one", "s-two"}


def test_file_tools_run_in_the_lease(flared: SimpleNamespace) -> None:
    from tools.file_tools import patch_tool, read_file_tool, write_file_tool

    terminal.install(None)
    with _session("files"):
        w = json.loads(write_file_tool("/workspace/notes.txt", "hello from hermes\n"))
        assert not w.get("error"), w
        p = json.loads(
            patch_tool(mode="replace", path="/workspace/notes.txt", old_string="hello", new_string="bye")
        )
        assert not p.get("error"), p
        r = json.loads(read_file_tool("/workspace/notes.txt"))
        assert "bye from hermes" in r["content"]
        assert run_terminal("cat /workspace/notes.txt")["output"].strip() == "bye from hermes"
    assert not Path("/workspace/notes.txt").exists()  # not on the agent's host
    lease = flared.manager.list()[0]
    provider = flared.manager._providers["local"]
    assert (provider.lease_dir(lease["id"]) / "work" / "notes.txt").read_text() == "bye from hermes\n"


def test_execute_code_runs_in_the_lease(flared: SimpleNamespace) -> None:
    from tools.code_execution_tool import execute_code

    terminal.install(None)
    code = "import getpass, os\nprint(getpass.getuser(), os.getcwd(), os.path.exists(os.environ.get('HERMES_HOME', '/nonexistent')))"
    with _session("code"):
        out = json.loads(execute_code(code, task_id="default", enabled_tools=[]))
    assert out.get("status") == "success", out
    assert out["output"].split()[0] == "sandbox" and out["output"].split()[2] == "False"
    assert [x["session"] for x in flared.manager.list()] == ["code"]


def test_a_conversation_takes_no_lease_until_it_runs_a_command(flared: SimpleNamespace) -> None:
    """Issue 13 item 11: Hermes probes the backend when it builds a session's system prompt;
    that probe is answered without a lease, and the first real command takes one."""
    from agent import prompt_builder

    terminal.install(None)
    prompt_builder._clear_backend_probe_cache()
    try:
        with _session("slack:D1:new-conversation"):
            hints = prompt_builder.build_environment_hints()
            assert flared.manager.list() == []
            assert "Working directory: /workspace" in hints and "OS: Linux" in hints
            assert run_terminal("echo first")["output"].strip() == "first"
    finally:
        prompt_builder._clear_backend_probe_cache()
    assert [x["session"] for x in flared.manager.list()] == ["slack:D1:new-conversation"]


def test_a_command_that_must_wait_says_so_at_once(
    flared: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 13 item 11: the wait is announced before it starts; the agent reads why it was slow."""
    told: list[tuple[float, str]] = []
    started = time.monotonic()
    monkeypatch.setattr(terminal, "announce", lambda msg: told.append((time.monotonic() - started, msg)))
    t = _one_lease_held(flared, 2, max_leases=1)
    with _session("waiter"):
        out = run_terminal("echo ran")
    t.join()
    assert out["exit_code"] == 0 and out["output"].strip().endswith("ran"), out
    assert out["output"].startswith("[flare] waiting for a sandbox: all 1 leases of profile 'default'"), out
    assert "(max_leases 1)" in out["output"] and "waited" in out["output"]
    assert len(told) == 1 and told[0][0] < 1.0, told  # at once, while `sleep 2` still ran


def _one_lease_held(flared: SimpleNamespace, seconds: float, **profile: Any) -> threading.Thread:
    """Apply ``profile``, install the plugin, and keep a lease busy for ``seconds`` in the background."""
    config = _config(flared.tmp, **profile)
    flared.manager.update(load_config(flared.tmp / "hermes-flare.yaml", text=yaml.safe_dump(config)))
    terminal.install(None)
    holder = flared.manager.acquire("alpha", "holder")
    t = threading.Thread(target=flared.manager.exec, args=(holder["id"], f"sleep {seconds}"))
    t.start()
    time.sleep(0.3)
    return t


def test_capacity_failure_reaches_the_agent_as_text(flared: SimpleNamespace) -> None:
    t = _one_lease_held(flared, 3, max_leases=1, acquire_timeout="0.5s")
    with _session("busy"):
        out = run_terminal("echo hi")
    t.join()
    text = out["output"] + str(out.get("error"))
    assert out["exit_code"] != 0 and "sandbox capacity reached: 1 leases in use" in text, out
    assert "profile 'default' allows 1" in text and "hi" not in out["output"].split("\n")[-1]


# ---------------------------------------------------------------------------- fail closed


def _marker() -> Path:
    return Path("/tmp") / f"flare-fail-closed-{uuid.uuid4().hex}"


def _assert_blocked(marker: Path) -> None:
    with _session("blocked"):
        out = run_terminal(f"touch {marker}; echo RAN")
    assert "RAN" not in out.get("output", ""), out
    assert out.get("exit_code") != 0 or out.get("error")
    assert terminal.FAIL_HOST in json.dumps(out)  # the failure names its cause
    assert not marker.exists()  # nothing ran in the agent's environment
    from tools.code_execution_tool import execute_code

    with _session("blocked"):
        try:  # Hermes' tool dispatcher turns a raised error into the tool's error result
            res = execute_code(f"open({str(marker)!r}, 'w').write('x')\nprint('RAN')", enabled_tools=[])
        except RuntimeError as exc:
            res = str(exc)
    assert "RAN" not in res and not marker.exists(), res


def test_without_the_plugin_commands_fail_and_nothing_runs(flared: SimpleNamespace) -> None:
    terminal.uninstall()
    _assert_blocked(_marker())
    assert flared.manager.list() == []


def test_broken_plugin_refuses_to_load_and_commands_stay_blocked(
    flared: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tools.environments.base as base

    monkeypatch.delattr(base, "_ThreadedProcessHandle")  # a Hermes release that moved a wrapped name
    with pytest.raises(terminal.IncompatibleHermes, match="_ThreadedProcessHandle is missing"):
        terminal.install(None)
    status = json.loads((flared.home / "state" / "flare-plugin.json").read_text())
    assert status["terminal"]["ok"] is False and "_ThreadedProcessHandle" in status["terminal"]["error"]
    _assert_blocked(_marker())


def test_local_backend_is_refused_when_the_plugin_is_loaded(
    flared: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal.install(None)
    monkeypatch.setenv("TERMINAL_ENV", "local")
    marker = _marker()
    with _session("local"):
        out = run_terminal(f"touch {marker}; echo RAN")
    assert "RAN" not in out.get("output", "") and not marker.exists()
    assert "disabled under flared" in json.dumps(out)
