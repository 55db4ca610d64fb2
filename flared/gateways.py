"""The bots' gateways under supervisord: which should run now, and making it so.

A bot's gateway may run once its state is restored (``ready``) and while no
restore holds it (``held``). Each tick compares the programs the config
implies with what supervisord runs (:func:`flared.reconcile.plan`, pure) and
applies the difference through XML-RPC. This class owns that bookkeeping;
it never touches snapshots or the store.
"""

from __future__ import annotations

import http.client
import logging
import os
import threading
import xmlrpc.client
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flared.config.live import LiveConfig
from flared.config.models import BotConfig
from flared.hermes.home import gateway_program, render_home
from flared.hermes.paths import GATEWAY_PREFIX, BotPaths, program_name
from flared.operator.program import NAME as OPERATOR_PROGRAM
from flared.operator.program import operator_program
from flared.reconcile import Action, plan
from flared.supervisor import Layout, SupervisorClient, apply, observe

log = logging.getLogger("flared")

#: States in which a found gateway counts as live (flared restarted under it).
LIVE_STATES = frozenset({"RUNNING", "STARTING", "BACKOFF"})


class Gateways:
    """One gateway program per ready bot of this container's group, plus the operator's."""

    def __init__(
        self,
        live: LiveConfig,
        supervisor: SupervisorClient,
        layout: Layout,
        *,
        wake: Callable[[], None] = lambda: None,
    ) -> None:
        self.live = live
        self.supervisor = supervisor
        self.layout = layout
        self.wake = wake  # asks the daemon for a reconcile now rather than at the next tick
        self.lock = threading.RLock()
        self.ready: set[str] = set()  # bots whose restore finished: their gateways may run
        self.held: set[str] = set()  # bots whose gateway is stopped on purpose (restore)
        self.boot_errors: dict[str, str] = {}
        self.restarts: dict[str, int] = {}
        self._pids: dict[str, int] = {}
        self._render_cache: dict[str, tuple[Any, str]] = {}
        self._observed: list[dict[str, Any]] = []

    def enabled_bots(self) -> list[BotConfig]:
        """Enabled bots of this container's group (``$FLARE_GROUP`` on Cloudflare)."""
        group = os.environ.get("FLARE_GROUP")
        return [b for b in self.live.config.bots if b.enabled and (not group or b.group == group)]

    # ------------------------------------------------------------------ what the other services ask

    def stop(self, bot: str) -> None:
        """Stop a bot's gateway and keep it stopped (a restore is in progress)."""
        with self.lock:
            self.held.add(bot)
            self.reconcile()

    def start(self, bot: str) -> None:
        with self.lock:
            self.held.discard(bot)
            self.reconcile()

    def restart(self, bot: str) -> None:
        name = program_name(bot)
        self.supervisor.stop(name)
        self.supervisor.start(name)

    def mark_ready(self, bot: str) -> None:
        """The bot's state is in place: its gateway may start."""
        with self.lock:
            self.ready.add(bot)
            self.boot_errors.pop(bot, None)
        log.info("bot %s: state ready, starting its gateway", bot)
        self.wake()

    def forget(self, bot: str) -> None:
        """The bot left the config (or was disabled): the next reconcile removes its program."""
        with self.lock:
            self.ready.discard(bot)
            self.held.discard(bot)
            self.boot_errors.pop(bot, None)

    def log_file(self, bot: str) -> Path:
        """Where the bot's gateway writes its log."""
        return BotPaths.of(self.live.config.state_dir, bot).gateway_log

    def editable_homes(self) -> list[str]:
        """Bots whose Hermes home may be edited now: enabled, restored, not held by a restore."""
        names = [b.name for b in self.live.config.bots if b.enabled]
        return [n for n in names if n in self.ready and n not in self.held]

    def live_gateways(self) -> set[str]:
        """Bots whose gateway already runs: flared itself restarted, the state is live."""
        try:
            procs = self.supervisor.processes()
        except (OSError, xmlrpc.client.Fault, http.client.HTTPException):
            self.supervisor.reset()
            return set()
        return {
            p["name"].removeprefix(GATEWAY_PREFIX)
            for p in procs
            if p["name"].startswith(GATEWAY_PREFIX) and p["statename"] in LIVE_STATES
        }

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
        if self.live.config.operator is not None:
            # The operator bot's program: its failures never touch the bots.
            desired[OPERATOR_PROGRAM] = operator_program(self.live.loaded).render()
        return desired

    def _rendered_program(self, bot: BotConfig) -> str:
        """Render the bot's Hermes home and program, unless nothing it depends on changed.

        Reconcile runs every two seconds; re-parsing and re-writing every home that
        often was most of an idle flared's CPU. The key is the config digest and the
        identity of the two files flared writes, so an edit, a restore (new inode) or
        a deleted file is still repaired at the next tick.
        """
        cfg = self.live.config
        home = BotPaths.of(cfg.state_dir, bot.name).home
        digest = self.live.loaded.digest
        key = (digest, _file_key(home / "config.yaml"), _file_key(home / ".env"))
        cached = self._render_cache.get(bot.name)
        if cached is not None and cached[0] == key:
            return cached[1]
        text = gateway_program(cfg, bot, render_home(cfg, bot)).render()
        after = (digest, _file_key(home / "config.yaml"), _file_key(home / ".env"))
        self._render_cache[bot.name] = (after, text)
        return text

    def plan(self) -> list[Action]:
        """What a reconcile would do now (nothing, once in step)."""
        with self.lock:
            desired = self.desired_programs()
            observed = observe(self.supervisor, self.layout)
            self._observed = list(observed.processes)
            return plan(desired, observed, restart_stopped=True)

    def reconcile(self) -> list[Action]:
        with self.lock:
            actions = self.plan()
            apply(self.supervisor, self.layout, actions)
            return actions

    def track_restarts(self) -> None:
        """Count PID changes; reuses the process list the reconcile just read (one XML-RPC call per tick)."""
        for p in self._observed or self.supervisor.processes():
            name, pid = p["name"], int(p.get("pid") or 0)
            if not pid:
                continue
            prev = self._pids.get(name)
            if prev and prev != pid:
                self.restarts[name] = self.restarts.get(name, 0) + 1
            self._pids[name] = pid


def _file_key(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)
