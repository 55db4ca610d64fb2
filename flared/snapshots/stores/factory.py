"""The store a config names: a directory for ``file://``, S3/R2 otherwise.

Kept out of the package's ``__init__`` (the protocol every backend imports)
so the backends and the protocol never import each other.
"""

from __future__ import annotations

from pathlib import Path

from flared.config.models import StoreConfig
from flared.snapshots.stores import Store


def open_store(cfg: StoreConfig) -> Store:
    """The store a config names (file:// paths are already absolute after loading)."""
    if cfg.url.startswith("file://"):
        from flared.snapshots.stores.local import LocalStore

        return LocalStore(Path(cfg.url[len("file://") :]))
    from flared.snapshots.stores.s3 import S3Store  # boto3 loads only when S3 is used

    return S3Store.from_config(cfg)
