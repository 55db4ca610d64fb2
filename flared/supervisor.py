"""supervisord: its config files, an XML-RPC client, and applying reconcile actions.

flared owns one include directory of program files. Adding a program is
"write its file, reloadConfig, addProcessGroup" — the same steps
`supervisorctl update` takes — so supervisord stays the only process manager.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import shlex
import signal
import sys
import threading
import time
import xmlrpc.client
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flared import lifeline
from flared.config.handoff import ENV_FILE_VAR
from flared.reconcile import (
    Action,
    AddGroup,
    DeleteProgram,
    Observed,
    RemoveGroup,
    StartGroup,
    WriteProgram,
    managed,
)

log = logging.getLogger("flared.supervisor")

TERMINAL_STATES = {"FATAL", "EXITED", "STOPPED"}


@dataclass(frozen=True)
class Layout:
    """Where supervisord's files live for one state dir."""

    state_dir: Path

    @property
    def root(self) -> Path:
        return self.state_dir / "supervisor"

    @property
    def conf(self) -> Path:
        return self.root / "supervisord.conf"

    @property
    def programs(self) -> Path:
        return self.root / "programs"

    @property
    def socket(self) -> Path:
        return self.root / "supervisor.sock"

    @property
    def handoff(self) -> Path:
        """flared's secrets, written by whatever starts supervisord (see :mod:`flared.config.handoff`)."""
        return self.root / "flared.env"

    @property
    def pidfile(self) -> Path:
        return self.root / "supervisord.pid"

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"


#: A program ``log_file`` that means supervisord's stdout (with no rotation, which a pipe cannot have).
STDOUT = "/dev/stdout"


@dataclass
class ProgramSpec:
    """One supervisord program, rendered deterministically."""

    name: str
    command: list[str]
    environment: dict[str, str] = field(default_factory=dict)
    directory: str | None = None
    log_file: str | None = None
    stopsignal: str = "INT"
    stopwaitsecs: int = 30
    priority: int = 900
    startsecs: int = 2
    startretries: int = 10
    autorestart: str = "true"
    #: Exit statuses supervisord treats as expected (with ``autorestart=unexpected``: not restarted).
    exitcodes: tuple[int, ...] = (0,)
    user: str | None = None
    #: Gets its stopsignal when supervisord dies (kill -9) instead of running on unsupervised
    #: (flared.lifeline); flared sets its own, so the image's static config needs no wrapper.
    dies_with_supervisord: bool = True

    def render(self) -> str:
        command = self.command
        if self.dies_with_supervisord:
            command = lifeline.wrapped(signal.Signals[f"SIG{self.stopsignal}"], command)
        lines = [
            f"[program:{self.name}]",
            "command=" + _escape(shlex.join(command)),
            "autostart=true",
            f"autorestart={self.autorestart}",
            f"startsecs={self.startsecs}",
            f"startretries={self.startretries}",
            f"stopsignal={self.stopsignal}",
            f"stopwaitsecs={self.stopwaitsecs}",
            "stopasgroup=true",
            "killasgroup=true",
            f"priority={self.priority}",
        ]
        if self.exitcodes != (0,):
            lines.append("exitcodes=" + ",".join(str(c) for c in self.exitcodes))
        if self.directory:
            lines.append("directory=" + _escape(self.directory))
        if self.user:
            lines.append(f"user={self.user}")
        if self.environment:
            env = ",".join(f'{k}="{_env_value(v)}"' for k, v in sorted(self.environment.items()))
            lines.append("environment=" + env)
        if self.log_file == STDOUT:  # supervisord's own stdout: the container's log
            lines += ["redirect_stderr=true", f"stdout_logfile={STDOUT}", "stdout_logfile_maxbytes=0"]
        elif self.log_file:
            lines += [
                "redirect_stderr=true",
                "stdout_logfile=" + _escape(self.log_file),
                "stdout_logfile_maxbytes=10MB",
                "stdout_logfile_backups=5",
            ]
        return "\n".join(lines) + "\n"


def _escape(text: str) -> str:
    return text.replace("%", "%%")


def _env_value(v: str) -> str:
    if '"' in v or "\n" in v:
        raise ValueError("supervisord environment values cannot hold quotes or newlines")
    return _escape(v)


def flared_command(config_path: Path) -> list[str]:
    """How supervisord starts `flared run` with this interpreter."""
    return [sys.executable, "-m", "flared", "run", "-c", str(config_path)]


def render_supervisord_conf(
    layout: Layout,
    *,
    flared_cmd: list[str],
    flared_env: dict[str, str] | None = None,
    stopwaitsecs: int = 90,
    user: str | None = None,
    mirror_cmd: list[str] | None = None,
) -> str:
    """The base config: unix socket, rpcinterface, include dir, and `flared run`.

    ``mirror_cmd`` (the image's): a program that copies flared's and every
    gateway's log lines, redacted, to supervisord's stdout, which is the
    container's log (`docker logs`). It starts first and stops last, so the
    boot and the final snapshots are in it.
    """
    flared = ProgramSpec(
        name="flared",
        command=flared_cmd,
        environment={ENV_FILE_VAR: str(layout.handoff), **(flared_env or {})},
        log_file=str(layout.logs / "flared.log"),
        stopsignal="TERM",
        stopwaitsecs=stopwaitsecs,
        priority=100,
        startsecs=1,
        startretries=100,
        user=user,
        dies_with_supervisord=False,
    )
    mirror = (
        ProgramSpec(
            name="logs",
            command=mirror_cmd,
            environment={ENV_FILE_VAR: str(layout.handoff)},  # the secrets it must redact
            log_file=STDOUT,
            stopsignal="TERM",
            stopwaitsecs=10,
            priority=50,
            startsecs=1,
            startretries=100,
            user=user,
            # Only in the image, where the container ends with supervisord's watcher; a wrapper
            # would bake this machine's Python path into the committed config.
            dies_with_supervisord=False,
        ).render()
        + "\n"
        if mirror_cmd
        else ""
    )
    return (
        "; Generated by `flared render supervisord`; flared adds one program per bot\n"
        "; in the include directory through supervisord's XML-RPC API.\n"
        "[supervisord]\n"
        f"logfile={_escape(str(layout.logs / 'supervisord.log'))}\n"
        "logfile_maxbytes=10MB\n"
        "logfile_backups=3\n"
        f"pidfile={_escape(str(layout.pidfile))}\n"
        f"childlogdir={_escape(str(layout.logs))}\n"
        "nodaemon=true\n"
        "silent=true\n"
        "\n[unix_http_server]\n"
        f"file={_escape(str(layout.socket))}\n"
        "chmod=0700\n"
        "\n[rpcinterface:supervisor]\n"
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n"
        "\n[supervisorctl]\n"
        f"serverurl=unix://{_escape(str(layout.socket))}\n"
        "\n" + mirror + flared.render() + "\n[include]\n"
        f"files={_escape(str(layout.programs))}/*.conf\n"
    )


class SupervisorError(Exception):
    pass


class SupervisorClient:
    """XML-RPC over supervisord's unix socket."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self._local = threading.local()

    @property
    def supervisor(self) -> Any:
        """The `supervisor.*` namespace; one connection per thread (the transport is not thread-safe)."""
        proxy = getattr(self._local, "proxy", None)
        if proxy is None:
            from supervisor.xmlrpc import SupervisorTransport

            transport = SupervisorTransport(None, None, f"unix://{self.socket_path}")
            proxy = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)
            self._local.proxy = proxy
        return proxy.supervisor

    def reset(self) -> None:
        """Drop this thread's connection (after an error it cannot be reused)."""
        self._local.proxy = None

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.supervisor.getState()["statename"] == "RUNNING":
                    return
            except (OSError, xmlrpc.client.Fault, http.client.HTTPException):
                self.reset()
            if time.monotonic() > deadline:
                raise SupervisorError(
                    f"supervisord did not answer on {self.socket_path} within {timeout:.0f}s"
                )
            time.sleep(0.1)

    def processes(self) -> list[dict[str, Any]]:
        return list(self.supervisor.getAllProcessInfo())

    def process(self, name: str) -> dict[str, Any]:
        return dict(self.supervisor.getProcessInfo(f"{name}:{name}"))

    def stopwaitsecs(self, name: str) -> int | None:
        """How long supervisord waits for program ``name`` to stop before it SIGKILLs it."""
        for conf in self.supervisor.getAllConfigInfo():
            if conf.get("name") == name:
                return int(conf["stopwaitsecs"])
        return None

    def start(self, name: str, wait: bool = True) -> None:
        with contextlib.suppress(xmlrpc.client.Fault):
            self.supervisor.startProcessGroup(name, wait)

    def stop(self, name: str, wait: bool = True) -> None:
        try:
            self.supervisor.stopProcessGroup(name, wait)
        except xmlrpc.client.Fault as exc:
            if "BAD_NAME" not in exc.faultString:
                raise

    def signal(self, name: str, sig: str) -> None:
        self.supervisor.signalProcess(f"{name}:{name}", sig)


def observe(client: SupervisorClient, layout: Layout) -> Observed:
    files: dict[str, str] = {}
    if layout.programs.is_dir():
        for f in layout.programs.glob("*.conf"):
            files[f.stem] = f.read_text()
    infos = client.processes()
    groups = frozenset(p["group"] for p in infos)
    stopped = frozenset(p["group"] for p in infos if p["statename"] in {"FATAL"})
    return Observed(files=files, groups=groups, stopped=stopped, processes=tuple(infos))


def apply(client: SupervisorClient, layout: Layout, actions: list[Action]) -> None:
    """Carry out the plan; one reloadConfig covers every file change."""
    if not actions:
        return
    layout.programs.mkdir(parents=True, exist_ok=True)
    sup = client.supervisor
    for action in actions:
        if isinstance(action, RemoveGroup):
            log.info("stopping %s", action.name)
            client.stop(action.name)
            with contextlib.suppress(xmlrpc.client.Fault):
                sup.removeProcessGroup(action.name)
    wrote = False
    for action in actions:
        if isinstance(action, WriteProgram):
            path = layout.programs / f"{action.name}.conf"
            tmp = path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(action.text)
            os.replace(tmp, path)
            wrote = True
        elif isinstance(action, DeleteProgram) and managed(action.name):
            (layout.programs / f"{action.name}.conf").unlink(missing_ok=True)
            wrote = True
    if wrote or any(isinstance(a, AddGroup) for a in actions):
        sup.reloadConfig()
    for action in actions:
        if isinstance(action, AddGroup):
            log.info("starting %s", action.name)
            try:
                sup.addProcessGroup(action.name)
            except xmlrpc.client.Fault as exc:
                if "ALREADY_ADDED" not in exc.faultString:
                    raise SupervisorError(f"cannot add {action.name}: {exc.faultString}") from None
        elif isinstance(action, StartGroup):
            log.info("restarting %s after it gave up", action.name)
            client.start(action.name, wait=False)
