"""The fail-closed Hermes terminal backend: every command goes to a flared sandbox lease.

Hermes 0.19.0 has no backend registry: ``tools.terminal_tool._create_environment``
is a fixed if/elif that the terminal tool, the file tools
(``tools.file_tools._get_file_ops``) and ``execute_code``'s remote path
(``tools.code_execution_tool._get_or_create_env``) all look up at call time.
This feature wraps that factory and, for the backend flared selects, returns
a :class:`FlareEnvironment`, whose ``_run_bash`` sends the script to flared's
``POST /exec`` over the unix socket with the bot's ``flb_`` token (which can
touch only that bot's leases) and the Hermes session key.

Fail closed: flared renders ``terminal.backend: ssh`` with the host
``flare-plugin-not-loaded.invalid`` (a name that never resolves, RFC 6761).
Without this plugin Hermes' own SSH backend tries that host and every command
fails with a message naming the cause; nothing runs in the Agent container.
With ``ssh`` selected, ``execute_code`` takes its remote path too, so its
Python also runs in the sandbox. When the private names this relies on are
not what they were in the checked Hermes version, :func:`install` refuses
(raises, so the gateway log shows it, and records it in
``$HERMES_HOME/state/flare-plugin.json``, which ``flared status`` shows),
and the fail-closed backend stays in force. The plugin also refuses the
``local`` backend outright.

Known limit: a command's processes end with it (each command is one sandbox
run), so Hermes' ``background=true`` processes do not outlive their command.

Size: one module because it runs inside the gateway, where it imports
nothing of flared but :mod:`flared.control.tokens` (no pydantic, no daemon
code); the backend, its guard and the lease client are one seam into Hermes.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.metadata
import inspect
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flared.control.tokens import bot_token

log = logging.getLogger("flared.plugin.terminal")

#: The Hermes release whose private names were checked (see tests/test_plugin_terminal.py).
HERMES_CHECKED = "0.19.0"
BACKEND = "ssh"
FAIL_HOST = "flare-plugin-not-loaded.invalid"
WORKDIR = "/workspace"
ENV_SOCKET, ENV_TOKEN, ENV_BOT = "FLARE_CONTROL_SOCKET", "FLARE_BOT_TOKEN", "FLARE_BOT"
STATUS_FILE = Path("state") / "flare-plugin.json"
CREATE_PARAMS = (
    "env_type",
    "image",
    "cwd",
    "timeout",
    "ssh_config",
    "container_config",
    "local_config",
    "task_id",
    "host_cwd",
)
BASE_METHODS = ("_run_bash", "execute", "init_session", "_wait_for_process", "cleanup", "_update_cwd")
#: Exit status of a command flared could not start (capacity, flared down...): nothing ran.
NOT_RUN = 126
#: The task id Hermes' system-prompt builder probes the backend with (agent/prompt_builder.py), and
#: the answer it gets without a lease: a conversation takes a lease only when it runs a command.
PROBE_TASK = "prompt-backend-probe"
PROBE_ANSWER = f"os=Linux\nkernel=unknown\nhome=\ncwd={WORKDIR}\nuser=unknown\n"
_MARK = "__flare_terminal__"


class IncompatibleHermes(RuntimeError):
    """The Hermes internals this backend wraps are not what it was written against."""


# ---------------------------------------------------------------------------- rendering (flared side)


def hermes_config() -> dict[str, Any]:
    """Hermes config keys that select a backend which cannot run commands locally.

    Only this plugin turns that selection into sandboxes; without it the SSH
    backend fails on the never-resolving host.
    """
    return {
        "terminal": {
            "backend": BACKEND,
            "ssh_host": FAIL_HOST,
            "ssh_user": "flare",
            "ssh_port": 9,
            "cwd": WORKDIR,
            "persistent_shell": False,
        }
    }


def gateway_env(state_dir: Path, bot: str) -> dict[str, str]:
    """Environment for the bot's gateway: its token, its name, and the same backend selection.

    The control socket path is rendered by :func:`flared.hermes.home.flared_settings`
    (which knows ``control.socket``); it is not repeated here so a custom
    socket path is never overwritten. The ``TERMINAL_*`` variables repeat the
    config selection so paths that read the environment before Hermes bridges
    its config see the fail-closed backend too.
    """
    return {
        ENV_BOT: bot,
        ENV_TOKEN: bot_token(Path(state_dir), bot),
        "TERMINAL_ENV": BACKEND,
        "TERMINAL_SSH_HOST": FAIL_HOST,
        "TERMINAL_SSH_USER": "flare",
        "TERMINAL_SSH_PORT": "9",
        "TERMINAL_CWD": WORKDIR,
        "TERMINAL_PERSISTENT_SHELL": "false",
    }


# ---------------------------------------------------------------------------- compatibility check


def check_hermes() -> dict[str, Any]:
    """Import every name the backend relies on; raise :class:`IncompatibleHermes` listing what moved."""
    problems: list[str] = []
    info: dict[str, Any] = {"checked_against": HERMES_CHECKED}
    try:
        info["hermes"] = importlib.metadata.version("hermes-agent")
    except importlib.metadata.PackageNotFoundError:
        info["hermes"] = None
    modules: dict[str, Any] = {}
    for name in ("tools.terminal_tool", "tools.environments.base", "gateway.session_context"):
        try:
            modules[name] = importlib.import_module(name)
        except Exception as exc:  # an import error is as fatal as a missing name
            problems.append(f"cannot import {name}: {exc}")
    tt, base, sc = (
        modules.get(n) for n in ("tools.terminal_tool", "tools.environments.base", "gateway.session_context")
    )
    if tt is not None:
        create = getattr(tt, "_create_environment", None)
        if not callable(create):
            problems.append("tools.terminal_tool._create_environment is missing")
        else:
            params = tuple(inspect.signature(_unwrap(create)).parameters)
            if params != CREATE_PARAMS:
                problems.append(f"tools.terminal_tool._create_environment{params} is not {CREATE_PARAMS}")
    if base is not None:
        cls = getattr(base, "BaseEnvironment", None)
        if not isinstance(cls, type):
            problems.append("tools.environments.base.BaseEnvironment is missing")
        else:
            problems += [f"BaseEnvironment.{m} is missing" for m in BASE_METHODS if not hasattr(cls, m)]
            if hasattr(cls, "_run_bash"):
                run_params = tuple(inspect.signature(cls._run_bash).parameters)
                if run_params != ("self", "cmd_string", "login", "timeout", "stdin_data"):
                    problems.append(f"BaseEnvironment._run_bash{run_params} changed")
        handle = getattr(base, "_ThreadedProcessHandle", None)
        if not isinstance(handle, type):
            problems.append("tools.environments.base._ThreadedProcessHandle is missing")
        elif tuple(inspect.signature(handle).parameters) != ("exec_fn", "cancel_fn"):
            problems.append("tools.environments.base._ThreadedProcessHandle(exec_fn, cancel_fn) changed")
    if sc is not None and not callable(getattr(sc, "get_session_env", None)):
        problems.append("gateway.session_context.get_session_env is missing")
    if problems:
        raise IncompatibleHermes(
            f"flare terminal backend refuses to load on hermes-agent {info['hermes']} "
            f"(checked against {HERMES_CHECKED}): "
            + "; ".join(problems)
            + ". Commands stay blocked (fail-closed backend) until flared is updated."
        )
    if info["hermes"] != HERMES_CHECKED:
        info["warning"] = (
            f"hermes-agent {info['hermes']} differs from the checked {HERMES_CHECKED}; names match"
        )
    return info


def _unwrap(fn: Callable[..., Any]) -> Callable[..., Any]:
    return getattr(fn, "__flare_original__", fn)


# ---------------------------------------------------------------------------- install


def install(ctx: Any) -> None:
    """Wrap Hermes' environment factory (idempotent); refuse loudly if Hermes moved."""
    try:
        info = check_hermes()
    except IncompatibleHermes as exc:
        log.error("%s", exc)
        record_status({"ok": False, "error": str(exc)})
        raise
    tt = importlib.import_module("tools.terminal_tool")
    original = tt._create_environment
    if not getattr(original, _MARK, False):
        tt._create_environment = _wrap_factory(original)  # type: ignore[attr-defined]
    if info.get("warning"):
        log.warning("%s", info["warning"])
    record_status({"ok": True, "backend": "flare", **info})
    log.info("flare terminal backend installed: commands run in flared sandbox leases")


def uninstall() -> None:
    """Put Hermes' own factory back (tests)."""
    tt = importlib.import_module("tools.terminal_tool")
    tt._create_environment = _unwrap(tt._create_environment)  # type: ignore[attr-defined]


def _wrap_factory(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def create_environment(
        env_type: str,
        image: str,
        cwd: str,
        timeout: int,
        ssh_config: dict[str, Any] | None = None,
        container_config: dict[str, Any] | None = None,
        local_config: dict[str, Any] | None = None,
        task_id: str = "default",
        host_cwd: str | None = None,
    ) -> Any:
        if env_type == "local":
            raise RuntimeError(
                "the local terminal backend is disabled under flared: commands run in sandboxes only"
            )
        if env_type == BACKEND and (ssh_config or {}).get("host") == FAIL_HOST:
            return make_environment(cwd=cwd or WORKDIR, timeout=timeout, task_id=task_id)
        return original(
            env_type,
            image,
            cwd,
            timeout,
            ssh_config=ssh_config,
            container_config=container_config,
            local_config=local_config,
            task_id=task_id,
            host_cwd=host_cwd,
        )

    setattr(create_environment, _MARK, True)
    create_environment.__flare_original__ = original  # type: ignore[attr-defined]
    return create_environment


def record_status(entry: dict[str, Any], key: str = "terminal") -> None:
    """Merge ``{key: entry}`` into the status file ``flared status`` reads."""
    home = os.environ.get("HERMES_HOME")
    if not home:
        return
    path = Path(home) / STATUS_FILE
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
        if not isinstance(data, dict):
            data = {}
        data[key] = entry
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, path)


# ---------------------------------------------------------------------------- the environment


def session_key(task_id: str) -> str:
    """The Hermes session this command belongs to (gateway context), else the task id."""
    from gateway.session_context import get_session_env

    for name in ("HERMES_SESSION_KEY", "HERMES_SESSION_ID"):
        value = get_session_env(name, "")
        if value:
            return str(value)
    return task_id or "default"


class _Transport:
    """POST /exec to flared; every failure becomes a readable command failure."""

    def __init__(self) -> None:
        socket = os.environ.get(ENV_SOCKET)
        token = os.environ.get(ENV_TOKEN)
        if not socket or not token:
            raise RuntimeError(
                f"flare terminal backend: {ENV_SOCKET} and {ENV_TOKEN} are not set; "
                "this gateway was not started by flared, so commands cannot run"
            )
        from flared.control.client import ControlClient

        self.client = ControlClient(Path(socket), token)
        #: per session: that its last command waited for a sandbox, for the next output the agent reads
        self.notices: dict[str, str] = {}

    def take_notice(self, session: str) -> str:
        return self.notices.pop(session, "")

    def run(self, session: str, script: str, timeout: float, stdin: str | None) -> tuple[str, int]:
        from flared.control.client import ControlError, DaemonNotRunning

        body = {"session": session, "command": script, "timeout": timeout, "stdin": stdin, "wait": False}
        try:
            try:
                r = self.client.request("POST", "/exec", body, timeout=timeout + 60)
            except ControlError as exc:
                if not (exc.status == 429 and isinstance(exc.body, dict) and exc.body.get("waiting")):
                    raise
                # Every lease this bot may take is running a command: say so now, then wait.
                started = time.monotonic()
                announce(str(exc.body.get("error")))
                r = self.client.request("POST", "/exec", {**body, "wait": True}, timeout=timeout + 600)
                waited = time.monotonic() - started
                self.notices[session] = f"[flare] {exc.body.get('error')}; waited {waited:.0f}s\n"
        except DaemonNotRunning:
            return "[flare] flared is not running; the command did not run.\n", NOT_RUN
        except ControlError as exc:
            error = exc.body.get("error") if isinstance(exc.body, dict) else exc.body
            if exc.status >= 500 and exc.status != 503:
                return f"[flare] sandbox failure: {error}; the command may not have completed.\n", 1
            return f"[flare] {error}; the command did not run.\n", NOT_RUN
        except (OSError, ValueError) as exc:
            return f"[flare] lost contact with flared ({exc}); the command's outcome is unknown.\n", 1
        out = str(r.get("stdout", "")) + str(r.get("stderr", ""))
        return out, int(r.get("exit_code", 1))


def announce(message: str) -> None:
    """Tell whoever watches this session that its command waits for a sandbox, now.

    The gateway log always; and, best effort, the chat's live status line
    (Slack's assistant status, which Hermes refreshes every few seconds)
    through Hermes' running gateway, whose private names this does not
    depend on to work.
    """
    log.warning("%s", message)
    gateway_run = sys.modules.get("gateway.run")  # loaded in a gateway; never imported from here
    if gateway_run is None:
        return
    with contextlib.suppress(Exception):
        from gateway.session_context import get_session_env

        runner = gateway_run._gateway_runner_ref()
        chat = get_session_env("HERMES_SESSION_CHAT_ID", "")
        platform = get_session_env("HERMES_SESSION_PLATFORM", "")
        if runner is None or not chat or not platform:
            return
        for key, adapter in getattr(runner, "adapters", {}).items():
            if str(getattr(key, "value", key)) == platform and hasattr(adapter, "set_status_text"):
                adapter.set_status_text(chat, message)


def make_environment(*, cwd: str, timeout: int, task_id: str) -> Any:
    """A :class:`FlareEnvironment` (the class is built on first use, after Hermes is importable)."""
    return _classes()[0](cwd=cwd, timeout=timeout, task_id=task_id)


@functools.cache
def _classes() -> tuple[type, type]:
    from tools.environments.base import BaseEnvironment, _ThreadedProcessHandle

    class SessionEnvironment(BaseEnvironment):  # type: ignore[misc]
        """One Hermes session's view: its own cwd and shell snapshot, its own lease."""

        def __init__(self, cwd: str, timeout: int, session: str, transport: _Transport) -> None:
            super().__init__(cwd=cwd, timeout=timeout)
            self.session = session
            self.transport = transport
            self.init_session()

        def _run_bash(
            self,
            cmd_string: str,
            *,
            login: bool = False,
            timeout: int = 120,
            stdin_data: str | None = None,
        ) -> Any:
            script = "exec 2>&1\n" + cmd_string  # one stream, interleaved as the local backend gives it
            return _ThreadedProcessHandle(
                lambda: self.transport.run(self.session, script, float(timeout), stdin_data), None
            )

        def execute(self, command: str, cwd: str = "", **kw: Any) -> dict[str, Any]:
            result: dict[str, Any] = super().execute(command, cwd, **kw)
            # A wait for a sandbox may have happened in Hermes' own first command (the shell
            # snapshot), whose output the agent never sees: tell it with this one.
            notice = self.transport.take_notice(self.session)
            if notice:
                result["output"] = notice + str(result.get("output") or "")
            return result

        def cleanup(self) -> None:
            """Nothing to free here: flared expires leases (idle_ttl, max_lifetime)."""

    class FlareEnvironment(BaseEnvironment):  # type: ignore[misc]
        """What Hermes caches per task: hands each command to its session's environment.

        Hermes keys environments by task (all of a gateway's sessions collapse
        to ``default``), so this dispatcher picks the session from the
        gateway's context at call time.
        """

        def __init__(self, cwd: str, timeout: int, task_id: str = "default") -> None:
            self._sessions: dict[str, SessionEnvironment] = {}
            self._sessions_lock = threading.Lock()
            self.task_id = task_id
            self.transport = _Transport()
            super().__init__(cwd=cwd, timeout=timeout)

        @property
        def cwd(self) -> str:
            sessions = self.__dict__.get("_sessions") or {}
            env = sessions.get(session_key(self.task_id))
            return str(env.cwd if env is not None else self.__dict__.get("_default_cwd", WORKDIR))

        @cwd.setter
        def cwd(self, value: str) -> None:
            self.__dict__["_default_cwd"] = value

        def for_session(self) -> SessionEnvironment:
            key = session_key(self.task_id)
            with self._sessions_lock:
                env = self._sessions.get(key)
            if env is None:
                env = SessionEnvironment(
                    self.__dict__.get("_default_cwd", WORKDIR), self.timeout, key, self.transport
                )
                with self._sessions_lock:
                    env = self._sessions.setdefault(key, env)
            return env

        def execute(self, command: str, cwd: str = "", **kw: Any) -> dict[str, Any]:
            if self.task_id == PROBE_TASK:
                # Asked for every new session's system prompt: what the sandbox is, which
                # flared knows without taking (and holding for idle_ttl) a lease.
                return {"output": PROBE_ANSWER, "returncode": 0}
            result: dict[str, Any] = self.for_session().execute(command, cwd, **kw)
            return result

        def _run_bash(
            self,
            cmd_string: str,
            *,
            login: bool = False,
            timeout: int = 120,
            stdin_data: str | None = None,
        ) -> Any:
            return self.for_session()._run_bash(
                cmd_string, login=login, timeout=timeout, stdin_data=stdin_data
            )

        def init_session(self) -> None:
            """Per session, on first use (see :meth:`for_session`)."""

        def cleanup(self) -> None:
            with self._sessions_lock:
                self._sessions.clear()

    return FlareEnvironment, SessionEnvironment
