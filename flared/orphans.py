"""What a run left behind for a state dir when its supervisord died (kill -9, the OOM killer).

Its programs normally die with it (:mod:`flared.lifeline`). What does not (a
run of an older flared, a process that was stopped when the signal came)
would hold the state dir's locks and the bots' ports, and a new `flared up`
would crash-loop against them. They are found by what supervisord put in each
program's environment, which ``/proc/<pid>/environ`` keeps for the process's
life: ``FLARE_ENV_FILE=<state>/supervisor/flared.env`` for flared and the
operator, ``HERMES_HOME=<state>/bots/<bot>/home`` for a gateway (and what it
started). Only this user's processes are readable, which are the only ones
this user could end.

Stdlib only: `flared up`'s watcher uses it too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Orphan:
    pid: int
    what: str  # "flared", "the operator", "the gateway of athena"

    @property
    def is_flared(self) -> bool:
        return self.what == "flared"

    def __str__(self) -> str:
        return f"{self.what} (pid {self.pid})"


def find(state_dir: Path) -> list[Orphan]:
    """This user's processes that belong to a run on ``state_dir`` (never this process)."""
    root = os.fsencode(state_dir.resolve())
    handoff = b"FLARE_ENV_FILE=" + root + b"/supervisor/flared.env"
    homes = b"HERMES_HOME=" + root + b"/bots/"
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:  # gone, or another user's
            continue
        what = None
        if handoff in environ:
            what = "the operator" if b"\0operator\0" in cmdline else "flared"
        else:
            for var in environ:
                if var.startswith(homes) and var.endswith(b"/home"):
                    what = f"the gateway of {os.fsdecode(var[len(homes) : -len(b'/home')])}"
                    break
        if what is not None and cmdline:
            found.append(Orphan(int(entry.name), what))
    return sorted(found, key=lambda o: o.pid)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except (OSError, IndexError):
        return False


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Wait up to ``timeout`` seconds for ``pids`` to end; those still alive."""
    deadline = time.monotonic() + timeout
    left = [p for p in pids if alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [p for p in left if alive(p)]
    return left


def end(
    orphans: list[Orphan], *, flared_grace: float, other_grace: float = 30.0, say: Callable[[str], None]
) -> list[Orphan]:
    """Stop them as supervisord would have: the gateways and the operator first, then flared
    (SIGTERM: it takes its final snapshots); SIGKILL what outlives its grace. What could not be
    ended (another user's process) is returned."""
    survivors = []
    gateways = [o for o in orphans if not o.is_flared]
    daemons = [o for o in orphans if o.is_flared]
    for group, sig, grace in (
        (gateways, signal.SIGINT, other_grace),
        (daemons, signal.SIGTERM, flared_grace),
    ):
        for o in group:
            try:
                os.kill(o.pid, signal.SIGCONT)  # one stopped (SIGSTOP, a debugger) cannot act on it
                os.kill(o.pid, signal.SIGTERM if o.what == "the operator" else sig)
            except ProcessLookupError:
                continue
            except PermissionError:
                survivors.append(o)
        left = wait_gone([o.pid for o in group if o not in survivors], grace)
        for pid in left:
            say(f"{next(o for o in group if o.pid == pid)} did not end within {grace:g} s: killed")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        survivors += [o for o in group if o.pid in wait_gone(left, 5.0)]
    return survivors
