"""One snapshot / one restore end to end, against both stores (real squashfs-tools)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from flared.config.models import SnapshotsConfig
from flared.snapshots import catalog
from flared.snapshots import restore as restoring
from flared.snapshots.catalog import Fence
from flared.snapshots.manifest import Manifest, blob_key, latest_key, manifest_key
from flared.snapshots.pipeline import SnapshotJob, take_snapshot
from flared.snapshots.restore import restore
from flared.snapshots.stores import PreconditionFailed, Store
from tests.fixtures import homes
from tests.fixtures.homes import NEVER, make_home, tree

store_cfg, store = homes.store_cfg, homes.store  # fixtures: a directory and a real S3 server

pytestmark = pytest.mark.integration


#: These tests are about databases inside the snapshot (streaming off, as with encryption);
#: with streaming on they are left out: see the test at the end.
UNSTREAMED = SnapshotsConfig(stream={"enabled": False})  # type: ignore[arg-type]


def job(store: Store, home: Path, tmp: Path, fence: Fence, **kw: object) -> SnapshotJob:
    policy = kw.pop("policy", UNSTREAMED)
    return SnapshotJob(
        store=store, bot="athena", home=home, work=tmp / "work", policy=policy, fence=fence, **kw
    )  # type: ignore[arg-type]


def test_round_trip_keeps_everything_that_matters(store: Store, tmp_path: Path) -> None:
    home = make_home(tmp_path / "home", big=100 * 1024 * 1024)
    res = take_snapshot(job(store, home, tmp_path, Fence(None)))
    assert res.result == "ok", res.reason
    assert res.packed_size and res.packed_size < 100 * 1024 * 1024 * 0.2  # the big file compresses
    out = tmp_path / "restored" / "home"
    back = restore(store, "athena", out, tmp_path / "rwork", key=None)
    assert back.result == "restored" and back.id == res.id
    for gone in NEVER:
        assert not (out / gone).exists(), gone
    assert tree(out) == tree(home, skip=NEVER)
    assert (out / "empty-dir").is_dir()


def test_unchanged_snapshot_uploads_nothing(store: Store, tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    first = take_snapshot(job(store, home, tmp_path, Fence(None)))
    before = [(o.key, o.etag) for o in store.list("athena/")]
    # Full path: no fingerprint yet, so the capture is digested and compared.
    second = take_snapshot(job(store, home, tmp_path, first.fence))  # type: ignore[arg-type]
    assert (second.result, second.bytes_uploaded, second.id) == ("unchanged", 0, first.id)
    # Fast path: the stat fingerprint matches (files older than the racy window).
    time.sleep(2.1)
    third = take_snapshot(job(store, home, tmp_path, first.fence))  # type: ignore[arg-type]
    assert third.fingerprint is not None
    fourth = take_snapshot(job(store, home, tmp_path, first.fence, fingerprint=third.fingerprint))  # type: ignore[arg-type]
    assert (fourth.result, fourth.bytes_uploaded) == ("unchanged", 0)
    assert [(o.key, o.etag) for o in store.list("athena/")] == before
    # A change is seen, runtime noise is not.
    (home / "gateway_state.json").write_text('{"gateway_state": "running"}')
    (home / "logs" / "gateway.log").write_text("more noise\n")
    assert take_snapshot(job(store, home, tmp_path, first.fence)).result == "unchanged"  # type: ignore[arg-type]
    (home / "memories" / "USER.md").write_text("User's cat is called Biscuit.\n")
    changed = take_snapshot(job(store, home, tmp_path, first.fence))  # type: ignore[arg-type]
    assert changed.result == "ok" and changed.id != first.id


WRITER = """
import os, sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA journal_mode=WAL")
db.execute("PRAGMA wal_autocheckpoint=50")
n = 0
while True:
    n += 1
    db.execute("BEGIN")
    db.execute("INSERT INTO messages(body) VALUES (?)", ("x" * 2000 + str(n),))
    db.execute("INSERT INTO messages(body) VALUES (?)", ("pair " + str(n),))
    db.execute("COMMIT")
    with open(sys.argv[2] + ".tmp", "w") as f:
        f.write(str(n))
    os.replace(sys.argv[2] + ".tmp", sys.argv[2])  # a reader never sees it half-written
"""


def test_snapshot_of_a_database_being_written_is_consistent(tmp_path: Path) -> None:
    from flared.snapshots.stores.local import LocalStore

    store = LocalStore(tmp_path / "store")
    home = make_home(tmp_path / "home")
    counter = tmp_path / "committed"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(home / "state.db"), str(counter)])
    try:
        while not counter.exists() or int(counter.read_text() or 0) < 200:
            time.sleep(0.05)
        committed_before = int(counter.read_text())
        res = take_snapshot(job(store, home, tmp_path, Fence(None)))
        assert res.result == "ok", res.reason
    finally:
        writer.kill()
        writer.wait()
    out = tmp_path / "restored"
    assert restore(store, "athena", out, tmp_path / "rwork", key=None).result == "restored"
    db = sqlite3.connect(out / "state.db")
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    rows = db.execute("SELECT id, body FROM messages WHERE id > 500 ORDER BY id").fetchall()
    # Every committed transaction up to the capture, and only whole transactions (pairs).
    assert len(rows) >= 2 * committed_before
    assert len(rows) % 2 == 0
    assert [r[0] for r in rows] == list(range(501, 501 + len(rows)))
    assert rows[-1][1] == f"pair {len(rows) // 2}"


def test_encrypted_snapshots(store: Store, tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    (home / "memories" / "USER.md").write_text("PLAINTEXT-MARKER " * 100)
    policy = SnapshotsConfig(encryption={"key": "correct horse battery staple"})  # type: ignore[arg-type]
    res = take_snapshot(job(store, home, tmp_path, Fence(None), policy=policy))
    assert res.result == "ok", res.reason
    raw = tmp_path / "raw.blob"
    store.get_file(blob_key("athena", res.id or ""), raw)
    assert b"PLAINTEXT-MARKER" not in raw.read_bytes()
    assert b"hsqs" not in raw.read_bytes()[:8]  # not a squashfs on the outside
    manifest = Manifest.from_bytes(store.get_bytes(manifest_key("athena", res.id or ""))[0])
    assert manifest.encrypted and manifest.key_id

    wrong = restore(store, "athena", tmp_path / "w", tmp_path / "rw", key="wrong key")
    assert wrong.result == "failed" and "another key" in (wrong.error or "")
    none = restore(store, "athena", tmp_path / "n", tmp_path / "rw", key=None)
    assert none.result == "failed" and "snapshots.encryption.key" in (none.error or "")
    assert not (tmp_path / "w").exists()

    out = tmp_path / "ok"
    assert (
        restore(store, "athena", out, tmp_path / "rw", key="correct horse battery staple").result
        == "restored"
    )
    # Credentials ride along only inside encrypted snapshots; .env never.
    assert (out / "auth.json").exists() and not (out / ".env").exists()
    assert "PLAINTEXT-MARKER" in (out / "memories" / "USER.md").read_text()


def test_damaged_newest_snapshot_falls_back_to_the_previous(store: Store, tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    first = take_snapshot(job(store, home, tmp_path, Fence(None)))
    (home / "memories" / "USER.md").write_text("newer\n")
    time.sleep(1.1)  # ids carry seconds
    second = take_snapshot(job(store, home, tmp_path, first.fence))  # type: ignore[arg-type]
    assert second.result == "ok"
    damaged = tmp_path / "damaged"
    store.get_file(blob_key("athena", second.id or ""), damaged)
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    store.put_bytes(blob_key("athena", second.id or ""), bytes(data))  # bit rot in the store
    out = tmp_path / "restored"
    res = restore(store, "athena", out, tmp_path / "rw", key=None)
    assert res.result == "restored" and res.id == first.id
    assert [f["id"] for f in res.fallback] == [second.id]
    assert "damaged" in res.fallback[0]["reason"]
    assert (out / "memories" / "USER.md").read_text() == "User's dog is called Yodel.\n"


def test_nothing_to_restore_is_empty_not_failed(store: Store, tmp_path: Path) -> None:
    res = restore(store, "athena", tmp_path / "home", tmp_path / "rw", key=None)
    assert res.result == "empty" and res.fence == Fence(None)
    assert not (tmp_path / "home").exists()


def test_restore_keeps_one_rollback_copy(store: Store, tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    take_snapshot(job(store, home, tmp_path, Fence(None)))
    (home / "local-only.txt").write_text("would be replaced")
    assert restore(store, "athena", home, tmp_path / "rw", key=None).result == "restored"
    assert not (home / "local-only.txt").exists()
    assert (restoring.rollback_path(home) / "local-only.txt").read_text() == "would be replaced"


def test_two_writers_race_one_is_fenced(store: Store, tmp_path: Path) -> None:
    """Both start from the same latest; the conditional write lets exactly one publish."""
    home_a = make_home(tmp_path / "a")
    home_b = make_home(tmp_path / "b")
    base = take_snapshot(job(store, home_a, tmp_path / "x", Fence(None)))
    (home_a / "memories" / "USER.md").write_text("A's memory\n")
    (home_b / "memories" / "USER.md").write_text("B's memory\n")
    barrier = threading.Barrier(2)

    class Gate:
        """Hold each writer just before it moves latest.json, then let both go."""

        def __init__(self, inner: Store) -> None:
            self.inner = inner
            self.description = inner.description

        def __getattr__(self, name: str) -> object:
            return getattr(self.inner, name)

        def put_bytes(self, key: str, data: bytes, **kw: object) -> str:
            if key == latest_key("athena"):
                barrier.wait(30)
            return self.inner.put_bytes(key, data, **kw)  # type: ignore[arg-type]

    results = {}

    def run(name: str, home: Path) -> None:
        results[name] = take_snapshot(job(Gate(store), home, tmp_path / f"w-{name}", base.fence))  # type: ignore[arg-type]

    threads = [threading.Thread(target=run, args=(n, h)) for n, h in (("a", home_a), ("b", home_b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    outcomes = sorted(r.result for r in results.values())
    assert outcomes == ["fenced", "ok"]
    winner = next(r for r in results.values() if r.result == "ok")
    out = tmp_path / "restored"
    restored = restore(store, "athena", out, tmp_path / "rw", key=None)
    assert restored.id == winner.id
    # The loser cleaned up after itself: only the base and the winner remain.
    ids = {o.key.split("/")[-1].rsplit(".", 1)[0] for o in store.list("athena/snapshots/")}
    # A work dir inside the home is never captured into itself.
    assert not any("capture-" in k.key for k in store.list("athena/"))
    assert ids == {base.id, winner.id}
    # And a writer whose fence is stale does not even upload.
    loser_fence = base.fence
    again = take_snapshot(job(store, home_a, tmp_path / "again", loser_fence))  # type: ignore[arg-type]
    assert again.result == "fenced" and "flared restore" in (again.reason or "")
    with pytest.raises(PreconditionFailed):
        store.put_bytes(latest_key("athena"), b"{}", if_match=(base.fence.etag if base.fence else ""))


def test_retention_keeps_what_the_policy_says(store: Store, tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    fence = Fence(None)
    ids = []
    for i in range(5):
        (home / "memories" / "USER.md").write_text(f"version {i}\n")
        res = take_snapshot(job(store, home, tmp_path, fence))
        assert res.result == "ok"
        fence = res.fence  # type: ignore[assignment]
        ids.append(res.id)
        time.sleep(1.05)
    policy = SnapshotsConfig(keep={"last": 2, "max_age": "1s"})  # type: ignore[arg-type]
    done = catalog.prune(store, "athena", policy)
    assert sorted(done["expired"]) == sorted(ids[:3])
    remaining = [s["id"] for s in catalog.list_snapshots(store, "athena")]
    assert remaining == [ids[4], ids[3]]
    # max_age null keeps everything beyond `last`.
    assert catalog.prune(store, "athena", SnapshotsConfig(keep={"last": 1, "max_age": None}))["expired"] == []  # type: ignore[arg-type]


def test_with_streaming_the_databases_stay_out_and_the_position_is_recorded(
    store: Store, tmp_path: Path
) -> None:
    home = make_home(tmp_path / "home")
    position = {"at": "2026-12-06T18:00:00.000000Z", "txids": {"state.db": 7}}
    res = take_snapshot(
        job(store, home, tmp_path, Fence(None), policy=SnapshotsConfig(), stream_position=lambda: position)
    )
    assert res.result == "ok", res.reason
    manifest = catalog.read_manifest(store, "athena", res.id)  # type: ignore[arg-type]
    assert manifest.stream == position
    assert manifest.databases == []
    out = tmp_path / "restored"
    assert restore(store, "athena", out, tmp_path / "rwork", key=None).result == "restored"
    assert not list(out.rglob("*.db"))
    assert (out / "memories").is_dir()
