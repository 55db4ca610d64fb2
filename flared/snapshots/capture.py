"""What a snapshot holds of a live Hermes home, read in place: no copy of the home.

One walk decides every entry. Left out: runtime files, `snapshots.exclude`,
flared's secret files (`.env`; credentials unless snapshots are encrypted),
and whatever could carry data from outside the home or a secret into the
store: a file with the content of a secret file (a copy or a hard link of
`.env` under any name), a hard link to a file outside the home, a symlink that
resolves outside the home, sockets, fifos and devices.

Regular files are packed straight from the home. SQLite databases (found by
their header, not their name) are packed from a consistent copy made with the
online backup API, which gives a transactionally consistent image even while
the gateway writes in WAL mode; the copy is kept and reused while the database
and its WAL do not change (:mod:`.hashcache`). The backup opens the database
read-write so that, being the last connection, it removes the `-wal`/`-shm`
files its own read created (a read-only connection leaves them behind).

Content hashes are cached by (device, inode, size, mtime, ctime), so the
digest re-reads only changed files; a stat-only fingerprint of the walk lets
an idle bot skip even that.

Size: the walk, its rules (exclusions, secrets, links) and the digest are
one pass over the home; split, each part would walk or re-stat it again.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import sqlite3
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from flared.config.units import human_bytes
from flared.snapshots.hashcache import DbCopy, HashCache, db_key, settled, stat_key

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
#: Rendered by flared at every start from the YAML; never stored, nor its content under another name.
ALWAYS_EXCLUDED = (".env",)
#: Credentials Hermes writes itself; stored only when snapshots are encrypted.
CREDENTIAL_FILES = ("auth.json", "slack_tokens.json")
#: Side files a fingerprint must see although the snapshot leaves them out: a WAL holds data.
_WAL_PATTERNS = ("*.db-wal", "*-wal")
#: Files modified this close to a scan cannot be trusted by stat data alone (coarse mtimes).
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


@lru_cache(maxsize=64)
def _any_regex(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    """All patterns as one regex: one match per path instead of one per pattern."""
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{_glob_regex(p).pattern})" for p in patterns))


def _one_name(pattern: str) -> bool:
    """Whether a pattern matches exactly one path component (no `/`, no `**`): it matches a
    path iff it matches the path's name or one of its directories' names."""
    return "/" not in pattern.rstrip("/") and "**" not in pattern  # as _glob_regex anchors


@lru_cache(maxsize=64)
def _split_regex(patterns: tuple[str, ...]) -> tuple[re.Pattern[str] | None, re.Pattern[str] | None]:
    """For a walk that never enters a matched directory: one regex for the entry's name
    (patterns of one component: its directories were already tested), one for its whole
    path (the others). Same answers as :func:`_any_regex`, without a prefix search per name."""
    names = []
    for p in patterns:
        if _one_name(p):
            body = _glob_regex(p).pattern.removeprefix("^(?:.*/)?").removesuffix("(?:/.*)?$")
            names.append(f"(?:{body})")
    name_rx = re.compile("|".join(names)) if names else None
    return name_rx, _any_regex(tuple(p for p in patterns if not _one_name(p)))


def matches(rel: str, patterns: Iterable[str]) -> bool:
    """Whether a home-relative path (or a directory above it) matches any pattern."""
    rx = _any_regex(tuple(patterns))
    return rx is not None and rx.match(rel) is not None


@dataclass(frozen=True)
class Rules:
    """What a walk leaves out: `exclude` silently; `secret` also by content, under any name."""

    exclude: tuple[str, ...]
    secret: tuple[str, ...]

    @property
    def all(self) -> tuple[str, ...]:
        return (*self.exclude, *self.secret)


def rules(user: Iterable[str], *, encrypted: bool) -> Rules:
    secret = ALWAYS_EXCLUDED if encrypted else (*ALWAYS_EXCLUDED, *CREDENTIAL_FILES)
    return Rules((*RUNTIME_EXCLUDES, *user), secret)


def exclusions(user: Iterable[str], *, encrypted: bool) -> tuple[str, ...]:
    """Every pattern a snapshot leaves out (the change watcher ignores these paths)."""
    return rules(user, encrypted=encrypted).all


# ---------------------------------------------------------------------- the walk


@dataclass
class Walk:
    """One stat pass over a home: what may go in, and what was seen beside it."""

    home: Path
    started_ns: int
    entries: list[tuple[str, os.stat_result]] = field(default_factory=list)  # parents first, sorted
    side: dict[str, os.stat_result] = field(default_factory=dict)  # WAL files (left out, hold data)
    secrets: list[tuple[str, os.stat_result]] = field(default_factory=list)
    left_out: list[tuple[str, str]] = field(default_factory=list)  # (path, why) beyond the rules
    targets: dict[str, str] = field(default_factory=dict)  # symlink targets kept

    def fingerprint(self) -> str | None:
        """Stat-only: equal fingerprints mean nothing a snapshot holds changed.

        None when a file changed too recently to trust its stat data. Directory
        times are left out: entries added or removed show as paths, and the
        churn of excluded files (logs, pid files, `-shm`) must not count.
        """
        racy = self.started_ns - RACY_WINDOW_NS
        targets = self.targets
        lines = []
        for rel, st in sorted(self.side.items()):  # no ctime: see hashcache.db_key
            if st.st_mtime_ns >= racy:
                return None
            lines.append(f"w {rel}\0{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}\0")
        for rel, st in (*self.entries, *self.secrets):
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                lines.append(f"d {rel}\0{mode:o}\0")
                continue
            if st.st_mtime_ns >= racy:
                return None
            lines.append(
                f"{rel}\0{mode:o}\0{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
                f"\0{targets.get(rel, '')}\0"
            )
        body = "".join(lines).encode("utf-8", "surrogateescape")
        return hashlib.sha256(b"flare-fp-v2\0" + body).hexdigest()


def _inside(root_real: str, path: str) -> bool:
    return path == root_real or path.startswith(root_real + os.sep)


def walk(home: Path, rules_: Rules, *, skip: Iterable[str] = ()) -> Walk:
    """Stat every entry of `home` once, sorted by name, parents before children."""
    out = Walk(home=home, started_ns=time.time_ns())
    root_real = os.path.realpath(home)
    secret_name, secret_path = _split_regex(rules_.secret)
    any_name, any_path = _split_regex(rules_.all)
    wal_rx = _any_regex(_WAL_PATTERNS)
    assert wal_rx is not None
    skipped = set(skip)
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        try:
            entries = sorted(os.scandir(home / rel_dir), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            continue
        subdirs = []
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            if skipped and rel in skipped:
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            name = entry.name
            # One test for the many entries no rule names; then which rule.
            if (any_name is not None and any_name.fullmatch(name)) or (
                any_path is not None and any_path.match(rel)
            ):
                if (secret_name is not None and secret_name.fullmatch(name)) or (
                    secret_path is not None and secret_path.match(rel)
                ):
                    if stat.S_ISREG(st.st_mode):
                        out.secrets.append((rel, st))
                    continue
                if stat.S_ISREG(st.st_mode) and wal_rx.match(rel):
                    out.side[rel] = st
                continue
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                out.entries.append((rel, st))
                subdirs.append(rel)
            elif stat.S_ISREG(mode):
                if "\n" in rel:
                    out.left_out.append((rel, "its name holds a newline"))
                    continue
                out.entries.append((rel, st))
            elif stat.S_ISLNK(mode):
                try:
                    target = os.readlink(home / rel)
                except FileNotFoundError:
                    continue
                if not _inside(root_real, os.path.realpath(home / rel)):
                    out.left_out.append((rel, f"a symlink to {target!r}, outside the home"))
                    continue
                if "\n" in rel or "\n" in target or target != target.strip():
                    out.left_out.append((rel, "a symlink whose name or target cannot be packed"))
                    continue
                out.targets[rel] = target
                out.entries.append((rel, st))
            else:
                out.left_out.append((rel, "a socket, fifo or device"))
        stack.extend(reversed(subdirs))
    return out


def _all_links(home: Path, inodes: set[tuple[int, int]]) -> dict[tuple[int, int], int]:
    """How many names each of `inodes` has anywhere under `home`, excluded parts included."""
    found: dict[tuple[int, int], int] = {}
    for dirpath, _dirs, files in os.walk(home):
        for name in files:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(dirpath, name))
                key = (st.st_dev, st.st_ino)
                if key in inodes:
                    found[key] = found.get(key, 0) + 1
    return found


# ---------------------------------------------------------------------- content


@dataclass(frozen=True)
class Entry:
    """One thing in the snapshot, and where mksquashfs reads it."""

    rel: str
    kind: str  # "d" directory, "f" regular file, "l" symlink
    st: os.stat_result
    sha256: str = ""  # files: content hash
    target: str = ""  # symlinks
    source: str = ""  # files: the path mksquashfs reads (the home's file, or a database copy)
    database: bool = False


@dataclass
class Captured:
    """The walk with contents hashed: the digest, and what to pack."""

    home: Path
    root: os.stat_result
    entries: list[Entry]
    digest: str
    files: int
    raw_size: int
    databases: list[str]
    left_out: list[tuple[str, str]]
    duplicates: bool  # two files share content: mksquashfs' duplicate check pays off
    allocated_size: int = 0  # disk blocks the files take (a sparse file: far less than raw_size)
    hashed_bytes: int = 0  # what this scan read (0 when every hash came from the cache)
    backed_up: list[str] = field(default_factory=list)  # databases copied this time


def is_sqlite(path: str | Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(16) == SQLITE_HEADER
    except OSError:
        return False


def backup_sqlite(src: Path, dest: Path) -> None:
    """One-step online backup: a consistent image as of one read transaction.

    Opened read-write (never created: `mode=rw`): a read-only connection to a WAL
    database that nobody has open creates `-wal` and `-shm` and cannot remove them.
    """
    source = sqlite3.connect(f"file:{src}?mode=rw", uri=True, timeout=30)
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


class DatabaseCopyFailed(Exception):
    """A file with SQLite's header could not be copied consistently: the snapshot must fail.

    Packing its main file instead would drop what its WAL holds (the newest turns) and
    publish that as `latest`. `needed`/`free`: bytes the copy takes at most, and what its
    directory has free (for a full disk).
    """

    def __init__(self, message: str, *, needed: int, free: int) -> None:
        super().__init__(message)
        self.needed = needed
        self.free = free


def free_bytes(path: Path) -> int:
    """What an unprivileged writer may still put at `path` (or the nearest existing parent)."""
    for p in (path, *path.parents):
        with contextlib.suppress(OSError):
            st = os.statvfs(p)
            return st.f_bavail * st.f_frsize
    return 0


def _copy_failed(rel: str, exc: sqlite3.Error, needed: int, where: Path) -> DatabaseCopyFailed:
    free = free_bytes(where)
    text = (
        f"{rel} could not be copied consistently ({exc}); the snapshot is not published, latest is unchanged"
    )
    if getattr(exc, "sqlite_errorname", "") == "SQLITE_FULL" or free < needed:
        text += (
            f": the copy needs {human_bytes(needed)} in {where}, {human_bytes(free)} is free "
            "there; free some space and the next snapshot takes it"
        )
    return DatabaseCopyFailed(text, needed=needed, free=free)


def _copy_size(src: Path) -> int | None:
    """How big a consistent copy of `src` is: its pages as of now, the WAL's included (the
    WAL file itself can be many times that). None when SQLite cannot say."""
    try:
        db = sqlite3.connect(f"file:{src}?mode=rw", uri=True, timeout=5)
        try:
            (pages,) = db.execute("PRAGMA page_count").fetchone()
            (size,) = db.execute("PRAGMA page_size").fetchone()
            return int(pages) * int(size)
        finally:
            db.close()
    except sqlite3.Error:
        return None


def db_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _sha256(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _copy_database(
    home: Path, rel: str, st: os.stat_result, walked: Walk, cache: HashCache
) -> tuple[DbCopy | None, bool]:
    """A consistent copy of one database and whether it was made now (False: reused).

    (None, False) when the file is no longer a database (replaced since the walk); any other
    failure raises :class:`DatabaseCopyFailed`: never a database packed without its WAL.
    """
    wal = walked.side.get(f"{rel}-wal")
    reusable = settled(st, walked.started_ns, RACY_WINDOW_NS) and (
        wal is None or settled(wal, walked.started_ns, RACY_WINDOW_NS)
    )
    entry = cache.db_copy(rel, st, wal)
    if entry is not None:
        cache.remember_db(rel, entry if reusable else None)
        return entry, False
    dest = cache.copy_path(rel)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        backup_sqlite(home / rel, tmp)
    except sqlite3.Error as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if not is_sqlite(home / rel):  # replaced or removed since the walk: it is no database now
            log.warning("%s: no longer a SQLite database (%s); packing it as a file", rel, exc)
            return None, False
        needed = _copy_size(home / rel) or st.st_size + (wal.st_size if wal is not None else 0)
        raise _copy_failed(rel, exc, needed, tmp.parent) from None
    os.chmod(tmp, stat.S_IMODE(st.st_mode))
    with contextlib.suppress(PermissionError):
        os.chown(tmp, st.st_uid, st.st_gid)
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    sha = _sha256(tmp)
    os.replace(tmp, dest)
    entry = DbCopy(
        db=db_key(st),
        wal=db_key(wal) if wal else "",
        sha256=sha,
        copy=dest.name,
        copy_key=stat_key(os.stat(dest)),
    )
    cache.remember_db(rel, entry if reusable else None)
    return entry, True


def capture(walked: Walk, cache: HashCache) -> Captured:
    """Hash what the walk kept (from the cache where the stat key still matches)."""
    home = walked.home
    since = walked.started_ns
    entries: list[Entry] = []
    databases: list[str] = []
    backed_up: list[str] = []
    left_out = list(walked.left_out)
    hashed = 0
    raw_size = 0  # what the snapshot holds: a database by its copy (its WAL's content included)
    allocated_size = 0  # the disk blocks that takes: a sparse file far less than its size
    copies: set[str] = set()

    home_s = str(home)

    def content(rel: str, st: os.stat_result, key: str) -> str | None:
        nonlocal hashed
        cached = cache.file(key)
        if cached is not None:
            return cached
        try:
            sha = _sha256(f"{home_s}/{rel}")
        except FileNotFoundError:
            return None
        hashed += st.st_size
        if settled(st, since, RACY_WINDOW_NS):
            cache.remember_file(key, sha)
        return sha

    secret_shas: dict[str, str] = {}
    for rel, st in walked.secrets:
        if st.st_size == 0:
            continue
        sha = content(rel, st, stat_key(st))
        if sha is not None:
            secret_shas.setdefault(sha, rel)
    secret_inodes = {(st.st_dev, st.st_ino): rel for rel, st in walked.secrets}

    # Hard links: a name whose inode has more links than the home shows is shared with
    # a file elsewhere, whose content (a key, another user's file) must not ride along.
    multi = {
        (st.st_dev, st.st_ino): st.st_nlink
        for _, st in walked.entries
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1
    }
    outside: set[tuple[int, int]] = set()
    if multi:
        seen: dict[tuple[int, int], int] = {}
        for _, st in (*walked.entries, *walked.secrets, *walked.side.items()):
            key = (st.st_dev, st.st_ino)
            if key in multi:
                seen[key] = seen.get(key, 0) + 1
        short = {k for k, n in multi.items() if seen.get(k, 0) < n}
        if short:
            everywhere = _all_links(home, short)
            outside = {k for k in short if everywhere.get(k, 0) < multi[k]}

    for rel, st in walked.entries:
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            entries.append(Entry(rel, "d", st))
            continue
        if stat.S_ISLNK(mode):
            entries.append(Entry(rel, "l", st, target=walked.targets[rel]))
            continue
        inode = (st.st_dev, st.st_ino)
        if inode in secret_inodes:
            left_out.append((rel, f"a hard link to {secret_inodes[inode]}"))
            continue
        if inode in outside:
            left_out.append((rel, "a hard link to a file outside the home"))
            continue
        db: DbCopy | None = None
        skey = stat_key(st)
        path = f"{home_s}/{rel}"
        if skey not in cache and is_sqlite(path):
            try:
                db, made = _copy_database(home, rel, st, walked, cache)
            except FileNotFoundError:
                continue  # removed while we walked: the next snapshot sees the new state
            if db is not None:
                copies.add(db.copy)
                if made:
                    backed_up.append(rel)
                    hashed += db_size(cache.db_dir / db.copy)
        if db is not None:
            sha = db.sha256
            source = str(cache.db_dir / db.copy)
            databases.append(rel)
        else:
            got = content(rel, st, skey)
            if got is None:
                continue
            sha, source = got, path
        if sha in secret_shas:
            left_out.append((rel, f"it has the content of {secret_shas[sha]}"))
            continue
        entries.append(Entry(rel, "f", st, sha256=sha, source=source, database=db is not None))
        size = db_size(Path(source)) if db is not None else st.st_size
        raw_size += size
        allocated_size += size if db is not None else st.st_blocks * 512  # a copy is dense

    for rel, why in left_out:
        log.warning("snapshot leaves out %s: %s", rel, why)
    cache.save(copies)
    sizes = {e.sha256: e.st.st_size for e in entries if e.kind == "f" and e.st.st_size > 0}
    files = [e for e in entries if e.kind != "d"]
    content_files = [e for e in entries if e.kind == "f" and e.st.st_size > 0]
    return Captured(
        home=home,
        root=os.stat(home),
        entries=entries,
        digest=digest(entries),
        files=len(files),
        raw_size=raw_size,
        allocated_size=allocated_size,
        databases=databases,
        left_out=left_out,
        duplicates=len(sizes) < len(content_files),
        hashed_bytes=hashed,
        backed_up=backed_up,
    )


def digest(entries: Iterable[Entry]) -> str:
    """sha256 over paths, types, modes, symlink targets and contents; mtimes and owners ignored."""
    h = hashlib.sha256(b"flare-tree-v1\0")
    for e in entries:
        perm = stat.S_IMODE(e.st.st_mode)
        if e.kind == "d":
            line = f"d {e.rel}\0{perm:o}\0"
        elif e.kind == "l":
            line = f"l {e.rel}\0{e.target}\0"
        else:
            line = f"f {e.rel}\0{perm:o}\0{e.sha256}\0"
        h.update(line.encode("utf-8", "surrogateescape"))
    return h.hexdigest()
