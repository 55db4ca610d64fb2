"""Snapshot stores: one small protocol, one module per backend.

Every backend gives the same guarantees the snapshot engine relies on:
whole-object puts (a reader never sees half a blob), conditional writes of
small objects (`If-Match` / `If-None-Match`) for the `latest` pointer, and
errors sorted into three kinds the engine treats differently: the object is
not there (:class:`NotFound`), someone else moved it
(:class:`PreconditionFailed`), or the store could not answer
(:class:`StoreUnreachable`), which must never be mistaken for "empty".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

#: Called with the number of bytes moved since the last call.
Progress = Callable[[int], None]


class StoreError(Exception):
    """The store refused or failed a request (message is safe to show: no secrets)."""


class StoreUnreachable(StoreError):
    """The store could not be asked (network, timeout, 5xx, credentials): nothing is known."""


class NotFound(StoreError):
    """The store answered: there is no such object."""


class PreconditionFailed(StoreError):
    """A conditional write lost: the object changed since it was read."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str
    modified: float  # epoch seconds
    sha256: str | None = None  # hex, when the store reports a checksum of the whole object
    metadata: dict[str, str] = field(default_factory=dict)


class Store(Protocol):
    """What the snapshot engine needs from a place to keep objects."""

    #: Where, for logs and status (never credentials).
    description: str

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
        """Upload a file; return what the store reports about it afterwards (size, checksum).

        With `consume` the caller is done with `path`: a store on the same filesystem
        may move the file into place instead of copying it."""
        ...

    def get_file(
        self, key: str, dest: Path, *, size: int | None = None, progress: Progress | None = None
    ) -> ObjectInfo:
        """Download to `dest`. With the `size` known (from a manifest) a small object takes one
        request; the result carries the sha256 of what was written when it was computed on the way."""
        ...

    def get_bytes(self, key: str) -> tuple[bytes, str]:
        """A small object and its ETag."""
        ...

    def put_bytes(
        self, key: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        """Write a small object, optionally only if it still has ETag ``if_match`` or does not
        exist (``if_none_match``); return the new ETag."""
        ...

    def head(self, key: str) -> ObjectInfo: ...

    def local_path(self, key: str) -> Path | None:
        """The object's own file when the store is a directory on this machine (to read in
        place, never to write); None for a remote store."""
        ...

    def list(self, prefix: str) -> list[ObjectInfo]: ...

    def delete(self, key: str) -> None: ...

    def clean_incomplete(self, prefix: str, ids: set[str], older_than: float) -> int:
        """Remove unfinished uploads: those naming one of `ids` at once, others when older."""
        ...
