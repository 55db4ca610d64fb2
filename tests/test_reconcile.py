"""The pure reconcile plan: desired programs + observed supervisord -> actions."""

from __future__ import annotations

from flared.reconcile import (
    AddGroup,
    DeleteProgram,
    Observed,
    RemoveGroup,
    StartGroup,
    WriteProgram,
    plan,
)


def obs(
    files: dict[str, str] | None = None, groups: set[str] | None = None, stopped: set[str] | None = None
) -> Observed:
    return Observed(files=files or {}, groups=frozenset(groups or ()), stopped=frozenset(stopped or ()))


def test_new_program_is_written_and_added() -> None:
    assert plan({"gateway-a": "A"}, obs()) == [WriteProgram("gateway-a", "A"), AddGroup("gateway-a")]


def test_nothing_to_do_when_in_step() -> None:
    assert plan({"gateway-a": "A"}, obs({"gateway-a": "A"}, {"gateway-a"})) == []


def test_changed_program_restarts_only_itself() -> None:
    actions = plan(
        {"gateway-a": "A2", "gateway-b": "B"},
        obs({"gateway-a": "A", "gateway-b": "B"}, {"gateway-a", "gateway-b"}),
    )
    assert actions == [WriteProgram("gateway-a", "A2"), RemoveGroup("gateway-a"), AddGroup("gateway-a")]


def test_removed_bot_is_stopped_and_its_file_deleted() -> None:
    actions = plan({}, obs({"gateway-a": "A"}, {"gateway-a"}))
    assert actions == [RemoveGroup("gateway-a"), DeleteProgram("gateway-a")]


def test_file_written_but_group_missing_is_added() -> None:
    assert plan({"gateway-a": "A"}, obs({"gateway-a": "A"}, set())) == [AddGroup("gateway-a")]


def test_unmanaged_programs_are_never_touched() -> None:
    assert plan({}, obs({}, {"flared", "something-else"})) == []


def test_fatal_program_restarted_only_when_asked() -> None:
    o = obs({"gateway-a": "A"}, {"gateway-a"}, {"gateway-a"})
    assert plan({"gateway-a": "A"}, o) == []
    assert plan({"gateway-a": "A"}, o, restart_stopped=True) == [StartGroup("gateway-a")]


def test_plan_is_idempotent_after_applying() -> None:
    desired = {"gateway-a": "A", "gateway-b": "B"}
    first = plan(desired, obs({"gateway-c": "C"}, {"gateway-c"}))
    files = {a.name: a.text for a in first if isinstance(a, WriteProgram)}
    groups = {a.name for a in first if isinstance(a, AddGroup)}
    assert plan(desired, obs(files, groups)) == []


def test_litestream_is_added_before_the_gateways_it_streams() -> None:
    actions = plan({"gateway-a": "A", "litestream": "L"}, obs())
    added = [a.name for a in actions if isinstance(a, AddGroup)]
    assert added == ["litestream", "gateway-a"]


def test_litestream_no_longer_wanted_is_stopped_and_removed() -> None:
    actions = plan(
        {"gateway-a": "A"}, obs({"gateway-a": "A", "litestream": "L"}, {"gateway-a", "litestream"})
    )
    assert actions == [RemoveGroup("litestream"), DeleteProgram("litestream")]
