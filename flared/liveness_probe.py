"""Probing the ready gateways, and restarting one that stopped answering.

The edge of :mod:`flared.hangs` (which decides): every ``liveness.every``
the daemon asks :meth:`LivenessProbe.probe` to look at each gateway Hermes
reported up, through its api_server's ``GET /health`` (with a deadline) and
its loop heartbeat, and to restart through supervisord
(:meth:`flared.gateways.Gateways.bounce`) those that failed
``liveness.failures`` probes in a row. What it saw is shown by `flared status`.
"""

from __future__ import annotations

import http.client
import logging
import threading
import time
import xmlrpc.client
from typing import Any

from flared.config.models import BotConfig
from flared.gateways import Gateways
from flared.hangs import HangWatch, assess, probe_error
from flared.hermes.liveness import gateway_liveness, health_error
from flared.hermes.paths import BotPaths, program_name

log = logging.getLogger("flared")


class LivenessProbe:
    """What the probes saw per bot, and the restarts they caused."""

    def __init__(self, gateways: Gateways) -> None:
        self.gateways = gateways
        self.lock = threading.Lock()
        self.hangs: dict[str, HangWatch] = {}  # per bot: its gateway's recent failed probes
        self.revived: dict[str, dict[str, Any]] = {}  # per bot: restarts because it stopped answering
        self.reviving: set[str] = set()  # bots whose hung gateway is being restarted now

    def probe(self) -> None:
        """Probe every ready gateway once (in parallel) and restart those that stopped answering.

        Only a run that Hermes itself reported up is probed: a gateway still
        starting, failed or held is judged by the reconcile. The probes run
        outside every lock, so a hung gateway never stalls the reconcile.
        """
        gw = self.gateways
        policy = gw.live.config.liveness
        if not policy.enabled:
            with self.lock:
                self.hangs.clear()
            return
        targets = self._targets()
        results: dict[str, str | None] = {}

        def probe_one(bot: BotConfig, seen: dict[str, Any]) -> None:
            health = health_error(bot.api.dial_host, bot.api.port, policy.timeout) if bot.api else None
            age = seen.get("heartbeat_age_s") if seen.get("heartbeat_pid") == seen.get("pid") else None
            results[bot.name] = probe_error(
                health=health, heartbeat_age=age, heartbeat_stale=policy.heartbeat_stale
            )

        threads = [threading.Thread(target=probe_one, args=(b, seen), daemon=True) for b, _, seen in targets]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        now = time.time()
        with self.lock:
            for bot, pid, _ in targets:
                before = self.hangs.get(bot.name, HangWatch())
                watch, restart = assess(before, pid, results.get(bot.name), now=now, needed=policy.failures)
                self.hangs[bot.name] = watch
                if restart:
                    self.reviving.add(bot.name)
                    threading.Thread(target=self._revive, args=(bot.name, pid, watch), daemon=True).start()
                elif watch.failures:
                    log.warning(
                        "bot %s: gateway (pid %d) did not answer: %s (%d of %d failed probes before a restart)",
                        bot.name,
                        pid,
                        watch.error,
                        watch.failures,
                        policy.failures,
                    )

    def _targets(self) -> list[tuple[BotConfig, int, dict[str, Any]]]:
        """(bot, pid, Hermes' own signals) of each gateway to probe now; forgets the others."""
        gw = self.gateways
        procs = gw.running_programs()
        targets = []
        with gw.lock, self.lock:
            for bot in gw.enabled_bots():
                p = procs.get(program_name(bot.name))
                waiting = bot.name not in gw.ready or bot.name in gw.held or bot.name in gw.failures
                if waiting or bot.name in self.reviving or not p or p.get("statename") != "RUNNING":
                    self.hangs.pop(bot.name, None)
                    continue
                seen = gateway_liveness(BotPaths.of(gw.live.config.state_dir, bot.name).home)
                pid = int(p.get("pid") or 0)
                if seen.get("pid") != pid or seen.get("gateway_state") not in {"running", "degraded"}:
                    continue  # not up yet: start-up has its own checks
                targets.append((bot, pid, seen))
        return targets

    def _revive(self, bot: str, pid: int, watch: HangWatch) -> None:
        """Restart a gateway that stopped answering, and remember why."""
        log.error(
            "bot %s: gateway (pid %d) stopped answering: %s (%d failed probes in a row over %.0f s); "
            "restarting it",
            bot,
            pid,
            watch.error,
            watch.failures,
            time.time() - (watch.since or time.time()),
        )
        try:
            self.gateways.bounce(program_name(bot), wait=False)
        except (OSError, xmlrpc.client.Fault, http.client.HTTPException) as exc:
            self.gateways.supervisor.reset()
            log.error("bot %s: restarting its hung gateway failed: %s (the next probe tries again)", bot, exc)
        else:
            with self.lock:
                count = int(self.revived.get(bot, {}).get("count", 0)) + 1
                self.revived[bot] = {"count": count, "at": time.time(), "reason": watch.error, "pid": pid}
        finally:
            with self.lock:
                self.reviving.discard(bot)
                self.hangs.pop(bot, None)
            self.gateways.wake()

    def seen(self, bot: str, now: float, needed: int) -> tuple[HangWatch | None, bool, dict[str, Any]]:
        """For status: (recent failed probes, being restarted now, ``{"probe", "restarts"}``)."""
        with self.lock:
            hang, reviving, rec = self.hangs.get(bot), bot in self.reviving, self.revived.get(bot)
        restarts = None
        if rec:
            restarts = {
                "count": rec["count"],
                "last_s_ago": round(now - rec["at"], 1),
                "reason": rec["reason"],
            }
        probe = hang.as_dict(now, needed) if hang is not None and hang.failures else None
        return hang, reviving, {"probe": probe, "restarts": restarts}
