"""`flared run`: the daemon supervisord starts.

It restores each bot, renders its Hermes home, keeps one gateway program per
ready bot in supervisord, runs the snapshot and lease services, and serves
the control API. Side effects live here; decisions live in
:mod:`flared.reconcile`.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import signal
import threading
import time
import xmlrpc.client
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flared import __version__
from flared.client import socket_path
from flared.config import BotConfig
from flared.control import ControlServer, build_router
from flared.hermes import BotPaths, gateway_program, program_name, render_home
from flared.loader import ConfigError, Issue, LoadedConfig
from flared.optional import optional_import
from flared.reconcile import Action, plan
from flared.supervisor import Layout, SupervisorClient, SupervisorError, apply, observe

log = logging.getLogger("flared")

RECONCILE_EVERY = 2.0


class Daemon:
    def __init__(self, loaded: LoadedConfig, *, supervisor_socket: Path | None = None) -> None:
        self.loaded = loaded
        self.started_at = time.time()
        self.layout = Layout(loaded.state_dir)
        self.supervisor = SupervisorClient(supervisor_socket or self.layout.socket)
        self.lock = threading.RLock()
        self.ready: set[str] = set()  # bots whose restore finished: their gateways may run
        self.held: set[str] = set()  # bots whose gateway is stopped on purpose (restore)
        self.boot_errors: dict[str, str] = {}
        self.config_error: list[Issue] | None = None
        self.last_tick: datetime | None = None
        self.restarts: dict[str, int] = {}
        self._pids: dict[str, int] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.snapshots: Any = None
        self._render_cache: dict[str, tuple[Any, str]] = {}
        self._observed_processes: list[dict[str, Any]] = []
        self.leases: Any = None
        self.control: ControlServer | None = None
        self.cron: Any = None  # flared.cron's scheduler, when that module is present
        self.last_reload: dict[str, Any] | None = None

    # ------------------------------------------------------------------ config

    @property
    def cfg(self) -> Any:
        return self.loaded.config

    def enabled_bots(self) -> list[BotConfig]:
        # On Cloudflare each Agent container runs one bot group ($FLARE_GROUP).
        group = os.environ.get("FLARE_GROUP")
        return [b for b in self.cfg.bots if b.enabled and (not group or b.group == group)]

    # ------------------------------------------------------------------ gateways (GatewayControl)

    def stop(self, bot: str) -> None:
        """Stop a bot's gateway and keep it stopped (restore in progress)."""
        with self.lock:
            self.held.add(bot)
            self.reconcile()

    def start(self, bot: str) -> None:
        with self.lock:
            self.held.discard(bot)
            self.reconcile()

    def restart_gateway(self, bot: str) -> None:
        name = program_name(bot)
        self.supervisor.stop(name)
        self.supervisor.start(name)

    def _on_ready(self, bot: str) -> None:
        with self.lock:
            self.ready.add(bot)
            self.boot_errors.pop(bot, None)
        log.info("bot %s: state ready, starting its gateway", bot)
        self._wake.set()

    # ------------------------------------------------------------------ reconcile

    def desired_programs(self) -> dict[str, str]:
        desired: dict[str, str] = {}
        for bot in self.enabled_bots():
            if bot.name not in self.ready or bot.name in self.held:
                continue
            try:
                desired[program_name(bot.name)] = self._rendered_program(bot)
            except Exception as exc:  # one bot's render problem must not stop the others
                self.boot_errors[bot.name] = f"cannot render Hermes home: {exc}"
                log.error("bot %s: cannot render its Hermes home: %s", bot.name, exc)
        return desired

    def _rendered_program(self, bot: BotConfig) -> str:
        """Render the bot's Hermes home and program, unless nothing it depends on changed.

        Reconcile runs every two seconds; re-parsing and re-writing every home that
        often was most of an idle flared's CPU. The key is the config digest and the
        identity of the two files flared writes, so an edit, a restore (new inode) or
        a deleted file is still repaired at the next tick.
        """
        home = BotPaths.of(self.cfg.state_dir, bot.name).home
        key = (self.loaded.digest, _file_key(home / "config.yaml"), _file_key(home / ".env"))
        cached = self._render_cache.get(bot.name)
        if cached is not None and cached[0] == key:
            return cached[1]
        text = gateway_program(self.cfg, bot, render_home(self.cfg, bot)).render()
        after = (self.loaded.digest, _file_key(home / "config.yaml"), _file_key(home / ".env"))
        self._render_cache[bot.name] = (after, text)
        return text

    def operator_programs(self) -> dict[str, str]:
        """The operator bot's program when `operator:` is configured (its failures never touch bots)."""
        if self.cfg.operator is None:
            return {}
        from flared.operator.program import NAME, operator_program

        return {NAME: operator_program(self.loaded).render()}

    def plan(self) -> list[Action]:
        """What a reconcile would do now (nothing, once in step)."""
        with self.lock:
            desired = {**self.desired_programs(), **self.operator_programs()}
            observed = observe(self.supervisor, self.layout)
            self._observed_processes = list(observed.processes)
            return plan(desired, observed, restart_stopped=True)

    def reconcile(self) -> list[Action]:
        with self.lock:
            actions = self.plan()
            apply(self.supervisor, self.layout, actions)
            return actions

    def _track_restarts(self) -> None:
        # The process list the reconcile just read: one XML-RPC call per tick, not two.
        for p in self._observed_processes or self.supervisor.processes():
            name, pid = p["name"], int(p.get("pid") or 0)
            if not pid:
                continue
            prev = self._pids.get(name)
            if prev and prev != pid:
                self.restarts[name] = self.restarts.get(name, 0) + 1
            self._pids[name] = pid

    # ------------------------------------------------------------------ config reload

    def apply_config(self, new: LoadedConfig) -> dict[str, Any]:
        """Switch to a new validated config; reconcile what changed."""
        hot = optional_import("flared.reload")
        if hot is not None:
            result: dict[str, Any] = hot.apply(self, new)
            return result
        with self.lock:
            old_names = {b.name for b in self.cfg.bots}
            self.loaded = new
            self.config_error = None
            for bot in self.enabled_bots():
                if bot.name not in old_names:
                    self._boot_bot(bot.name)
            self.reconcile()
        return {"applied": True, "config_digest": new.digest}

    def reload_from_disk(self) -> dict[str, Any]:
        """Read the file and apply it; SIGHUP, `flared reload` and the watcher all come here,
        one at a time, so an older read never lands after a newer one."""
        hot = optional_import("flared.reload")
        lock = hot.reload_lock(self) if hot is not None else contextlib.nullcontext()
        with lock:
            return self._reload_from_disk()

    def _reload_from_disk(self) -> dict[str, Any]:
        from flared.loader import load_config

        try:
            new = load_config(self.loaded.path)
        except ConfigError as exc:
            self.config_error = exc.issues
            for issue in exc.issues:
                log.error("config not applied: %s", issue)
            return {"applied": False, "errors": [i.as_dict() for i in exc.issues]}
        if new.digest == self.loaded.digest:
            self.config_error = None
            return {"applied": False, "unchanged": True, "config_digest": new.digest}
        return self.apply_config(new)

    # ------------------------------------------------------------------ lifecycle

    def _boot_bot(self, bot: str) -> None:
        if self.snapshots is not None:
            self.snapshots.boot(bot, self._on_ready)
        else:
            self._on_ready(bot)

    def start_services(self) -> None:
        snap = optional_import("flared.snapshots.service")
        if snap is not None:
            self.snapshots = snap.SnapshotService(self.loaded, self)
        sbx = optional_import("flared.sandboxes.manager")
        if sbx is not None:
            self.leases = sbx.LeaseManager(self.loaded)
            self.leases.start()
        live = self._live_gateways()
        for bot in self.enabled_bots():
            if bot.name in live:
                self._adopt(bot.name)
            else:
                self._boot_bot(bot.name)
        if self.snapshots is not None:
            self.snapshots.start()

    def _live_gateways(self) -> set[str]:
        """Bots whose gateway already runs: flared itself restarted, the state is live."""
        try:
            procs = self.supervisor.processes()
        except (OSError, xmlrpc.client.Fault, http.client.HTTPException):
            self.supervisor.reset()
            return set()
        return {
            p["name"].removeprefix("gateway-")
            for p in procs
            if p["name"].startswith("gateway-") and p["statename"] in {"RUNNING", "STARTING", "BACKOFF"}
        }

    def _adopt(self, bot: str) -> None:
        """Take over a running gateway without restoring over its live state."""
        log.info("bot %s: gateway already running, adopting it (no restore)", bot)
        adopt = getattr(self.snapshots, "adopt", None)
        if adopt is not None:
            adopt(bot)
        self._on_ready(bot)

    def serve_control(self) -> None:
        c = self.cfg.control
        token = c.token.get_secret_value() if c.token else os.environ.get("FLARE_CONTROL_TOKEN")
        self.control = ControlServer(
            build_router(self),
            state_dir=self.loaded.state_dir,
            socket_path=socket_path(self.loaded),
            tcp=(c.host, c.port) if c.port else None,
            admin_token=token,
        )
        self.control.start()

    def run(self) -> int:
        self.loaded.state_dir.mkdir(parents=True, exist_ok=True)
        signal.signal(signal.SIGTERM, self._signal_stop)
        signal.signal(signal.SIGINT, self._signal_stop)
        signal.signal(signal.SIGHUP, lambda *_: threading.Thread(target=self.reload_from_disk).start())
        log.info(
            "flared %s starting with %s (digest %s)", __version__, self.loaded.path, self.loaded.digest[:12]
        )
        try:
            self.supervisor.wait_ready()
        except SupervisorError as exc:
            log.error("%s", exc)
            return 1
        self.serve_control()
        self.start_services()
        watcher = optional_import("flared.watch")
        if watcher is not None:
            watcher.start(self)
        cron = optional_import("flared.cron")
        if cron is not None:
            cron.start(self)
        while not self._stop.is_set():
            try:
                self.reconcile()
                self._track_restarts()
                self.last_tick = datetime.now(UTC)
            except xmlrpc.client.Fault as exc:
                if "SHUTDOWN_STATE" in exc.faultString:
                    log.info("supervisord is shutting down")
                    self._stop.wait(RECONCILE_EVERY)
                    continue
                log.warning("reconcile failed, will retry: %s", exc.faultString)
            except (OSError, SupervisorError, http.client.HTTPException) as exc:
                self.supervisor.reset()
                log.warning("reconcile failed, will retry: %s", exc)
            except Exception:
                self.supervisor.reset()
                log.exception("reconcile failed, will retry")
            self._wake.wait(RECONCILE_EVERY)
            self._wake.clear()
        self.shutdown()
        return 0

    def _signal_stop(self, signum: int, _frame: Any) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        self._stop.set()
        self._wake.set()

    def request_stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def shutdown(self) -> None:
        if self.snapshots is not None:
            try:
                self.snapshots.shutdown(final_snapshots=self.cfg.snapshots.on_shutdown)
            except Exception:
                log.exception("final snapshots failed")
        if self.leases is not None:
            with contextlib.suppress(Exception):
                self.leases.stop()
        if self.control is not None:
            self.control.stop()
        log.info("flared stopped")

    # ------------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        procs = {p["name"]: p for p in _safe(self.supervisor.processes, [])}
        bots = []
        for bot in self.cfg.bots:
            name = program_name(bot.name)
            p = procs.get(name)
            entry: dict[str, Any] = {
                "name": bot.name,
                "enabled": bot.enabled,
                "group": bot.group,
                "sandbox": bot.sandbox,
                "program": name,
                "state": p["statename"] if p else ("starting" if bot.name in self.ready else "waiting"),
                "pid": (p.get("pid") or None) if p else None,
                "uptime_s": (p["now"] - p["start"]) if p and p.get("pid") else None,
                "restarts": self.restarts.get(name, 0),
                "ready": bot.name in self.ready,
                "held": bot.name in self.held,
                "error": self.boot_errors.get(bot.name),
                "hermes": gateway_liveness(BotPaths.of(self.cfg.state_dir, bot.name).home),
            }
            if p and p["statename"] in {"FATAL", "BACKOFF"} and p.get("spawnerr"):
                entry["error"] = p["spawnerr"]
            if bot.api is not None:
                entry["api"] = f"http://{bot.api.host}:{bot.api.port}/v1"
            if self.snapshots is not None:
                entry["snapshots"] = _safe(lambda b=bot.name: self.snapshots.status(b), None)
            bots.append(entry)
        out: dict[str, Any] = {
            "flared": {
                "version": __version__,
                "pid": os.getpid(),
                "uptime_s": round(time.time() - self.started_at, 1),
                "last_tick": self.last_tick.isoformat() if self.last_tick else None,
            },
            "config": {
                "path": str(self.loaded.path),
                "digest": self.loaded.digest,
                "loaded_at": self.loaded.loaded_at.isoformat(),
                "error": [str(i) for i in self.config_error] if self.config_error else None,
            },
            "state_dir": str(self.loaded.state_dir),
            "bots": bots,
        }
        if self.leases is not None:
            out["leases"] = _safe(self.leases.list, [])
        if self.cfg.operator is not None:
            from flared.operator.audit import audit_path, tail

            op = procs.get("operator")
            out["operator"] = {
                "state": op["statename"] if op else "starting",
                "pid": (op.get("pid") or None) if op else None,
                "last_actions": _safe(lambda: tail(audit_path(self.loaded.state_dir), 5), []),
            }
        if self.last_reload is not None:
            out["config"]["last_reload"] = self.last_reload
        cron = optional_import("flared.cron")
        if cron is not None:
            out["cron"] = _safe(lambda: cron.status(self), None)
        return out


def _file_key(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _safe(fn: Any, default: Any) -> Any:
    try:
        return fn()
    except Exception as exc:
        log.debug("status probe failed: %s", exc)
        return default


def gateway_liveness(home: Path) -> dict[str, Any]:
    """Hermes' own view: heartbeat age and gateway_state.json, since `hermes status` always exits 0."""
    out: dict[str, Any] = {"heartbeat_age_s": None, "gateway_state": None, "platforms": {}}
    try:
        hb = json.loads((home / "state" / "gateway.heartbeat").read_text())
        updated = datetime.fromisoformat(hb["updated_at"])
        out["heartbeat_age_s"] = round((datetime.now(UTC) - updated).total_seconds(), 1)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        st = json.loads((home / "gateway_state.json").read_text())
        out["gateway_state"] = st.get("gateway_state")
        out["platforms"] = {k: v.get("state") for k, v in (st.get("platforms") or {}).items()}
    except (OSError, ValueError, AttributeError):
        pass
    with contextlib.suppress(OSError, ValueError):
        out["plugin"] = json.loads((home / "state" / "flare-plugin.json").read_text())
    return out
