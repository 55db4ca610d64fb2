"""Fault matrix, snapshots, store and restore: each fault injected, then "kept working" and
"nothing lost" asserted (trees, row counts, digests, a restorable `latest`).

Disk-full rows run in a child process with a small tmpfs mounted in its own mount
namespace (`unshare -Urm`: no root needed where user namespaces are, as bubblewrap
needs anyway); the child reports what it saw as JSON.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from flared.config.loader import LoadedConfig, load_config
from flared.snapshots import capture as cap
from flared.snapshots import catalog
from flared.snapshots import restore as restoring
from flared.snapshots.manifest import Latest, Manifest, blob_key, latest_key, manifest_key
from flared.snapshots.service import SnapshotService
from flared.snapshots.stores import Store
from flared.snapshots.stores.local import file_sha256
from tests.fixtures.flare import ROOT, FlareUp, bot, config, run_cli
from tests.fixtures.homes import make_home
from tests.fixtures.homes import tree as full_tree

pytestmark = pytest.mark.integration

NEVER = ("logs", "state", "gateway.pid", ".env", "auth.json")
SIDE = ("state.db-wal", "state.db-shm")  # left by the checks' own SQLite reads, not the home's


def tree(root: Path, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    return full_tree(root, skip=(*skip, *SIDE))


#: These faults are the snapshots' own, databases included: streaming (tests/faults/test_stream.py)
#: would leave the databases out.
UNSTREAMED = {"every": "1h", "on_change": {"enabled": False}, "stream": {"enabled": False}}


def load(tmp: Path, store: dict[str, Any] | None = None, **sections: Any) -> LoadedConfig:
    sections["snapshots"] = {**UNSTREAMED, **sections.get("snapshots", {})}
    data = config(tmp, [bot("athena")], **({"store": store} if store else {}), **sections)
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "hermes-flare.yaml").write_text(yaml.safe_dump(data))
    return load_config(tmp / "hermes-flare.yaml")


def ready_service(loaded: LoadedConfig, gateways: Any = None) -> SnapshotService:
    svc = SnapshotService(loaded, gateways)
    st = svc.state("athena")
    with svc._exclusive(st):
        svc._confirm(st, fresh=False)
    st.phase = "ready"
    return svc


def snap(svc: SnapshotService) -> dict[str, Any]:
    res = svc.snapshot("athena")
    assert res["result"] == "ok", res
    time.sleep(1.05)  # ids carry seconds: the next one sorts after
    return res


def restorable(store: Store, tmp: Path, expect: dict[str, Any] | None = None) -> str:
    """`latest` restores, and (if given) to exactly the tree expected."""
    latest, _ = catalog.read_latest(store, "athena")
    assert latest is not None
    out = tmp / f"check-{time.monotonic_ns()}" / "home"
    res = restoring.restore(store, "athena", out, tmp / "check-work", key=None)
    assert res.result == "restored" and res.id == latest.id, res
    if expect is not None:
        assert tree(out) == expect
    return latest.id


def in_tmpfs(mount: Path, size: str, code: str, *args: str) -> dict[str, Any]:
    """Run `code` (Python; prints one JSON line) with a `size` tmpfs at `mount`, in its own namespace."""
    mount.mkdir(parents=True, exist_ok=True)
    script = f"mount -t tmpfs -o size={size},mode=0755 tmpfs '{mount}'"
    script += ' && py="$0" code="$1" && shift && exec "$py" -c "$code" "$@"'
    proc = subprocess.run(
        ["unshare", "-Urm", "sh", "-c", script, sys.executable, code, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    if proc.returncode != 0 and "unshare" in proc.stderr and "Operation not permitted" in proc.stderr:
        pytest.skip("no user namespaces here: cannot mount a small tmpfs")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


CHILD_PRELUDE = r"""
import json, os, subprocess, sys
from pathlib import Path
from flared.config.loader import load_config
from flared.snapshots.service import SnapshotService
from tests.fixtures.homes import make_home
from tests.fixtures.homes import tree as full_tree

def tree(root):  # the checks' own SQLite reads leave side files; they are not the home's
    return full_tree(root, skip=("state.db-wal", "state.db-shm"))

def remount(where, size):
    subprocess.run(["mount", "-o", f"remount,size={size}", str(where)], check=True)

def ready(cfg):
    svc = SnapshotService(load_config(cfg))
    st = svc.state("athena")
    with svc._exclusive(st):
        svc._confirm(st, fresh=False)
    st.phase = "ready"
    return svc
"""


# ---------------------------------------------------------------------- disk full


RESTORE_ON_FULL_DISK = (
    CHILD_PRELUDE
    + r"""
cfg, mount = sys.argv[1], Path(sys.argv[2])
svc = SnapshotService(load_config(cfg))
home = svc.home("athena")
make_home(home)
(home / "local-only.txt").write_text("newer than any snapshot\n")
before = tree(home)
failed = svc.restore("athena")
after = tree(home)
previous = home.with_name("home.previous").exists()
leftovers = sorted(p.name for p in home.parent.iterdir() if p.name != "home")
remount(mount, "64m")
again = svc.restore("athena")
print(json.dumps({"failed": failed, "unchanged": before == after, "previous": previous,
                  "leftovers": leftovers, "again": again,
                  "kept": (home.with_name("home.previous") / "local-only.txt").read_text()}))
"""
)


@pytest.mark.parametrize("how", ["refused up front", "ENOSPC while unpacking"])
def test_disk_full_during_restore_changes_nothing_and_never_falls_back(tmp_path: Path, how: str) -> None:
    """A full disk was taken for a bad snapshot: restore fell back to an older one and reported
    success; the newer local home went to home.previous and the next restore deleted it."""
    loaded = load(tmp_path)
    svc = ready_service(loaded)
    home = make_home(svc.home("athena"))
    older = snap(svc)  # small: would fit, and must not be fallen back to
    (home / "big.bin").write_bytes(os.urandom(6 * 1024 * 1024))  # incompressible
    newest = snap(svc)
    if how == "ENOSPC while unpacking":
        # A manifest that understates the unpacked size gets past the space check:
        # the disk fills up during unsquashfs itself.
        key = manifest_key("athena", newest["id"])
        m = Manifest.from_bytes(svc.store.get_bytes(key)[0])
        m.raw_size = m.allocated_size = 1
        svc.store.put_bytes(key, m.to_bytes())
    out = in_tmpfs(
        loaded.state_dir / "bots",
        "3m",
        RESTORE_ON_FULL_DISK,
        str(loaded.path),
        str(loaded.state_dir / "bots"),
    )
    failed = out["failed"]
    assert failed["result"] == "failed" and failed["local"] is True, failed
    assert failed["fallback"] == [] and failed.get("id") is None  # the older snapshot was not taken
    text = failed["error"]
    assert "nothing was changed" in text
    assert ("No space left on device" in text or "not enough space" in text) and "needs about" in text
    assert failed["needed_bytes"] > failed["free_bytes"] > 0
    assert out["unchanged"] and not out["previous"] and out["leftovers"] == []
    # Kept working: with room, the same restore takes the newest snapshot; the local home is kept.
    assert out["again"]["result"] == "restored" and out["again"]["id"] == newest["id"]
    assert out["kept"] == "newer than any snapshot\n"
    assert older["id"] != newest["id"]
    restorable(svc.store, tmp_path)


RESTORE_SPARSE = (
    CHILD_PRELUDE
    + r"""
cfg = sys.argv[1]
svc = SnapshotService(load_config(cfg))
res = svc.restore("athena")
st = os.stat(svc.home("athena") / "sparse.bin")
print(json.dumps({"res": res, "size": st.st_size, "allocated": st.st_blocks * 512}))
"""
)


def test_a_sparse_file_is_counted_by_the_blocks_it_takes_not_its_size(tmp_path: Path) -> None:
    """A 1.5 GiB sparse file takes no space, and unsquashfs writes it sparse again: a restore
    onto a 16 MiB disk was refused ("needs about 1.5 GiB") although it fits."""
    loaded = load(tmp_path)
    svc = ready_service(loaded)
    home = make_home(svc.home("athena"))
    with open(home / "sparse.bin", "wb") as fh:
        fh.truncate(1536 * 1024 * 1024)
    taken = snap(svc)
    manifest = Manifest.from_bytes(svc.store.get_bytes(manifest_key("athena", taken["id"]))[0])
    assert manifest.raw_size > 1536 * 1024 * 1024 > 16 * 1024 * 1024 > (manifest.allocated_size or 0)
    out = in_tmpfs(loaded.state_dir / "bots", "16m", RESTORE_SPARSE, str(loaded.path))
    assert out["res"]["result"] == "restored" and out["res"]["id"] == taken["id"], out["res"]
    assert out["size"] == 1536 * 1024 * 1024 and out["allocated"] < 1024 * 1024


SNAPSHOT_ON_FULL_DISK = (
    CHILD_PRELUDE
    + r"""
cfg, mount = sys.argv[1], Path(sys.argv[2])
svc = ready(cfg)
failed = svc.snapshot("athena")
leftovers = [str(p.relative_to(mount)) for p in mount.rglob("*") if p.is_file()]
status = svc.status("athena")["last"]
remount(mount, "64m")
again = svc.snapshot("athena")
print(json.dumps({"failed": failed, "leftovers": leftovers, "status": status, "again": again}))
"""
)


def test_disk_full_during_snapshot_fails_cleanly_and_keeps_latest(tmp_path: Path) -> None:
    loaded = load(tmp_path)
    svc = ready_service(loaded)
    home = make_home(svc.home("athena"))
    first = snap(svc)
    (home / "big.bin").write_bytes(os.urandom(4 * 1024 * 1024))
    scratch = loaded.state_dir / "snapshots"
    out = in_tmpfs(scratch / "work", "1m", SNAPSHOT_ON_FULL_DISK, str(loaded.path), str(scratch / "work"))
    failed = out["failed"]
    assert failed["result"] == "failed" and "No space left on device" in failed["reason"], failed
    assert "Traceback" not in failed["reason"] and out["status"]["result"] == "failed"
    assert out["leftovers"] == []  # the half-written blob went with the work dir
    # Nothing lost: latest is still the first snapshot, whole; kept working: the next one publishes.
    assert out["again"]["result"] == "ok", out["again"]
    latest, _ = catalog.read_latest(svc.store, "athena")
    assert latest is not None and latest.id == out["again"]["id"] != first["id"]
    restorable(svc.store, tmp_path)


DATABASE_ON_FULL_DISK = (
    CHILD_PRELUDE
    + r"""
import sqlite3
from flared.snapshots import catalog
cfg, mount = sys.argv[1], Path(sys.argv[2])
svc = ready(cfg)
home = svc.home("athena")
# The gateway's connection stays open: the newest turns are in the WAL, not yet in state.db.
db = sqlite3.connect(home / "state.db", isolation_level=None)
db.execute("PRAGMA wal_autocheckpoint=0")
db.executemany("INSERT INTO messages(body) VALUES (?)", [("turn %d " % i + "x" * 2000,) for i in range(1500)])
failed = svc.snapshot("athena")
latest, _ = catalog.read_latest(svc.store, "athena")
status = svc.status("athena")["last"]
remount(mount, "64m")
again = svc.snapshot("athena")
db.close()
print(json.dumps({"failed": failed, "latest": latest.id, "status": status, "again": again}))
"""
)


def test_a_full_disk_never_packs_a_database_without_its_wal(tmp_path: Path) -> None:
    """ "database or disk is full" was taken for "not a database": state.db was packed without
    its WAL (every recent turn gone from `latest`), reported ok."""
    loaded = load(tmp_path)
    svc = ready_service(loaded)
    make_home(svc.home("athena"))
    first = snap(svc)
    cache = loaded.state_dir / "snapshots" / "cache"
    out = in_tmpfs(cache, "1m", DATABASE_ON_FULL_DISK, str(loaded.path), str(cache))
    failed = out["failed"]
    assert failed["result"] == "failed", failed
    reason = failed["reason"]
    assert "state.db" in reason and "could not be copied consistently" in reason, reason
    assert "database or disk is full" in reason and "is free" in reason and "Traceback" not in reason
    assert failed["needed_bytes"] > failed["free_bytes"] >= 0, failed
    assert out["latest"] == first["id"] and out["status"]["result"] == "failed"  # no raw db published
    # Kept working: with room the next snapshot holds every turn, the WAL's included.
    assert out["again"]["result"] == "ok", out["again"]
    back = tmp_path / "back" / "home"
    res = restoring.restore(svc.store, "athena", back, tmp_path / "rw", key=None)
    assert res.result == "restored" and res.id == out["again"]["id"]
    rows = sqlite3.connect(back / "state.db").execute("SELECT count(*) FROM messages").fetchone()
    assert rows == (500 + 1500,)


def test_an_io_error_while_unpacking_is_this_machines_not_the_snapshots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = load(tmp_path)
    svc = ready_service(loaded)
    home = make_home(svc.home("athena"))
    snap(svc)
    (home / "memories" / "USER.md").write_text("newest\n")
    snap(svc)
    before = tree(home)
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "unsquashfs").write_text(
        "#!/bin/sh\necho 'FATAL ERROR: write_file: failed to write file, because Input/output error' >&2\nexit 1\n"
    )
    (shim / "unsquashfs").chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim}:{os.environ['PATH']}")
    res = svc.restore("athena")
    assert res["result"] == "failed" and res["local"] and res["fallback"] == [], res
    assert "Input/output error" in res["error"]
    assert tree(home) == before and not restoring.rollback_path(home).exists()


# ---------------------------------------------------------------------- home.previous


def test_home_previous_is_deleted_only_when_a_snapshot_holds_it(tmp_path: Path) -> None:
    """The second restore deleted home.previous, which held state in no snapshot."""
    svc = ready_service(load(tmp_path))
    home = make_home(svc.home("athena"))
    snap(svc)
    (home / "unsaved.txt").write_text("told after the last snapshot\n")
    first = svc.restore("athena")
    assert first["result"] == "restored"
    assert (restoring.rollback_path(home) / "unsaved.txt").exists()

    def unsaved_copies() -> list[Path]:
        return [p for p in home.parent.glob("home.previous*") if (p / "unsaved.txt").is_file()]

    second = svc.restore("athena")
    assert second["result"] == "restored"
    assert len(unsaved_copies()) == 1, "the only copy of unsaved state was deleted"
    kept = unsaved_copies()[0]
    assert kept != restoring.rollback_path(home) and second["kept"] == str(kept)
    assert (kept / "unsaved.txt").read_text() == "told after the last snapshot\n"
    # The home the second restore replaced is the snapshot itself: the third one may delete it.
    third = svc.restore("athena")
    assert third["result"] == "restored" and third["kept"] is None
    assert unsaved_copies() == [kept]  # still there, never deleted


def wait_marker(home: Path) -> dict[str, Any]:
    marker = restoring.rollback_path(home).with_name("home.previous.json")
    deadline = time.monotonic() + 30
    while not marker.exists():
        assert time.monotonic() < deadline, "home.previous was never marked"
        time.sleep(0.05)
    data: dict[str, Any] = json.loads(marker.read_text())
    return data


def test_restore_marks_home_previous_after_answering(tmp_path: Path) -> None:
    """The restore answers before it learns whether the home it moved aside is in a snapshot
    (a walk, or a digest when the gateway wrote to it); the marker follows in the background
    and says the snapshot only when the content is the snapshot's."""
    svc = ready_service(load(tmp_path))
    home = make_home(svc.home("athena"))
    saved = snap(svc)
    first = svc.restore("athena")
    assert first["result"] == "restored" and first["kept"] is None
    assert wait_marker(home)["snapshot"] == saved["id"]
    (home / "memories" / "MEMORY.md").write_text("written after the snapshot\n")
    assert svc.restore("athena")["result"] == "restored"
    marker = wait_marker(home)
    assert marker["snapshot"] is None and marker["digest"]
    assert (
        restoring.rollback_path(home) / "memories" / "MEMORY.md"
    ).read_text() == "written after the snapshot\n"


def test_a_restored_home_is_idle_by_the_fingerprint_walked_before_the_swap(tmp_path: Path) -> None:
    """The restored tree's fingerprint is walked in staging (while the gateway stops): it must
    be the home's after the swap, or the next snapshot would re-read everything."""
    svc = ready_service(load(tmp_path))
    home = make_home(svc.home("athena"))
    past = time.time() - 60  # older than the racy window, as a home that has been around
    for p in [home, *home.rglob("*")]:
        os.utime(p, (past, past), follow_symlinks=False)
    snap(svc)
    assert svc.restore("athena")["result"] == "restored"
    recorded = svc.state("athena").fingerprint
    assert recorded is not None and recorded == cap.walk(home, svc._rules()).fingerprint()
    again = svc.snapshot("athena")
    assert again["result"] == "unchanged" and "hash" not in again["steps"], again


def test_mark_previous_describes_only_the_tree_moved_aside(tmp_path: Path) -> None:
    """A restore in between kept home.previous under a dated name: a late marker must not
    describe the tree that took its place."""
    home = tmp_path / "home"
    previous = restoring.rollback_path(home)
    previous.mkdir()
    moved = restoring.tree_id(previous)
    assert moved is not None
    previous.rename(tmp_path / "home.previous-kept")
    previous.mkdir()  # another tree, unsaved
    asked: list[Path] = []

    def saved_as(p: Path) -> tuple[str | None, str | None]:
        asked.append(p)
        return "20300101T000000Z-abcdef", "digest"

    assert not restoring.mark_previous(home, moved, saved_as)
    assert asked == [] and not previous.with_name("home.previous.json").exists()
    now = restoring.tree_id(previous)
    assert now is not None and restoring.mark_previous(home, now, saved_as)
    assert (
        json.loads(previous.with_name("home.previous.json").read_text())["snapshot"]
        == "20300101T000000Z-abcdef"
    )
    assert not restoring.mark_previous(home, now, saved_as)  # marked once


# ---------------------------------------------------------------------- links and secrets


def test_no_secret_or_outside_content_reaches_the_store_and_restore_refuses_escapes(tmp_path: Path) -> None:
    loaded = load(tmp_path)
    svc = ready_service(loaded)
    home = make_home(svc.home("athena"))
    secret = "SLACK_BOT_TOKEN=xoxb-secret-never-stored"
    outside = tmp_path / "id_ed25519"
    outside.write_text("PRIVATE-KEY-OUTSIDE-THE-HOME\n")
    os.link(home / ".env", home / "memories" / "env-link.md")
    (home / "skills" / "env-copy.txt").write_text((home / ".env").read_text())
    os.link(outside, home / "skills" / "key")
    os.symlink(str(outside), home / "abs-link")
    res = svc.snapshot("athena")
    assert res["result"] == "ok"
    assert {x["path"] for x in res["left_out"]} == {
        "memories/env-link.md",
        "skills/env-copy.txt",
        "skills/key",
        "abs-link",
    }
    raw = tmp_path / "blob"
    svc.store.get_file(blob_key("athena", res["id"]), raw)
    unpacked = tmp_path / "unpacked"
    subprocess.run(["unsquashfs", "-q", "-d", str(unpacked), str(raw)], check=True, capture_output=True)
    for p in unpacked.rglob("*"):
        if p.is_file() and not p.is_symlink():
            data = p.read_bytes()
            assert secret.encode() not in data and b"PRIVATE-KEY-OUTSIDE" not in data, p
    # Nothing lost: everything else round-trips.
    back = svc.restore("athena")
    assert back["result"] == "restored"
    skip = (*NEVER, "memories/env-link.md", "skills/env-copy.txt", "skills/key", "abs-link")
    assert tree(home) == tree(restoring.rollback_path(home), skip=skip)


def test_restore_refuses_symlinks_out_of_the_home_and_special_files(tmp_path: Path) -> None:
    """A snapshot from elsewhere (an older flared, an import, a tampered store) can hold them."""
    loaded = load(tmp_path)
    svc = ready_service(loaded)
    home = make_home(svc.home("athena"))
    good = snap(svc)
    tree_dir = tmp_path / "crafted"
    make_home(tree_dir)
    os.symlink("/etc/passwd", tree_dir / "passwd")
    os.symlink("../../../outside", tree_dir / "memories" / "up")
    os.symlink("memories", tree_dir / "fine-link")
    os.mkfifo(tree_dir / "pipe")
    blob = tmp_path / "crafted.sqsh"
    subprocess.run(
        ["mksquashfs", str(tree_dir), str(blob), "-noappend", "-quiet", "-no-progress"], check=True
    )
    sid = "20300101T000000Z-abcdef"
    base = Manifest.from_bytes(svc.store.get_bytes(manifest_key("athena", good["id"]))[0])
    base.id, base.packed_size, base.blob_sha256 = sid, blob.stat().st_size, file_sha256(blob)
    svc.store.put_file(blob_key("athena", sid), blob, sha256=base.blob_sha256, metadata={})
    svc.store.put_bytes(manifest_key("athena", sid), base.to_bytes())
    res = svc.restore("athena", sid)
    assert res["result"] == "restored", res
    refused = {r["path"]: r["why"] for r in res["refused"]}
    assert set(refused) == {"passwd", "memories/up", "pipe"}
    assert "outside the home" in refused["passwd"] and refused["pipe"] == "a socket, fifo or device"
    assert not (home / "passwd").is_symlink() and not (home / "pipe").exists()
    assert (home / "fine-link").is_symlink() and (home / "memories" / "USER.md").exists()
    assert (home.stat().st_mode & 0o777) == 0o700


# ---------------------------------------------------------------------- store errors


def test_a_500_on_complete_multipart_upload_is_a_classified_failure(tmp_path: Path) -> None:
    from tests.fixtures.faultproxy import FaultProxy
    from tests.fixtures.s3server import shared_server, store_config

    with store_config() as section:
        pass
    fail = {"on": False}

    def rule(method: str, path: str) -> int | None:
        if fail["on"] and method == "POST" and "uploadId=" in path:
            return 500
        return None

    with FaultProxy(shared_server().endpoint, rule) as proxy:
        section.update(endpoint=proxy.endpoint, multipart_threshold="5MiB", multipart_chunksize="5MiB")
        svc = ready_service(load(tmp_path, section))
        home = make_home(svc.home("athena"))
        first = snap(svc)
        (home / "big.bin").write_bytes(os.urandom(12 * 1024 * 1024))
        fail["on"] = True
        res = svc.snapshot("athena")
        assert res["result"] == "failed", res
        assert "store error 500 InternalError" in res["reason"] and "internal error; see" not in res["reason"]
        assert svc.status("athena")["last"]["result"] == "failed"
        assert any(status == 500 for _m, _p, status in proxy.seen)
        fail["on"] = False
        assert restorable(svc.store, tmp_path) == first["id"]  # nothing lost
        assert svc.snapshot("athena")["result"] == "ok"  # kept working


def test_the_store_going_away_mid_upload_loses_nothing(tmp_path: Path) -> None:
    from tests.fixtures.faultproxy import FaultProxy
    from tests.fixtures.s3server import shared_server, store_config

    with store_config() as section:
        pass
    down = {"on": False}

    def rule(method: str, path: str) -> str | None:
        return "drop" if down["on"] and method == "PUT" and "partNumber=" in path else None

    with FaultProxy(shared_server().endpoint, rule) as proxy:
        section.update(
            endpoint=proxy.endpoint, multipart_threshold="5MiB", multipart_chunksize="5MiB", timeout="3s"
        )
        svc = ready_service(load(tmp_path, section))
        home = make_home(svc.home("athena"))
        expect = tree(home, skip=NEVER)
        first = snap(svc)
        (home / "big.bin").write_bytes(os.urandom(12 * 1024 * 1024))
        down["on"] = True
        res = svc.snapshot("athena")
        assert res["result"] == "failed" and "store" in res["reason"], res
        down["on"] = False
        assert restorable(svc.store, tmp_path, expect) == first["id"]
        again = svc.snapshot("athena")
        assert again["result"] == "ok"
        assert restorable(svc.store, tmp_path) == again["id"]


@pytest.mark.parametrize(
    "lost", ["one reply", "every reply", "every reply and the read-back", "all that, then flared restarts"]
)
def test_a_lost_reply_to_the_latest_json_write_is_recognised_as_our_own(tmp_path: Path, lost: str) -> None:
    """The store applied the conditional PUT of latest.json, the reply was lost: flared reported
    failure (or, when the SDK's retry met its own write, "fenced" and deleted the very snapshot
    latest.json named) and then fenced itself until `--takeover`."""
    from tests.fixtures.faultproxy import FaultProxy
    from tests.fixtures.s3server import shared_server, store_config

    with store_config() as section:
        pass
    fault = {"on": False, "puts": 0}

    def rule(method: str, path: str) -> str | None:
        if not fault["on"] or "latest.json" not in path:
            return None
        if method == "PUT":
            fault["puts"] += 1
            return "lose reply" if lost != "one reply" or fault["puts"] == 1 else None
        if method == "GET" and fault["puts"] and lost.startswith(("every reply and", "all that")):
            return "drop"
        return None

    with FaultProxy(shared_server().endpoint, rule) as proxy:
        section.update(endpoint=proxy.endpoint, timeout="3s")
        loaded = load(tmp_path, section)
        svc = ready_service(loaded)
        home = make_home(svc.home("athena"))
        snap(svc)
        (home / "memories" / "USER.md").write_text("told just before the reply was lost\n")
        expect = tree(home, skip=NEVER)
        fault["on"] = True
        res = svc.snapshot("athena")
        assert any(str(what).startswith("lost") for _m, _p, what in proxy.seen)
        if lost.startswith(("every reply and", "all that")):
            assert res["result"] == "failed" and "latest.json" in res["reason"], res
        else:
            assert res["result"] == "ok", res
        fault["on"] = False
        # The store holds what was sent: latest names this snapshot, whole.
        latest, _ = catalog.read_latest(svc.store, "athena")
        assert latest is not None and latest.id == res["id"]
        assert restorable(svc.store, tmp_path, expect) == res["id"]
        if lost == "all that, then flared restarts":
            svc = ready_service(loaded)  # adopts the running gateway: reads the fence it recorded
            assert svc.status("athena")["fenced"] is None
        # Not fenced by its own write: the next snapshots go on from there.
        again = svc.snapshot("athena")
        assert again["result"] == "unchanged" and again["id"] == res["id"], again
        (home / "memories" / "USER.md").write_text("and after\n")
        after = svc.snapshot("athena")
        assert after["result"] == "ok" and svc.status("athena")["fenced"] is None, after
        assert svc.state("athena").in_flight == []


def test_a_store_edited_at_runtime_and_back_does_not_pause_snapshots(tmp_path: Path) -> None:
    """The fence was one for any store: on the edited store the bot was fenced ("another writer
    moved latest.json to nothing"), and back on the first store it stayed fenced for good."""
    from flared.snapshots.scheduler import due

    first_store = load(tmp_path)
    svc = ready_service(first_store)
    home = make_home(svc.home("athena"))
    first = snap(svc)
    # The other store holds this bot's snapshots from another machine: fenced there, rightly.
    other = tmp_path / "other"
    elsewhere = SnapshotService(load(tmp_path / "elsewhere-machine", {"url": f"file://{other}"}))
    make_home(elsewhere.home("athena"))
    with elsewhere._exclusive(elsewhere.state("athena")):
        elsewhere._confirm(elsewhere.state("athena"), fresh=False)
    assert elsewhere.snapshot("athena")["result"] == "ok"
    svc.update(load(tmp_path, {"url": f"file://{other}"}))
    st = svc.state("athena")
    assert due(st, svc.policy, time.time() + 60, svc.store.description) == "store changed"
    there = svc.snapshot("athena")
    assert there["result"] == "fenced" and "written by another writer" in there["reason"], there
    # Back to the first store: not paused; the scheduler takes it up at once.
    svc.update(load(tmp_path))
    assert due(st, svc.policy, time.time() + 60, svc.store.description) == "store changed"
    (home / "memories" / "USER.md").write_text("told while the store was edited\n")
    back = svc.snapshot("athena")
    assert back["result"] == "ok" and svc.status("athena")["fenced"] is None, back
    latest, _ = catalog.read_latest(svc.store, "athena")
    assert latest is not None and latest.id == back["id"] and latest.generation == 2
    assert due(st, svc.policy, time.time() + 60, svc.store.description) != "store changed"
    # A restarted flared remembers both stores: the first one still unfenced.
    again = ready_service(first_store)
    assert again.state("athena").fenced is None and again.snapshot("athena")["result"] == "unchanged"
    assert first["id"] != back["id"]


# ---------------------------------------------------------------------- latest.json and ids


def test_a_damaged_latest_json_can_be_listed_around_and_repaired(tmp_path: Path) -> None:
    """`flared snapshots` and `flared restore --id` answered "internal error" (offline: a traceback)."""
    loaded = load(tmp_path)
    svc = ready_service(loaded)
    home = make_home(svc.home("athena"))
    first = snap(svc)
    (home / "memories" / "USER.md").write_text("second\n")
    second = snap(svc)
    svc.store.put_bytes(latest_key("athena"), b'{"bot": "athena", "id": ')  # torn write
    cfg = str(loaded.path)
    listed = run_cli("snapshots", "--json", "-c", cfg)
    assert listed.returncode == 0 and "Traceback" not in listed.stderr, listed.stderr
    data = json.loads(listed.stdout)
    assert [s["id"] for s in data["snapshots"]] == [second["id"], first["id"]]
    assert "damaged" in data["warnings"][0] and "flared restore" in data["warnings"][0]
    human = run_cli("snapshots", "-c", cfg)
    assert "damaged" in human.stdout and second["id"] in human.stdout
    # Without an id nobody guesses which snapshot the pointer meant.
    guess = run_cli("restore", "--bot", "athena", "--json", "-c", cfg)
    assert guess.returncode == 1 and "damaged" in json.loads(guess.stdout)["error"]
    # The bot waits at boot, with the same words, and no traceback in the log.
    boot = SnapshotService(loaded)
    boot.boot("athena", lambda _b: None)
    deadline = time.monotonic() + 10
    while boot.status("athena")["gate"] is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (
        "damaged" in (boot.status("athena")["gate"] or "")
        and boot.status("athena")["phase"] == "restore failed"
    )
    boot.shutdown(final_snapshots=False)
    # `restore --id` works and repairs the pointer by a conditional write.
    fixed = run_cli("restore", "--bot", "athena", "--id", first["id"], "--json", "-c", cfg)
    out = json.loads(fixed.stdout)
    assert fixed.returncode == 0 and out["result"] == "restored" and out["repaired"], out
    latest, _ = catalog.read_latest(svc.store, "athena")
    assert latest is not None and latest.id == first["id"]
    assert (home / "memories" / "USER.md").read_text() == "User's dog is called Yodel.\n"
    # Kept working: the next snapshot moves latest on from there.
    again = ready_service(loaded)
    (home / "memories" / "USER.md").write_text("third\n")
    assert again.snapshot("athena")["result"] == "ok"


def test_an_escaping_id_in_latest_json_neither_escapes_nor_disables_fallback(tmp_path: Path) -> None:
    loaded = load(tmp_path)
    svc = ready_service(loaded)
    home = make_home(svc.home("athena"))
    expect = tree(home, skip=NEVER)
    good = snap(svc)
    evil = Latest("athena", "../../../etc/x", 9, "0" * 64, "2026-01-01T00:00:00+00:00").to_bytes()
    svc.store.put_bytes(latest_key("athena"), evil)
    out = tmp_path / "fresh" / "home"
    res = restoring.restore(svc.store, "athena", out, tmp_path / "rw", key=None)
    assert res.result == "restored" and res.id == good["id"], res
    assert "not a snapshot id" in res.fallback[0]["reason"]
    assert tree(out) == expect
    listed = run_cli("snapshots", "--json", "-c", str(loaded.path))
    assert "not a snapshot id" in json.loads(listed.stdout)["warnings"][0]


class Gateways:
    """The service's view of the gateways, recording what it was asked."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def stop(self, bot: str) -> None:
        self.calls.append(f"stop {bot}")

    def start(self, bot: str) -> None:
        self.calls.append(f"start {bot}")


@pytest.mark.parametrize(
    ("sid", "words"),
    [
        ("../../../etc/passwd", "is not a snapshot id"),
        ("bogus", "is not a snapshot id"),
        ("20200101T000000Z-000000", "its manifest is missing"),
    ],
)
def test_a_restore_that_cannot_happen_never_stops_the_gateway(tmp_path: Path, sid: str, words: str) -> None:
    gateways = Gateways()
    svc = ready_service(load(tmp_path), gateways)
    home = make_home(svc.home("athena"))
    snap(svc)
    before = tree(home)
    res = svc.restore("athena", sid)
    assert res["result"] == "failed" and words in res["error"], res
    assert gateways.calls == [] and tree(home) == before
    ok = svc.restore("athena")
    assert ok["result"] == "restored" and gateways.calls == ["stop athena", "start athena"]


def test_an_offline_restore_leaves_the_home_0700(tmp_path: Path) -> None:
    loaded = load(tmp_path)
    svc = ready_service(loaded)
    home = make_home(svc.home("athena"))
    home.chmod(0o755)
    snap(svc)
    out = run_cli("restore", "--bot", "athena", "--json", "-c", str(loaded.path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert (home.stat().st_mode & 0o777) == 0o700


# ---------------------------------------------------------------------- damaged blobs


@pytest.mark.parametrize("damage", ["truncated", "bit flip"])
def test_a_damaged_newest_blob_falls_back_and_says_so(tmp_path: Path, damage: str) -> None:
    svc = ready_service(load(tmp_path))
    home = make_home(svc.home("athena"))
    expect = tree(home, skip=NEVER)
    first = snap(svc)
    (home / "memories" / "USER.md").write_text("newer\n")
    second = snap(svc)
    blob = tmp_path / "store" / blob_key("athena", second["id"])
    data = bytearray(blob.read_bytes())
    if damage == "truncated":
        del data[len(data) // 2 :]
    else:
        data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    out = tmp_path / "elsewhere" / "home"
    res = restoring.restore(svc.store, "athena", out, tmp_path / "rw", key=None)
    assert res.result == "restored" and res.id == first["id"], res
    assert [f["id"] for f in res.fallback] == [second["id"]] and "damaged" in res.fallback[0]["reason"]
    assert tree(out) == expect


# ---------------------------------------------------------------------- the whole tree killed


WAL_WRITER = r"""
import os, sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA journal_mode=WAL")
db.execute("CREATE TABLE IF NOT EXISTS pairs(id INTEGER PRIMARY KEY, body TEXT)")
n = 0
while True:
    n += 1
    db.execute("BEGIN")
    db.execute("INSERT INTO pairs(body) VALUES (?)", ("x" * 3000 + str(n),))
    db.execute("INSERT INTO pairs(body) VALUES (?)", ("pair " + str(n),))
    db.execute("COMMIT")
    with open(sys.argv[2] + ".tmp", "w") as f:
        f.write(str(n))
    os.replace(sys.argv[2] + ".tmp", sys.argv[2])
"""


def test_kill_9_of_the_whole_tree_under_wal_writes_loses_nothing_snapshotted(tmp_path: Path) -> None:
    counter = tmp_path / "committed"
    (tmp_path / "up").mkdir()
    with FlareUp(tmp_path / "up", [bot("athena")], snapshots=UNSTREAMED) as flare:
        flare.wait_running("athena", timeout=120)
        home = flare.state_dir / "bots" / "athena" / "home"
        writer = subprocess.Popen(
            [sys.executable, "-c", WAL_WRITER, str(home / "memory.db"), str(counter)], start_new_session=True
        )
        try:
            while not counter.exists() or int(counter.read_text() or 0) < 100:
                time.sleep(0.05)
            published: list[tuple[str, int]] = []
            stop = threading.Event()

            def snapshots() -> None:
                while not stop.is_set():
                    before = int(counter.read_text())
                    out = flare.cli("snapshot", "--json", timeout=120)
                    with_id = json.loads(out.stdout)["results"][0] if out.stdout else {}
                    if with_id.get("result") == "ok":
                        published.append((with_id["id"], before))

            t = threading.Thread(target=snapshots)
            t.start()
            deadline = time.monotonic() + 60
            while len(published) < 3 and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(0.15)  # most likely in the middle of the next one
            flare.kill_all()  # supervisord, flared, the gateway: a dying container
            os.killpg(writer.pid, signal.SIGKILL)
            stop.set()
            t.join(120)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(writer.pid, signal.SIGKILL)
            writer.wait(10)
    assert len(published) >= 3
    store = SnapshotService(load_config(flare.config_path)).store
    latest, _ = catalog.read_latest(store, "athena")
    assert latest is not None and latest.id in {sid for sid, _ in published}
    out = tmp_path / "after" / "home"
    res = restoring.restore(store, "athena", out, tmp_path / "rw", key=None)
    assert res.result == "restored" and res.id == latest.id
    db = sqlite3.connect(out / "memory.db")
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    rows = db.execute("SELECT id, body FROM pairs ORDER BY id").fetchall()
    committed_before = dict(published)[latest.id]
    assert len(rows) >= 2 * committed_before and len(rows) % 2 == 0  # whole transactions only
    assert rows[-1][1] == f"pair {len(rows) // 2}"


# ---------------------------------------------------------------------- a home that lost its memory


def test_a_deleted_home_is_never_published_as_latest(tmp_path: Path) -> None:
    """`rm -rf <state>/bots/B/home` while running: flared re-rendered the config into an empty
    home, and the next snapshot and the final one published it (a few KB) as `latest`."""
    (tmp_path / "up").mkdir()
    with FlareUp(tmp_path / "up", [bot("athena")], snapshots=UNSTREAMED) as flare:
        flare.wait_running("athena", timeout=120)
        home = flare.state_dir / "bots" / "athena" / "home"
        deadline = time.monotonic() + 60
        while not (home / "state.db").exists():  # the gateway's sessions database
            assert time.monotonic() < deadline, flare.read_logs()
            time.sleep(0.2)
        (home / "memories").mkdir(exist_ok=True)
        (home / "memories" / "MEMORY.md").write_text(
            "".join(f"fact {i}: the user likes tea\n" for i in range(40000))
        )
        good = flare.cli("snapshot", "--json")
        assert good.returncode == 0, good.stdout + good.stderr
        good_id = json.loads(good.stdout)["results"][0]["id"]
        store = SnapshotService(load_config(flare.config_path)).store
        held = catalog.read_manifest(store, "athena", good_id)
        assert "state.db" in held.databases

        for _ in range(20):  # the gateway and flared write into it meanwhile: "Directory not empty"
            if subprocess.run(["rm", "-rf", str(home)], capture_output=True).returncode == 0:
                break
        deadline = time.monotonic() + 30
        while not (home / "config.yaml").exists():  # flared renders the config again
            assert time.monotonic() < deadline, flare.read_logs()
            time.sleep(0.2)
        refused = flare.cli("snapshot", "--json")
        r = json.loads(refused.stdout)["results"][0]
        assert refused.returncode == 1 and r["result"] == "failed", r
        # Hermes opens its databases anew (a fresh state.db; response_store.db on the next
        # request, or not yet): the content left decides.
        assert re.fullmatch(r"[0-9.]+ KiB of content left of 1\.[0-9] MiB", r["shrink"][-1]), r["shrink"]
        # Hermes' databases, whichever it had created by then (cron's once its ticker ran).
        named = {name for why in r["shrink"][:-1] for name in re.sub(r" (is|are) gone$", "", why).split(", ")}
        assert named <= {"response_store.db", "state.db", "cron/executions.db"}, r
        assert (
            f"lost most of what snapshot {good_id} held" in r["reason"] and "--accept-shrink" in r["reason"]
        )
        assert "flared restore --bot athena" in r["reason"]
        snap_status = flare.bot_status("athena")["snapshots"]
        assert snap_status["shrunk"] == r["reason"]
        text = flare.cli("status")
        assert f"snapshots: not published: this home lost most of what snapshot {good_id}" in text.stdout
        assert "--accept-shrink" in flare.cli("snapshot", "--help").stdout
        assert catalog.read_latest(store, "athena")[0].id == good_id  # type: ignore[union-attr]
        assert "lost most of what snapshot" in (flare.state_dir / "logs" / "flared.log").read_text()
        # The final snapshot at stop is refused the same way.
        assert flare.stop() is not None
    latest, _ = catalog.read_latest(store, "athena")
    assert latest is not None and latest.id == good_id
    assert (
        "final snapshot: failed not published: this home lost"
        in (flare.state_dir / "logs" / "flared.log").read_text()
    )
    # Nothing lost: `flared restore` brings the sessions back.
    back = run_cli("restore", "--bot", "athena", "--json", "-c", str(flare.config_path))
    assert back.returncode == 0 and json.loads(back.stdout)["id"] == good_id, back.stdout + back.stderr
    assert (home / "state.db").exists()


def test_a_store_edited_in_the_yaml_and_back_is_followed_by_the_running_daemon(tmp_path: Path) -> None:
    """The same through `flared up`: the watcher applies each edit, the scheduler follows."""
    other = tmp_path / "other-store"
    elsewhere = SnapshotService(load(tmp_path / "elsewhere-machine", {"url": f"file://{other}"}))
    make_home(elsewhere.home("athena"))
    with elsewhere._exclusive(elsewhere.state("athena")):
        elsewhere._confirm(elsewhere.state("athena"), fresh=False)
    assert elsewhere.snapshot("athena")["result"] == "ok"
    (tmp_path / "up").mkdir()
    with FlareUp(tmp_path / "up", [bot("athena")]) as flare:
        flare.wait_running("athena", timeout=120)
        first = flare.cli("snapshot", "--json")
        assert first.returncode == 0, first.stdout + first.stderr
        own_store = dict(flare.data["store"])

        def snapshots() -> dict[str, Any]:
            return dict(flare.bot_status("athena")["snapshots"])

        def edit(store: dict[str, Any]) -> None:
            before = flare.status()["config"]["digest"]
            flare.write_config({**flare.data, "store": store})
            flare._wait(lambda: flare.status()["config"]["digest"] != before, 20, "the edit applied")

        edit({"url": f"file://{other}"})
        there = flare.cli("snapshot", "--json")
        assert json.loads(there.stdout)["results"][0]["result"] == "fenced", there.stdout  # rightly
        assert "written by another writer" in (snapshots()["fenced"] or "")
        edit(own_store)
        flare._wait(lambda: snapshots()["fenced"] is None, 40, "unfenced back home")  # by the scheduler
        home = flare.state_dir / "bots" / "athena" / "home"
        (home / "memories").mkdir(exist_ok=True)
        (home / "memories" / "MEMORY.md").write_text("told after the store came back\n")
        again = flare.cli("snapshot", "--json")
        assert again.returncode == 0, again.stdout + again.stderr
        assert json.loads(again.stdout)["results"][0]["result"] == "ok"


# ---------------------------------------------------------------------- make clean


def make_clean(cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", "-f", str(ROOT / "Makefile"), "clean"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_make_clean_never_deletes_a_store_and_the_old_default_moves_out(tmp_path: Path) -> None:
    """`make clean` deleted ./.flare and with it the default store file://./.flare/store:
    every snapshot. The default is now ./.flare-store, beside the state dir; a store
    left at the old default is kept by `make clean` and moved out at the next start."""

    def write(store: str | None) -> Path:
        data = config(tmp_path, [bot("athena")], state_dir="./.flare")
        if store is None:
            del data["store"]  # the embedded default
        else:
            data["store"] = {"url": store}
        (tmp_path / "hermes-flare.yaml").write_text(yaml.safe_dump(data))
        return tmp_path / "hermes-flare.yaml"

    def snapshot_now(cfg: Path) -> str:
        make_home(tmp_path / ".flare" / "bots" / "athena" / "home")
        out = run_cli("snapshot", "--bot", "athena", "--json", "-c", str(cfg), timeout=120)
        assert out.returncode == 0, out.stderr
        return str(json.loads(out.stdout)["results"][0]["id"])

    def listed(cfg: Path) -> list[str]:
        out = run_cli("snapshots", "--json", "-c", str(cfg), timeout=120)
        assert out.returncode == 0, out.stderr
        return [s["id"] for s in json.loads(out.stdout)["snapshots"]]

    # The default: beside the state dir; `make clean` removes the state dir only.
    cfg = write(None)
    first = snapshot_now(cfg)
    assert (tmp_path / ".flare-store" / "athena" / "latest.json").is_file()
    out = make_clean(tmp_path)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert not (tmp_path / ".flare").exists()
    assert listed(cfg) == [first]

    # A store inside the state dir (what the old default made): kept, the rest goes.
    shutil.rmtree(tmp_path / ".flare-store")
    cfg = write("file://./.flare/store")
    old = snapshot_now(cfg)
    out = make_clean(tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stderr.startswith(
        "make clean: kept the snapshot store .flare/store (every other file in .flare"
    )
    assert sorted(p.name for p in (tmp_path / ".flare").iterdir()) == ["store"]
    assert listed(cfg) == [old]

    # Upgraded to the new default: the old store is moved (one rename), nothing lost.
    cfg = write(None)
    out = run_cli("snapshots", "-c", str(cfg), timeout=120)
    assert out.returncode == 0 and old in out.stdout, out.stderr
    assert (
        f"moved the snapshot store from {tmp_path}/.flare/store (the old default, inside the state dir "
        f"that `make clean` deletes) to {tmp_path}/.flare-store, the new default: every snapshot is kept"
    ) in out.stderr
    assert listed(cfg) == [old]
    assert not (tmp_path / ".flare" / "store").exists()
    assert (tmp_path / ".flare-store" / "athena" / "snapshots" / f"{old}.sqsh").is_file()
