"""Running one sandboxed process well: rlimits, a kill of its whole tree, output capped
while it runs, and arguments passed by memfd so they never show in `ps`.

Used by :mod:`.local`; kept apart so the provider module reads as what a
sandbox is (its directory, its binds), and this one as how a process is run.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from flared.config.models import SandboxProfile

PR_SET_CHILD_SUBREAPER = 36
DRAIN_FACTOR = 16  # read and discard up to this many times output_limit, then close the pipe


def become_subreaper() -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def children() -> set[int]:
    """Pids of this process's children (all threads)."""
    pids: set[int] = set()
    with contextlib.suppress(OSError):
        for task in Path("/proc/self/task").iterdir():
            with contextlib.suppress(OSError):
                pids.update(int(x) for x in (task / "children").read_text().split())
    return pids


def args_memfd(args: list[str]) -> int:
    """bwrap's arguments in an anonymous file, so they (host paths) are not in /proc/1/cmdline."""
    fd = os.memfd_create("bwrap-args", 0)  # not CLOEXEC: it is passed to bwrap
    data = b"".join(a.encode() + b"\0" for a in args)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def limits(profile: SandboxProfile, uid: int | None) -> Callable[[], None]:
    """Runs in the child before exec: rlimits, then drop to the lease's uid (as root)."""
    memory = int(profile.memory)
    cpu = max(1, int(profile.cpu_time))
    pids = int(profile.pids)

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if uid is not None:
            resource.setrlimit(resource.RLIMIT_NPROC, (pids, pids))
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)

    return apply


def kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL bwrap's process group; the PID namespace dies with its init."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


def collect(
    proc: subprocess.Popen[bytes], stdin: str | None, timeout: float, limit: int
) -> tuple[tuple[bytes, int, int], tuple[bytes, int, int], bool]:
    """Read both pipes until EOF or the deadline; keep ``limit`` bytes of each.

    Returns ((kept, limit, dropped), (kept, limit, dropped), timed_out). Output
    past the limit is read and dropped, up to DRAIN_FACTOR times the limit;
    then the pipe is closed, so a flooding command gets SIGPIPE instead of
    burning CPU until its timeout.
    """
    if stdin and proc.stdin is not None:
        threading.Thread(target=feed, args=(proc.stdin, stdin.encode()), daemon=True).start()
    assert proc.stdout is not None and proc.stderr is not None
    bufs: dict[int, bytearray] = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    dropped = dict.fromkeys(bufs, 0)
    files: dict[int, IO[bytes]] = {proc.stdout.fileno(): proc.stdout, proc.stderr.fileno(): proc.stderr}
    sel = selectors.DefaultSelector()
    for fd in bufs:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    timed_out = False
    open_fds = set(bufs)
    try:
        while open_fds:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                kill_tree(proc)
                break
            for key, _ in sel.select(min(left, 1.0)):
                fd = int(key.fd)
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    sel.unregister(fd)
                    open_fds.discard(fd)
                    continue
                room = limit - len(bufs[fd])
                if room > 0:
                    bufs[fd] += chunk[:room]
                dropped[fd] += max(0, len(chunk) - max(room, 0))
                if dropped[fd] > DRAIN_FACTOR * limit:
                    sel.unregister(fd)
                    open_fds.discard(fd)
                    files[fd].close()
        if not timed_out:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = True
                kill_tree(proc)
    finally:
        sel.close()
        for f in files.values():
            with contextlib.suppress(OSError):
                f.close()
        proc.wait()
    out, err = list(bufs)  # stdout's fd first: dicts keep insertion order
    return (bytes(bufs[out]), limit, dropped[out]), (bytes(bufs[err]), limit, dropped[err]), timed_out


def feed(pipe: IO[bytes], data: bytes) -> None:
    with contextlib.suppress(BrokenPipeError, OSError):
        pipe.write(data)
    with contextlib.suppress(BrokenPipeError, OSError):
        pipe.close()
