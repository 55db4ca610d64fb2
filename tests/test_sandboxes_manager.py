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


def test_capacity_waits_then_fails_with_a_readable_message(manager_for: Any) -> None:
    m = manager_for({"mode": "per-session", "max_leases": 2, "acquire_timeout": "0.5s"})
    m.acquire("hermes", "s1")
    held = m.acquire("hermes", "s2")
    started = time.monotonic()
    with pytest.raises(CapacityReached, match="sandbox capacity reached: 2 leases in use"):
        m.acquire("hermes", "s3")
    assert 0.4 < time.monotonic() - started < 3
    # a release while waiting lets the waiter in
    threading.Timer(0.3, m.release, args=(held["id"],)).start()
    got = m.acquire("hermes", "s3")
    assert got["created"]
    assert len(m.list()) == 2


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
