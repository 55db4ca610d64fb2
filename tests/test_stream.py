"""Litestream: its config from the YAML, the program's text, status, and restores with the real binary."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import pytest
import yaml

from flared.config.loader import LoadedConfig, load_config
from flared.snapshots.service import SnapshotService
from flared.snapshots.stream import base as stream_base
from flared.snapshots.stream import restore as stream_restore
from flared.snapshots.stream import status as stream_status
from flared.snapshots.stream.program import (
    litestream_env,
    litestream_executable,
    stream_program,
)
from flared.snapshots.stream.render import StreamLayout, litestream_config, render
from tests.fixtures.flare import bot, config
from tests.fixtures.litestream import replicating
from tests.fixtures.s3server import store_config


def load(tmp: Path, store: dict[str, Any] | None = None, bots: tuple[str, ...] = ("athena",)) -> LoadedConfig:
    data = config(tmp, [bot(b) for b in bots])
    if store is not None:
        data["store"] = store
    path = tmp / "hermes-flare.yaml"
    tmp.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


# ---------------------------------------------------------------------- pure


def test_each_bot_streams_its_home_to_its_prefix_and_litestream_works_outside_the_home(
    tmp_path: Path,
) -> None:
    loaded = load(tmp_path, bots=("athena", "zeus"))
    cfg = litestream_config(loaded.config, ["zeus", "athena"])
    dbs = cfg["dbs"]
    assert [d["dir"] for d in dbs] == [
        str(loaded.state_dir / "bots" / "athena" / "home"),
        str(loaded.state_dir / "bots" / "zeus" / "home"),
    ]
    first = dbs[0]
    assert (first["pattern"], first["recursive"], first["watch"]) == ("*.db", True, True)
    assert first["replica"] == {
        "type": "file",
        "path": str(tmp_path / "store" / "athena" / "stream"),
        "sync-interval": "1000ms",
    }
    assert not Path(first["meta-dir"]).is_relative_to(first["dir"])  # never in the home
    assert render(loaded.config, ["zeus", "athena"]) == render(loaded.config, ["athena", "zeus"])


def test_s3_replica_names_bucket_prefix_endpoint_and_no_credentials(tmp_path: Path) -> None:
    store = {
        "url": "s3://bucket/snaps",
        "endpoint": "https://acct.r2.cloudflarestorage.com",
        "access_key_id": "AKIDSECRETVALUE",
        "secret_access_key": "VERYSECRETSECRETVALUE",
    }
    loaded = load(tmp_path, store)
    text = render(loaded.config, ["athena"])
    replica = yaml.safe_load(text)["dbs"][0]["replica"]
    assert replica["bucket"] == "bucket" and replica["path"] == "snaps/athena/stream"
    assert replica["endpoint"] == "https://acct.r2.cloudflarestorage.com"
    assert replica["force-path-style"] is True
    program = stream_program(loaded, ["athena"])
    assert program is not None
    for secret in ("AKIDSECRETVALUE", "VERYSECRETSECRETVALUE"):
        assert secret not in text and secret not in program.render()
    env = litestream_env(loaded.config.store, {"PATH": "/bin", "AWS_CA_BUNDLE": "/etc/ca.pem"})
    assert env["LITESTREAM_ACCESS_KEY_ID"] == "AKIDSECRETVALUE"
    assert "AWS_CA_BUNDLE" not in env  # Litestream's S3 client refuses it
    assert env["SSL_CERT_FILE"] == "/etc/ca.pem"  # the CA boto3 uses for the same endpoint


def test_the_program_restarts_exactly_when_what_it_streams_changes(tmp_path: Path) -> None:
    loaded = load(tmp_path, bots=("athena", "zeus"))
    assert stream_program(loaded, []) is None
    one = stream_program(loaded, ["athena"])
    both = stream_program(loaded, ["athena", "zeus"])
    assert one is not None and both is not None
    assert one.render() != both.render()
    again = stream_program(loaded, ["athena"])
    assert again is not None and again.render() == one.render()


def test_a_database_is_stalled_when_nothing_reached_the_store_for_stall_after(tmp_path: Path) -> None:
    home = tmp_path / "home"
    seen = {
        f"{home}/state.db": {"last_sync_at": "2026-12-06T18:00:00.123456789Z", "txid": 9},
        f"{home}/cron/executions.db": {"last_sync_at": "2026-12-06T17:59:00Z", "error": "403 Forbidden"},
    }
    now = stream_status._epoch("2026-12-06T18:00:01Z")
    assert now is not None
    rows = stream_status.database_states(
        home, seen, now=now, stall_after=30, started_at=now - 600, expected=["state.db", "kanban.db"]
    )
    by_db = {r["db"]: r for r in rows}
    assert by_db["state.db"]["state"] == "ok" and by_db["state.db"]["lag_s"] == pytest.approx(0.9)
    assert by_db["cron/executions.db"]["state"] == "stalled"
    assert by_db["cron/executions.db"]["error"] == "403 Forbidden"
    assert by_db["kanban.db"]["state"] == "stalled"  # on disk, not streamed
    young = stream_status.database_states(
        home, {}, now=now, stall_after=30, started_at=now - 2, expected=["a.db"]
    )
    assert young[0]["state"] == "starting"


def test_stream_listing_finds_databases_on_file_and_s3_layouts() -> None:
    keys = [
        "athena/stream/state.db/ltx/0/0000000000000001-0000000000000001.ltx",
        "athena/stream/cron/executions.db/0000/0000000000000001-0000000000000001.ltx",
        "athena/stream/kanban.db/ltx/9/0000000000000001-0000000000000004.ltx",
        "athena/snapshots/x.json",
        "zeus/stream/state.db/0000/0000000000000001-0000000000000001.ltx",
    ]
    assert stream_restore.streamed_databases("athena", keys) == [
        "cron/executions.db",
        "kanban.db",
        "state.db",
    ]


# ---------------------------------------------------------------------- with the real binary


def rows(db: Path) -> list[int]:
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return [n for (n,) in con.execute("SELECT n FROM t ORDER BY n")]
    finally:
        con.close()


def insert(db: Path, numbers: range, *, wal: bool = True) -> None:
    con = sqlite3.connect(db, isolation_level=None)
    if wal:
        con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE IF NOT EXISTS t (n INTEGER PRIMARY KEY)")
    for n in numbers:
        con.execute("INSERT INTO t VALUES (?)", (n,))
    con.close()


def synced(loaded: LoadedConfig, db: Path, timeout: float = 15) -> None:
    """Wait until Litestream has shipped the database's newest transaction."""
    socket = StreamLayout(loaded.state_dir).socket
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(stream_status.LitestreamUnavailable, KeyError):
            info = stream_status.observe(socket).get(str(db)) or {}
            synced_at = stream_status._epoch(info.get("last_sync_at"))
            if synced_at is not None and synced_at > db.with_name(db.name + "-wal").stat().st_mtime:
                return
        time.sleep(0.2)
    raise AssertionError(f"{db} was not shipped within {timeout} s")


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["file", "s3"])
def test_restore_gives_the_newest_databases_and_restore_id_those_of_that_snapshot(
    tmp_path: Path, kind: str
) -> None:
    with contextlib.ExitStack() as stack:
        store = stack.enter_context(store_config()) if kind == "s3" else None
        loaded = load(tmp_path, store)
        svc = SnapshotService(loaded)
        svc._boot_once(svc.state("athena"))  # the store is empty: the bot starts fresh
        home = svc.home("athena")
        (home / "memories").mkdir()
        (home / "memories" / "USER.md").write_text("first\n")
        db = home / "state.db"
        insert(db, range(1, 11))
        with replicating(loaded, ["athena"]):
            synced(loaded, db)
            first = svc.snapshot("athena")
            assert first["result"] == "ok", first
            insert(db, range(11, 21))
            (home / "memories" / "USER.md").write_text("second\n")
            synced(loaded, db)
        newest = svc.restore("athena")
        assert newest["result"] == "restored", newest
        assert rows(db) == list(range(1, 21))
        assert (home / "memories" / "USER.md").read_text() == "first\n"  # the home is the snapshot's
        back = svc.restore("athena", first["id"])
        assert back["result"] == "restored", back
        assert rows(db) == list(range(1, 11))  # the databases as they were at that snapshot


@pytest.mark.integration
def test_a_stream_that_cannot_be_restored_fails_the_restore_and_keeps_the_home(tmp_path: Path) -> None:
    loaded = load(tmp_path)
    svc = SnapshotService(loaded)
    svc._boot_once(svc.state("athena"))
    home = svc.home("athena")
    insert(home / "state.db", range(1, 4))
    (home / "notes.txt").write_text("kept\n")
    assert svc.snapshot("athena")["result"] == "ok"
    damaged = tmp_path / "store" / "athena" / "stream" / "state.db" / "ltx" / "0"
    damaged.mkdir(parents=True)
    (damaged / "0000000000000001-0000000000000001.ltx").write_bytes(b"not an ltx file")
    out = svc.restore("athena")
    assert out["result"] == "failed"
    assert "state.db: litestream restore failed" in out["error"]
    assert rows(home / "state.db") == [1, 2, 3]  # untouched


@pytest.mark.integration
def test_a_second_flared_takes_the_bot_over_and_the_first_stops_streaming(tmp_path: Path) -> None:
    from flared.config.live import LiveConfig
    from flared.gateways import Gateways
    from flared.supervisor import Layout

    store = {"url": f"file://{tmp_path / 'store'}"}
    first_loaded = load(tmp_path / "first", store)
    first = SnapshotService(first_loaded)
    first._boot_once(first.state("athena"))  # an empty store: nothing to claim
    insert(first.home("athena") / "state.db", range(1, 4))
    assert first.snapshot("athena")["result"] == "ok"
    gateways = Gateways(
        LiveConfig(first_loaded), None, Layout(first_loaded.state_dir), may_stream=first.may_stream
    )  # type: ignore[arg-type]
    gateways.ready.add("athena")
    assert gateways.streamed_bots() == ["athena"]
    gateways.held.add("athena")  # held for a restore: its databases are about to be replaced
    assert gateways.streamed_bots() == []
    gateways.held.discard("athena")

    second = SnapshotService(load(tmp_path / "second", store))
    second._boot_once(second.state("athena"))  # restores the first's snapshot and claims the bot
    assert second.state("athena").fenced is None
    assert not second.may_stream("athena")  # not before the first has had time to look
    assert first.check_fence("athena") is not None
    assert gateways.streamed_bots() == []  # Litestream restarts without the bot
    assert "another flared moved it" in first.status("athena")["fenced"]
    assert first.snapshot("athena")["result"] == "fenced"  # nor does it snapshot it
    second.state("athena").claimed_at -= second.policy.stream.fence_check + 1
    assert second.may_stream("athena")
    assert second.check_fence("athena") is None  # its own claim is no move
    assert second.snapshot("athena")["result"] in {"ok", "unchanged"}


def test_the_oldest_restorable_position_is_the_first_file_from_transaction_one() -> None:
    keys = [
        "athena/stream/state.db/ltx/0/0000000000000003-0000000000000003.ltx",
        "athena/stream/state.db/ltx/0/0000000000000001-0000000000000002.ltx",
        "athena/stream/state.db/ltx/9/0000000000000001-0000000000000003.ltx",
        "athena/stream/kanban.db/0001/0000000000000001-0000000000000005.ltx",
    ]
    assert stream_restore.earliest_txids("athena", keys) == {"state.db": 2, "kanban.db": 5}


@pytest.mark.integration
def test_a_database_deleted_outside_a_restore_stops_its_stream_until_restored(tmp_path: Path) -> None:
    loaded = load(tmp_path)
    svc = SnapshotService(loaded)
    svc._boot_once(svc.state("athena"))
    home = svc.home("athena")
    insert(home / "state.db", range(1, 6))
    (home / "notes.txt").write_text("kept\n")
    with replicating(loaded, ["athena"]):
        synced(loaded, home / "state.db")
        assert svc.may_stream("athena")  # new databases join the watched set
        assert svc.snapshot("athena")["result"] == "ok"
        # Deleted while the gateway holds it open (`rm -rf` of the home); Hermes creates an empty one.
        gateway = sqlite3.connect(home / "state.db")
        for suffix in ("", "-wal", "-shm"):
            (home / f"state.db{suffix}").unlink(missing_ok=True)
        insert(home / "state.db", range(100, 101))
        assert not svc.may_stream("athena")  # so Litestream is restarted without the bot
        gateway.close()
    stopped = svc.status("athena")["stream_stopped"]
    assert stopped.startswith("state.db was deleted or replaced outside a restore")
    assert "flared restore --bot athena" in stopped
    reloaded = SnapshotService(loaded)  # it holds across a restart of flared
    reloaded.adopt("athena")
    assert not reloaded.may_stream("athena")
    assert svc.restore("athena")["result"] == "restored"
    assert rows(home / "state.db") == [1, 2, 3, 4, 5]  # the store kept the good copy
    assert svc.status("athena")["stream_stopped"] is None
    assert svc.may_stream("athena")


def test_status_says_why_the_stream_is_off(tmp_path: Path) -> None:
    from flared.daemon import Daemon

    data = config(tmp_path, [bot("athena")])
    data["snapshots"]["encryption"] = {"key": "correct horse battery staple"}
    (tmp_path / "hermes-flare.yaml").write_text(yaml.safe_dump(data))
    daemon = Daemon(load_config(tmp_path / "hermes-flare.yaml"))
    off = daemon._stream_status({}, time.time())["athena"]
    assert off["enabled"] is False
    assert off["reason"].startswith("snapshots.encryption.key is set: Litestream 0.5 cannot encrypt")


# ---------------------------------------------------------------------- bases (a fast cold boot)


def test_a_base_is_wanted_for_each_newest_litestream_snapshot_on_file_and_s3_layouts() -> None:
    stream_keys = [
        "athena/stream/state.db/ltx/9/0000000000000001-0000000000000001.ltx",
        "athena/stream/state.db/ltx/9/0000000000000001-0000000000000030.ltx",
        "athena/stream/state.db/ltx/0/0000000000000031-0000000000000031.ltx",
        "athena/stream/state.db/ltx/1/0000000000000031-0000000000000040.ltx",
        "athena/stream/cron/executions.db/0009/0000000000000001-0000000000000005.ltx",
        "athena/stream/cron/executions.db/0000/0000000000000006-0000000000000007.ltx",
        "athena/stream/kanban.db/ltx/0/0000000000000001-0000000000000002.ltx",  # no snapshot yet
        "zeus/stream/state.db/0009/0000000000000001-0000000000000009.ltx",
    ]
    base_keys = [
        "athena/stream-base/state.db/0000000000000001.sqfs",  # an older snapshot's
        "athena/stream-base/cron/executions.db/0000000000000005.sqfs",
    ]
    assert stream_base.wanted("athena", stream_keys, base_keys) == {"state.db": 0x30}
    assert stream_base.stale("athena", "state.db", 0x30, base_keys) == [base_keys[0]]
    # only a base on the newest snapshot is used; it follows the stream to its newest TXID
    assert stream_base.boot_plans("athena", stream_keys, base_keys) == {
        "cron/executions.db": stream_base.BootPlan(base_keys[1], 5, 7)
    }
    done = [*base_keys, "athena/stream-base/state.db/0000000000000030.sqfs"]
    assert stream_base.boot_plans("athena", stream_keys, done)["state.db"] == stream_base.BootPlan(
        done[-1], 0x30, 0x40
    )


def _newest_snapshot(store: Path, bot: str, rel: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not list((store / bot / "stream" / rel / "ltx" / "9").glob("*.ltx")):
        assert time.monotonic() < deadline, "Litestream wrote no snapshot"
        time.sleep(0.1)


@pytest.mark.integration
def test_a_cold_boot_starts_from_the_base_and_follows_the_stream_to_the_newest_transaction(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    loaded = load(tmp_path)
    svc = SnapshotService(loaded)
    st = svc.state("athena")
    svc._boot_once(st)
    db = svc.home("athena") / "state.db"
    insert(db, range(1, 11))
    bases = tmp_path / "store" / "athena" / "stream-base" / "state.db"
    # Two lives: the second streams on from databases the first boot restored from the base.
    for life, numbers in enumerate((range(11, 31), range(31, 51))):
        with replicating(loaded, ["athena"]):
            synced(loaded, db)
            _newest_snapshot(tmp_path / "store", "athena", "state.db")
            st.claimed_at = 0.0  # streaming allowed (no recent takeover to wait out)
            assert svc.snapshot("athena")["result"] in {"ok", "unchanged"}
            assert [p.name for p in bases.iterdir()] == ["0000000000000001.sqfs"]  # made after the snapshot
            for n in range(numbers.start, numbers.stop, 5):  # after the base, in several LTX files
                insert(db, range(n, n + 5), wal=False)  # as a connection that does not ask for WAL
                synced(loaded, db)
        shutil.rmtree(loaded.state_dir)  # the machine is lost
        caplog.clear()
        svc = SnapshotService(loaded)
        st = svc.state("athena")
        with caplog.at_level(logging.INFO, logger="flared"):
            assert svc._boot_once(st)
        assert "from a base: state.db" in caplog.text, life
        assert rows(db) == list(range(1, numbers.stop)), life
        # in WAL mode, as it was streamed (Litestream streams only a WAL database): the LTX
        # files the follow applied may carry a page 1 that says otherwise
        con = sqlite3.connect(db)
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal", life
        con.close()
        assert not [p for p in db.parent.iterdir() if p.name.endswith("-txid")]


@pytest.mark.integration
def test_a_damaged_base_falls_back_to_the_plain_restore(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    loaded = load(tmp_path)
    svc = SnapshotService(loaded)
    svc._boot_once(svc.state("athena"))
    db = svc.home("athena") / "state.db"
    insert(db, range(1, 6))
    assert svc.snapshot("athena")["result"] == "ok"
    with replicating(loaded, ["athena"]):
        synced(loaded, db)
        _newest_snapshot(tmp_path / "store", "athena", "state.db")
        assert stream_restore.make_bases(loaded.config, svc.store, "athena", tmp_path / "work") == {
            "state.db": ANY
        }
        insert(db, range(6, 9))
        synced(loaded, db)
    (base,) = (tmp_path / "store" / "athena" / "stream-base" / "state.db").iterdir()
    base.write_bytes(b"not squashfs")
    with caplog.at_level(logging.INFO, logger="flared"):
        out = svc.restore("athena")
    assert out["result"] == "restored", out
    assert "its base could not be used" in caplog.text
    assert "from a base: none" in caplog.text
    assert rows(db) == list(range(1, 9))


@pytest.mark.integration
def test_a_follow_litestream_refuses_says_why_at_once(tmp_path: Path) -> None:
    loaded = load(tmp_path)
    svc = SnapshotService(loaded)
    svc._boot_once(svc.state("athena"))
    db = svc.home("athena") / "state.db"
    insert(db, range(1, 4))
    with replicating(loaded, ["athena"]):
        synced(loaded, db)
        _newest_snapshot(tmp_path / "store", "athena", "state.db")
    work = tmp_path / "work"
    work.mkdir()
    config = stream_restore._write_restore_config(loaded.config, "athena", db.parent, ["state.db"], work)
    out = work / "state.db"
    argv = [litestream_executable(), "restore", "-config", str(config), "-no-expand-env"]
    subprocess.run([*argv, "-o", str(out), str(db)], check=True, capture_output=True)
    env = litestream_env(loaded.config.store, os.environ)
    # Litestream 0.5.17 resumes only from a TXID no newer than its newest snapshot
    started = time.monotonic()
    why = stream_base.follow_to(argv, db, out, 0x50, 0x60, env)
    assert why is not None and "cannot resume follow mode" in why, why
    assert time.monotonic() - started < stream_base.STALL_S  # not mistaken for a stall
    assert sorted(p.name for p in work.iterdir() if p.name.startswith("state.db")) == ["state.db"]
