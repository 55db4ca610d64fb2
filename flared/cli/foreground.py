"""What `flared up` becomes once supervisord runs: a small watcher in the user's terminal.

`flared up` forks supervisord (in its own process group) and then execs
this module, so the terminal holds a process without pydantic or Hermes
(~15 MB) whose job is to say what happens:

- each edit of the config file: applied (what changed) or refused
  (FILE:LINE:COL, the running config stays);
- each bot's restore at boot (snapshot id, its age, the time taken), when
  its gateway is ready (with the API URL), or why it failed and what to do;
- Ctrl-C (or SIGTERM/SIGHUP) is forwarded to supervisord once, which stops
  the gateways first and then flared, which takes the final snapshots;
- after the stop, what each final snapshot did (id and size).

Usage (by `flared up` only): ``python -m flared.cli.foreground PID STATE_DIR SOCKET``.

The Agent image runs it too, between tini and supervisord
(``python -m flared.cli.foreground --container -- supervisord ...``, the state
dir from ``$FLARE_STATE_DIR``): supervisord exits 0 whatever its programs did,
so this is what makes the container exit non-zero, and say why in its log,
when a final snapshot that was due did not happen. It prints no status lines
there (the admin page's sign-in link must not reach a log).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from flared import orphans
from flared.cli.status import final_snapshot_lines, read_stop_record, restore_line
from flared.cli.text import Out, localize_hints
from flared.control.client import ConnectionLost, ControlClient, ControlError, DaemonNotRunning
from flared.lifeline import spawn_supervisord
from flared.snapshots.final import not_saved_line

#: Poll quickly until every bot settled (ready or failed), then now and then for changes.
FAST_POLL_S, SLOW_POLL_S = 0.5, 5.0
#: After supervisord was killed, how long to wait for its programs to stop (flared's deadline is shorter).
ORPHANS_WAIT_S = 300.0


class Reporter:
    """Turns successive `GET /status` answers into one line per event, each said once."""

    def __init__(self, out: Out) -> None:
        self.out = out
        self.said: dict[str, str] = {}  # bot -> the last readiness reported
        self.restores: dict[str, str] = {}
        self.gates: dict[str, str] = {}
        self.config_error = ""
        self.reload_at: object = None

    def feed(self, status: dict[str, Any]) -> bool:
        """Print what changed; True when every enabled bot is ready or failed."""
        self.config(status.get("config") or {})
        settled = True
        for b in status.get("bots") or []:
            name = str(b.get("name"))
            if not b.get("enabled", True) or b.get("state") in {"DISABLED", "ELSEWHERE"}:
                continue
            snap = b.get("snapshots") or {}
            line = restore_line(snap.get("restore"))
            if line and self.restores.get(name) != line:
                self.restores[name] = line
                self.out.print(f"{name}: {line}")
            gate = snap.get("gate")
            if gate and self.gates.get(name) != gate:
                self.gates[name] = gate
                self.out.print(f"{name}: {self.out.style(str(gate), 'yellow')}")
            ready = str(b.get("readiness") or "")
            key = ready + "|" + str(b.get("error") or "")
            if ready == "ready" and self.said.get(name, "").split("|")[0] != "ready":
                api = f": chat API on {b['api']} (try: `flared chat hello`)" if b.get("api") else ""
                again = " again" if name in self.said else ""
                self.out.print(f"{name}: {self.out.style('ready' + again, 'green')}{api}")
                self.said[name] = key
            elif ready == "failed" and self.said.get(name) != key:
                self.out.print(f"{name}: {self.out.style('gateway failed', 'red')}: {b.get('error')}")
                if b.get("hint"):
                    self.out.print(f"  fix: {b['hint']}")
                if b.get("log"):
                    self.out.print(f"  log: {b['log']} (`flared logs --bot {name}`)")
                self.said[name] = key
            elif ready == "unresponsive" and self.said.get(name, "").split("|")[0] != ready:
                self.out.print(f"{name}: {self.out.style('gateway ' + str(b.get('detail')), 'red')}")
                self.said[name] = key
            if ready not in {"ready", "failed", "unresponsive"}:
                settled = False
        return settled

    def config(self, config: dict[str, Any]) -> None:
        """One line per edit of the file: applied (what changed) or refused (where, why)."""
        errors = [str(e) for e in config.get("error") or []]
        if "\n".join(errors) != self.config_error:
            self.config_error = "\n".join(errors)
            if errors:
                more = f" (and {len(errors) - 1} more: `flared validate`)" if len(errors) > 1 else ""
                self.out.print(
                    f"{self.out.style('config edit refused', 'red')}, the running config stays: "
                    f"{errors[0]}{more}"
                )
        reload = config.get("last_reload") or {}
        if reload.get("at") is None or reload.get("at") == self.reload_at:
            return
        self.reload_at = reload.get("at")
        if not reload.get("applied"):
            return  # refused: said above, from the errors
        changes = "; ".join(str(c) for c in reload.get("changes") or []) or "nothing that runs changed"
        failures = "".join(f"; but {where}: {err}" for where, err in (reload.get("failures") or {}).items())
        self.out.print(f"{self.out.style('config edit applied', 'green')}: {changes}{failures}")


def say_admin(out: Out, client: ControlClient, admin: dict[str, Any]) -> bool:
    """Print the admin page's one-time sign-in URL (or why there is none); True once said."""
    if admin.get("error"):
        out.print(out.style(str(admin["error"]), "yellow"))
        return True
    if not admin.get("url"):
        return True  # off (or an older daemon, which says nothing about it)
    link = client.request("POST", "/admin/link", {}, timeout=5)
    out.print(f"admin page: {link['link']}  (signs in once; `flared admin` prints another)")
    return True


def main(argv: list[str]) -> int:
    if argv[:1] == ["--container"]:
        if argv[1:2] != ["--"] or len(argv) < 3:
            print(
                "usage: python -m flared.cli.foreground --container -- supervisord ARGS...", file=sys.stderr
            )
            return 2
        state = os.environ.get("FLARE_STATE_DIR", "/var/lib/hermes-flare")
        return watch(spawn_supervisord(argv[2:]), Path(state), None)
    return watch(int(argv[0]), Path(argv[1]), Path(argv[2]))


def watch(child: int, state_dir: Path, sock: Path | None) -> int:
    """Until supervisord (``child``) exits; then what the final snapshots did and the exit status.

    ``sock``: flared's control socket, polled for the bots' progress (None: say nothing of it)."""
    localize_hints()
    out = Out(sys.stderr)
    started = time.time()
    stopping: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        if not stopping:
            out.print("")
            out.print("stopping hermes-flare: gateways first, then a final snapshot of each bot ...")
        stopping.append(signum)
        if len(stopping) == 1:
            sig = signal.SIGTERM if signum == signal.SIGHUP else signum
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, sig)

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, forward)

    client = ControlClient(sock) if sock is not None else None
    reporter = Reporter(out)
    next_poll, settled, admin_said = 0.0, False, False
    while True:
        pid, status = os.waitpid(child, os.WNOHANG)
        if pid == child:
            break
        now = time.monotonic()
        if client is not None and not stopping and now >= next_poll:
            with contextlib.suppress(DaemonNotRunning, ConnectionLost, ControlError, OSError, ValueError):
                status = client.request("GET", "/status", timeout=5)
                settled = reporter.feed(status)
                if not admin_said:
                    admin_said = say_admin(out, client, status.get("admin") or {})
            next_poll = now + (SLOW_POLL_S if settled else FAST_POLL_S)
        time.sleep(0.1 if stopping or not settled else 0.5)
    code = os.waitstatus_to_exitcode(status)
    if code < 0 and not stopping:
        left = orphans.find(state_dir)
        if left:
            # supervisord was killed: its programs got their stop signals from the kernel
            # (flared.lifeline); flared's final snapshots are worth the wait.
            out.print(
                f"supervisord was killed ({signal.Signals(-code).name}); waiting for "
                f"{', '.join(map(str, left))} to stop (flared takes its final snapshots) ..."
            )
            for pid in orphans.wait_gone([o.pid for o in left], ORPHANS_WAIT_S):
                out.print(f"pid {pid} is still running: `flared up` ends it next time")
    record = read_stop_record(state_dir)
    finals = (record.get("final_snapshots") or []) if record and _stopped_after(record, started) else []
    for line in final_snapshot_lines(finals):
        out.print(line)
    out.print(f"hermes-flare stopped{'' if code == 0 else f' (supervisord exited {code})'}")
    lost = not_saved_line(finals)
    if lost is not None:
        out.print(f"{out.style('error', 'red')}: {lost}")
    if code == 0 or (stopping and code in (-signal.SIGINT, -signal.SIGTERM)):
        return 1 if lost is not None else 0
    return 128 - code if code < 0 else code


def _stopped_after(record: dict[str, Any], started: float) -> bool:
    from datetime import datetime

    try:
        return datetime.fromisoformat(str(record.get("stopped_at"))).timestamp() >= started
    except ValueError:
        return False


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
