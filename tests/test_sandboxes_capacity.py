"""The pure capacity decision: create, reclaim the least recently used idle lease, or wait (and why)."""

from __future__ import annotations

from dataclasses import dataclass

from flared.sandboxes.capacity import Create, Reclaim, Wait, decide, limits


@dataclass
class L:
    id: str
    bot: str
    busy: int = 0
    last_used: float = 0.0


def test_default_share_splits_max_leases_over_the_bots_that_use_the_profile() -> None:
    assert limits("p", 4, None, 2).per_bot == 2
    assert limits("p", 4, None, 1).per_bot == 4
    assert limits("p", 4, None, 5).per_bot == 1  # at least one each
    assert limits("p", 4, 9, 2).per_bot == 4  # never above max_leases
    assert "split over 2 bot(s)" in limits("p", 4, None, 2).per_bot_text()


def test_free_capacity_creates() -> None:
    assert decide([L("x", "a", busy=1)], "a", limits("p", 4, None, 2)) == Create()


def test_full_profile_reclaims_the_least_recently_used_idle_lease() -> None:
    live = [L("new", "a", last_used=3), L("old", "a", last_used=1), L("busy", "a", busy=1, last_used=0)]
    assert decide(live, "a", limits("p", 3, None, 1)) == Reclaim("old")


def test_a_bot_at_its_share_reclaims_only_its_own() -> None:
    lim = limits("p", 4, None, 2)
    live = [L("a1", "a", last_used=5), L("a2", "a", busy=1), L("b1", "b", last_used=0)]
    assert decide(live, "a", lim) == Reclaim("a1")
    live[0].busy = 1
    d = decide(live, "a", lim)
    assert isinstance(d, Wait) and "bot 'a' has 2 leases of profile 'p'" in d.message
    assert "max_leases_per_bot 2" in d.message


def test_a_bot_under_its_share_takes_from_a_richer_bot_not_a_poorer_one() -> None:
    lim = limits("p", 3, 3, 2)  # explicit share: oversubscribed on purpose
    live = [L("a1", "a", last_used=2), L("a2", "a", last_used=1), L("b1", "b", last_used=0)]
    assert decide(live, "b", lim) == Reclaim("b1")  # its own idle lease is the LRU candidate
    live[2].busy = 1
    assert decide(live, "b", lim) == Reclaim("a2")  # a holds more: its LRU idle lease goes
    live = [L("a1", "a", busy=1), L("b1", "b", last_used=0), L("c1", "c", busy=1)]
    d = decide(live, "c", limits("p", 3, 3, 3))
    assert isinstance(d, Wait)  # b holds no more than c: its idle lease is b's
    assert "all 3 leases of profile 'p' are in use (2 running commands) (max_leases 3)" in d.message
    assert d.detail.startswith("3 leases in use, 2 running commands (profile 'p' allows 3")
