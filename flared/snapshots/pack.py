"""squashfs packing through squashfs-tools, the format the Sandbox SDK's backups also use."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from flared.config.models import CompressionConfig

#: flared's level when `snapshots.compression.level` is null: fast, with a ratio near gzip -9.
DEFAULT_LEVELS: dict[str, int | None] = {"zstd": 3, "gzip": None, "xz": None, "lz4": None, "lzo": None}
#: 1 MiB blocks: better ratio and fewer calls into the compressor than the 128 KiB default.
BLOCK_SIZE = "1M"


class PackError(Exception):
    """squashfs-tools failed; the message carries its own words."""


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise PackError(f"{name} not found: install squashfs-tools (./scripts/setup does)")
    return path


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise PackError(f"{Path(cmd[0]).name} failed ({proc.returncode}): {' '.join(detail)}")


def pack(src: Path, blob: Path, compression: CompressionConfig, processors: int | None = None) -> None:
    """Pack a directory into a squashfs image (modes, owners, symlinks, empty dirs kept)."""
    cmd = [_tool("mksquashfs"), str(src), str(blob), "-noappend", "-no-progress", "-quiet"]
    cmd += ["-comp", compression.algorithm, "-b", BLOCK_SIZE]
    level = compression.level if compression.level is not None else DEFAULT_LEVELS[compression.algorithm]
    if level is not None and compression.algorithm in {"zstd", "gzip", "lzo"}:
        cmd += ["-Xcompression-level", str(level)]
    cmd += ["-processors", str(processors or os.cpu_count() or 1)]
    _run(cmd)


def unpack(blob: Path, dest: Path, processors: int | None = None) -> None:
    """Extract a squashfs image into `dest` (which must not exist yet)."""
    cores = str(processors or os.cpu_count() or 1)
    _run([_tool("unsquashfs"), "-no-progress", "-quiet", "-processors", cores, "-d", str(dest), str(blob)])
