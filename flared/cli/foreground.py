"""What `flared up` becomes once supervisord runs: a small watcher in the user's terminal.

`flared up` forks supervisord (in its own process group) and then execs
this module, so the terminal holds a process without pydantic or Hermes
(~15 MB) whose job is to say what happens:

- each bot's restore at boot (snapshot id, its age, the time taken), when
  its gateway is ready (with the API URL), or why it failed and what to do;
- Ctrl-C (or SIGTERM/SIGHUP) is forwarded to supervisord once, which stops
  the gateways first and then flared, which takes the final snapshots;
- after the stop, what each final snapshot did (id and size).

Usage (by `flared up` only): ``python -m flared.cli.foreground PID STATE_DIR SOCKET``.
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

from flared.cli.status import final_snapshot_lines, read_stop_record, restore_line
from flared.cli.text import Out
from flared.control.client import ConnectionLost, ControlClient, ControlError, DaemonNotRunning

#: Poll quickly until every bot settled (ready or failed), then now and then for changes.
FAST_POLL_S, SLOW_POLL_S = 0.5, 15.0


class Reporter:
    """Turns successive `GET /status` answers into one line per event, each said once."""

    def __init__(self, out: Out) -> None:
        self.out = out
        self.said: dict[str, str] = {}  # bot -> the last readiness reported
        self.restores: dict[str, str] = {}
        self.gates: dict[str, str] = {}

    def feed(self, status: dict[str, Any]) -> bool:
        """Print what changed; True when every enabled bot is ready or failed."""
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
                api = f": chat API on {b['api']} (try: flared chat hello)" if b.get("api") else ""
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
    child, state_dir, sock = int(argv[0]), Path(argv[1]), Path(argv[2])
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

    client = ControlClient(sock)
    reporter = Reporter(out)
    next_poll, settled, admin_said = 0.0, False, False
    while True:
        pid, status = os.waitpid(child, os.WNOHANG)
        if pid == child:
            break
        now = time.monotonic()
        if not stopping and now >= next_poll:
            with contextlib.suppress(DaemonNotRunning, ConnectionLost, ControlError, OSError, ValueError):
                status = client.request("GET", "/status", timeout=5)
                settled = reporter.feed(status)
                if not admin_said:
                    admin_said = say_admin(out, client, status.get("admin") or {})
            next_poll = now + (SLOW_POLL_S if settled else FAST_POLL_S)
        time.sleep(0.1 if stopping or not settled else 0.5)
    code = os.waitstatus_to_exitcode(status)
    record = read_stop_record(state_dir)
    if record is not None and _stopped_after(record, started):
        for line in final_snapshot_lines(record.get("final_snapshots") or []):
            out.print(line)
    out.print(f"hermes-flare stopped{'' if code == 0 else f' (supervisord exited {code})'}")
    if code == 0 or (stopping and code in (-signal.SIGINT, -signal.SIGTERM)):
        return 0
    return 128 - code if code < 0 else code


def _stopped_after(record: dict[str, Any], started: float) -> bool:
    from datetime import datetime

    try:
        return datetime.fromisoformat(str(record.get("stopped_at"))).timestamp() >= started
    except ValueError:
        return False


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
