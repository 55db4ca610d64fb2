"""The plugin's host-path guard on Hermes' own tool registry (tests/faults/test_host_paths.py runs a gateway).

``image_generate`` and ``video_generate`` read a local ``image_url`` /
``reference_image_urls`` on the host and upload it to the image provider;
``text_to_speech`` writes ``output_path``; ``video_analyze`` reads
``video_url``; a ``cronjob``'s ``workdir`` is read for context files. Each call goes through ``registry.dispatch`` as the agent's
would: a host path outside Hermes' caches is refused before the tool runs,
URLs and cached files pass.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flared.plugin import hostpaths


@pytest.fixture
def guarded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Hermes' registry with the guard installed (and taken off afterwards); yields the home."""
    from tools.registry import registry

    home = tmp_path / "home"
    (home / "cache" / "images").mkdir(parents=True)
    monkeypatch.setenv("HERMES_HOME", str(home))
    for guard in hostpaths.GUARDS.values():
        __import__(guard.module)
    before = {name: registry.get_entry(name).handler for name in hostpaths.GUARDS}  # type: ignore[union-attr]
    hostpaths.install(None)
    hostpaths.install(None)  # idempotent: one wrap
    try:
        yield home
    finally:
        for name, handler in before.items():
            registry.get_entry(name).handler = handler  # type: ignore[union-attr]


def dispatch(tool: str, args: dict[str, Any]) -> dict[str, Any]:
    from tools.registry import registry

    out = registry.dispatch(tool, args)
    assert isinstance(out, str), out
    result: dict[str, Any] = json.JSONDecoder().raw_decode(out)[0]
    return result


def test_each_tool_is_wrapped_once(guarded: Path) -> None:
    from tools.registry import registry

    for name in hostpaths.GUARDS:
        handler = registry.get_entry(name).handler  # type: ignore[union-attr]
        inner = getattr(handler, "__flare_host_paths__", None)
        assert inner is not None and getattr(inner, "__flare_host_paths__", None) is None, name


@pytest.mark.parametrize(
    ("tool", "args"),
    [
        ("image_generate", {"prompt": "p", "image_url": "/etc/hostname"}),
        (
            "image_generate",
            {"prompt": "p", "reference_image_urls": ["https://example.com/a.png", "/etc/hostname"]},
        ),
        ("image_generate", {"prompt": "p", "image_url": "file:///etc/hostname"}),
        ("image_generate", {"prompt": "p", "image_url": "~/.ssh/id_ed25519"}),
        ("video_generate", {"prompt": "p", "image_url": "/etc/hostname"}),
        ("video_generate", {"prompt": "p", "reference_image_urls": ["state.db"]}),
        ("video_analyze", {"video_url": "/etc/hostname", "question": "q"}),
        ("text_to_speech", {"text": "t", "output_path": "/etc/hostname"}),
        ("text_to_speech", {"text": "t", "output_path": "config.yaml"}),
        ("cronjob", {"action": "create", "schedule": "every 1h", "prompt": "p", "workdir": "/etc"}),
        # The dispatcher mkdirs a dir: path and runs `git worktree add` in a worktree: repo, on the host.
        (
            "kanban_create",
            {"title": "t", "assignee": "a", "workspace_kind": "dir", "workspace_path": "/tmp/x"},
        ),
        (
            "kanban_create",
            {"title": "t", "assignee": "a", "workspace_kind": "worktree", "workspace_path": "/srv"},
        ),
        ("kanban_create", {"title": "t", "assignee": "a", "workspace_path": "relative/dir"}),
        # A project's path becomes the repo kanban adds worktrees to.
        ("project_create", {"name": "p", "path": "/srv/repo"}),
        # A skill's files are on the host: git honours .git/config (core.fsmonitor runs a command).
        (
            "skill_manage",
            {"action": "write_file", "name": "s", "file_path": "scripts/.git/config", "file_content": "x"},
        ),
        (
            "skill_manage",
            {"action": "write_file", "name": "s", "file_path": "assets/.gitattributes", "file_content": "x"},
        ),
        (
            "skill_manage",
            {
                "action": "patch",
                "name": "s",
                "file_path": "references/.hermes.md",
                "old_string": "a",
                "new_string": "b",
            },
        ),
    ],
)
def test_a_host_path_outside_the_caches_is_refused_before_the_tool_runs(
    guarded: Path, tool: str, args: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    result = dispatch(tool, args)
    assert result["success"] is False
    assert result["error"].startswith(f"{tool}: ") and "is a path on the gateway's host" in result["error"]
    assert "sandbox" in result["error"], result
    assert any(tool in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert (
        not (guarded / "cron" / "jobs.json").exists()
        or "/etc" not in (guarded / "cron" / "jobs.json").read_text()
    )
    assert not list(guarded.glob("skills/**/.git*")) and not list(guarded.glob("**/kanban.db"))


def test_a_link_in_the_cache_that_leads_out_is_refused(guarded: Path) -> None:
    link = guarded / "cache" / "images" / "innocent.png"
    link.symlink_to("/etc/hostname")
    result = dispatch("image_generate", {"prompt": "p", "image_url": str(link)})
    assert "outside Hermes' media caches" in result["error"]


def test_urls_and_cached_files_reach_the_tool(guarded: Path) -> None:
    """Past the guard, the tool runs (and fails on its own: no image provider is configured here)."""
    cached = guarded / "cache" / "images" / "sent.png"
    cached.write_bytes(b"\x89PNG\r\n\x1a\n")
    for args in (
        {"prompt": "p", "image_url": str(cached)},
        {"prompt": "p", "image_url": "https://example.com/a.png"},
        {"prompt": "p", "reference_image_urls": ["data:image/png;base64,AAAA"]},
    ):
        result = dispatch("image_generate", args)
        assert "outside Hermes' media caches" not in json.dumps(result), result


def test_install_refuses_when_a_path_argument_moved(guarded: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A later Hermes that renames ``output_path`` must not leave it unguarded: the plugin refuses."""
    from tools.registry import registry

    entry = registry.get_entry("text_to_speech")
    assert entry is not None
    props = dict(entry.schema["parameters"]["properties"])
    props["save_to"] = props.pop("output_path")
    monkeypatch.setitem(entry.schema, "parameters", {**entry.schema["parameters"], "properties": props})
    with pytest.raises(RuntimeError, match="text_to_speech takes no output_path"):
        hostpaths.install(None)


def test_a_cron_job_without_a_workdir_is_made(guarded: Path) -> None:
    made = dispatch("cronjob", {"action": "create", "schedule": "every 1h", "prompt": "p", "name": "plain"})
    assert made.get("success") is True, made
    cleared = dispatch("cronjob", {"action": "update", "job_id": made["job_id"], "workdir": ""})
    assert cleared.get("success") is True, cleared


def test_a_kanban_task_without_a_workspace_path_is_made(
    guarded: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the host path is refused: a scratch task (under Hermes' own kanban dir) is made as before."""
    monkeypatch.setenv("HERMES_KANBAN_TASK", "")
    made = dispatch("kanban_create", {"title": "t", "assignee": "worker", "workspace_kind": "scratch"})
    assert made.get("task_id"), made


def test_a_skill_file_without_a_dot_component_is_written(guarded: Path) -> None:
    body = "---\nname: s\ndescription: a skill\n---\n\n# S\n\nDo the thing.\n"
    made = dispatch("skill_manage", {"action": "create", "name": "s", "content": body})
    assert made.get("success") is True, made
    wrote = dispatch(
        "skill_manage",
        {"action": "write_file", "name": "s", "file_path": "scripts/run.sh", "file_content": "x"},
    )
    assert wrote.get("success") is True, wrote
    refused = dispatch(
        "skill_manage",
        {"action": "write_file", "name": "s", "file_path": "scripts/.git/HEAD", "file_content": "x"},
    )
    assert "was not written" in refused["error"], refused
    assert (guarded / "skills" / "s" / "scripts" / "run.sh").is_file()
    assert not (guarded / "skills" / "s" / "scripts" / ".git").exists()
