"""Hot reload: switch a running flared to a new config, touching only what changed.

Every way a config arrives (the file watcher, SIGHUP, `flared reload`,
``PUT /config`` from the Worker) goes through one :class:`Reloader`, one at a
time under its lock, so an older read never lands after a newer one. What
changed and what that takes is decided purely in :mod:`flared.policy.diff`;
this module carries it out.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from flared.config.live import LiveConfig
from flared.config.loader import ConfigError, LoadedConfig, load_config
from flared.gateways import Gateways
from flared.hermes.paths import GATEWAY_PREFIX
from flared.policy.cron import CronService
from flared.policy.diff import diff, plan, refusal_issues
from flared.reconcile import Action, RemoveGroup, WriteProgram
from flared.sandboxes.manager import LeaseManager
from flared.snapshots.service import SnapshotService

log = logging.getLogger("flared.reload")

SNAPSHOT_BEFORE_RESTART_BUDGET = 30.0


class Reloader:
    """Applies new configs to the running services, one at a time."""

    def __init__(
        self,
        live: LiveConfig,
        *,
        gateways: Gateways,
        snapshots: SnapshotService,
        leases: LeaseManager,
        cron: CronService,
    ) -> None:
        self.live = live
        self.gateways = gateways
        self.snapshots = snapshots
        self.leases = leases
        self.cron = cron
        self.lock = threading.RLock()

    # ------------------------------------------------------------------ ways in

    def from_disk(self) -> dict[str, Any]:
        """Read the file and apply it; the watcher, SIGHUP and `flared reload` come here.

        Reading inside the lock means a reload that started earlier can never
        apply an older file after a later one.
        """
        with self.lock:
            try:
                new = load_config(self.live.loaded.path)
            except ConfigError as exc:
                self.live.errors = exc.issues
                for issue in exc.issues:
                    log.error("config not applied: %s", issue)
                return {"applied": False, "errors": [i.as_dict() for i in exc.issues]}
            if new.digest == self.live.loaded.digest:
                self.live.errors = None
                return {"applied": False, "unchanged": True, "config_digest": new.digest}
            return self.apply(new)

    def push(self, text: str) -> tuple[int, dict[str, Any]]:
        """A whole new file as text (``PUT /config``): validate, check it applies live,
        write it atomically over the config file, apply. A body that fails leaves the
        file and the running system untouched. Returns (HTTP status, result)."""
        path = self.live.loaded.path
        with self.lock:
            try:
                new = load_config(path, text=text)
            except ConfigError as exc:
                return 400, {"applied": False, "errors": [i.as_dict() for i in exc.issues]}
            if new.digest == self.live.loaded.digest:
                return 200, {"applied": False, "unchanged": True, "config_digest": new.digest}
            issues = refusal_issues(new, diff(self.live.config, new.config))
            if issues:
                return 409, {"applied": False, "errors": [i.as_dict() for i in issues]}
            try:
                write_atomically(path, text)
            except OSError as exc:
                return 500, {"error": f"cannot write {path}: {exc.strerror or exc}"}
            return 200, self.apply(new)

    def apply(self, new: LoadedConfig) -> dict[str, Any]:
        """Switch to ``new`` (already validated), touching only what changed.

        Refused changes (state_dir, control) leave everything as it was and are
        reported like validation errors. Otherwise the config is swapped, the
        snapshot and lease services take the new policy, gateways whose rendered
        Hermes config changed get a snapshot and a restart, new bots boot
        (restore, then start), removed bots stop and get a final snapshot, and
        cron is reconciled. A failure for one bot is reported and the rest applies.
        """
        with self.lock:
            result = self._apply_locked(new)
        self.live.last_reload = {**result, "at": time.time()}
        return result

    # ------------------------------------------------------------------ applying

    def _apply_locked(self, new: LoadedConfig) -> dict[str, Any]:
        started = time.monotonic()
        live, gateways = self.live, self.gateways
        old = live.loaded
        if new.digest == old.digest:
            live.errors = None
            return {"applied": False, "unchanged": True, "config_digest": new.digest}
        changes = diff(old.config, new.config)
        issues = refusal_issues(new, changes)
        if issues:
            live.errors = issues
            for issue in issues:
                log.error("config not applied: %s", issue)
            return {
                "applied": False,
                "errors": [i.as_dict() for i in issues],
                "config_digest": old.digest,
                "changes": [str(c) for c in changes],
            }
        p = plan(changes)
        failures: dict[str, str] = {}
        with gateways.lock:
            live.loaded = new
            live.errors = None
            _update_logging(new, level_changed=p.log_level)
            for name, update in (("snapshots", self.snapshots.update), ("leases", self.leases.update)):
                try:
                    update(new)
                except Exception as exc:
                    log.exception("%s: cannot apply the new config", name)
                    failures[name] = f"cannot apply the new policy: {exc}"
            for name in p.stop:
                gateways.forget(name)
            restarting: list[str] = []
            try:
                restarting = restarting_bots(gateways.plan())
                for bot, error in self._snapshot_first(restarting).items():
                    failures[bot] = error
                gateways.reconcile()
            except Exception as exc:  # supervisord trouble: the main loop retries
                log.warning("reconcile after reload failed, will retry: %s", exc)
                failures["reconcile"] = str(exc)
            for name in p.start:
                try:
                    self.snapshots.boot(name, gateways.mark_ready)
                except Exception as exc:
                    log.exception("bot %s: cannot start", name)
                    failures[name] = f"cannot start: {exc}"
        retired, retire_failures = self._retire(p.stop)
        failures.update(retire_failures)
        try:
            self.cron.update(new)
        except Exception as exc:
            log.exception("cron: cannot apply the new jobs")
            failures["cron"] = str(exc)
        for c in changes:
            log.info("config: %s", c)
        for where, error in failures.items():
            log.error("config applied, but %s: %s", where, error)
        log.info("config %s applied in %.2f s", new.digest[:12], time.monotonic() - started)
        return {
            "applied": True,
            "config_digest": new.digest,
            "previous_digest": old.digest,
            "changes": [str(c) for c in changes],
            "details": [c.as_dict() for c in changes],
            "restarted": restarting,
            "started": p.start,
            "stopped": p.stop,
            "retired": retired,
            "failures": failures,
            "seconds": round(time.monotonic() - started, 3),
        }

    def _snapshot_first(self, bots: list[str]) -> dict[str, str]:
        """Snapshot bots about to restart, in parallel; a failure is reported, the restart goes on."""
        if not bots:
            return {}
        failures: dict[str, str] = {}
        # No `with`: its exit would wait for a snapshot past the budget (say one queued behind a
        # restore that needs the gateways lock held here) instead of letting it finish on its own.
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="reload-snap")
        try:
            futures = {bot: pool.submit(self.snapshots.snapshot, bot, "reload") for bot in bots}
            done, _ = concurrent.futures.wait(futures.values(), timeout=SNAPSHOT_BEFORE_RESTART_BUDGET)
            for bot, fut in futures.items():
                if fut not in done:
                    failures[bot] = "snapshot before restart did not finish in time; restarted anyway"
                elif fut.exception() is not None:
                    failures[bot] = f"snapshot before restart failed: {fut.exception()}"
                else:
                    r = fut.result()
                    if r.get("result") in {"failed", "fenced"}:
                        failures[bot] = (
                            f"snapshot before restart {r['result']}: {r.get('error') or r.get('reason')}"
                        )
        finally:
            pool.shutdown(wait=False)
        return failures

    def _retire(self, bots: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
        """Final snapshot of bots that left (their gateways are already stopped)."""
        results: dict[str, Any] = {}
        failures: dict[str, str] = {}
        for bot in bots:
            try:
                r = self.snapshots.retire(bot)
            except Exception as exc:
                failures[bot] = f"final snapshot failed: {exc}"
                continue
            results[bot] = {k: r.get(k) for k in ("result", "id", "reason", "error") if r.get(k) is not None}
            if r.get("result") in {"failed", "fenced"}:
                failures[bot] = f"final snapshot {r['result']}: {r.get('error') or r.get('reason')}"
        return results, failures


def restarting_bots(actions: list[Action]) -> list[str]:
    """Bots whose loaded gateway program gets a new conf: the plan restarts them."""
    written = {a.name for a in actions if isinstance(a, WriteProgram)}
    removed = {a.name for a in actions if isinstance(a, RemoveGroup)}
    return sorted(n.removeprefix(GATEWAY_PREFIX) for n in written & removed if n.startswith(GATEWAY_PREFIX))


def _update_logging(new: LoadedConfig, *, level_changed: bool) -> None:
    """New log level, and new secrets for the redacting log formatter."""
    root = logging.getLogger()
    if level_changed:
        root.setLevel(new.config.log_level.upper())
    for handler in root.handlers:
        fmt = handler.formatter
        if fmt is not None and hasattr(fmt, "config"):
            fmt.config = new.config


def write_atomically(path: Path, text: str) -> None:
    """Temp file in the same directory, fsync, rename: readers see old or new, never half."""
    mode = 0o600
    with contextlib.suppress(FileNotFoundError):
        mode = path.stat().st_mode & 0o777
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
