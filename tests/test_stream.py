"""Litestream: its config from the YAML, the program's text, status, and restores with the real binary."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from flared.config.loader import LoadedConfig, load_config
from flared.snapshots.service import SnapshotService
from flared.stream import restore as stream_restore
from flared.stream import status as stream_status
from flared.stream.program import litestream_env, litestream_executable, stream_program, write_config
from flared.stream.render import StreamLayout, litestream_config, render
from tests.fixtures.flare import bot, config
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


@contextlib.contextmanager
def litestream(loaded: LoadedConfig, bots: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    """The real Litestream with the config flared renders (what `flared stream run` execs)."""
    path = write_config(loaded, bots)
    log = StreamLayout(loaded.state_dir).log
    with log.open("ab") as fh:
        proc = subprocess.Popen(
            [litestream_executable(), "replicate", "-config", str(path), "-no-expand-env"],
            env=litestream_env(loaded.config.store, os.environ),
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def rows(db: Path) -> list[int]:
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return [n for (n,) in con.execute("SELECT n FROM t ORDER BY n")]
    finally:
        con.close()


def insert(db: Path, numbers: range) -> None:
    con = sqlite3.connect(db, isolation_level=None)
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
        with litestream(loaded, ["athena"]):
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
    with litestream(loaded, ["athena"]):
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
