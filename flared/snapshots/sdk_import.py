"""Migration from the original hermes-flare: a Sandbox SDK backup becomes a flared snapshot.

The original kept `/home/hermes` (with `.hermes` inside) as a squashfs made by
the Sandbox SDK's `createBackup`: `<agent>/backup-handle.json` names the
backup, `backups/<id>/data.sqsh` holds it. We unpack it, take `.hermes`, and
publish it through the normal snapshot path (same exclusions, same fencing),
so the bot restores it at its next start.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from flared.config.loader import LoadedConfig
from flared.snapshots import catalog, pack, pipeline
from flared.snapshots.catalog import Fence
from flared.snapshots.pipeline import SnapshotJob
from flared.snapshots.stores import NotFound, Store
from flared.snapshots.stores.factory import open_store
from flared.snapshots.stores.s3 import S3Store


class ImportError_(Exception):
    """The backup cannot be imported (the message says what to do)."""


def _source_store(loaded: LoadedConfig, bucket_url: str, endpoint: str | None) -> Store:
    if not bucket_url.startswith("s3://") or not bucket_url[5:].split("/")[0]:
        raise ImportError_(f"--bucket must look like s3://BUCKET[/PREFIX], not {bucket_url!r}")
    store = loaded.config.store
    key_id = os.environ.get("AWS_ACCESS_KEY_ID")
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY")
    cfg = store.model_copy(
        update={
            "url": bucket_url,
            "endpoint": endpoint or store.endpoint,
            "access_key_id": SecretStr(key_id) if key_id else store.access_key_id,
            "secret_access_key": SecretStr(secret) if secret else store.secret_access_key,
        }
    )
    return S3Store.from_config(cfg)


def backup_id(handle: dict[str, Any]) -> str:
    for key in ("id", "backupId", "backup_id"):
        value = handle.get(key)
        if isinstance(value, str) and value:
            return value
    nested = handle.get("backup")
    if isinstance(nested, dict):
        return backup_id(nested)
    raise ImportError_("backup-handle.json has no backup id (expected an `id` field)")


def find_hermes_home(tree: Path) -> Path:
    """`.hermes` inside the backed-up home, or the tree itself if it is a Hermes home."""
    for candidate in (tree / ".hermes", tree / "home" / "hermes" / ".hermes", tree):
        if (candidate / "config.yaml").exists() or (candidate / "state.db").exists():
            return candidate
    raise ImportError_("the backup holds no Hermes home (no .hermes/config.yaml or .hermes/state.db)")


def import_sdk_backup(
    loaded: LoadedConfig,
    bot: str,
    *,
    bucket_url: str,
    agent: str,
    endpoint: str | None = None,
    force: bool = False,
) -> dict[str, Any]:
    source = _source_store(loaded, bucket_url, endpoint)
    try:
        raw, _ = source.get_bytes(f"{agent.strip('/')}/backup-handle.json")
    except NotFound:
        raise ImportError_(
            f"no {agent}/backup-handle.json in {source.description}: check --bucket and --agent"
        ) from None
    try:
        handle = json.loads(raw)
    except ValueError:
        raise ImportError_(f"{agent}/backup-handle.json is not JSON") from None
    bid = backup_id(handle if isinstance(handle, dict) else {})

    store = open_store(loaded.config.store)
    latest, etag = catalog.read_latest(store, bot)
    if latest is not None and not force:
        raise ImportError_(
            f"{bot} already has snapshots (latest {latest.id}); --force publishes the import as the newest"
        )
    work = Path(
        tempfile.mkdtemp(prefix="import-", dir=loaded.state_dir if loaded.state_dir.exists() else None)
    )
    try:
        blob = work / "data.sqsh"
        try:
            source.get_file(f"backups/{bid}/data.sqsh", blob)
        except NotFound:
            raise ImportError_(f"backup {bid}: backups/{bid}/data.sqsh is missing") from None
        tree = work / "tree"
        try:
            pack.unpack(blob, tree)
        except pack.PackError as exc:
            raise ImportError_(f"backup {bid} is not a readable squashfs: {exc}") from None
        blob.unlink()
        home = find_hermes_home(tree)
        result = pipeline.take_snapshot(
            SnapshotJob(
                store=store,
                bot=bot,
                home=home,
                work=work / "snapshot",
                policy=loaded.config.snapshots,
                fence=Fence(etag, latest.generation if latest else 0, latest.id if latest else None),
                force=True,
            )
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if result.result not in {"ok", "unchanged"}:
        raise ImportError_(f"publishing the import failed: {result.result}: {result.reason}")
    out = result.as_dict()
    out["backup_id"] = bid
    return out
