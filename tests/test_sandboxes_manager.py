"""The lease manager on the real bubblewrap provider: modes, expiry, capacity, restart reconcile."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from flared.config.loader import LoadedConfig, load_config
from flared.sandboxes.manager import BadLeaseRequest, CapacityReached, LeaseManager, LeaseNotFound
from flared.sandboxes.types import lease_prefix, new_lease_id

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")

MODEL = {"provider": "custom", "base_url": "http://127.0.0.1:9/v1", "model": "m"}


def make_config(
    tmp_path: Path, profiles: dict[str, dict[str, Any]], bots: list[dict[str, Any]] | None = None
) -> LoadedConfig:
    data = {
        "version": 1,
        "state_dir": str(tmp_path / "state"),
        "sandboxes": profiles,
        "bots": bots or [{"name": "hermes", "model": MODEL}],
    }
    path = tmp_path / "hermes-flare.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


@pytest.fixture
def manager_for(tmp_path: Path) -> Iterator[Any]:
    made: list[LeaseManager] = []

    def make(profile: dict[str, Any], bots: list[dict[str, Any]] | None = None, **kw: Any) -> LeaseManager:
        m = LeaseManager(
            make_config(tmp_path, {"default": profile}, bots), reap_every=kw.pop("reap_every", 0.1)
        )
        m.start()
        made.append(m)
        return m

    yield make
    for m in made:
        for lease in m.list():
            m.release(lease["id"])
        m.stop()


def test_per_session_reuses_the_lease_of_a_session(manager_for: Any) -> None:
    m = manager_for({"mode": "per-session"})
    a1 = m.acquire("hermes", "s1")
    a2 = m.acquire("hermes", "s1")
    b = m.acquire("hermes", "s2")
    assert a1["created"] and not a2["created"] and a1["id"] == a2["id"]
    assert b["id"] != a1["id"]
    assert m.exec(a1["id"], "echo one > f").exit_code == 0
    assert m.exec(a2["id"], "cat f").stdout == "one\n"
    assert m.exec(b["id"], "cat f").exit_code != 0  # another session's files are not there
    assert a1["id"].startswith(lease_prefix("default")) and len(a1["id"]) <= 63


def test_shared_mode_is_one_lease_for_every_session(manager_for: Any) -> None:
    m = manager_for({"mode": "shared"})
    a, b = m.acquire("hermes", "s1"), m.acquire("hermes", "s2")
    assert a["id"] == b["id"] and a["session"] is None
    m.exec(a["id"], "echo shared > f")
    assert m.exec(b["id"], "cat f").stdout == "shared\n"


def test_per_command_is_fresh_and_destroyed_after(manager_for: Any) -> None:
    m = manager_for({"mode": "per-command"})
    lease1, r1 = m.run("hermes", "s1", "echo x > f; ls")
    assert r1.stdout == "f\n"
    lease2, r2 = m.run("hermes", "s1", "ls")
    assert lease2["id"] != lease1["id"] and r2.stdout == ""
    assert m.list() == []  # both destroyed right after their command
    with pytest.raises(LeaseNotFound):
        m.exec(lease1["id"], "true")


def test_idle_ttl_expires_a_lease(manager_for: Any) -> None:
    m = manager_for({"mode": "per-session", "idle_ttl": "1s"})
    lease = m.acquire("hermes", "s1")
    deadline = time.monotonic() + 5
    while m.list() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert m.list() == []
    with pytest.raises(LeaseNotFound):
        m.exec(lease["id"], "true")
    assert m.acquire("hermes", "s1")["id"] != lease["id"]  # the session gets a new one


def test_use_keeps_a_lease_alive_but_max_lifetime_ends_it(manager_for: Any) -> None:
    m = manager_for({"mode": "per-session", "idle_ttl": "1s", "max_lifetime": "2s"})
    lease = m.acquire("hermes", "s1")
    started = time.monotonic()
    while time.monotonic() - started < 1.5:  # busy: idle_ttl never passes
        assert m.exec(lease["id"], "true").exit_code == 0
        time.sleep(0.3)
    assert [x["id"] for x in m.list()] == [lease["id"]]
    time.sleep(1.0)
    assert m.list() == []


def test_max_lifetime_kills_a_running_command(manager_for: Any) -> None:
    m = manager_for({"mode": "per-session", "max_lifetime": "1s", "command_timeout": "30s"})
    lease = m.acquire("hermes", "s1")
    started = time.monotonic()
    r = m.exec(lease["id"], "sleep 20")
    assert time.monotonic() - started < 5 and r.exit_code != 0


def busy(m: LeaseManager, bot: str, session: str, seconds: float) -> threading.Thread:
    """Run ``sleep`` in the bot's session lease in the background; returns once it is running."""
    lease = m.acquire(bot, session)
    t = threading.Thread(target=m.exec, args=(lease["id"], f"sleep {seconds}"), kwargs={"bot": bot})
    t.start()
    deadline = time.monotonic() + 5
    while m.get(lease["id"]).busy == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    return t


def test_capacity_waits_then_fails_with_a_readable_message(manager_for: Any) -> None:
    m = manager_for({"mode": "per-session", "max_leases": 2, "acquire_timeout": "0.5s"})
    running = [busy(m, "hermes", s, 2) for s in ("s1", "s2")]  # no idle lease to reclaim
    started = time.monotonic()
    with pytest.raises(CapacityReached, match="sandbox capacity reached: 2 leases in use") as err:
        m.acquire("hermes", "s3")
    assert "profile 'default' allows 2" in str(err.value) and "running commands" in str(err.value)
    assert 0.4 < time.monotonic() - started < 3
    # a command that ends lets the waiter in: its now idle lease is reclaimed
    got = m.acquire("hermes", "s3") if not running[0].join(5) else None
    assert got is not None and got["created"]
    assert len(m.list()) == 2
    for t in running:
        t.join()


def test_at_capacity_the_least_recently_used_idle_lease_is_reclaimed(manager_for: Any) -> None:
    """Issue 13 item 11: idle leases make room before anyone waits (each held a conversation for idle_ttl)."""
    m = manager_for({"mode": "per-session", "max_leases": 2, "acquire_timeout": "30s"})
    old, recent = m.acquire("hermes", "old"), m.acquire("hermes", "recent")
    m.exec(old["id"], "echo old > f")
    m.exec(recent["id"], "echo recent > f")  # used last: kept
    started = time.monotonic()
    new = m.acquire("hermes", "new")
    assert time.monotonic() - started < 2 and new["created"]
    assert {x["session"] for x in m.list()} == {"recent", "new"}
    assert m.exec(recent["id"], "cat f").stdout == "recent\n"
    with pytest.raises(LeaseNotFound):
        m.exec(old["id"], "true")


def test_one_bot_cannot_take_every_lease_from_another(manager_for: Any) -> None:
    """With two bots and max_leases 4, each may hold 2: a busy bot waits for its own, never takes the other's."""
    bots = [{"name": "a", "model": MODEL}, {"name": "b", "model": MODEL}]
    m = manager_for({"mode": "per-session", "max_leases": 4, "acquire_timeout": "0.5s"}, bots)
    running = [busy(m, "a", s, 3) for s in ("a1", "a2")]
    with pytest.raises(CapacityReached, match="bot 'a' has 2 leases") as err:
        m.acquire("a", "a3")
    assert "max_leases_per_bot" in str(err.value) or "share" in str(err.value)
    started = time.monotonic()
    got = [m.acquire("b", s) for s in ("b1", "b2")]  # b's share is there at once
    assert time.monotonic() - started < 1 and all(g["created"] for g in got)
    # b's third conversation reclaims b's own idle lease, not one of a's running ones
    m.acquire("b", "b3")
    assert sorted(x["session"] for x in m.list()) == ["a1", "a2", "b2", "b3"]
    for t in running:
        t.join()


def test_max_leases_per_bot_is_a_setting(manager_for: Any) -> None:
    bots = [{"name": "a", "model": MODEL}, {"name": "b", "model": MODEL}]
    m = manager_for(
        {"mode": "per-session", "max_leases": 4, "max_leases_per_bot": 3, "acquire_timeout": "0.3s"}, bots
    )
    running = [busy(m, "a", s, 2) for s in ("a1", "a2", "a3")]
    with pytest.raises(CapacityReached, match="max_leases_per_bot 3"):
        m.acquire("a", "a4")
    for t in running:
        t.join()


def test_a_command_that_must_wait_says_so_at_once(manager_for: Any) -> None:
    m = manager_for({"mode": "per-session", "max_leases": 1, "acquire_timeout": "10s"})
    running = busy(m, "hermes", "s1", 1.5)
    told: list[tuple[float, str]] = []
    started = time.monotonic()
    with pytest.raises(CapacityReached, match="waiting for a sandbox") as err:
        m.acquire("hermes", "s2", wait=False)
    assert time.monotonic() - started < 0.5  # no wait at all when asked not to
    assert "profile 'default'" in str(err.value) and "max_leases 1" in str(err.value)
    lease = m.acquire("hermes", "s2", on_wait=lambda msg: told.append((time.monotonic() - started, msg)))
    assert lease["created"] and time.monotonic() - started >= 1.0  # it did wait for s1's command
    assert len(told) == 1 and told[0][0] < 0.5, told  # and said so at once
    assert "profile 'default'" in told[0][1] and "max_leases 1" in told[0][1]
    running.join()


def test_a_killed_command_never_reports_exit_0(manager_for: Any) -> None:
    """The flake seen once: a lease destroyed (max_lifetime) under a running command reported 0.

    The destroy took the command off the provider's running list before its
    exec had reaped it; the orphan reaper then reaped the killed bwrap (it
    reaps bwrap zombies that are not running commands) and Popen.wait() got
    ECHILD, which Python reports as exit status 0.
    """
    m = manager_for({"mode": "per-session", "command_timeout": "30s"}, reap_every=3600)
    provider = None
    codes = []
    for i in range(5):
        lease = m.acquire("hermes", f"s{i}")
        provider = m._providers["local"]
        t = threading.Thread(target=lambda lid=lease["id"]: codes.append(m.exec(lid, "sleep 20")))
        t.start()
        deadline = time.monotonic() + 5
        while not provider._running.get(lease["id"]) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        m.release(lease["id"])  # what the reaper does at max_lifetime
        for _ in range(200):  # and then, on the same tick, it reaps orphaned bwrap zombies
            provider.reap_orphans()
        t.join(10)
    assert len(codes) == 5
    assert all(r.exit_code != 0 for r in codes), [(r.exit_code, r.stderr) for r in codes]
    assert all("destroyed" in r.stderr for r in codes), [r.stderr for r in codes]


def test_per_command_capacity_is_concurrency(manager_for: Any) -> None:
    m = manager_for({"mode": "per-command", "max_leases": 1, "acquire_timeout": "10s"})
    results: list[float] = []

    def one() -> None:
        m.run("hermes", "s", "sleep 0.5")
        results.append(time.monotonic())

    started = time.monotonic()
    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert max(results) - started >= 1.0  # the second waited for the first


def test_leases_are_per_bot(manager_for: Any) -> None:
    bots = [{"name": "a", "model": MODEL}, {"name": "b", "model": MODEL}]
    m = manager_for({"mode": "shared"}, bots)
    la, lb = m.acquire("a", None), m.acquire("b", None)
    assert la["id"] != lb["id"]
    with pytest.raises(LeaseNotFound):
        m.exec(la["id"], "true", bot="b")
    with pytest.raises(LeaseNotFound):
        m.release(la["id"], bot="b")
    assert [x["bot"] for x in m.list(bot="a")] == ["a"]


def test_bad_requests(manager_for: Any) -> None:
    m = manager_for({"mode": "per-session"})
    with pytest.raises(BadLeaseRequest, match="no bot named"):
        m.acquire("ghost", "s")
    lease = m.acquire("hermes", "s")
    with pytest.raises(BadLeaseRequest, match="command"):
        m.exec(lease["id"], "  ")
    with pytest.raises(BadLeaseRequest, match="session key"):
        m.acquire("hermes", "x" * 300)


def test_restart_keeps_leases_and_destroys_orphans(tmp_path: Path) -> None:
    loaded = make_config(tmp_path, {"default": {"mode": "per-session"}})
    m1 = LeaseManager(loaded, reap_every=0.1)
    m1.start()
    kept = m1.acquire("hermes", "s1")
    m1.exec(kept["id"], "echo survives > f")
    m1.stop()  # flared stops (or crashes): the table and the sandbox remain
    provider = m1._providers["local"]
    orphan_dir = provider.lease_dir(new_lease_id("default"))  # type: ignore[attr-defined]
    (orphan_dir / "work").mkdir(parents=True)  # a sandbox no row claims

    m2 = LeaseManager(loaded, reap_every=0.1)
    m2.start()
    try:
        assert not orphan_dir.exists()  # destroyed by the start-up reconcile
        again = m2.acquire("hermes", "s1")
        assert again["id"] == kept["id"] and not again["created"]
        assert m2.exec(kept["id"], "cat f").stdout == "survives\n"
    finally:
        m2.release(kept["id"])
        m2.stop()


def test_restart_forgets_rows_whose_sandbox_vanished(tmp_path: Path) -> None:
    loaded = make_config(tmp_path, {"default": {"mode": "per-session"}})
    m1 = LeaseManager(loaded)
    m1.start()
    lease = m1.acquire("hermes", "s1")
    m1.stop()
    shutil.rmtree(m1._providers["local"].lease_dir(lease["id"]))  # type: ignore[attr-defined]
    m2 = LeaseManager(loaded)
    m2.start()
    try:
        assert m2.list() == []
    finally:
        m2.stop()


def test_update_applies_to_new_leases_only(tmp_path: Path) -> None:
    m = LeaseManager(make_config(tmp_path, {"default": {"mode": "per-session", "env": {"V": "old"}}}))
    m.start()
    try:
        old = m.acquire("hermes", "s1")
        m.update(make_config(tmp_path, {"default": {"mode": "per-session", "env": {"V": "new"}}}))
        assert m.exec(old["id"], "echo $V").stdout == "old\n"
        new = m.acquire("hermes", "s2")
        assert m.exec(new["id"], "echo $V").stdout == "new\n"
    finally:
        for lease in m.list():
            m.release(lease["id"])
        m.stop()


def test_table_does_not_store_tokens(tmp_path: Path) -> None:
    m = LeaseManager(make_config(tmp_path, {"default": {"mode": "per-session", "token": "tok-secret-value"}}))
    m.start()
    try:
        m.acquire("hermes", "s1")
        assert (m.db_path.stat().st_mode & 0o777) == 0o600
        stored = b"".join(p.read_bytes() for p in m.db_path.parent.glob("leases.db*"))
        assert b"s1" in stored  # the row is there...
        assert b"tok-secret-value" not in stored  # ...without the token
    finally:
        for lease in m.list():
            m.release(lease["id"])
        m.stop()


def test_orphan_reconcile_stays_inside_its_own_group() -> None:
    """On Cloudflare each group's container must not destroy another group's live sandboxes."""
    from flared.sandboxes.types import in_group, new_lease_id, reconcile_groups

    assert reconcile_groups({"a", "a-b"}, "a") == ["a"]
    assert reconcile_groups({"a", "a-b"}, None) == ["a", "a-b", "default"]
    theirs = new_lease_id("a-b")
    ours = new_lease_id("a")
    assert theirs.startswith("fl-a-")  # why the prefix alone is not enough
    assert in_group(ours, "a") and not in_group(theirs, "a") and in_group(theirs, "a-b")
