"""A consistent copy of a live Hermes home, and digests that say whether it changed.

SQLite databases (found by their header, not their name) are copied with the
online backup API, which gives a transactionally consistent image even while
the gateway writes in WAL mode; a raw copy of a live WAL database can tear.
Every other file is hard-linked into the staging dir when it can be (no data
copied: Hermes replaces files by rename, so the link keeps the captured
version), copied otherwise.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import sqlite3
import stat
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

log = logging.getLogger("flared.snapshots")

SQLITE_HEADER = b"SQLite format 3\x00"

#: Never in a snapshot: the gateway's runtime files and SQLite side files.
RUNTIME_EXCLUDES = (
    "gateway.pid",
    "gateway.lock",
    "gateway_state.json",
    "processes.json",
    "state/**",
    "*.db-wal",
    "*.db-shm",
    "*.db-journal",
    "*-wal",
    "*-shm",
    "*.lock",  # lock files: meaningful only to live processes
    # Liveness signals Hermes rewrites every minute, and a cache it rebuilds at start:
    # kept, they would make an idle bot look changed.
    "cron/ticker_heartbeat",
    "cron/ticker_last_success",
    "channel_directory.json",
)
#: Rendered by flared at every start from the YAML; never stored.
ALWAYS_EXCLUDED = (".env",)
#: Credentials Hermes writes itself; stored only when snapshots are encrypted.
CREDENTIAL_FILES = ("auth.json", "slack_tokens.json")
#: Side files a fingerprint must see although the capture leaves them out: a WAL holds data.
_WAL_PATTERNS = ("*.db-wal", "*-wal")
#: Files modified this close to a fingerprint cannot be trusted by it (coarse mtimes).
RACY_WINDOW_NS = 2_000_000_000


@lru_cache(maxsize=256)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Gitignore-like globs: `**` crosses `/`, `*` does not; no `/` means any depth."""
    anchored = "/" in pattern.rstrip("/")
    pat = pattern.strip("/")
    out = []
    i = 0
    while i < len(pat):
        c = pat[i]
        if pat.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pat.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        out.append({"*": "[^/]*", "?": "[^/]"}.get(c, re.escape(c)))
        i += 1
    body = "".join(out)
    if body.endswith("/.*"):  # `dir/**` also leaves out the directory itself
        body = body[:-3] + "(?:/.*)?"
    prefix = "" if anchored else "(?:.*/)?"
    return re.compile(f"^{prefix}{body}(?:/.*)?$")


def matches(rel: str, patterns: Iterable[str]) -> bool:
    """Whether a home-relative path (or a directory above it) matches any pattern."""
    return any(_glob_regex(p).match(rel) for p in patterns)


def exclusions(user: Iterable[str], *, encrypted: bool) -> tuple[str, ...]:
    extra = () if encrypted else CREDENTIAL_FILES
    return (*RUNTIME_EXCLUDES, *ALWAYS_EXCLUDED, *extra, *user)


def _walk(root: Path, patterns: tuple[str, ...]) -> Iterator[tuple[str, os.stat_result]]:
    """(relative path, lstat) of every entry not excluded, parents before children, sorted."""
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        try:
            entries = sorted(os.scandir(root / rel_dir), key=lambda e: e.name)
        except FileNotFoundError:
            continue
        subdirs = []
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            if matches(rel, patterns):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            yield rel, st
            if stat.S_ISDIR(st.st_mode):
                subdirs.append(rel)
        stack.extend(reversed(subdirs))


def is_sqlite(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(16) == SQLITE_HEADER
    except OSError:
        return False


def backup_sqlite(src: Path, dest: Path) -> None:
    """One-step online backup: a consistent image as of one read transaction."""
    source = sqlite3.connect(f"file:{src}?mode=ro", uri=True, timeout=30)
    try:
        target = sqlite3.connect(dest)
        try:
            source.backup(target)
        finally:
            target.close()
    finally:
        source.close()
    for side in ("-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{dest}{side}")


@dataclass
class Capture:
    root: Path
    files: int = 0
    raw_size: int = 0
    databases: list[str] = field(default_factory=list)
    digest: str = ""


def capture(home: Path, staging: Path, patterns: tuple[str, ...]) -> Capture:
    """Copy `home` into `staging` (which must not exist) consistently; fill in the digest."""
    staging.mkdir(parents=True)
    out = Capture(root=staging)
    with contextlib.suppress(ValueError):  # never copy the copy into itself
        patterns = (*patterns, staging.resolve().relative_to(home.resolve()).as_posix())
    dir_modes: list[tuple[Path, os.stat_result]] = []
    same_device = home.stat().st_dev == staging.stat().st_dev
    for rel, st in _walk(home, patterns):
        src, dst = home / rel, staging / rel
        mode = st.st_mode
        try:
            if stat.S_ISDIR(mode):
                dst.mkdir()
                dir_modes.append((dst, st))
            elif stat.S_ISLNK(mode):
                os.symlink(os.readlink(src), dst)
                out.files += 1
            elif stat.S_ISREG(mode):
                if is_sqlite(src):
                    try:
                        backup_sqlite(src, dst)
                        os.chmod(dst, stat.S_IMODE(mode))
                        with contextlib.suppress(PermissionError):
                            os.chown(dst, st.st_uid, st.st_gid)
                        out.databases.append(rel)
                    except sqlite3.DatabaseError as exc:
                        log.warning("%s: not a readable SQLite database (%s); copying it as a file", rel, exc)
                        with contextlib.suppress(FileNotFoundError):
                            dst.unlink()
                        shutil.copy2(src, dst)
                elif same_device:
                    try:
                        os.link(src, dst)
                    except OSError:
                        shutil.copy2(src, dst)
                else:
                    shutil.copy2(src, dst)
                out.files += 1
                out.raw_size += dst.stat().st_size
            # sockets, fifos and devices have no place in a snapshot
        except FileNotFoundError:
            continue  # removed while we walked: the next snapshot sees the new state
    for d, st in reversed(dir_modes):
        os.chmod(d, stat.S_IMODE(st.st_mode))
        with contextlib.suppress(PermissionError):
            os.chown(d, st.st_uid, st.st_gid)
    out.digest = tree_digest(staging)
    return out


def tree_digest(root: Path) -> str:
    """sha256 over paths, types, modes, symlink targets and contents; mtimes and owners ignored."""
    h = hashlib.sha256(b"flare-tree-v1\0")
    for rel, st in _walk(root, ()):
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            h.update(f"d {rel}\0{stat.S_IMODE(mode):o}\0".encode())
        elif stat.S_ISLNK(mode):
            h.update(f"l {rel}\0{os.readlink(root / rel)}\0".encode())
        elif stat.S_ISREG(mode):
            with (root / rel).open("rb") as f:
                content = hashlib.file_digest(f, "sha256").hexdigest()
            h.update(f"f {rel}\0{stat.S_IMODE(mode):o}\0{content}\0".encode())
    return h.hexdigest()


def fingerprint(home: Path, patterns: tuple[str, ...]) -> str | None:
    """A cheap stat-only fingerprint of the home, or None when a file changed too recently to trust it.

    Equal fingerprints mean nothing in the capture changed, so an idle bot's
    periodic snapshot reads no file contents at all.
    """
    now = time.time_ns()
    wal_kept = tuple(p for p in patterns if p not in _WAL_PATTERNS)
    h = hashlib.sha256(b"flare-fp-v1\0")
    for rel, st in _walk(home, wal_kept):
        # Not ctime: capturing hard-links files, which bumps their ctime every time.
        if st.st_mtime_ns >= now - RACY_WINDOW_NS:
            return None
        target = os.readlink(home / rel) if stat.S_ISLNK(st.st_mode) else ""
        h.update(f"{rel}\0{st.st_mode:o}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\0{target}\0".encode())
    return h.hexdigest()
