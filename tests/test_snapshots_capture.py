"""Walk, content hashes, exclusions, secrets, links and the pseudo-file pack (no store involved)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from flared.config.models import CompressionConfig
from flared.snapshots import capture as cap
from flared.snapshots import pack
from flared.snapshots.hashcache import HashCache
from flared.snapshots.retention import Listed, id_time, plan_deletions
from tests.fixtures.homes import make_home, tree


def scan(
    home: Path, *, user: tuple[str, ...] = (), encrypted: bool = False, cache: Path | None = None
) -> cap.Captured:
    rules = cap.rules(list(user), encrypted=encrypted)
    return cap.capture(cap.walk(home, rules), HashCache(cache, home.parent / "scratch"))


def names(got: cap.Captured) -> set[str]:
    return {e.rel for e in got.entries}


def age(root: Path, seconds: float = 60) -> None:
    """Make every file older than the racy window, as an agent idle for a while."""
    past = time.time() - seconds
    for p in [root, *root.rglob("*")]:
        os.utime(p, (past, past), follow_symlinks=False)


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


WALK_PATTERNS = (
    "logs/**",
    "/top.txt",
    "cache/",
    "*.tmp",
    "n?te.md",
    "**/*.png",
    "deep/**/x.bin",
    "a/b/c.txt",
    "[x].md",
)


def test_the_walk_leaves_out_exactly_what_the_patterns_match(tmp_path: Path) -> None:
    """The walk matches one-component patterns against names only (its directories were
    already tested): the same answers as matching every whole path."""
    home = tmp_path / "home"
    rels = [
        "top.txt",
        "sub/top.txt",
        "cache/x",
        "sub/cache/y",
        "sub/cache.d/z",
        "f.tmp",
        "sub/g.tmp/h",
        "note.md",
        "sub/nate.md",
        "sub/notes.md",
        "i.png",
        "sub/deep/j.png",
        "deep/x.bin",
        "deep/1/2/x.bin",
        "sub/deep/x.bin",
        "a/b/c.txt",
        "z/a/b/c.txt",
        "[x].md",
        "x.md",
        "logs/l",
        "sub/logs/l",
        "sub/.env",
        "sub/auth.json/k",
        "state.db-wal",
        "sub/gateway.pid",
    ]
    for rel in rels:
        (home / rel).parent.mkdir(parents=True, exist_ok=True)
        (home / rel).write_text(rel)
    rules = cap.rules(list(WALK_PATTERNS), encrypted=False)
    walked = cap.walk(home, rules)
    kept = {rel for rel, _ in walked.entries}
    secrets = {rel for rel, _ in walked.secrets}
    every = {str(p.relative_to(home)) for p in home.rglob("*")}

    def hidden(rel: str, patterns: tuple[str, ...]) -> bool:
        parts = rel.split("/")
        return any(cap.matches("/".join(parts[: i + 1]), patterns) for i in range(len(parts)))

    assert kept == {r for r in every if not hidden(r, rules.all)}
    # A secret is listed (its content kept out under other names) unless a directory above it is left out.
    assert secrets == {
        r
        for r in every
        if (home / r).is_file()
        and cap.matches(r, rules.secret)
        and not hidden(str(Path(r).parent), rules.all)
    }
    assert "sub/auth.json/k" not in kept | secrets
    assert {"sub/top.txt", "sub/cache.d/z", "sub/notes.md", "x.md", "z/a/b/c.txt", "sub/logs/l"} <= kept
    assert "sub/deep/x.bin" in kept and "deep/1/2/x.bin" not in kept


def test_walk_leaves_out_runtime_files_and_secrets(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    got = scan(home, user=("logs/**",))
    kept = names(got)
    for never in (".env", "auth.json", "gateway.pid", "state", "logs", "state.db-wal", "state.db-shm"):
        assert never not in kept
    assert got.databases == ["state.db"]
    assert {"memories/USER.md", "user-link", "dangling", "empty-dir", "ünïcødé ✓.txt"} <= kept
    with_keys = scan(home, encrypted=True)
    assert "auth.json" in names(with_keys) and ".env" not in names(with_keys)


def test_digest_sees_content_modes_and_links_but_not_mtimes(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    first = scan(home).digest
    os.utime(home / "memories" / "USER.md", (1, 1))
    assert scan(home).digest == first
    (home / "run.sh").chmod(0o700)
    second = scan(home).digest
    assert second != first
    os.unlink(home / "user-link")
    os.symlink("skills", home / "user-link")
    assert scan(home).digest != second


def test_the_fingerprint_changes_with_any_write_and_distrusts_fresh_files(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    rules = cap.rules([], encrypted=False)
    assert cap.walk(home, rules).fingerprint() is None  # files just written: too fresh to trust
    age(home)
    fp = cap.walk(home, rules).fingerprint()
    assert fp is not None and fp == cap.walk(home, rules).fingerprint()
    (home / "gateway.pid").write_text("999")  # runtime noise is ignored, and so is the
    (home / "processes.json").write_text("{}")  # directory time it bumps
    os.utime(home / "gateway.pid", (1, 1))
    os.utime(home / "processes.json", (1, 1))
    assert cap.walk(home, rules).fingerprint() == fp
    wal = home / "state.db-wal"
    wal.write_bytes(b"x" * 10)  # a WAL holds committed data: it counts
    os.utime(wal, (1, 1))
    assert cap.walk(home, rules).fingerprint() != fp


def test_the_cache_reads_only_what_changed_and_backs_up_no_unchanged_database(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    age(home)
    cache = tmp_path / "cache"
    first = scan(home, cache=cache)
    assert first.hashed_bytes > 0 and first.backed_up == ["state.db"]
    second = scan(home, cache=cache)
    assert (second.digest, second.hashed_bytes, second.backed_up) == (first.digest, 0, [])
    # A touch (what a restart or an editor does) changes the key: that file alone is read again.
    os.utime(home / "memories" / "USER.md")
    touched = scan(home, cache=cache)
    assert touched.digest == first.digest and touched.backed_up == []
    assert touched.hashed_bytes == (home / "memories" / "USER.md").stat().st_size
    # A write to the database (into its WAL) is seen, and the copy is made again.
    db = sqlite3.connect(home / "state.db")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("INSERT INTO messages(body) VALUES ('new')")
    db.commit()
    changed = scan(home, cache=cache)
    db.close()
    assert changed.backed_up == ["state.db"] and changed.digest != first.digest


def test_a_database_that_cannot_be_copied_fails_and_is_never_packed_raw(tmp_path: Path) -> None:
    """Any SQLite error used to mean "not a database, pack it as a file"."""
    home = make_home(tmp_path / "home")
    (home / "broken.db").write_bytes(cap.SQLITE_HEADER + os.urandom(8192))
    with pytest.raises(cap.DatabaseCopyFailed, match=r"broken\.db could not be copied consistently"):
        scan(home)
    (home / "broken.db").write_bytes(b"not SQLite at all" + os.urandom(100))
    got = scan(home)  # a file that is not SQLite by its header is a file
    assert "broken.db" in names(got) and got.databases == ["state.db"]


def test_reading_a_closed_wal_database_leaves_no_side_files(tmp_path: Path) -> None:
    """SQLite's read-only backup left -wal/-shm behind, which changed the fingerprint."""
    home = make_home(tmp_path / "home")
    assert not (home / "state.db-wal").exists()
    age(home)
    rules = cap.rules([], encrypted=False)
    before = cap.walk(home, rules).fingerprint()
    scan(home)
    assert sorted(p.name for p in home.glob("state.db*")) == ["state.db"]
    assert cap.walk(home, rules).fingerprint() == before


def test_no_secret_content_and_nothing_from_outside_the_home(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    outside = tmp_path / "elsewhere.key"
    outside.write_text("a key that lives outside the home\n")
    os.link(home / ".env", home / "memories" / "notes.txt")  # a hard link to .env
    (home / "copy-of-env").write_bytes((home / ".env").read_bytes())  # its content, another name
    (home / "creds-copy.json").write_bytes((home / "auth.json").read_bytes())
    os.link(outside, home / "skills" / "linked.key")  # a hard link to a file elsewhere
    os.symlink("/etc/passwd", home / "passwd")  # symlinks that leave the home
    os.symlink("../..", home / "up")
    os.mkfifo(home / "pipe")
    got = scan(home)
    why = dict(got.left_out)
    assert why["memories/notes.txt"] == "a hard link to .env"
    assert why["copy-of-env"] == "it has the content of .env"
    assert why["creds-copy.json"] == "it has the content of auth.json"
    assert why["skills/linked.key"] == "a hard link to a file outside the home"
    assert "outside the home" in why["passwd"] and "outside the home" in why["up"]
    assert why["pipe"] == "a socket, fifo or device"
    assert not set(why) & names(got)
    # Encrypted snapshots carry credentials, so a copy of auth.json is no secret then; .env still is.
    enc = dict(scan(home, encrypted=True).left_out)
    assert "creds-copy.json" not in enc and enc["copy-of-env"] == "it has the content of .env"
    # Hard links inside the home are fine, even when one name is excluded.
    os.link(home / "run.sh", home / "logs" / "run-again.sh")
    assert "run.sh" in names(scan(home, user=("logs/**",)))


@pytest.mark.integration
def test_pack_straight_from_the_home_holds_exactly_what_the_walk_kept(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    odd = ["with space", 'quo"te', "back\\slash", "#hash", " lead", "tab\there", "star*?[", "ünï ✓"]
    for name in odd:
        (home / "memories" / name).write_text(name)
    os.symlink("with space", home / "memories" / "link to odd")
    (home / "nl\nname").write_text("cannot be expressed in a pseudo file")
    got = scan(home, user=("logs/**",))
    assert dict(got.left_out)["nl\nname"] == "its name holds a newline"
    blob = tmp_path / "out.sqsh"
    pack.pack(got, blob, CompressionConfig(), scratch=tmp_path / "pk")
    out = tmp_path / "out"
    pack.unpack(blob, out)
    skip = ("logs", "state", "gateway.pid", ".env", "auth.json", "nl\nname")
    assert tree(out) == tree(home, skip=skip)
    assert (out.stat().st_mode & 0o777) == (home.stat().st_mode & 0o777)
    listing = subprocess.run(["unsquashfs", "-lls", str(blob)], capture_output=True, text=True).stdout
    assert ".env" not in listing and "gateway.pid" not in listing


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
    first = scan(home).digest
    (home / "cron").mkdir()
    (home / "cron" / "ticker_heartbeat").write_text("1795502559.71")
    (home / "cron" / "ticker_last_success").write_text("1795502559.72")
    (home / "cron" / ".tick.lock").write_text("")
    (home / "channel_directory.json").write_text('{"updated_at": "2026-11-24T06:00:00"}')
    (home / "kanban.db.init.lock").write_text("")
    assert scan(home).digest != first  # the new cron dir itself
    second = scan(home).digest
    (home / "cron" / "ticker_heartbeat").write_text("1795502619.72")
    (home / "cron" / "ticker_last_success").write_text("1795502619.73")
    (home / "channel_directory.json").write_text('{"updated_at": "2026-11-24T06:05:00"}')
    assert scan(home).digest == second


def test_a_database_held_open_with_a_wal_stays_unchanged_after_our_reads(tmp_path: Path) -> None:
    """SQLite chowns a WAL it opens as root (its ctime changes): that made every idle snapshot of
    a gateway's open database take the content path and back the database up again."""
    home = make_home(tmp_path / "home")
    holder = sqlite3.connect(home / "state.db", isolation_level=None)
    holder.execute("PRAGMA journal_mode=WAL")
    holder.execute("PRAGMA wal_autocheckpoint=0")
    holder.execute("INSERT INTO messages(body) VALUES ('kept in the WAL')")
    try:
        age(home)
        assert (home / "state.db-wal").stat().st_size > 0
        rules = cap.rules([], encrypted=False)
        cache = tmp_path / "cache"
        before = cap.walk(home, rules).fingerprint()
        first = scan(home, cache=cache)
        assert first.backed_up == ["state.db"]
        assert cap.walk(home, rules).fingerprint() == before
        assert scan(home, cache=cache).backed_up == []
    finally:
        holder.close()
