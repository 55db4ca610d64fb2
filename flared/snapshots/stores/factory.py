"""The store a config names: a directory for ``file://``, S3/R2 otherwise.

Kept out of the package's ``__init__`` (the protocol every backend imports)
so the backends and the protocol never import each other.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from flared.config.models import StoreConfig
from flared.snapshots.stores import Store

log = logging.getLogger("flared.store")

#: The local default's directory name (``file://./.flare-store``), beside the state dir.
DEFAULT_DIR = ".flare-store"
#: Where the local default used to be (``file://./.flare/store``): inside the state dir, which
#: `make clean` deletes.
LEGACY_DEFAULT = Path(".flare") / "store"


def open_store(cfg: StoreConfig) -> Store:
    """The store a config names (file:// paths are already absolute after loading)."""
    if cfg.url.startswith("file://"):
        from flared.snapshots.stores.local import LocalStore

        return LocalStore(adopt_legacy_default(Path(cfg.url[len("file://") :])))
    from flared.snapshots.stores.s3 import S3Store  # boto3 loads only when S3 is used

    return S3Store.from_config(cfg)


def adopt_legacy_default(root: Path) -> Path:
    """The local store to use at ``root``, moving the old default's snapshots there first.

    Before the default store moved out of the state dir, it was
    ``./.flare/store``. When ``root`` is the new default's directory and holds
    nothing yet while the old one holds snapshots, the old directory is
    renamed into place (one atomic rename, next to each other: nothing is
    copied, nothing can be half-moved) and the log says so. Should the rename
    fail, the old store stays in use where it is, so no snapshot is ever out
    of reach. Anything else (a store already at ``root``, another name) is
    left alone.
    """
    legacy = root.parent / LEGACY_DEFAULT
    if root.name != DEFAULT_DIR or _has_entries(root) or not _has_entries(legacy):
        return root
    try:
        if root.exists():
            root.rmdir()  # empty: make way for the rename
        os.rename(legacy, root)
    except OSError as exc:
        log.warning(
            "the snapshot store is still at %s (the old default, inside the state dir): it could not be "
            "moved to %s (%s); flared keeps using it there. Move it yourself (`mv %s %s`) or set store.url",
            legacy,
            root,
            exc.strerror or exc,
            legacy,
            root,
        )
        return legacy
    log.warning(
        "moved the snapshot store from %s (the old default, inside the state dir that `make clean` "
        "deletes) to %s, the new default: every snapshot is kept",
        legacy,
        root,
    )
    return root


def _has_entries(path: Path) -> bool:
    try:
        with os.scandir(path) as it:
            return any(True for _ in it)
    except OSError:
        return False
