"""The shrink rule (:mod:`flared.snapshots.shrink`) and how the service applies it."""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from pathlib import Path

import yaml

from flared.config.loader import load_config
from flared.snapshots import catalog, shrink
from flared.snapshots.manifest import Manifest
from flared.snapshots.service import SnapshotService
from tests.fixtures.flare import bot, config
from tests.fixtures.homes import make_home

MIB = 1024 * 1024


def manifest(raw_size: int, databases: list[str]) -> Manifest:
    return Manifest(
        "20261201T000000Z-abcdef", "athena", "", "d", 10, raw_size, 1, "s", "zstd", databases=databases
    )


def test_the_rule_trips_on_lost_databases_and_content_not_on_normal_use() -> None:
    basis = manifest(8 * MIB, ["state.db", "kanban.db"])
    everything = ["state.db", "kanban.db"]

    def nowhere(_rel: str) -> bool:
        return False

    # Normal use: sessions deleted (a database shrinks a little), a large file deleted.
    assert shrink.losses(basis, everything, 7 * MIB, nowhere) == []
    assert shrink.losses(basis, everything, 3 * MIB, nowhere) == []
    # A database gone; unless it is still there, only left out by a new `snapshots.exclude`.
    assert shrink.losses(basis, ["state.db"], 8 * MIB, nowhere) == ["kanban.db is gone"]
    assert shrink.losses(basis, ["state.db"], 8 * MIB, lambda rel: rel == "kanban.db") == []
    # Most of the content gone (a home re-created around a fresh state.db).
    assert shrink.losses(basis, everything, MIB, nowhere) == ["1.0 MiB of content left of 8.0 MiB"]
    # A small home swings by whole files: under 256 KiB lost is never "most".
    assert shrink.losses(manifest(200 * 1024, []), [], 1024, nowhere) == []


def service(tmp: Path) -> SnapshotService:
    path = tmp / "hermes-flare.yaml"
    data = config(tmp, [bot("athena")])
    data["snapshots"]["stream"] = {"enabled": False}  # the rule on homes with their databases inside
    path.write_text(yaml.safe_dump(data))
    svc = SnapshotService(load_config(path))
    st = svc.state("athena")
    with svc._exclusive(st):
        svc._confirm(st, fresh=False)
    st.phase = "ready"
    return svc


def test_accept_shrink_publishes_and_a_restored_older_snapshot_is_its_own_basis(tmp_path: Path) -> None:
    svc = service(tmp_path)
    home = make_home(svc.home("athena"))
    (home / "notes.bin").write_bytes(os.urandom(MIB))
    small = svc.snapshot("athena")
    assert small["result"] == "ok"
    time.sleep(1.05)  # ids carry seconds
    (home / "more.bin").write_bytes(os.urandom(4 * MIB))
    big = svc.snapshot("athena")
    assert big["result"] == "ok"
    # Restoring the older, smaller snapshot on purpose is no shrink: it is what the home is now.
    assert svc.restore("athena", small["id"])["result"] == "restored"
    time.sleep(1.05)
    back = svc.snapshot("athena")
    assert back["result"] == "ok" and svc.status("athena")["shrunk"] is None, back
    # Emptied: refused, latest kept, status says why; --accept-shrink publishes it.
    shutil.rmtree(home)
    home.mkdir()
    (home / "config.yaml").write_text("model: {}\n")
    sqlite3.connect(home / "state.db").execute("CREATE TABLE messages(id INTEGER PRIMARY KEY, body TEXT)")
    refused = svc.snapshot("athena")
    assert refused["result"] == "failed", refused
    assert [why.split(" KiB ")[1] for why in refused["shrink"]] == ["of content left of 1.0 MiB"], refused
    assert svc.status("athena")["shrunk"] == refused["reason"]
    assert catalog.read_latest(svc.store, "athena")[0].id == back["id"]  # type: ignore[union-attr]
    accepted = svc.snapshot("athena", accept_shrink=True)
    assert accepted["result"] == "ok" and svc.status("athena")["shrunk"] is None, accepted
    assert catalog.read_latest(svc.store, "athena")[0].id == accepted["id"]  # type: ignore[union-attr]


def test_the_first_streamed_snapshot_after_unstreamed_ones_is_no_shrink(tmp_path: Path) -> None:
    svc = service(tmp_path)
    home = make_home(svc.home("athena"))
    db = sqlite3.connect(home / "state.db")
    db.execute("CREATE TABLE IF NOT EXISTS pad(b BLOB)")
    db.execute("INSERT INTO pad VALUES (?)", (os.urandom(2 * MIB),))
    db.commit()
    db.close()
    assert svc.snapshot("athena")["result"] == "ok"  # the databases inside
    data = yaml.safe_load(svc.loaded.path.read_text())
    data["snapshots"]["stream"] = {"enabled": True}
    svc.loaded.path.write_text(yaml.safe_dump(data))
    svc.update(load_config(svc.loaded.path))
    (home / "memories" / "USER.md").write_text("a change\n")
    streamed = svc.snapshot("athena")  # the databases now in the stream: most of the size left
    assert streamed["result"] == "ok", streamed
    assert svc.status("athena")["shrunk"] is None
