"""Capture, digests and exclusion globs (no store involved)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from flared.snapshots import capture as cap
from flared.snapshots.retention import Listed, id_time, plan_deletions
from tests.fixtures.homes import make_home


@pytest.mark.parametrize(
    ("rel", "pattern", "hit"),
    [
        ("logs/gateway.log", "logs/**", True),
        ("logs", "logs/**", True),
        ("sub/logs/x", "logs/**", False),  # anchored: has a slash
        ("state.db-wal", "*.db-wal", True),
        ("deep/x/state.db-wal", "*.db-wal", True),  # no slash: any depth
        ("image_cache/a/b.png", "image_cache/**", True),
        ("images/a.png", "**/*.png", True),
        ("a.png", "**/*.png", True),
        ("a.pngx", "**/*.png", False),
        ("memories/USER.md", "logs/**", False),
    ],
)
def test_globs(rel: str, pattern: str, hit: bool) -> None:
    assert cap.matches(rel, [pattern]) is hit


def test_capture_leaves_out_runtime_files_and_secrets(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    got = cap.capture(home, tmp_path / "staging", cap.exclusions(["logs/**"], encrypted=False))
    names = {p.relative_to(got.root).as_posix() for p in got.root.rglob("*")}
    for never in (".env", "auth.json", "gateway.pid", "state", "logs", "state.db-wal", "state.db-shm"):
        assert never not in names
    assert got.databases == ["state.db"]
    assert {"memories/USER.md", "user-link", "dangling", "empty-dir", "ünïcødé ✓.txt"} <= names
    with_keys = cap.capture(home, tmp_path / "staging2", cap.exclusions([], encrypted=True))
    assert (with_keys.root / "auth.json").exists() and not (with_keys.root / ".env").exists()


def test_digest_sees_content_modes_and_links_but_not_mtimes(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    pats = cap.exclusions([], encrypted=False)

    def digest() -> str:
        staging = tmp_path / f"s{time.monotonic_ns()}"
        return cap.capture(home, staging, pats).digest

    first = digest()
    os.utime(home / "memories" / "USER.md", (1, 1))
    assert digest() == first
    (home / "run.sh").chmod(0o700)
    second = digest()
    assert second != first
    os.unlink(home / "user-link")
    os.symlink("skills", home / "user-link")
    assert digest() != second


def test_staging_inside_the_home_is_not_captured_into_itself(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    got = cap.capture(home, home / "work" / "capture-1", cap.exclusions([], encrypted=False))
    assert not (got.root / "work" / "capture-1").exists()


def test_fingerprint_changes_with_any_write_and_distrusts_fresh_files(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    pats = cap.exclusions([], encrypted=False)
    assert cap.fingerprint(home, pats) is None  # files just written: too fresh to trust
    past = time.time() - 60
    for p in home.rglob("*"):
        os.utime(p, (past, past), follow_symlinks=False)
    fp = cap.fingerprint(home, pats)
    assert fp is not None and fp == cap.fingerprint(home, pats)
    (home / "gateway.pid").write_text("999")  # runtime noise is ignored
    os.utime(home / "gateway.pid", (past, past))
    assert cap.fingerprint(home, pats) == fp
    wal = home / "state.db-wal"
    wal.write_bytes(b"x" * 10)  # a WAL holds committed data: it counts
    os.utime(wal, (past, past))
    assert cap.fingerprint(home, pats) != fp


def L(sid: str, blob: bool = True, manifest: bool = True, modified: float = 0.0) -> Listed:
    return Listed(sid, blob, manifest, modified)


def ids(n: int, start: str = "20260101T0000") -> list[str]:
    return [f"{start}{i:02d}Z-aaaaaa" for i in range(n)]


def test_retention_plan() -> None:
    snaps = ids(6)
    now = (id_time(snaps[-1]) or 0) + 30
    plan = plan_deletions([L(s) for s in snaps], latest_id=snaps[-1], keep_last=3, max_age=10, now=now)
    assert plan.expired == [snaps[2], snaps[1], snaps[0]]
    assert plan.orphans == []
    # Young snapshots beyond `last` stay; protected ones always stay.
    plan = plan_deletions(
        [L(s) for s in snaps], latest_id=snaps[-1], keep_last=2, max_age=3600, now=now, protected=[snaps[0]]
    )
    assert plan.expired == []
    plan = plan_deletions(
        [L(s) for s in snaps], latest_id=snaps[-1], keep_last=1, max_age=1, now=now, protected=[snaps[0]]
    )
    assert snaps[0] not in plan.expired and snaps[-1] not in plan.expired and len(plan.expired) == 4


def test_orphans_ours_go_at_once_others_after_grace() -> None:
    snaps = ids(4)
    now = (id_time(snaps[-1]) or 0) + 10
    listed = [
        L(snaps[0]),
        L(snaps[1], manifest=False, modified=now - 5),  # blob of a crashed upload
        L(snaps[2]),  # latest
        L(snaps[3], modified=now - 5),  # complete but never published (crash before pointer)
    ]
    plan = plan_deletions(listed, latest_id=snaps[2], keep_last=10, max_age=None, now=now)
    assert plan.orphans == []  # maybe another writer's upload in flight
    plan = plan_deletions(
        listed, latest_id=snaps[2], keep_last=10, max_age=None, now=now, ours_in_flight=[snaps[1], snaps[3]]
    )
    assert sorted(plan.orphans) == [snaps[1], snaps[3]]
    plan = plan_deletions(listed, latest_id=snaps[2], keep_last=10, max_age=None, now=now + 7200)
    assert sorted(plan.orphans) == [snaps[1], snaps[3]]


def test_an_idle_gateways_own_ticking_is_not_a_change(tmp_path: Path) -> None:
    """Hermes rewrites its cron ticker files every minute and the channel directory every five;
    an idle bot must still snapshot as unchanged (found running a real gateway idle)."""
    home = make_home(tmp_path / "home")
    pats = cap.exclusions([], encrypted=False)
    first = cap.capture(home, tmp_path / "a", pats).digest
    (home / "cron").mkdir()
    (home / "cron" / "ticker_heartbeat").write_text("1795502559.71")
    (home / "cron" / "ticker_last_success").write_text("1795502559.72")
    (home / "cron" / ".tick.lock").write_text("")
    (home / "channel_directory.json").write_text('{"updated_at": "2026-11-24T06:00:00"}')
    (home / "kanban.db.init.lock").write_text("")
    assert cap.capture(home, tmp_path / "b", pats).digest != first  # the new cron dir itself
    second = cap.capture(home, tmp_path / "c", pats).digest
    (home / "cron" / "ticker_heartbeat").write_text("1795502619.72")
    (home / "cron" / "ticker_last_success").write_text("1795502619.73")
    (home / "channel_directory.json").write_text('{"updated_at": "2026-11-24T06:05:00"}')
    assert cap.capture(home, tmp_path / "d", pats).digest == second
