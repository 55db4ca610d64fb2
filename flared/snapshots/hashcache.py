"""Content hashes kept between snapshots, so a snapshot re-reads only files that changed.

A file's sha256 is remembered under its (device, inode, size, mtime_ns,
ctime_ns): any write, rename-over or chmod changes that key. A database's
consistent copy is remembered under the stat keys of the database *and* its
WAL, so an unchanged database is neither backed up nor hashed again.

Entries whose times fall within the racy window of the scan are never
remembered: a write in the same clock tick would not change the key.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("flared.snapshots")

VERSION = 1


def stat_key(st: os.stat_result) -> str:
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def db_key(st: os.stat_result) -> str:
    """A database's or WAL's key, without ctime: SQLite itself changes a WAL's ctime when a
    connection opens it as root (it chowns the WAL to the database's owner), and any write
    changes mtime anyway."""
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def settled(st: os.stat_result, since_ns: int, racy_ns: int) -> bool:
    """Whether a file was last written long enough ago that a later write must change its key
    (a write in the same clock tick as the one we saw would leave mtime as it was)."""
    return st.st_mtime_ns < since_ns - racy_ns


@dataclass(frozen=True)
class DbCopy:
    """A consistent copy of one database: valid while `db` and `wal` keys still match."""

    db: str
    wal: str  # "" when the database had no WAL file
    sha256: str
    copy: str  # file name under the cache's `db/`
    copy_key: str  # stat key of the copy itself: a copy changed behind our back is not trusted


class HashCache:
    """One bot's cache: `<dir>/hashes.json` and database copies in `<dir>/db/`.

    With `dir` None (an import, a test) nothing is remembered between runs and
    database copies live in a scratch dir the caller removes.
    """

    def __init__(self, directory: Path | None, scratch: Path) -> None:
        self.dir = directory
        self.db_dir = (directory or scratch) / "db"
        self._files: dict[str, str] = {}
        self._dbs: dict[str, DbCopy] = {}
        self._seen_files: dict[str, str] = {}
        self._seen_dbs: dict[str, DbCopy] = {}
        if directory is not None:
            self._load(directory / "hashes.json")

    def _load(self, path: Path) -> None:
        try:
            raw = json.loads(path.read_bytes())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("%s unreadable (%s): hashing every file again", path, exc)
            return
        if not isinstance(raw, dict) or raw.get("version") != VERSION:
            return
        files = raw.get("files")
        if isinstance(files, dict):
            self._files = {str(k): str(v) for k, v in files.items()}
        dbs = raw.get("dbs")
        if isinstance(dbs, dict):
            for rel, d in dbs.items():
                with contextlib.suppress(TypeError, KeyError):
                    self._dbs[str(rel)] = DbCopy(**d)

    # ------------------------------------------------------------------ files

    def file(self, key: str) -> str | None:
        """The content hash of the file with this :func:`stat_key`, if known; a hash looked up
        is carried into the next save."""
        sha = self._files.get(key)
        if sha is not None:
            self._seen_files[key] = sha
        return sha

    def __contains__(self, key: str) -> bool:
        return key in self._files

    def remember_file(self, key: str, sha256: str) -> None:
        self._seen_files[key] = sha256

    # ------------------------------------------------------------------ databases

    def db_copy(self, rel: str, db: os.stat_result, wal: os.stat_result | None) -> DbCopy | None:
        entry = self._dbs.get(rel)
        if entry is None or entry.db != db_key(db) or entry.wal != (db_key(wal) if wal else ""):
            return None
        try:
            if stat_key(os.stat(self.db_dir / entry.copy)) != entry.copy_key:
                return None
        except OSError:
            return None
        return entry

    def copy_path(self, rel: str) -> Path:
        import hashlib

        return self.db_dir / (hashlib.sha256(rel.encode("utf-8", "surrogateescape")).hexdigest()[:24] + ".db")

    def remember_db(self, rel: str, entry: DbCopy | None) -> None:
        """Record this scan's copy of `rel` (None: not safe to reuse next time, but the copy stays)."""
        if entry is not None:
            self._seen_dbs[rel] = entry
        else:
            self._seen_dbs.pop(rel, None)

    # ------------------------------------------------------------------ persistence

    def save(self, keep_copies: set[str]) -> None:
        """Write what this scan used; drop copies of databases that are gone."""
        with contextlib.suppress(FileNotFoundError):
            for p in self.db_dir.iterdir():
                if p.name not in keep_copies:
                    with contextlib.suppress(OSError):
                        p.unlink()
        if self.dir is None or (self._seen_files == self._files and self._seen_dbs == self._dbs):
            return  # nothing new to remember
        data = {
            "version": VERSION,
            "files": self._seen_files,
            "dbs": {rel: vars(d) for rel, d in self._seen_dbs.items()},
        }
        path = self.dir / "hashes.json"
        tmp = path.with_name(path.name + ".tmp")
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(data, separators=(",", ":")))
            os.replace(tmp, path)
        except OSError as exc:  # a full disk must not fail the snapshot that just worked
            log.warning("could not save %s (%s): the next snapshot hashes every file again", path, exc)
            with contextlib.suppress(OSError):
                tmp.unlink()
