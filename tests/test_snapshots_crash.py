"""kill -9 of the snapshotting process at each step never costs `latest`; the next run cleans up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from flared.config.loader import load_config
from flared.snapshots import catalog
from flared.snapshots import restore as restoring
from flared.snapshots.service import SnapshotService
from flared.snapshots.stores import Store
from tests.fixtures.flare import ROOT, bot, config
from tests.fixtures.homes import make_home

pytestmark = pytest.mark.integration

CHILD = r"""
import os, signal, subprocess, sys, time
from flared.config.loader import load_config
from flared.snapshots import pack
from flared.snapshots.service import SnapshotService

config, point = sys.argv[1], sys.argv[2]
svc = SnapshotService(load_config(config))

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if point == "pack":
    real = pack._run
    def run(cmd):
        if cmd[0].endswith("mksquashfs"):
            subprocess.Popen(cmd)
            time.sleep(0.2)
            die()
        return real(cmd)
    pack._run = run
else:
    store = svc.store
    put_file, put_bytes = store.put_file, store.put_bytes
    def upload(key, path, *, progress=None, **kw):
        return put_file(key, path, progress=lambda n: die(), **kw)
    def small(key, data, **kw):
        if point == "manifest" and "/snapshots/" in key:
            die()
        if point == "pointer" and key.endswith("latest.json"):
            die()
        return put_bytes(key, data, **kw)
    if point == "upload":
        store.put_file = upload
    store.put_bytes = small

st = svc.state("athena")
with svc._exclusive(st):
    svc._confirm(st, fresh=False)
print(svc.snapshot("athena"))
sys.exit(3)  # not reached when the kill point is hit
"""


def _setup(tmp_path: Path, store_section: dict[str, Any]) -> Path:
    data = config(tmp_path, [bot("athena")], store=store_section)
    path = tmp_path / "hermes-flare.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _complete_ids(store: Store) -> set[str]:
    return {i.id for i in catalog.list_ids(store, "athena") if i.has_blob and i.has_manifest}


@pytest.mark.parametrize("point", ["pack", "upload", "manifest", "pointer"])
@pytest.mark.parametrize("backend", ["local", "s3"])
def test_kill_9_at_each_step(tmp_path: Path, point: str, backend: str) -> None:
    if backend == "s3":
        from tests.fixtures.s3server import store_config

        with store_config() as section:
            section.update(multipart_threshold="8MiB", multipart_chunksize="8MiB")
    else:
        section = {"url": f"file://{tmp_path / 'store'}"}
    cfg_path = _setup(tmp_path, section)
    loaded = load_config(cfg_path)
    home = make_home(loaded.state_dir / "bots" / "athena" / "home")
    svc = SnapshotService(loaded)
    st = svc.state("athena")
    svc._confirm(st, fresh=False)
    first = svc.snapshot("athena")
    assert first["result"] == "ok"

    (home / "memories" / "USER.md").write_text("changed after the first snapshot\n")
    (home / "big.bin").write_bytes(os.urandom(20 * 1024 * 1024))  # multipart on S3
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(cfg_path), point],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == -9, child.stdout + child.stderr

    # `latest` still names the first snapshot, and it restores.
    store = svc.store
    latest, _ = catalog.read_latest(store, "athena")
    assert latest is not None and latest.id == first["id"]
    out = tmp_path / "restored"
    res = restoring.restore(store, "athena", out, tmp_path / "rw", key=None)
    assert res.result == "restored" and res.id == first["id"]
    assert (out / "memories" / "USER.md").read_text() == "User's dog is called Yodel.\n"

    # The next run (a new process: state read from disk) publishes and cleans the leftovers.
    again = SnapshotService(load_config(cfg_path))
    st2 = again.state("athena")
    again._confirm(st2, fresh=False)
    second = again.snapshot("athena")
    assert second["result"] == "ok", second
    assert _complete_ids(store) == {first["id"], second["id"]}
    assert {i.id for i in catalog.list_ids(store, "athena")} == {first["id"], second["id"]}
    assert st2.in_flight == []
    if backend == "local":
        leftovers = [p.name for p in (tmp_path / "store" / "athena" / "snapshots").iterdir()]
        assert not [n for n in leftovers if n.startswith(".tmp-")], leftovers
    else:
        from tests.fixtures.s3server import shared_server

        bucket = section["url"][5:].split("/")[0]
        assert shared_server().client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert not (loaded.state_dir / "snapshots" / "work" / "athena").exists()
