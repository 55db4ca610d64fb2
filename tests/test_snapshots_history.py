"""Snapshot history: what each attempt did, kept per bot for status and the admin page."""

from __future__ import annotations

import json
from pathlib import Path

from flared.snapshots import history
from flared.snapshots.service import SnapshotService
from tests.fixtures.homes import make_home
from tests.test_snapshots_service import Ready, load


def test_only_attempts_that_did_something_are_recorded(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    history.record(path, {"result": "unchanged", "id": "a"})
    history.record(path, {"result": "skipped", "reason": "no home"})
    history.record(path, {"result": "ok", "id": "b", "seconds": 0.5, "trigger": "cron", "fence": "x"})
    history.record(path, {"result": "failed", "reason": "store down", "trigger": "periodic"})
    got = history.read(path)
    assert [(h["result"], h.get("id")) for h in got] == [("ok", "b"), ("failed", None)]
    assert "fence" not in got[0]
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_read_returns_the_newest_and_skips_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    for i in range(5):
        history.record(path, {"result": "ok", "id": f"s{i}"})
    with path.open("a") as fh:
        fh.write('{"result": "ok", "id": "to')  # a crash mid-append
    assert [h["id"] for h in history.read(path, limit=3)] == ["s3", "s4"]


def test_the_file_stays_bounded(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    lines = [json.dumps({"result": "ok", "id": f"s{i:05d}", "reason": "x" * 400}) + "\n" for i in range(2100)]
    path.write_text("".join(lines))
    history.record(path, {"result": "ok", "id": "last"})
    kept = path.read_text().splitlines()
    assert len(kept) == history.MAX_LINES // 2
    assert json.loads(kept[-1])["id"] == "last"


def test_the_service_records_trigger_size_and_duration(tmp_path: Path) -> None:
    loaded = load(tmp_path, {"url": f"file://{tmp_path / 'store'}"})
    svc = SnapshotService(loaded)
    ready = Ready()
    svc.boot("athena", ready)
    assert ready.event.wait(20)
    make_home(svc.home("athena"))
    first = svc.snapshot("athena", "manual")
    assert svc.snapshot("athena", "periodic")["result"] == "unchanged"
    svc.shutdown(final_snapshots=False)
    [entry] = svc.history("athena")
    assert entry["id"] == first["id"] and entry["trigger"] == "manual" and entry["result"] == "ok"
    assert entry["packed_size"] > 0 and entry["seconds"] >= 0
