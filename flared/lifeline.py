"""Processes that die with the process that started them (Linux ``PR_SET_PDEATHSIG``).

A kill -9 of supervisord does not stop its programs: they are reparented and
keep running, a flared and gateways that nobody supervises, holding the
state dir's locks and ports. So every program supervisord runs asks the
kernel for a signal when its parent dies: flared for itself (SIGTERM, a
graceful stop with final snapshots), the gateways and the operator through
this module's exec wrapper (``python -m flared.lifeline SIGNAL -- CMD...``,
which sets it and execs CMD; the setting survives the exec), since
supervisord sets nothing between its fork and the program's exec.

Stdlib only, imported by `flared up`'s watcher too.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int) -> bool:
    """Ask for ``sig`` when the parent dies; True if set and the parent is still alive.

    False when the kernel refused (not Linux) or the parent is gone already (it
    died before the call: the caller was reparented and is an orphan now)."""
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    return os.getppid() == parent


def spawn_supervisord(argv: list[str], env: dict[str, str] | None = None) -> int:
    """Fork supervisord in its own process group (so Ctrl-C reaches it once, forwarded by the
    watcher), which gets SIGTERM (a graceful stop) if the watcher is killed outright."""
    child = os.fork()
    if child == 0:
        try:
            os.setpgid(0, 0)
            die_with_parent(signal.SIGTERM)
            if env is None:
                os.execvp(argv[0], argv)
            else:
                os.execve(argv[0], argv, env)
        finally:
            os._exit(127)
    return child


def wrapped(sig: signal.Signals, command: list[str]) -> list[str]:
    """``command`` run so that it gets ``sig`` when its parent (supervisord) dies."""
    return [sys.executable, "-m", "flared.lifeline", sig.name, "--", *command]


def main(argv: list[str]) -> int:
    """``SIGNAL -- CMD...``: set the parent-death signal, then exec CMD in this process."""
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m flared.lifeline SIGNAL -- CMD...", file=sys.stderr)
        return 2
    die_with_parent(signal.Signals[argv[0]])  # best effort: not Linux, the program runs all the same
    with contextlib.suppress(OSError):
        os.execvp(argv[2], argv[2:])
    print(f"cannot run {argv[2]}", file=sys.stderr)
    return 127


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
