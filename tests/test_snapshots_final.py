"""The final snapshots' deadline and what makes a stop a failure (flared/snapshots/final.py, pure)."""

from __future__ import annotations

from flared.snapshots.final import Deadline, final_snapshot_deadline, not_saved, not_saved_line


def test_the_budget_applies_when_supervisord_leaves_room_for_it() -> None:
    assert final_snapshot_deadline(60, 90) == Deadline(60, "snapshots.shutdown_budget")
    assert final_snapshot_deadline(60, None) == Deadline(60, "snapshots.shutdown_budget")
    assert final_snapshot_deadline(85, 90) == Deadline(85, "snapshots.shutdown_budget")


def test_supervisords_stopwaitsecs_cuts_a_budget_that_does_not_fit_and_says_so() -> None:
    d = final_snapshot_deadline(300, 90)
    assert d.seconds == 85
    assert str(d) == "85 s (supervisord's stopwaitsecs for flared, 90 s, less 5 s to exit)"
    assert final_snapshot_deadline(60, 3).seconds == 1  # never nothing at all


def test_only_a_due_final_snapshot_that_did_not_happen_is_a_failure() -> None:
    finals = [
        {"bot": "a", "result": "ok", "id": "x"},
        {"bot": "b", "result": "unchanged"},
        {"bot": "c", "result": "skipped", "reason": "restore has not finished"},
        {"bot": "d", "result": "off"},
        {"bot": "e", "result": "fenced"},
    ]
    assert not_saved(finals) == [] and not_saved_line(finals) is None
    finals += [{"bot": "f", "result": "failed"}, {"bot": "g", "result": "timed out"}]
    assert [r["bot"] for r in not_saved(finals)] == ["f", "g"]
    assert (line := not_saved_line(finals)) is not None and line.startswith("the final snapshot of f, g ")
