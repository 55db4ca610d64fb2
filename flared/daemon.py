"""`flared run`: the daemon supervisord starts, and the composition root.

It builds every service with what it needs (gateways, snapshots, leases,
cron, reload, the control API), then restores each bot, keeps one gateway
program per ready bot in supervisord, and reconciles every two seconds.
Decisions live in the services and in :mod:`flared.reconcile`; this module
only wires them together and runs the loop.

Size: besides the wiring, the status view (one answer over every service)
and the boot and shutdown order live here, since only the composition root
holds every service.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import http.client
import json
import logging
import os
import signal
import socket
import threading
import time
import xmlrpc.client
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flared import orphans
from flared.admin.page import AdminPage
from flared.admin.sessions import AdminSessions
from flared.api import build_router
from flared.build import release
from flared.config.live import LiveConfig
from flared.config.loader import LoadedConfig
from flared.config.redact import redact_text
from flared.control.auth import ProcessTree, parent_if_supervisord
from flared.control.locate import publish_socket, socket_path
from flared.control.server import ControlServer, HTTPError, Request, Response, bind_tcp
from flared.gateways import Gateways, failure_hint, gateway_error, readiness
from flared.hangs import not_answering
from flared.hermes.liveness import gateway_liveness
from flared.hermes.paths import BotPaths, program_name
from flared.liveness_probe import LivenessProbe
from flared.operator.audit import AuditLog, audit_path, tail
from flared.policy.cron import CronService
from flared.policy.reload import Reloader
from flared.policy.watch import Watcher, watch_config
from flared.sandboxes.manager import LeaseManager
from flared.sandboxes.types import SandboxError
from flared.snapshots.final import Deadline, final_snapshot_deadline, not_saved_line
from flared.snapshots.service import SnapshotService
from flared.snapshots.stream.program import NAME as STREAM_PROGRAM
from flared.snapshots.stream.render import StreamLayout
from flared.snapshots.stream.status import report as stream_report
from flared.supervisor import Layout, SupervisorClient, SupervisorError

log = logging.getLogger("flared")

RECONCILE_EVERY = 2.0
GATEWAYS_WAIT_S = 10.0  # at most, for orphaned gateways to end before the final snapshots
TRIM_EVERY = 60.0  # seconds between handing freed heap back to the OS


class Daemon:
    def __init__(self, loaded: LoadedConfig, *, supervisor_socket: Path | None = None) -> None:
        limit_malloc_arenas()
        self.started_at = time.time()
        self.last_tick: datetime | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.live = LiveConfig(loaded)
        layout = Layout(loaded.state_dir)
        self.supervisor = SupervisorClient(supervisor_socket or layout.socket)
        self.gateways = Gateways(
            self.live, self.supervisor, layout, wake=self._wake.set, may_stream=self._may_stream
        )
        self.liveness = LivenessProbe(self.gateways)
        self.snapshots = SnapshotService(loaded, self.gateways)
        self.leases = LeaseManager(loaded)
        self.cron = CronService(loaded, snapshots=self.snapshots, leases=self.leases, gateways=self.gateways)
        self.reloader = Reloader(
            self.live, gateways=self.gateways, snapshots=self.snapshots, leases=self.leases, cron=self.cron
        )
        self.control: ControlServer | None = None
        self.admin_page: AdminPage | None = None
        self.admin_error: str | None = None
        self.watcher: Watcher | None = None
        self.stopwaitsecs: int | None = None  # supervisord's, for flared: bounds the final snapshots
        self.supervisord_pid: int | None = None  # the parent that started flared, if supervisord

    def _may_stream(self, bot: str) -> bool:
        return self.snapshots.may_stream(bot)

    def _stream_status(self, procs: dict[str, dict[str, Any]], now: float) -> dict[str, dict[str, Any]]:
        """Each bot's stream (replication lag and last error per database), or why it is off."""
        cfg, gw = self.live.config, self.gateways
        homes = {b.name: BotPaths.of(cfg.state_dir, b.name).home for b in gw.enabled_bots()}
        if not cfg.snapshots.stream.enabled:
            off = (
                "snapshots.encryption.key is set: Litestream 0.5 cannot encrypt, so the databases "
                "go in the encrypted snapshots"
                if cfg.snapshots.encryption.key is not None
                else "snapshots.stream.enabled is false"
            )
            return {bot: {"enabled": False, "reason": off} for bot in homes}
        why: dict[str, str] = {}
        for bot in homes:
            if bot not in gw.ready:
                why[bot] = "waiting for its restore"
            elif bot in gw.held:
                why[bot] = "a restore is replacing its databases"
            elif not self.snapshots.may_stream(bot):
                st = self.snapshots.status(bot)
                why[bot] = (
                    st.get("stream_stopped")
                    or st.get("fenced")
                    or st.get("gate")
                    or (
                        "its restore has not finished"
                        if st.get("gated")
                        else "taking the bot over: it streams one fence check after its claim"
                    )
                )
        return stream_report(
            cfg.snapshots.stream,
            homes,
            gw.streamed_bots(),
            why,
            procs.get(STREAM_PROGRAM),
            StreamLayout(self.live.loaded.state_dir).socket,
            now,
        )

    # ------------------------------------------------------------------ lifecycle

    def run(self) -> int:
        loaded = self.live.loaded
        loaded.state_dir.mkdir(parents=True, exist_ok=True)
        signal.signal(signal.SIGTERM, self._signal_stop)
        signal.signal(signal.SIGINT, self._signal_stop)
        signal.signal(signal.SIGHUP, lambda *_: threading.Thread(target=self.reloader.from_disk).start())
        log.info("flared %s starting with %s (digest %s)", release(), loaded.path, loaded.digest[:12])
        try:
            self.supervisor.wait_ready()
        except SupervisorError as exc:
            log.error("%s", exc)
            return 1
        self.stopwaitsecs = self._own_stopwaitsecs()
        self.supervisord_pid = parent_if_supervisord()
        self.serve_control()
        try:
            self.start_services()
        except SandboxError as exc:  # another flared on this state dir (flared up ends orphans first)
            log.error(
                "cannot start: %s; unless a `flared exec` runs, it is a flared an earlier run left: stop "
                "this run (`flared stop` or Ctrl-C) and start it again (`flared up` ends such leftovers)",
                exc,
            )
            if self.control is not None:
                self.control.stop()
            return 1
        with contextlib.suppress(OSError):
            publish_socket(loaded.path, socket_path(loaded))
        self.watcher = watch_config(loaded.path, self.reloader.from_disk, self._stop)
        self.cron.start()
        threading.Thread(target=self._probe_liveness, name="liveness", daemon=True).start()
        release_memory()
        trimmed = time.monotonic()
        while not self._stop.is_set():
            self._tick()
            if time.monotonic() - trimmed >= TRIM_EVERY:
                release_memory(collect=False)
                trimmed = time.monotonic()
            self._wake.wait(RECONCILE_EVERY)
            self._wake.clear()
        return self.shutdown()

    def _own_stopwaitsecs(self) -> int | None:
        """supervisord's stopwaitsecs for flared, which the final snapshots must fit (None: unknown)."""
        try:
            wait = self.supervisor.stopwaitsecs("flared")
        except Exception as exc:  # an older supervisord, or not run by one: the budget alone applies
            log.debug("cannot read flared's stopwaitsecs from supervisord: %s", exc)
            return None
        deadline = self.final_snapshot_deadline(wait)
        if deadline.source != "snapshots.shutdown_budget":
            log.warning(
                "snapshots.shutdown_budget (%g s) does not fit: final snapshots get %s",
                self.live.config.snapshots.shutdown_budget,
                deadline,
            )
        return wait

    def final_snapshot_deadline(self, stopwaitsecs: int | None) -> Deadline:
        return final_snapshot_deadline(float(self.live.config.snapshots.shutdown_budget), stopwaitsecs)

    def serve_control(self) -> None:
        loaded = self.live.loaded
        c = loaded.config.control
        token = c.token.get_secret_value() if c.token else os.environ.get("FLARE_CONTROL_TOKEN")
        router = build_router(
            daemon=self,
            gateways=self.gateways,
            reloader=self.reloader,
            snapshots=self.snapshots,
            leases=self.leases,
        )
        router.add("POST", "/admin/link", self._admin_link)
        audit = AuditLog(audit_path(loaded.state_dir), loaded.config)
        self.control = ControlServer(
            router,
            state_dir=loaded.state_dir,
            socket_path=socket_path(loaded),
            tcp=(c.host, c.port) if c.port else None,
            admin_token=token,
            tree=ProcessTree(self._supervised_programs, supervisord=parent_if_supervisord()),
            audit=functools.partial(_audit, audit),
        )
        admin_sock = self._bind_admin_page()  # first, so status never shows it half-started
        try:
            self.control.start()
        except BaseException:
            if admin_sock is not None:
                admin_sock.close()
            raise
        if admin_sock is not None:
            page = AdminPage(
                router, AdminSessions(), loaded.config.admin.host, int(admin_sock.getsockname()[1])
            )
            self.control.listen(
                admin_sock,
                name="admin",
                trusted=False,
                router=page.router(),
                auth=page.authenticate,
                actor=page.actor,
            )
            self.admin_page = page
            log.info("admin page on %s (sign in with `flared admin`)", page.url)

    def _bind_admin_page(self) -> socket.socket | None:
        """The admin page's socket; a port in use is reported, never fatal (the bots matter more)."""
        a = self.live.loaded.config.admin
        if not a.enabled:
            return None
        try:
            return bind_tcp((a.host, a.port))
        except OSError as exc:
            self.admin_error = (
                f"admin page not served: cannot listen on {a.host}:{a.port} ({exc.strerror or exc}); "
                "set admin.port in the config (0: any free port), then restart flared"
            )
            log.warning("%s", self.admin_error)
            return None

    def _admin_link(self, req: Request) -> dict[str, Any]:
        if self.admin_page is None:
            raise HTTPError(
                409, self.admin_error or "the admin page is off: set admin.enabled: true, then restart flared"
            )
        return {"url": self.admin_page.url, "link": self.admin_page.link()}

    def _supervised_programs(self) -> tuple[int | None, dict[int, str]]:
        """supervisord's pid and its programs by pid: who a unix-socket client is (control/auth.py)."""
        pid = int(self.supervisor.supervisor.getPID())
        return pid, {int(p["pid"]): str(p["name"]) for p in self.supervisor.processes() if p.get("pid")}

    def start_services(self) -> None:
        self.leases.start()
        live = self.gateways.live_gateways()
        for bot in self.gateways.enabled_bots():
            if bot.name in live:
                # flared restarted under a running gateway: keep its live state, no restore.
                log.info("bot %s: gateway already running, adopting it (no restore)", bot.name)
                self.snapshots.adopt(bot.name)
                self.gateways.mark_ready(bot.name)
            else:
                self.snapshots.boot(bot.name, self.gateways.mark_ready)
        self.snapshots.start()

    def _tick(self) -> None:
        try:
            self.gateways.reconcile()
            self.gateways.track_restarts()
            self.last_tick = datetime.now(UTC)
        except xmlrpc.client.Fault as exc:
            if "SHUTDOWN_STATE" in exc.faultString:
                log.info("supervisord is shutting down")
                self._stop.wait(RECONCILE_EVERY)
                return
            log.warning("reconcile failed, will retry: %s", exc.faultString)
        except (OSError, SupervisorError, http.client.HTTPException) as exc:
            self.supervisor.reset()
            log.warning("reconcile failed, will retry: %s", exc)
        except Exception:
            self.supervisor.reset()
            log.exception("reconcile failed, will retry")

    def _probe_liveness(self) -> None:
        """Every ``liveness.every``: probe the ready gateways, restart the hung (read live: reloadable)."""
        while not self._stop.wait(self.live.config.liveness.every):
            try:
                self.liveness.probe()
            except Exception:
                self.supervisor.reset()
                log.exception("liveness probe failed, will retry")

    def _signal_stop(self, signum: int, _frame: Any) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        self.request_stop()

    def request_stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def shutdown_all(self) -> int:
        """`flared stop`: supervisord stops the gateways (SIGINT), then flared (final snapshots)."""
        pid = os.getppid()
        threading.Timer(0.2, self._supervisord_shutdown).start()  # answer the caller first
        return pid

    def _supervisord_shutdown(self) -> None:
        try:
            self.supervisor.supervisor.shutdown()
        except Exception as exc:  # supervisord already going away
            log.warning("asking supervisord to shut down: %s", exc)

    def shutdown(self) -> int:
        """Final snapshots within their deadline, then the rest; 1 when one that was due did not happen."""
        deadline = self.final_snapshot_deadline(self.stopwaitsecs)
        on = self.live.config.snapshots.on_shutdown
        if self.supervisord_pid is not None and os.getppid() != self.supervisord_pid:
            self._wait_for_orphaned_gateways(min(GATEWAYS_WAIT_S, deadline.seconds / 2))
        if on:
            log.info("final snapshots: deadline %s", deadline)
        taken: dict[str, dict[str, Any]] = {}
        try:
            taken = self.snapshots.shutdown(final_snapshots=on, deadline=deadline)
        except Exception:
            log.exception("final snapshots failed")
        finals = self._final_snapshots(taken)
        with contextlib.suppress(Exception):
            write_stop_record(self.live.loaded.state_dir, finals)
        with contextlib.suppress(Exception):
            self.leases.stop()
        if self.control is not None:
            self.control.stop()
        line = not_saved_line(finals)
        if line is not None:
            log.error("%s", line)
        log.info("flared stopped")
        return 1 if line is not None else 0

    def _wait_for_orphaned_gateways(self, timeout: float) -> None:
        """supervisord died (its gateways got SIGINT, flared SIGTERM, at once): let the gateways
        end first, as supervisord's own stop would, so the final snapshot holds their last words.

        flared's stderr was supervisord's pipe, gone with it: the log goes to flared.log itself."""
        log_to_file(Layout(self.live.loaded.state_dir).logs / "flared.log")
        gateways = [o for o in orphans.find(self.live.loaded.state_dir) if o.what.startswith("the gateway")]
        log.warning(
            "supervisord is gone; waiting up to %g s for %s to end before the final snapshots",
            timeout,
            ", ".join(map(str, gateways)) or "no gateway",
        )
        orphans.wait_gone([o.pid for o in gateways], timeout)

    def _final_snapshots(self, taken: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        """What each bot's final snapshot did (or why none was due), for `flared up` and `flared stop`."""
        out = []
        for bot in self.gateways.enabled_bots():
            if bot.name in taken:
                out.append({"bot": bot.name, **taken[bot.name]})
            elif not self.live.config.snapshots.on_shutdown:
                out.append({"bot": bot.name, "result": "off", "reason": "snapshots.on_shutdown is false"})
            else:
                st = _safe(functools.partial(self.snapshots.status, bot.name), None) or {}
                why = st.get("fenced") or st.get("gate") or f"not taken ({st.get('phase') or 'unknown'})"
                out.append({"bot": bot.name, "result": "skipped", "reason": why})
        return out

    # ------------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        cfg, gw = self.live.config, self.gateways
        procs = {p["name"]: p for p in _safe(self.supervisor.processes, [])}
        here = {b.name for b in gw.enabled_bots()}  # this container's group
        now = time.time()
        streams = _safe(functools.partial(self._stream_status, procs, now), {})
        bots = []
        for index, bot in enumerate(cfg.bots):
            name = program_name(bot.name)
            p = procs.get(name)
            paths = BotPaths.of(cfg.state_dir, bot.name)
            hermes = gateway_liveness(paths.home)
            if p is None or hermes.get("heartbeat_pid") != p.get("pid"):
                hermes["heartbeat_age_s"] = None  # a previous run's heartbeat says nothing now
            snap = _safe(functools.partial(self.snapshots.status, bot.name), None)
            failure = gw.failure_of(bot.name)
            enabled = bot.name in here
            held = bot.name in gw.held
            needed = cfg.liveness.failures
            hang, reviving, probes = self.liveness.seen(bot.name, now, needed)
            ready, detail = readiness(
                enabled=enabled,
                phase=(snap or {}).get("phase"),
                held=held,
                failure=failure,
                proc=p,
                liveness=hermes,
                has_api=bot.api is not None,
                not_answering=not_answering(hang, needed),
                reviving=reviving,
            )
            if failure is not None:
                state = "FAILED"
            elif p is not None:
                state = str(p["statename"])
            elif not enabled:
                state = "DISABLED" if not bot.enabled else "ELSEWHERE"
            elif held:
                state = "HELD"
            else:
                state = "STARTING" if bot.name in gw.ready else "WAITING"
            error = gw.boot_errors.get(bot.name)
            if failure is not None:
                error = failure.error or (
                    f"the gateway exited {failure.exit_code}"
                    if failure.exit_code
                    else "the gateway failed at start-up"
                )
            elif p and p["statename"] in {"FATAL", "BACKOFF"} and p.get("spawnerr"):
                error = p["spawnerr"]
            elif ready == "failed":
                error = gateway_error(paths.home, paths.gateway_log) or detail
            entry: dict[str, Any] = {
                "name": bot.name,
                "enabled": bot.enabled,
                "group": bot.group,
                "sandbox": bot.sandbox,
                "program": name,
                "state": state,
                "readiness": ready,
                "detail": detail,
                "pid": (p.get("pid") or None) if p else None,
                "uptime_s": (p["now"] - p["start"]) if p and p.get("pid") else None,
                "restarts": gw.restarts.get(name, 0),
                "ready": bot.name in gw.ready,
                "held": held,
                "error": redact_text(error, cfg) if error else None,
                "hint": None,
                "log": str(paths.gateway_log),
                "failure": failure.as_dict(now) if failure is not None else None,
                "hermes": hermes,
                "liveness": probes,
            }
            if ready == "failed":
                entry["hint"] = failure_hint(
                    bot.name, error, self.live.loaded.path, index, failure.kind if failure else "fatal"
                )
            if bot.api is not None:
                entry["api"] = f"http://{bot.api.host}:{bot.api.port}/v1"
            entry["snapshots"] = snap
            entry["stream"] = streams.get(bot.name)
            bots.append(entry)
        loaded, errors = self.live.loaded, self.live.errors
        out: dict[str, Any] = {
            "flared": {
                "version": release(),
                "pid": os.getpid(),
                "uptime_s": round(time.time() - self.started_at, 1),
                "last_tick": self.last_tick.isoformat() if self.last_tick else None,
            },
            "config": {
                "path": str(loaded.path),
                "digest": loaded.digest,
                "loaded_at": loaded.loaded_at.isoformat(),
                "error": [str(i) for i in errors] if errors else None,
            },
            "state_dir": str(loaded.state_dir),
            "admin": {"url": self.admin_page.url if self.admin_page else None, "error": self.admin_error},
            "bots": bots,
            "leases": _safe(self.leases.list, []),
        }
        if cfg.operator is not None:
            op = procs.get("operator")
            out["operator"] = {
                "state": op["statename"] if op else "starting",
                "pid": (op.get("pid") or None) if op else None,
                "last_actions": _safe(lambda: tail(audit_path(loaded.state_dir), 5), []),
            }
        if self.live.last_reload is not None:
            out["config"]["last_reload"] = self.live.last_reload
        out["cron"] = _safe(self.cron.status, None)
        return out


def _audit(log_: AuditLog, actor: str, req: Request, resp: Response) -> None:
    """A state-changing request from the admin page or through the Worker, with who asked."""
    body = resp.body if isinstance(resp.body, dict) else {}
    result = "ok" if resp.status < 400 else "refused" if resp.status < 500 else "failed"
    detail = str(body.get("error") or "") if resp.status >= 400 else ""
    args = [f"{k}={v}" for k, v in sorted(req.query.items())]
    log_.append(actor, f"{req.method} {req.path}", args, result, detail)


def log_to_file(path: Path) -> None:
    """Point the root logger's handlers at ``path`` (appended), keeping their formatters."""
    with contextlib.suppress(OSError):
        stream = path.open("a", buffering=1)
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler):
                handler.setStream(stream)


STOP_RECORD = "last-stop.json"


def write_stop_record(state_dir: Path, finals: list[dict[str, Any]]) -> None:
    """``<state_dir>/last-stop.json``: when flared stopped and what its final snapshots did."""
    path = state_dir / STOP_RECORD
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(
        json.dumps(
            {"stopped_at": datetime.now(UTC).isoformat(), "pid": os.getpid(), "final_snapshots": finals}
        )
    )
    os.replace(tmp, path)


M_ARENA_MAX = -8  # glibc's mallopt parameter


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Fewer glibc malloc arenas than the default eight per core.

    Every thread that allocates gets an arena, and what an arena frees it
    mostly keeps: the control API's workers, snapshots and leases would
    otherwise each grow flared's RSS a little for good. Python objects come
    from their own allocator, so the arenas see little contention. Must run
    before the first thread starts.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, arenas)


def release_memory(*, collect: bool = True) -> None:
    """Hand freed heap back to the OS: after start-up (about 2 MiB) and then now and then."""
    if collect:
        gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _safe(fn: Callable[[], Any], default: Any) -> Any:
    try:
        return fn()
    except Exception as exc:
        log.debug("status probe failed: %s", exc)
        return default
