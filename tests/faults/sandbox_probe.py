"""Runs INSIDE a sandbox (stdlib only, any Python 3.8+): look everywhere a command can look for secrets.

Fed to ``python3 -`` on stdin, so neither its text nor the needles are in any
file or command line of the sandbox. The needles (the exact secrets the test
planted) arrive XOR-masked in ``NEEDLES_HEX``/``KEY_HEX`` (substituted by
:func:`probe_script`) and exist unmasked only in this process's memory.

It reads every ``/proc/*/environ`` and ``/proc/*/cmdline``, every open file
descriptor of every visible process that is a regular file (memfds too),
and every regular file of the visible filesystem (``/proc`` and ``/sys``
aside). Three positive controls show each channel works: a child process
with a marker in its environment, a file with a marker in ``/tmp``, and an
unlinked memfd holding a marker, reachable only through ``/proc/<pid>/fd``.
Prints one JSON report.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time

NEEDLES_HEX: list[str] = []  # substituted
KEY_HEX = ""  # substituted
# Trees walked but not read (the host's read-only /usr, when another probe read it).
SKIP_CONTENT: list[str] = []  # substituted
CHUNK = 1 << 20


def unmask() -> list[bytes]:
    key = bytes.fromhex(KEY_HEX)
    out = []
    for h in NEEDLES_HEX:
        raw = bytes.fromhex(h)
        out.append(bytes(b ^ key[i % len(key)] for i, b in enumerate(raw)))
    return out


def main() -> None:
    needles = unmask()
    marker = ("control-" + os.urandom(8).hex()).encode()
    controls = {"environ": False, "file": False, "fd": False}
    hits: list[dict[str, str]] = []
    counts = {"procs": 0, "fds": 0, "files": 0, "bytes": 0, "unreadable": 0, "not_read": 0}

    def scan(where: str, data: bytes, channel: str) -> None:
        for i, n in enumerate(needles):
            if n in data:
                hits.append({"where": where, "needle": str(i)})
        if marker in data:
            controls[channel] = True

    def read_regular(path: str, where: str, channel: str) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            counts["unreadable"] += 1
            return
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return
            tail = b""
            while True:
                chunk = os.read(fd, CHUNK)
                if not chunk:
                    break
                counts["bytes"] += len(chunk)
                scan(where, tail + chunk, channel)  # a needle may straddle two chunks
                tail = chunk[-512:]
        except OSError:
            counts["unreadable"] += 1
        finally:
            os.close(fd)

    # The positive controls.
    with open("/tmp/probe-control", "wb") as fh:
        fh.write(b"x" * 100 + marker)
    memfd = os.memfd_create("probe-control")
    os.write(memfd, marker)
    child = subprocess.Popen(["sleep", "30"], env={"PROBE_CONTROL": marker.decode()})
    time.sleep(0.2)
    try:
        for pid in sorted(p for p in os.listdir("/proc") if p.isdigit()):
            counts["procs"] += 1
            for name in ("environ", "cmdline"):
                try:
                    with open(f"/proc/{pid}/{name}", "rb") as fh:
                        scan(f"/proc/{pid}/{name}", fh.read(), "environ")
                except OSError:
                    counts["unreadable"] += 1
            try:
                fds = os.listdir(f"/proc/{pid}/fd")
            except OSError:
                counts["unreadable"] += 1
                continue
            for fd in fds:
                counts["fds"] += 1
                path = f"/proc/{pid}/fd/{fd}"
                try:
                    if not stat.S_ISREG(os.stat(path).st_mode):
                        continue  # pipes, sockets, ttys: nothing at rest to read
                except OSError:
                    continue
                read_regular(path, path, "fd")
        for root, dirs, files in os.walk("/"):
            if root == "/":
                dirs[:] = [d for d in dirs if d not in ("proc", "sys")]
            for name in files:
                path = os.path.join(root, name)
                try:
                    if not stat.S_ISREG(os.lstat(path).st_mode):
                        continue
                except OSError:
                    continue
                counts["files"] += 1
                if any(path.startswith(p + "/") for p in SKIP_CONTENT):
                    counts["not_read"] += 1
                    continue
                read_regular(path, path, "file")
    finally:
        child.kill()
        child.wait()
        os.close(memfd)
        os.unlink("/tmp/probe-control")
    json.dump({"hits": hits, "controls": controls, "counts": counts, "uid": os.getuid()}, sys.stdout)


if __name__ == "__main__":
    main()
