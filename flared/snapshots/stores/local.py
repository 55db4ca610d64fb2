"""A directory as a store: the embedded default, with the same semantics as S3.

Objects are files under the root. Writes go to a temporary file in the same
directory and are renamed into place, so readers see whole objects only.
Conditional writes compare the current ETag (the content's sha256) under an
exclusive lock on the directory, which makes compare-and-rename atomic for
every writer on this machine (and on any filesystem honouring flock).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from flared.snapshots.stores import (
    NotFound,
    ObjectInfo,
    PreconditionFailed,
    Progress,
    StoreError,
    StoreUnreachable,
)

CHUNK = 1024 * 1024
WriteFn = Callable[[BinaryIO], object]
_TMP_PREFIX = ".tmp-"


def file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.description = f"file://{root}"

    # ------------------------------------------------------------------ helpers

    def _path(self, key: str) -> Path:
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"invalid object key {key!r}")
        return self.root / key

    def _ensure_root(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnreachable(f"store directory {self.root} is not usable: {exc.strerror}") from None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self._ensure_root()
        fd = os.open(self.root / ".lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _write_atomic(self, target: Path, write: WriteFn) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f"{_TMP_PREFIX}{target.name}-", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _info(self, key: str, path: Path, *, sha256: str | None = None) -> ObjectInfo:
        try:
            st = path.stat()
        except FileNotFoundError:
            raise NotFound(f"{key}: no such object") from None
        return ObjectInfo(
            key=key,
            size=st.st_size,
            etag=f"{st.st_size:x}-{st.st_mtime_ns:x}",
            modified=st.st_mtime,
            sha256=sha256,
        )

    # ------------------------------------------------------------------ protocol

    def put_file(
        self,
        key: str,
        path: Path,
        *,
        sha256: str,
        metadata: dict[str, str],
        progress: Progress | None = None,
        consume: bool = False,
    ) -> ObjectInfo:
        self._ensure_root()
        target = self._path(key)
        if consume and self._move_into_place(path, target):
            if progress:
                progress(target.stat().st_size)
            # The very file the caller hashed, renamed: its bytes cannot differ.
            return self._info(key, target, sha256=sha256)

        def copy(f: BinaryIO) -> None:
            with path.open("rb") as src:
                while chunk := src.read(CHUNK):
                    f.write(chunk)
                    if progress:
                        progress(len(chunk))

        self._write_atomic(target, copy)
        # Report what is stored, re-read from disk: the caller compares it with what it sent.
        return self._info(key, target, sha256=file_sha256(target))

    def _move_into_place(self, path: Path, target: Path) -> bool:
        """Rename a finished file into the store (same filesystem only), durably."""
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            if path.stat().st_dev != target.parent.stat().st_dev:
                return False
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(path, target)
        except OSError:
            return False
        dfd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return True

    def get_file(
        self, key: str, dest: Path, *, size: int | None = None, progress: Progress | None = None
    ) -> ObjectInfo:
        """Copy an object out, hashing on the way. Failing to read the object is the store's
        error (StoreError); failing to write `dest` is the caller's machine (OSError as is)."""
        src = self._path(key)
        info = self._info(key, src)
        h = hashlib.sha256()
        try:
            s = src.open("rb")
        except FileNotFoundError:
            raise NotFound(f"{key}: no such object") from None
        except OSError as exc:
            raise StoreError(f"{key}: cannot read it: {exc.strerror}") from None
        with s:
            dest.parent.mkdir(parents=True, exist_ok=True)
            with dest.open("wb") as d:
                while True:
                    try:
                        chunk = s.read(CHUNK)
                    except OSError as exc:
                        raise StoreError(f"{key}: cannot read it: {exc.strerror}") from None
                    if not chunk:
                        break
                    d.write(chunk)
                    h.update(chunk)
                    if progress:
                        progress(len(chunk))
        return dataclasses.replace(info, sha256=h.hexdigest())

    def get_bytes(self, key: str) -> tuple[bytes, str]:
        try:
            data = self._path(key).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"{key}: no such object") from None
        except OSError as exc:
            raise StoreUnreachable(f"{key}: {exc.strerror}") from None
        return data, hashlib.sha256(data).hexdigest()

    def put_bytes(
        self, key: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        target = self._path(key)
        with self._locked():
            if if_match is not None or if_none_match:
                try:
                    current: str | None = hashlib.sha256(target.read_bytes()).hexdigest()
                except FileNotFoundError:
                    current = None
                if if_none_match and current is not None:
                    raise PreconditionFailed(f"{key}: already exists")
                if if_match is not None and current != if_match:
                    raise PreconditionFailed(f"{key}: changed since it was read")
            self._write_atomic(target, lambda f: f.write(data))
        return hashlib.sha256(data).hexdigest()

    def head(self, key: str) -> ObjectInfo:
        return self._info(key, self._path(key))

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def list(self, prefix: str) -> list[ObjectInfo]:
        base = self._path(prefix.rstrip("/")) if prefix.strip("/") else self.root
        if not base.is_dir():
            return []
        out = []
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if name.startswith(_TMP_PREFIX) or name == ".lock":
                    continue
                p = Path(dirpath) / name
                key = p.relative_to(self.root).as_posix()
                with contextlib.suppress(NotFound):  # deleted while listing
                    out.append(self._info(key, p))
        return sorted(out, key=lambda o: o.key)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()

    def clean_incomplete(self, prefix: str, ids: set[str], older_than: float) -> int:
        """Remove half-written temporaries: at once when they belong to `ids` (our own
        killed uploads), after `older_than` seconds otherwise (maybe another writer's)."""
        base = self._path(prefix.rstrip("/"))
        n = 0
        if not base.is_dir():
            return 0
        for p in base.iterdir():
            if not p.name.startswith(_TMP_PREFIX):
                continue
            with contextlib.suppress(OSError):
                ours = any(i in p.name for i in ids)
                if ours or p.stat().st_mtime < time.time() - older_than:
                    p.unlink()
                    n += 1
        return n
