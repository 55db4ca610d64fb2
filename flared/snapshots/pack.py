"""squashfs packing through squashfs-tools, the format the Sandbox SDK's backups also use.

A snapshot is packed straight from the live home: mksquashfs gets no source
directory, only a pseudo file (squashfs-tools >= 4.5) naming every directory
(`D`), symlink (`S`) and file (`l`, a reference to the path to read: the
home's file, or a database's consistent copy). The image therefore holds
exactly what the walk decided, and no tree is built to pack from.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Iterable
from pathlib import Path

from flared.config.models import CompressionConfig
from flared.snapshots.capture import Captured, Entry

#: flared's level when `snapshots.compression.level` is null: fast, with a ratio near gzip -9.
DEFAULT_LEVELS: dict[str, int | None] = {"zstd": 3, "gzip": None, "xz": None, "lz4": None, "lzo": None}
#: 1 MiB blocks: better ratio and fewer calls into the compressor than the 128 KiB default.
BLOCK_SIZE = "1M"
#: Words of squashfs-tools' own errors that mean the machine, not the data, failed.
LOCAL_FAILURES = (
    "No space left on device",
    "Permission denied",
    "Input/output error",
    "Read-only file system",
    "Disk quota exceeded",
    "Cannot allocate memory",
    "Too many open files",
)
_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-/+,@=:")


class PackError(Exception):
    """squashfs-tools failed; the message carries its own words."""

    def __init__(self, message: str, *, local: bool = False, vanished: bool = False) -> None:
        super().__init__(message)
        self.local = local  # no space, permission, I/O: nothing wrong with the data
        self.vanished = vanished  # a file went away between the walk and mksquashfs


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise PackError(f"{name} not found: install squashfs-tools (./scripts/setup does)", local=True)
    return path


def _run(cmd: list[str], pass_fds: tuple[int, ...] = ()) -> None:
    proc = subprocess.run(
        cmd, capture_output=True, text=True, check=False, errors="replace", pass_fds=pass_fds
    )
    if proc.returncode != 0:
        text = (proc.stderr or proc.stdout).strip()
        detail = text.splitlines()[-3:]
        raise PackError(
            f"{Path(cmd[0]).name} failed ({proc.returncode}): {' '.join(detail)}",
            local=any(w in text for w in LOCAL_FAILURES),
            vanished="Cannot stat pseudo link file" in text,
        )


def escape(name: str) -> str:
    """A name as squashfs-tools' pseudo-file parser reads it: a backslash before anything unusual."""
    return "".join(c if c in _SAFE or ord(c) > 127 else "\\" + c for c in name)


def _time(st: os.stat_result) -> int:
    return min(max(int(st.st_mtime), 0), 2**32 - 1)


def pseudo_lines(captured: Captured) -> Iterable[str]:
    root = captured.root
    yield f"/ D {_time(root)} {stat.S_IMODE(root.st_mode):o} {root.st_uid} {root.st_gid}"
    for e in captured.entries:
        yield _line(e)


def _line(e: Entry) -> str:
    st = e.st
    name = escape(e.rel)
    if e.kind == "d":
        return f"{name} D {_time(st)} {stat.S_IMODE(st.st_mode):o} {st.st_uid} {st.st_gid}"
    if e.kind == "l":
        return f"{name} S {_time(st)} 777 {st.st_uid} {st.st_gid} {e.target}"
    return f"{name} l {escape(e.source)}"


def pack(
    captured: Captured,
    blob: Path,
    compression: CompressionConfig,
    *,
    scratch: Path,
    processors: int | None = None,
) -> None:
    """Pack what `captured` names into a squashfs image (modes, owners, symlinks, empty dirs kept)."""
    scratch.mkdir(parents=True, exist_ok=True)
    pseudo = scratch / f"{blob.name}.pseudo"
    with pseudo.open("w", encoding="utf-8", errors="surrogateescape") as f:
        for line in pseudo_lines(captured):
            f.write(line + "\n")
    cmd = [_tool("mksquashfs"), "-", str(blob), "-pf", str(pseudo), "-noappend", "-no-progress", "-quiet"]
    cmd += ["-comp", compression.algorithm, "-b", BLOCK_SIZE]
    level = compression.level if compression.level is not None else DEFAULT_LEVELS[compression.algorithm]
    if level is not None and compression.algorithm in {"zstd", "gzip", "lzo"}:
        cmd += ["-Xcompression-level", str(level)]
    if not captured.duplicates:
        # Our own hashes say no two files share content: mksquashfs' duplicate check would
        # find nothing, and it is quadratic among files of equal size (20k files of 2 KB).
        cmd.append("-no-duplicates")
    cmd += ["-processors", str(processors or os.cpu_count() or 1)]
    try:
        _run(cmd)
    finally:
        pseudo.unlink(missing_ok=True)


def unpack(blob: Path | int, dest: Path, processors: int | None = None) -> None:
    """Extract a squashfs image (a path, or an open file descriptor) into `dest` (which must not exist yet)."""
    cores = str(processors or os.cpu_count() or 1)
    source, fds = (f"/dev/fd/{blob}", (blob,)) if isinstance(blob, int) else (str(blob), ())
    _run([_tool("unsquashfs"), "-no-progress", "-quiet", "-processors", cores, "-d", str(dest), source], fds)


def pack_file(path: Path, blob: Path, processors: int | None = None) -> None:
    """Pack one file (a database) into a squashfs image of its own: zstd, flared's block size."""
    cmd = [_tool("mksquashfs"), str(path), str(blob), "-noappend", "-no-progress", "-quiet", "-no-xattrs"]
    cmd += ["-comp", "zstd", "-b", BLOCK_SIZE, "-Xcompression-level", str(DEFAULT_LEVELS["zstd"])]
    _run([*cmd, "-processors", str(processors or os.cpu_count() or 1)])
