"""Fault matrix, "Sandboxes and secrets" (docs/reliability.md): tools that run on the host touch no host path the model names.

``text_to_speech`` runs in the gateway and writes its audio to the
``output_path`` the model gives, any absolute path on the host. A real
gateway with ``tts`` (a command TTS provider the operator configured, so no
network is needed) on the fake model: the agent asks for its audio at a file
outside the home (which exists, and which Hermes' command provider deletes
and rewrites) and at a new file in the bot's home; both must stay as they
were. Audio without ``output_path``, or inside Hermes' audio cache, still works.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.llm_server import FakeLLM, LLMRequest, text, tools
from tests.fixtures.flare import FlareUp, bot

pytestmark = pytest.mark.integration

TURN = "SAY-IT-ALOUD"
REFUSED = "is a path on the gateway's host outside Hermes' audio cache, and was not written"
TTS = {
    "tts": {
        "provider": "fake",
        "providers": {
            "fake": {
                "type": "command",
                "command": "printf 'ID3 fake audio' > {output_path}",
                "output_format": "mp3",
            }
        },
    }
}


def tool_results(llm: FakeLLM) -> list[dict[str, Any]]:
    """The JSON each tool call answered, from the last request that carries them (Hermes may append a hint)."""
    for req in reversed(llm.requests):
        found = [
            m["content"]
            for m in req.messages
            if m.get("role") == "tool" and isinstance(m.get("content"), str)
        ]
        if found:
            return [json.JSONDecoder().raw_decode(c.strip())[0] for c in found]
    return []


def test_text_to_speech_writes_no_host_file_outside_the_audio_cache(tmp_path: Path) -> None:
    victim = tmp_path / "outside" / "victim.mp3"
    victim.parent.mkdir()
    victim.write_text("ORIGINAL")

    def turn(r: LLMRequest) -> bool:
        return r.is_agent_turn and TURN in r.last_user_text

    with FakeLLM(models=("fake-model",), default=text("done")) as llm:
        model = {"provider": "custom", "base_url": llm.base_url, "model": "fake-model"}
        with FlareUp(tmp_path, [bot("a", model=model, toolsets=["tts", "todo"], hermes=TTS)]) as flare:
            flare.wait_ready("a", timeout=120)
            home = flare.state_dir / "bots" / "a" / "home"
            planted = home / "skills" / "planted.mp3"
            cached = home / "cache" / "audio" / "asked.mp3"
            llm.script(
                tools(
                    ("text_to_speech", {"text": "overwrite", "output_path": str(victim)}),
                    ("text_to_speech", {"text": "plant", "output_path": str(planted)}),
                    ("text_to_speech", {"text": "relative", "output_path": "state.mp3"}),
                    ("text_to_speech", {"text": "in the cache", "output_path": str(cached)}),
                    ("text_to_speech", {"text": "plain"}),
                    when=turn,
                ),
                text("spoken", when=turn),
            )
            chat = flare.cli("chat", "--bot", "a", TURN, timeout=240)
            assert chat.returncode == 0, chat.stderr + flare.read_logs()
            offered = llm.wait_for(turn, timeout=5).tool_names
            assert "text_to_speech" in offered, offered

            assert victim.read_text() == "ORIGINAL", "text_to_speech overwrote a host file outside its cache"
            assert not planted.exists(), "text_to_speech wrote into the bot's home outside its cache"
            assert not (home / "state.mp3").exists(), "a relative output_path landed in the home"

            results = tool_results(llm)
            refused = [r for r in results if REFUSED in str(r.get("error"))]
            assert len(refused) == 3, results
            assert "leave output_path out" in refused[0]["error"]
            spoken = [r for r in results if r.get("success")]
            assert cached.read_text() == "ID3 fake audio", results
            assert len(spoken) == 2 and all("/cache/audio/" in r["file_path"] for r in spoken), spoken
            assert f"output_path {str(victim)!r} {REFUSED}" in flare.read_logs()


def test_video_analyze_reads_no_host_file_outside_the_media_caches(tmp_path: Path) -> None:
    """``video_analyze`` reads a local ``video_url`` on the host and sends its bytes to the model.

    A file outside Hermes' caches (another bot's, flared's, anything with a
    video suffix) must never reach the model; a video in the bot's cache (one
    a user sent) still does, which shows the channel the check watches works.
    """
    secret = tmp_path / "elsewhere" / "secret.mp4"
    secret.parent.mkdir()
    secret.write_bytes(b"SECRET-VIDEO-BYTES-outside-the-cache")
    leak = base64.b64encode(secret.read_bytes()).decode()
    allowed = b"USER-SENT-VIDEO-in-the-cache"
    turn_text = "WATCH-THE-VIDEO"

    def turn(r: LLMRequest) -> bool:
        return r.is_agent_turn and turn_text in r.last_user_text

    with FakeLLM(models=("fake-model",), default=text("a video of nothing")) as llm:
        model = {"provider": "custom", "base_url": llm.base_url, "model": "fake-model"}
        with FlareUp(tmp_path, [bot("a", model=model, toolsets=["video", "todo"])]) as flare:
            flare.wait_ready("a", timeout=120)
            home = flare.state_dir / "bots" / "a" / "home"
            sent = home / "cache" / "videos" / "sent.mp4"
            sent.parent.mkdir(parents=True, exist_ok=True)
            sent.write_bytes(allowed)
            llm.script(
                tools(
                    ("video_analyze", {"video_url": str(secret), "question": "what is in it?"}),
                    ("video_analyze", {"video_url": f"file://{secret}", "question": "and now?"}),
                    ("video_analyze", {"video_url": str(sent), "question": "and this one?"}),
                    when=turn,
                ),
                text("watched", when=turn),
            )
            chat = flare.cli("chat", "--bot", "a", turn_text, timeout=240)
            assert chat.returncode == 0, chat.stderr + flare.read_logs()
            assert "video_analyze" in llm.wait_for(turn, timeout=5).tool_names
            bodies = [json.dumps(r.body) for r in llm.requests]
            assert not any(leak in b for b in bodies), "a host file outside the caches was sent to the model"
            assert any(base64.b64encode(allowed).decode() in b for b in bodies), (
                "the cached video never reached the model"
            )
            results = tool_results(llm)
            refused = [
                r for r in results if "outside Hermes' media caches, and was not read" in str(r.get("error"))
            ]
            assert len(refused) == 2, results


def test_kanban_and_skills_make_no_host_dir_or_repo_the_model_names(tmp_path: Path) -> None:
    """``kanban_create`` ``workspace_path`` is a host dir the dispatcher makes (or a repo it runs
    ``git worktree add`` in); ``skill_manage`` could write ``scripts/.git/config`` into a skill, a
    repo git obeys (``core.fsmonitor`` runs a command). Both are refused in a real gateway; a
    scratch task and a plain skill file are still made.
    """
    outside = tmp_path / "outside" / "made-by-kanban"
    turn_text = "PLAN-THE-WORK"
    skill = "---\nname: s\ndescription: a skill\n---\n\n# S\n\nDo the thing.\n"
    config = '[core]\n\tfsmonitor = "touch /tmp/flare-pwned; false"\n'

    def turn(r: LLMRequest) -> bool:
        return r.is_agent_turn and turn_text in r.last_user_text

    with FakeLLM(models=("fake-model",), default=text("planned")) as llm:
        model = {"provider": "custom", "base_url": llm.base_url, "model": "fake-model"}
        # Hermes offers kanban_create to a profile whose top-level toolsets list kanban.
        hermes = {"toolsets": ["kanban"]}
        with FlareUp(
            tmp_path, [bot("a", model=model, toolsets=["kanban", "skills", "todo"], hermes=hermes)]
        ) as flare:
            flare.wait_ready("a", timeout=120)
            home = flare.state_dir / "bots" / "a" / "home"
            llm.script(
                tools(
                    (
                        "kanban_create",
                        {
                            "title": "t",
                            "assignee": "nobody",
                            "workspace_kind": "dir",
                            "workspace_path": str(outside),
                        },
                    ),
                    (
                        "kanban_create",
                        {
                            "title": "t",
                            "assignee": "nobody",
                            "workspace_kind": "worktree",
                            "workspace_path": str(tmp_path),
                        },
                    ),
                    ("kanban_create", {"title": "scratch", "assignee": "nobody"}),
                    ("skill_manage", {"action": "create", "name": "s", "content": skill}),
                    when=turn,
                ),
                tools(
                    (
                        "skill_manage",
                        {
                            "action": "write_file",
                            "name": "s",
                            "file_path": "scripts/.git/config",
                            "file_content": config,
                        },
                    ),
                    (
                        "skill_manage",
                        {
                            "action": "write_file",
                            "name": "s",
                            "file_path": "scripts/run.sh",
                            "file_content": "echo hi\n",
                        },
                    ),
                    when=lambda r: turn(r) and any(m.get("role") == "tool" for m in r.messages),
                ),
                text("planned", when=turn),
            )
            chat = flare.cli("chat", "--bot", "a", turn_text, timeout=240)
            assert chat.returncode == 0, chat.stderr + flare.read_logs()
            offered = llm.wait_for(turn, timeout=5).tool_names
            assert {"kanban_create", "skill_manage"} <= set(offered), offered

            assert not outside.exists() and not outside.parent.exists(), "kanban made a host dir"
            assert not list(home.glob("skills/**/.git")), "skill_manage wrote a .git dir"
            assert (home / "skills" / "s" / "scripts" / "run.sh").is_file()
            bodies = "\n".join(json.dumps(r.body) for r in llm.requests)
            assert bodies.count("(the kanban dispatcher creates it") >= 2, bodies[-3000:]
            assert "with a dot-named component" in bodies
            assert '"task_id"' in bodies, "the scratch task was not made"
            logs = flare.read_logs()
            assert f"workspace_path {str(outside)!r} is a path on the gateway's host" in logs
