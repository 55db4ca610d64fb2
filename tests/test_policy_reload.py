"""Hot reload: the pure diff (what changed, and what applying it takes)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from flared.config.loader import load_config
from flared.config.models import HermesFlareConfig
from flared.policy.diff import Change, changed_paths, diff, plan, refusal_issues, refused


def bot(name: str, **extra: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": name,
        "model": {"provider": "custom", "base_url": "http://127.0.0.1:9/v1", "model": "m1"},
    }
    entry.update(extra)
    return entry


BASE: dict[str, Any] = {
    "version": 1,
    "state_dir": "/tmp/flare-state",
    "snapshots": {"every": "15m"},
    "sandboxes": {"default": {}, "big": {"memory": "2GiB"}},
    "bots": [bot("alice"), bot("bob", slack=None)],
    "cron": [
        {"name": "brief", "bot": "alice", "schedule": "0 9 * * 1-5", "prompt": "Brief me."},
        {"name": "prune", "schedule": "0 3 * * *", "action": "prune"},
    ],
}


def cfg(data: dict[str, Any]) -> HermesFlareConfig:
    return HermesFlareConfig.model_validate(data)


def edited(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    data.update(changes)
    return data


def by_where(changes: list[Change]) -> dict[str, Change]:
    return {c.where: c for c in changes}


def test_identical_configs_have_no_changes() -> None:
    assert diff(cfg(BASE), cfg(copy.deepcopy(BASE))) == []


def test_bot_order_is_not_a_change() -> None:
    data = edited(bots=list(reversed(BASE["bots"])))
    assert diff(cfg(BASE), cfg(data)) == []


def test_snapshot_policy_is_live_and_names_the_field() -> None:
    changes = diff(cfg(BASE), cfg(edited(snapshots={"every": "5m"})))
    assert [c.as_dict()["text"] for c in changes] == ["snapshots: every -> applied live"]
    assert changes[0].effect == "live"
    assert plan(changes).restart == []


def test_model_change_restarts_only_that_bot() -> None:
    data = edited()
    data["bots"][0]["model"]["model"] = "m2"
    changes = diff(cfg(BASE), cfg(data))
    assert len(changes) == 1
    c = changes[0]
    assert (c.section, c.target, c.kind, c.fields, c.effect) == (
        "bots",
        "alice",
        "changed",
        ("model.model",),
        "restart-gateway",
    )
    p = plan(changes)
    assert p.restart == ["alice"] and p.start == [] and p.stop == []


@pytest.mark.parametrize(
    ("field", "value", "effect"),
    [
        ("toolsets", ["file"], "restart-gateway"),
        ("hermes", {"agent": {"max_turns": 5}}, "restart-gateway"),
        ("env", {"FOO": "bar"}, "restart-gateway"),
        ("api", {"port": 9999}, "restart-gateway"),
        ("sandbox", "big", "live"),
        ("group", "other", "deploy"),
    ],
)
def test_bot_field_effects(field: str, value: Any, effect: str) -> None:
    data = edited()
    data["bots"][1][field] = value
    (c,) = diff(cfg(BASE), cfg(data))
    assert c.target == "bob"
    assert c.effect == effect


def test_rotated_secret_is_a_change_but_never_shows_its_value() -> None:
    old = edited()
    old["bots"][0]["env"] = {"API_TOKEN": "old-secret-value"}
    new = copy.deepcopy(old)
    new["bots"][0]["env"] = {"API_TOKEN": "new-secret-value"}
    (c,) = diff(cfg(old), cfg(new))
    assert c.fields == ("env.API_TOKEN",)
    assert c.effect == "restart-gateway"
    assert "secret-value" not in repr(c.as_dict())


def test_added_and_removed_bots() -> None:
    data = edited(bots=[bot("alice"), bot("carol")])
    changes = by_where(diff(cfg(BASE), cfg(data)))
    assert changes["bots.carol"].kind == "added"
    assert changes["bots.carol"].effect == "start-bot"
    assert changes["bots.bob"].kind == "removed"
    assert changes["bots.bob"].effect == "stop-bot"
    p = plan(list(changes.values()))
    assert p.start == ["carol"] and p.stop == ["bob"] and p.restart == []


def test_disabling_and_enabling_a_bot() -> None:
    data = edited()
    data["bots"][0]["enabled"] = False
    (c,) = diff(cfg(BASE), cfg(data))
    assert c.effect == "stop-bot"
    (back,) = diff(cfg(data), cfg(BASE))
    assert back.effect == "start-bot"
    # a disabled bot's settings change nothing that runs
    other = copy.deepcopy(data)
    other["bots"][0]["model"]["model"] = "m9"
    (quiet,) = diff(cfg(data), cfg(other))
    assert quiet.effect == "live"


def test_adding_a_disabled_bot_starts_nothing() -> None:
    data = edited(bots=[*BASE["bots"], bot("dave", enabled=False)])
    (c,) = diff(cfg(BASE), cfg(data))
    assert (c.kind, c.effect) == ("added", "live")
    assert plan([c]).start == []


def test_sandbox_profiles_and_cron_jobs_are_named_live_changes() -> None:
    data = edited(
        sandboxes={"default": {"idle_ttl": "1m"}, "tiny": {}},
        cron=[{"name": "brief", "bot": "alice", "schedule": "every 2h", "prompt": "Brief me."}],
    )
    changes = by_where(diff(cfg(BASE), cfg(data)))
    assert changes["sandboxes.default"].fields == ("idle_ttl",)
    assert changes["sandboxes.tiny"].kind == "added"
    assert changes["sandboxes.big"].kind == "removed"
    assert changes["cron.brief"].fields == ("schedule",)
    assert changes["cron.prune"].kind == "removed"
    assert all(c.effect == "live" for c in changes.values())
    assert plan(list(changes.values())).cron


def test_store_applies_at_next_snapshot_and_cloudflare_at_deploy() -> None:
    data = edited(store={"url": "s3://bucket/prefix"}, cloudflare={"worker": "w2"})
    changes = by_where(diff(cfg(BASE), cfg(data)))
    assert changes["store"].effect == "next-snapshot"
    assert changes["store"].fields == ("url",)
    assert changes["cloudflare"].kind == "added"
    assert changes["cloudflare"].effect == "deploy"
    assert refused(list(changes.values())) == []


@pytest.mark.parametrize(
    ("changes", "path"),
    [
        ({"state_dir": "/tmp/elsewhere"}, "state_dir"),
        ({"control": {"port": 7979}}, "control.port"),
    ],
)
def test_state_dir_and_control_are_refused(changes: dict[str, Any], path: str) -> None:
    found = refused(diff(cfg(BASE), cfg(edited(**changes))))
    assert len(found) == 1
    assert found[0].effect == "restart-flared"
    assert "restart" in str(found[0])


def test_refusal_is_reported_with_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "hermes-flare.yaml"
    path.write_text(f"version: 1\nstate_dir: {tmp_path / 'a'}\nbots: []\n")
    old = load_config(path)
    path.write_text(f"version: 1\nstate_dir: {tmp_path / 'b'}\nbots: []\n")
    new = load_config(path)
    (issue,) = refusal_issues(new, diff(old.config, new.config))
    assert (issue.line, issue.col, issue.path) == (2, 1, "state_dir")
    assert str(issue).startswith(f"{path}:2:1: state_dir: cannot change while flared runs")


def test_changed_paths_on_plain_values() -> None:
    assert changed_paths({"a": {"b": 1, "c": [1]}}, {"a": {"b": 2, "c": [1]}}) == ["a.b"]
    assert changed_paths({"a": 1}, {"b": 1}) == ["a", "b"]
    assert changed_paths(1, 1) == []


def test_log_redaction_learns_the_new_secrets() -> None:
    import logging

    from flared.policy.reload import _update_logging

    class Fmt(logging.Formatter):
        config: Any = None

    handler = logging.StreamHandler()
    handler.setFormatter(Fmt())
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    try:
        new = type("L", (), {"config": cfg(edited(log_level="error"))})()
        _update_logging(new, level_changed=True)  # type: ignore[arg-type]
        assert handler.formatter.config is new.config  # type: ignore[union-attr]
        assert root.level == logging.ERROR
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def test_guess_socket_prefers_the_published_pointer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flared.control.locate import guess_socket, publish_socket

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.delenv("FLARE_STATE_DIR", raising=False)
    path = tmp_path / "hermes-flare.yaml"
    path.write_text("state_dir: ./st\nbots: [")  # broken YAML: the state_dir line still counts
    assert guess_socket(path) == tmp_path / "st" / "flared.sock"
    path.write_text("bots: [")  # state_dir lost: the default
    assert guess_socket(path) == tmp_path / ".flare" / "flared.sock"
    path.write_text("state_dir: ${NOPE:-./other}\ncontrol: {socket: /tmp/x.sock}\nbots: 3\n")
    assert guess_socket(path) == Path("/tmp/x.sock")
    real = tmp_path / "real" / "flared.sock"
    real.parent.mkdir()
    real.write_text("")
    publish_socket(path, real)
    assert guess_socket(path) == real
    assert (tmp_path / "run" / "hermes-flare").stat().st_mode & 0o777 == 0o700
