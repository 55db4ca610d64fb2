"""flared.hangs: when a gateway that stopped answering is restarted (pure, no processes)."""

from __future__ import annotations

from flared.hangs import HangWatch, assess, not_answering, probe_error


def test_restart_only_after_the_configured_failures_in_a_row() -> None:
    w = HangWatch()
    verdicts = []
    for t in range(3):
        w, restart = assess(w, 41, "GET /health got no answer within 5 s", now=100.0 + t, needed=3)
        verdicts.append(restart)
    assert verdicts == [False, False, True]
    assert w.failures == 3 and w.since == 100.0


def test_one_answer_forgets_earlier_failures() -> None:
    w, _ = assess(HangWatch(), 41, "slow", now=1.0, needed=2)
    w, restart = assess(w, 41, None, now=2.0, needed=2)
    assert (w, restart) == (HangWatch(pid=41), False)
    w, restart = assess(w, 41, "slow", now=3.0, needed=2)
    assert not restart and w.since == 3.0


def test_a_new_run_starts_with_a_clean_slate() -> None:
    w, _ = assess(HangWatch(), 41, "slow", now=1.0, needed=2)
    w, restart = assess(w, 42, "slow", now=2.0, needed=2)
    assert not restart and w.pid == 42 and w.failures == 1


def test_probe_error_uses_health_then_heartbeat_age() -> None:
    assert probe_error(health=None, heartbeat_age=20.0, heartbeat_stale=120.0) is None
    assert probe_error(health=None, heartbeat_age=None, heartbeat_stale=120.0) is None
    assert probe_error(health="refused", heartbeat_age=500.0, heartbeat_stale=120.0) == "refused"
    assert probe_error(health=None, heartbeat_age=150.4, heartbeat_stale=120.0) == (
        "Hermes' heartbeat is 150 s old (it rewrites it every 30 s)"
    )


def test_not_answering_line() -> None:
    assert not_answering(None, 3) is None and not_answering(HangWatch(pid=1), 3) is None
    w = HangWatch(pid=1, failures=1, error="GET /health got no answer within 5 s", since=0.0)
    assert not_answering(w, 3) == (
        "not answering: GET /health got no answer within 5 s (1 failed probe in a row; flared restarts it after 3)"
    )
