"""The snapshot service: the boot gate, fencing between two flareds, on-demand restore."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from flared.config.loader import LoadedConfig, load_config
from flared.snapshots import catalog
from flared.snapshots import restore as restoring
from flared.snapshots.service import SnapshotService
from tests.fixtures.flare import bot, config
from tests.fixtures.homes import make_home
from tests.fixtures.s3server import MotoServer, store_config

pytestmark = pytest.mark.integration


def load(tmp: Path, store: dict[str, Any], **sections: Any) -> LoadedConfig:
    data = config(tmp, [bot("athena")], store=store, **sections)
    path = tmp / "hermes-flare.yaml"
    tmp.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


class Ready:
    def __init__(self) -> None:
        self.bots: list[str] = []
        self.event = threading.Event()

    def __call__(self, bot: str) -> None:
        self.bots.append(bot)
        self.event.set()


def wait_for(pred: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def test_unreachable_store_at_boot_waits_and_takes_no_snapshot(tmp_path: Path) -> None:
    server = MotoServer()  # not started yet: the store is down at boot
    section = server.section("late-bucket")
    loaded = load(tmp_path, section, restore={"retry_initial": "0.2s", "retry_max": "0.5s"})
    svc = SnapshotService(loaded)
    ready = Ready()
    make_home(svc.home("athena"))  # local leftovers must not be taken for the truth
    svc.boot("athena", ready)
    try:
        wait_for(lambda: svc.status("athena")["phase"] == "waiting for store")
        assert not ready.event.wait(1.0)
        skipped = svc.snapshot("athena")
        assert skipped["result"] == "skipped" and "waiting for store" in skipped["reason"]
        server.start()
        server.client().create_bucket(Bucket="late-bucket")
        assert ready.event.wait(20), svc.status("athena")
        # The store answered "nothing here" and the local home had no record: kept and published.
        assert svc.snapshot("athena")["result"] == "ok"
    finally:
        svc.shutdown(final_snapshots=False)
        server.stop()


def test_start_fresh_never_overwrites_what_the_store_holds(tmp_path: Path) -> None:
    server = MotoServer()
    section = server.section("fresh-bucket")
    loaded = load(tmp_path / "b", section, restore={"on_unreachable": "start_fresh", "retry_initial": "0.2s"})
    svc = SnapshotService(loaded)
    ready = Ready()
    svc.boot("athena", ready)
    try:
        assert ready.event.wait(10), "start_fresh starts the gateway while the store is down"
        assert svc.snapshot("athena")["result"] == "skipped"
        # Meanwhile another machine's good state is in the store.
        server.start()
        server.client().create_bucket(Bucket="fresh-bucket")
        other = load(tmp_path / "a", section)
        writer = SnapshotService(other)
        make_home(writer.home("athena"))
        writer._confirm(writer.state("athena"), fresh=False)
        good = writer.snapshot("athena")
        assert good["result"] == "ok"
        # Whether flared saw the store empty first (then the other writer moved `latest` under
        # it) or saw the other writer's snapshot straight away, it must not overwrite it.
        wait_for(lambda: not svc.status("athena")["gated"])
        assert svc.snapshot("athena")["result"] == "fenced"
        assert svc.status("athena")["fenced"]
        latest, _ = catalog.read_latest(svc.store, "athena")
        assert latest is not None and latest.id == good["id"]
    finally:
        svc.shutdown(final_snapshots=False)
        server.stop()


def test_two_flareds_on_one_bot_one_is_fenced_nothing_lost(tmp_path: Path) -> None:
    with store_config() as section:
        a = SnapshotService(load(tmp_path / "a", section))
        b = SnapshotService(load(tmp_path / "b", section))
    ready_a, ready_b = Ready(), Ready()
    make_home(a.home("athena"))
    a.boot("athena", ready_a)
    assert ready_a.event.wait(20)
    first = a.snapshot("athena")
    assert first["result"] == "ok"
    # A redeploy: a second container restores the bot while the old one still runs.
    b.boot("athena", ready_b)
    assert ready_b.event.wait(20)
    assert (b.home("athena") / "memories" / "USER.md").exists()
    (b.home("athena") / "memories" / "USER.md").write_text("told to the new container\n")
    assert b.snapshot("athena")["result"] == "ok"
    (a.home("athena") / "memories" / "USER.md").write_text("told to the old container\n")
    fenced = a.snapshot("athena")
    assert fenced["result"] == "fenced"
    assert a.status("athena")["fenced"]
    assert a.snapshot("athena")["result"] == "fenced"  # stays paused, no upload attempts
    # The new container's state is what the store serves.
    out = tmp_path / "check"
    restoring.restore(b.store, "athena", out, tmp_path / "rw", key=None)
    assert (out / "memories" / "USER.md").read_text() == "told to the new container\n"
    # The operator resolves it on the old one by restoring: unfenced, with the new state.
    restored = a.restore("athena")
    assert restored["result"] == "restored"
    assert a.status("athena")["fenced"] is None
    assert (a.home("athena") / "memories" / "USER.md").read_text() == "told to the new container\n"
    assert (restoring.rollback_path(a.home("athena")) / "memories" / "USER.md").read_text() == (
        "told to the old container\n"
    )
    for svc in (a, b):
        svc.shutdown(final_snapshots=False)


def test_boot_keeps_local_state_that_is_ahead_of_the_store(tmp_path: Path) -> None:
    """A machine restart with the state dir intact: local changes since the last snapshot survive."""
    with store_config() as section:
        loaded = load(tmp_path, section)
    svc = SnapshotService(loaded)
    make_home(svc.home("athena"))
    svc.boot("athena", Ready())
    wait_for(lambda: svc.status("athena")["phase"] == "ready")
    assert svc.snapshot("athena")["result"] == "ok"
    (svc.home("athena") / "memories" / "USER.md").write_text("not yet snapshotted\n")
    svc.shutdown(final_snapshots=False)

    again = SnapshotService(loaded)
    ready = Ready()
    again.boot("athena", ready)
    assert ready.event.wait(20)
    assert (again.home("athena") / "memories" / "USER.md").read_text() == "not yet snapshotted\n"
    assert again.status("athena")["restore"]["result"] == "kept local state"
    assert len(again.list("athena")) == 1
    again.start()  # the kept state is published soon after
    try:
        wait_for(lambda: len(again.list("athena")) == 2, 10)
    finally:
        again.shutdown(final_snapshots=False)


def test_periodic_and_on_change_triggers(tmp_path: Path) -> None:
    loaded = load(
        tmp_path,
        {"url": f"file://{tmp_path / 'store'}"},
        snapshots={"every": "1h", "on_change": {"enabled": True, "debounce": "0.5s"}},
    )
    svc = SnapshotService(loaded)
    ready = Ready()
    svc.boot("athena", ready)
    assert ready.event.wait(20)
    svc.start()
    try:
        time.sleep(1.0)  # let the watcher start
        make_home(svc.home("athena"))
        wait_for(lambda: (svc.status("athena")["last"] or {}).get("trigger") == "change", 20)
        assert len(svc.list("athena")) == 1
        # Runtime files alone do not trigger.
        (svc.home("athena") / "gateway_state.json").write_text("{}")
        (svc.home("athena") / "logs" / "gateway.log").write_text("x")
        time.sleep(2.0)
        assert len(svc.list("athena")) == 1
    finally:
        svc.shutdown(final_snapshots=False)


def test_shutdown_takes_a_final_snapshot_within_its_budget(tmp_path: Path) -> None:
    loaded = load(
        tmp_path, {"url": f"file://{tmp_path / 'store'}"}, snapshots={"every": "1h", "shutdown_budget": "20s"}
    )
    svc = SnapshotService(loaded)
    ready = Ready()
    svc.boot("athena", ready)
    assert ready.event.wait(20)
    make_home(svc.home("athena"))
    svc.shutdown(final_snapshots=True)
    assert [s["latest"] for s in svc.list("athena")] == [True]
    assert (svc.status("athena")["last"] or {})["trigger"] == "shutdown"


def test_turning_on_change_on_by_reload_starts_watching(tmp_path: Path) -> None:
    store = {"url": f"file://{tmp_path / 'store'}"}
    off = load(tmp_path, store, snapshots={"every": "1h", "on_change": {"enabled": False}})
    svc = SnapshotService(off)
    ready = Ready()
    svc.boot("athena", ready)
    assert ready.event.wait(20)
    svc.start()
    try:
        make_home(svc.home("athena"))
        time.sleep(1.5)
        assert svc.list("athena") == []  # off: nothing watches the home
        on = load(
            tmp_path, store, snapshots={"every": "1h", "on_change": {"enabled": True, "debounce": "0.3s"}}
        )
        svc.update(on)
        time.sleep(1.0)  # the watcher starts
        (svc.home("athena") / "memories" / "USER.md").write_text("changed after the reload\n")
        wait_for(lambda: len(svc.list("athena")) == 1, 20)
    finally:
        svc.shutdown(final_snapshots=False)
