"""The bots' gateways under supervisord: which should run now, and making it so.

A bot's gateway may run once its state is restored (``ready``), while no
restore holds it (``held``) and while it has not failed. Each tick compares
the programs the config implies with what supervisord runs
(:func:`flared.reconcile.plan`, pure) and applies the difference through
XML-RPC. This class owns that bookkeeping; it never touches snapshots or the
store.

A gateway that fails fast is taken out of supervisord's hands: Hermes exits
78 on a fatal config problem (e.g. the API port is taken) *after* more than
``startsecs``, so supervisord counts every start a success and restarts it
forever. :func:`judge` (pure) reads each run's start, stop and exit status;
exit 78 waits for a config change or an explicit restart, other fast exits
are retried after an exponential, capped delay. Either way `flared status`
shows the gateway's own last error line and what to edit.

A gateway must run with the ``flare`` plugin, which keeps the agent's
activity off the host: a gateway that reports running without the plugin's
record for its own run (:func:`plugin_problem`) is failed and stopped the
same way, fatal until a restart or a config change. (A plugin that loads but
cannot install a feature ends the gateway itself with exit 78.)

Size: the gateways' lifecycle (render, reconcile, judge runs, back off) is
one state machine over supervisord's programs; its pure parts
(:func:`judge`, :func:`readiness`, :func:`backoff_delay`) are functions here,
unit-tested without processes.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import re
import threading
import time
import xmlrpc.client
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from flared.config.live import LiveConfig
from flared.config.models import BotConfig
from flared.hermes import guard
from flared.hermes.home import gateway_program, render_home
from flared.hermes.liveness import gateway_liveness, plugin_failed, startup_failed_at
from flared.hermes.paths import GATEWAY_PREFIX, BotPaths, program_name
from flared.operator.program import NAME as OPERATOR_PROGRAM
from flared.operator.program import operator_program
from flared.reconcile import Action, plan
from flared.snapshots.stream.program import NAME as STREAM_PROGRAM
from flared.snapshots.stream.program import stream_program
from flared.supervisor import Layout, SupervisorClient, apply, observe

log = logging.getLogger("flared")

#: States in which a found gateway counts as live (flared restarted under it).
LIVE_STATES = frozenset({"RUNNING", "STARTING", "BACKOFF"})

#: Hermes' exit status for a fatal config problem (EX_CONFIG): restarting cannot help.
FATAL_CONFIG_EXIT = 78
#: A run shorter than this counts toward a crash loop (Hermes needs 3-6 s to come up).
FAST_EXIT_S = 30.0
#: Running this long forgets earlier fast exits.
STABLE_S = 60.0
#: Consecutive fast exits before flared stops restarting and backs off.
LOOP_AFTER = 3
#: The first back-off delay; it doubles with each loop, up to the cap.
BACKOFF_FIRST_S = 10.0
BACKOFF_CAP_S = 300.0


@dataclass(frozen=True)
class RunWatch:
    """What flared has seen of one program's runs (supervisord keeps no history)."""

    start: float = 0.0  # supervisord's start time of the run seen last
    stop: float = 0.0  # its last stop time seen
    fast_exits: int = 0
    seen: bool = False


@dataclass(frozen=True)
class Failure:
    """A gateway flared stopped restarting, and why."""

    kind: str  # "fatal" (exit 78: waits for a change or a restart) | "loop" (retried at retry_at)
    exit_code: int | None
    error: str | None  # the gateway's own last error line
    since: float
    retry_at: float | None = None
    program: str | None = None  # the program text that failed: a different one is a config change
    fast_exits: int = 0

    def as_dict(self, now: float) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "exit_code": self.exit_code,
            "error": self.error,
            "since_s": round(now - self.since, 1),
            "retry_in_s": round(max(0.0, self.retry_at - now), 1) if self.retry_at is not None else None,
            "fast_exits": self.fast_exits,
        }


def judge(
    watch: RunWatch, proc: dict[str, Any], startup_failed_at: float | None = None
) -> tuple[RunWatch, str | None]:
    """Pure: one look at a program's process info -> (what to remember, verdict).

    The verdict is ``"fatal"`` (it exited 78, or Hermes recorded
    ``startup_failed`` during the run that ended), ``"loop"`` (``LOOP_AFTER``
    runs in a row ended within ``FAST_EXIT_S``) or None. supervisord's
    ``stop`` moves whenever a run ends; the run's start is ``start`` when it
    has not been restarted yet, else the start seen at the previous look.

    Hermes' own record matters because supervisord forgets the exit status of
    a run that ended within ``startsecs`` (and of any run once it respawns):
    it then reports 0, and a fatal exit would look like a crash loop.
    ``startup_failed_at`` is when `gateway_state.json` last said so (epoch s).
    """
    start, stop = float(proc.get("start") or 0), float(proc.get("stop") or 0)
    now = float(proc.get("now") or time.time())
    state = str(proc.get("statename") or "")
    code = proc.get("exitstatus")

    def failed_at_start(run_start: float) -> bool:
        # supervisord's times are whole seconds; Hermes' are not
        return startup_failed_at is not None and startup_failed_at >= run_start - 1

    if not watch.seen:  # first look (or flared restarted): judge only what is visible now
        ended = state in {"EXITED", "BACKOFF", "FATAL"}
        fatal = ended and (code == FATAL_CONFIG_EXIT or failed_at_start(start))
        return RunWatch(start, stop, 0, True), "fatal" if fatal else None
    verdict: str | None = None
    fast = watch.fast_exits
    if stop > watch.stop and state != "STOPPED":  # a run ended by itself since the last look
        run_start = start if start <= stop else watch.start
        if code == FATAL_CONFIG_EXIT or failed_at_start(run_start):
            verdict = "fatal"
        elif run_start and stop - run_start < FAST_EXIT_S:
            fast += 1
            if fast >= LOOP_AFTER:
                verdict = "loop"
        else:
            fast = 0
    if state == "FATAL" and verdict is None:
        verdict = "loop"  # supervisord gave up on its own (exits within startsecs)
    if state == "RUNNING" and start and now - start >= STABLE_S:
        fast = 0
    return replace(watch, start=start, stop=stop, fast_exits=fast), verdict


#: What a gateway without a working ``flare`` plugin is told to do.
PLUGIN_NOT_LOADED = (
    "the flare plugin did not load in this gateway (Hermes reports it running, but the plugin "
    "recorded nothing for this run): its tools and scripts would not be kept off the host, so "
    "flared stopped it. Check that hermes-flare is installed in the Python that runs `hermes`"
)


def plugin_problem(record: Any, pid: int, start: float, log_lines: list[str] | None = None) -> str | None:
    """Pure: why the run ``pid`` (started at ``start``, whole seconds) lacks a working plugin, or None.

    ``record`` is ``$HERMES_HOME/state/flare-plugin.json``; the plugin writes
    ``registered`` with its pid and time once every feature is installed. A
    record of another pid, or an older one (a restored snapshot's, a pid
    reused in a new container), does not count. ``log_lines``: the tail of
    Hermes' ``logs/errors.log``, for its own reason when it could not load the plugin.
    """
    reg = record.get("registered") if isinstance(record, dict) else None
    if isinstance(reg, dict) and reg.get("pid") == pid:
        try:
            fresh = float(reg.get("at") or 0) >= start - 1
        except (TypeError, ValueError):
            fresh = False
        if fresh and reg.get("ok", True) is not False:
            return None
        if fresh and reg.get("error"):
            return str(reg["error"])
    for line in reversed(log_lines or []):
        if "Failed to load plugin 'flare'" in line:
            return f"{PLUGIN_NOT_LOADED}; Hermes says: {_LOG_PREFIX.sub('', line).strip()}"
    return PLUGIN_NOT_LOADED


def backoff_delay(loops: int) -> float:
    """Seconds to wait after the ``loops``-th crash loop in a row (1-based)."""
    return float(min(BACKOFF_FIRST_S * 2 ** max(loops - 1, 0), BACKOFF_CAP_S))


_HERMES_ADVICE = re.compile(
    r"\.?\s+(?:Set|Edit|Change|Fix)\b.*\bconfig\.yaml\b.*$", re.IGNORECASE | re.DOTALL
)
_LOG_PREFIX = re.compile(r"^(?:\S+ \S+ )?(?:ERROR|CRITICAL|WARNING) [\w.]+: ")


def clean_error(text: str) -> str:
    """Hermes' message without its advice to edit config.yaml (flared writes that file)."""
    return _HERMES_ADVICE.sub("", text.strip()).strip()


def gateway_error(home: Path, log_file: Path) -> str | None:
    """The gateway's own last error: gateway_state.json first, else the log's last ERROR line."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        st = json.loads((home / "gateway_state.json").read_text())
        if st.get("exit_reason"):
            return clean_error(str(st["exit_reason"]))
        for name, p in (st.get("platforms") or {}).items():
            if p.get("state") == "fatal" and p.get("error_message"):
                return clean_error(f"{name}: {p['error_message']}")
    for line in reversed(tail_lines(log_file, 200)):
        if " ERROR " in f" {line}" or line.startswith(("ERROR", "CRITICAL")) or "Traceback" in line:
            return clean_error(_LOG_PREFIX.sub("", line))
    return None


def tail_lines(path: Path, n: int, block: int = 65536) -> list[str]:
    """The last ``n`` lines of a file, reading at most ``block`` bytes."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - block))
            data = fh.read()
    except OSError:
        return []
    return [ln for ln in data.decode("utf-8", "replace").splitlines() if ln.strip()][-n:]


def failure_hint(bot: str, error: str | None, config_path: Path, bot_index: int, kind: str) -> str:
    """What to do about a failed gateway, naming hermes-flare.yaml (never Hermes' config.yaml)."""
    port = re.search(r"[Pp]ort (\d+) already in use", error or "")
    then = (
        f"then `flared restart --bot {bot}`"
        if kind == "fatal"
        else f"it is retried by itself, or now with `flared restart --bot {bot}`"
    )
    if port:
        return (
            f"another process holds port {port.group(1)}: stop it, or set bots[{bot_index}].api.port "
            f"in {config_path}; {then}"
        )
    if "flare plugin" in (error or ""):
        return (
            "the gateway must run with hermes-flare's plugin: install hermes-flare and the hermes-agent "
            f"release it supports into the same Python; {then}"
        )
    return (
        f"flared writes the gateway's config.yaml from {config_path}: fix bots[{bot_index}] there; "
        f"a change to the file retries the gateway, {then}"
        if kind == "fatal"
        else f"see the gateway's log; {then}"
    )


def readiness(
    *,
    enabled: bool,
    phase: str | None,
    held: bool,
    failure: Failure | None,
    proc: dict[str, Any] | None,
    liveness: dict[str, Any],
    has_api: bool,
    not_answering: str | None = None,
    reviving: bool = False,
) -> tuple[str, str]:
    """Pure: (``ready`` | ``starting`` | ``unresponsive`` | ``failed`` | ``stopped``, what it waits for or why).

    RUNNING is not ready: Hermes takes seconds to bring up its API after
    supervisord counts it started. Ready means Hermes itself says
    ``running`` (and its ``api_server`` is connected) for *this* process:
    the files a previous run left behind do not count, and the flare plugin
    recorded itself for this run (:func:`plugin_problem`). A ready gateway whose
    last liveness probes failed (``not_answering``, :mod:`flared.hangs`) is
    ``unresponsive``; one being restarted for that is ``starting``.
    """
    if reviving and enabled:
        return "starting", "restarting it: it stopped answering"
    if not enabled:
        return "stopped", "disabled in the config"
    if failure is not None:
        return "failed", failure.error or f"exited {failure.exit_code}"
    if phase in {"restore failed"}:
        return "failed", "restore failed"
    if phase in {"booting", "restoring", "waiting for store"}:
        return "starting", phase
    if held:
        return "starting", "held for a restore"
    if proc is None:
        return "starting", "being added to supervisord"
    state = proc.get("statename")
    if state == "FATAL":
        return "failed", str(proc.get("spawnerr") or "supervisord gave up starting it")
    if state in {"STOPPED", "STOPPING", "EXITED"}:
        return "starting", state.lower()
    if state != "RUNNING":
        return "starting", str(state or "").lower()
    if liveness.get("pid") != proc.get("pid"):
        return "starting", "Hermes is starting"
    gstate = liveness.get("gateway_state")
    platforms = liveness.get("platforms") or {}
    if gstate == "startup_failed":
        return "failed", "Hermes reported startup_failed"
    if has_api and platforms.get("api_server") == "fatal":
        return "failed", "the API server could not start"
    if gstate in {"running", "degraded"} and (not has_api or platforms.get("api_server") == "connected"):
        pid, start = int(proc.get("pid") or 0), float(proc.get("start") or 0)
        if plugin_problem(liveness.get("plugin"), pid, start) is not None:
            return "starting", "checking the flare plugin"  # the next tick fails it (Gateways._check_plugin)
        if not_answering:
            return "unresponsive", not_answering
        return "ready", "" if gstate == "running" else "some platforms are retrying"
    return "starting", f"Hermes is {gstate or 'starting'}"


class Gateways:
    """One gateway program per ready bot of this container's group, plus the operator's."""

    def __init__(
        self,
        live: LiveConfig,
        supervisor: SupervisorClient,
        layout: Layout,
        *,
        wake: Callable[[], None] = lambda: None,
        may_stream: Callable[[str], bool] = lambda _bot: False,
    ) -> None:
        self.live = live
        #: Whether a ready bot's databases may be streamed (its snapshot fence holds); the daemon
        #: asks the snapshot service, anything else streams nothing.
        self.may_stream = may_stream
        self.supervisor = supervisor
        self.layout = layout
        self.wake = wake  # asks the daemon for a reconcile now rather than at the next tick
        self.lock = threading.RLock()
        self.ready: set[str] = set()  # bots whose restore finished: their gateways may run
        self.held: set[str] = set()  # bots whose gateway is stopped on purpose (restore)
        self.boot_errors: dict[str, str] = {}
        self.restarts: dict[str, int] = {}
        self.failures: dict[str, Failure] = {}  # bots whose gateway flared stopped restarting
        self._loops: dict[str, int] = {}  # crash loops in a row per bot (the back-off level)
        self._watches: dict[str, RunWatch] = {}
        self._pids: dict[str, int] = {}
        # bot -> (pid, start) of the run whose flare plugin was seen in place
        self._plugin_seen: dict[str, tuple[int, float]] = {}
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
        """Restart a bot's gateway now; a failed one is tried again at once."""
        name = program_name(bot)
        with self.lock:
            failed = self.failures.pop(bot, None)
            self._loops.pop(bot, None)
            self._watches.pop(name, None)
            if failed is not None:
                log.info("bot %s: restarting its failed gateway on request", bot)
                self.reconcile()
                return
        self.bounce(name)

    def bounce(self, name: str, *, wait: bool = True) -> None:
        """Stop and start a program through supervisord, a stopped (SIGSTOP) one too.

        SIGCONT first, so a stopped process can take supervisord's SIGINT and
        shut down cleanly; one that still does not exit gets SIGKILL (its whole
        process group) after ``stopwaitsecs``, supervisord's own escalation.
        """
        with contextlib.suppress(xmlrpc.client.Fault):  # not running (any more): nothing to resume
            self.supervisor.signal(name, "CONT")
        self.supervisor.stop(name)
        self.supervisor.start(name, wait=wait)

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
            self.failures.pop(bot, None)
            self._loops.pop(bot, None)

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
                text = self._rendered_program(bot)
            except Exception as exc:  # one bot's render problem must not stop the others
                self.boot_errors[bot.name] = f"cannot render Hermes home: {exc}"
                log.error("bot %s: cannot render its Hermes home: %s", bot.name, exc)
                continue
            if self._still_failed(bot.name, text):
                continue
            desired[program_name(bot.name)] = text
        stream = stream_program(self.live.loaded, self.streamed_bots())
        if stream is not None:
            desired[STREAM_PROGRAM] = stream.render()
        if self.live.config.operator is not None:
            # The operator bot's program: its failures never touch the bots.
            desired[OPERATOR_PROGRAM] = operator_program(self.live.loaded).render()
        return desired

    def streamed_bots(self) -> list[str]:
        """Bots whose databases Litestream streams now: restored, not held for a restore (a
        database replaced under a running Litestream corrupts its replica), not fenced."""
        return [
            b.name
            for b in self.enabled_bots()
            if b.name in self.ready and b.name not in self.held and self.may_stream(b.name)
        ]

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
        hook = guard.hook_dir(home) / "handler.py"
        key = (digest, _file_key(home / "config.yaml"), _file_key(home / ".env"), _file_key(hook))
        cached = self._render_cache.get(bot.name)
        if cached is not None and cached[0] == key:
            return cached[1]
        text = gateway_program(cfg, bot, render_home(cfg, bot)).render()
        after = (digest, _file_key(home / "config.yaml"), _file_key(home / ".env"), _file_key(hook))
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

    def _still_failed(self, bot: str, program: str) -> bool:
        """Whether a failed gateway stays out of supervisord this tick."""
        failure = self.failures.get(bot)
        if failure is None:
            return False
        if failure.kind == "fatal":
            if failure.program is not None and failure.program != program:
                log.info("bot %s: its config changed: starting the failed gateway again", bot)
                del self.failures[bot]
                return False
            return True
        if failure.retry_at is not None and time.time() >= failure.retry_at:
            log.info("bot %s: back-off over: starting its gateway again", bot)
            del self.failures[bot]
            return False
        return True

    def track_restarts(self) -> None:
        """Count PID changes and judge each gateway's runs (:func:`judge`).

        Reuses the process list the reconcile just read (one XML-RPC call per tick).
        """
        procs = self._observed or self.supervisor.processes()
        seen = set()
        for p in procs:
            name, pid = p["name"], int(p.get("pid") or 0)
            seen.add(name)
            if name.startswith(GATEWAY_PREFIX):
                self._judge(name.removeprefix(GATEWAY_PREFIX), p)
                self._check_plugin(name.removeprefix(GATEWAY_PREFIX), p)
            if not pid:
                continue
            prev = self._pids.get(name)
            if prev and prev != pid:
                self.restarts[name] = self.restarts.get(name, 0) + 1
            self._pids[name] = pid
        for name in set(self._watches) - seen:
            del self._watches[name]  # removed on purpose (reload, restore, failure)

    def _judge(self, bot: str, proc: dict[str, Any]) -> None:
        name = program_name(bot)
        paths = BotPaths.of(self.live.config.state_dir, bot)
        before = self._watches.get(name, RunWatch())
        # Hermes' record matters only for a run that ended since the last look: read it only then
        ended = not before.seen or float(proc.get("stop") or 0) > before.stop
        failed_at = startup_failed_at(paths.home) if ended else None
        plugin = plugin_failed(paths.home) if ended else None
        if plugin is not None and (failed_at is None or plugin[0] > failed_at):
            failed_at = plugin[0]  # the plugin ended the run (exit 78) before Hermes wrote its state
        watch, verdict = judge(before, proc, failed_at)
        self._watches[name] = watch
        if proc.get("statename") == "RUNNING" and watch.fast_exits == 0 and bot in self._loops:
            now = float(proc.get("now") or time.time())
            if now - float(proc.get("start") or now) >= STABLE_S:
                del self._loops[bot]
        if verdict is None or bot in self.failures:
            return
        error = gateway_error(paths.home, paths.gateway_log)
        run_start = min(float(proc.get("start") or 0), before.start or float("inf"))
        if plugin is not None and plugin[0] == failed_at and plugin[0] >= run_start - 1:
            error = plugin[1]  # not a record an earlier run left
        code = proc.get("exitstatus")
        program = self._render_cache.get(bot, (None, None))[1]
        now = time.time()
        if verdict == "fatal":
            code = code or None  # 0 here means supervisord did not keep it (see judge)
            failure = Failure("fatal", code, error, now, None, program, watch.fast_exits)
            log.error(
                "bot %s: gateway %s (fatal config): %s; not restarting until its config "
                "changes or `flared restart --bot %s`",
                bot,
                f"exited {code}" if code else "failed to start",
                error or "see its log",
                bot,
            )
        else:
            loops = self._loops[bot] = self._loops.get(bot, 0) + 1
            delay = backoff_delay(loops)
            failure = Failure("loop", code, error, now, now + delay, program, watch.fast_exits)
            log.error(
                "bot %s: gateway keeps exiting (last status %s, %d fast exits): %s; retrying in %.0f s",
                bot,
                code,
                watch.fast_exits,
                error or "see its log",
                delay,
            )
        self.failures[bot] = failure
        self.wake()

    def _check_plugin(self, bot: str, proc: dict[str, Any]) -> None:
        """Fail (and so stop) a gateway that Hermes reports running without a working flare plugin.

        Read once per run: after the plugin is seen for a pid and start, nothing
        more is read for it.
        """
        pid, start = int(proc.get("pid") or 0), float(proc.get("start") or 0)
        if proc.get("statename") != "RUNNING" or not pid or bot in self.failures:
            return
        if self._plugin_seen.get(bot) == (pid, start):
            return
        paths = BotPaths.of(self.live.config.state_dir, bot)
        live = gateway_liveness(paths.home)
        if live.get("pid") != pid or live.get("gateway_state") not in {"running", "degraded"}:
            return  # not up yet: Hermes loads plugins before it reports running
        problem = plugin_problem(
            live.get("plugin"), pid, start, tail_lines(paths.home / "logs" / "errors.log", 200)
        )
        if problem is None:
            self._plugin_seen[bot] = (pid, start)
            return
        program = self._render_cache.get(bot, (None, None))[1]
        self.failures[bot] = Failure("fatal", None, problem, time.time(), None, program, 0)
        log.error("bot %s: %s; not restarting until `flared restart --bot %s`", bot, problem, bot)
        self.wake()

    def failure_of(self, bot: str) -> Failure | None:
        return self.failures.get(bot)

    def running_programs(self) -> dict[str, dict[str, Any]]:
        """supervisord's process info per program, as the last reconcile read it."""
        return {str(p["name"]): p for p in self._observed}


def _file_key(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)
