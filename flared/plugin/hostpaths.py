"""No tool the model calls reads or writes a host path it chose, outside Hermes' own media caches.

Most of the agent's tools work in its sandbox (terminal, file tools,
``execute_code``), but a few run in the gateway and take a *path on the
host* as an argument (Hermes 0.19):

- ``text_to_speech`` writes the audio to ``output_path``, any absolute path
  (``tools/tts_tool.py`` ``text_to_speech_tool``): a bot with ``tts`` could
  overwrite its ``state.db``, ``config.yaml``, another bot's home or
  flared's state files (a command provider even deletes the target first);
- ``image_generate`` and ``video_generate`` read ``image_url`` /
  ``reference_image_urls`` given as local paths and upload the bytes to the
  image provider (``plugins/image_gen/{openai,xai,openrouter}``,
  ``plugins/video_gen/xai``; only Hermes' small deny list, ``.env`` and
  ``auth.json``, is refused);
- ``video_analyze`` reads ``video_url`` given as a local path (any file with
  a video suffix) and sends it to the model (``tools/vision_tools.py``);
- ``cronjob``'s ``workdir`` makes the scheduler read ``AGENTS.md``,
  ``CLAUDE.md`` and ``.cursorrules`` of that host directory into the job's
  prompt (``cron/scheduler.py``); every workdir is refused (the job's tools
  run in the sandbox, where a host path means nothing);
- ``kanban_create``'s ``workspace_path`` makes the kanban dispatcher (in the
  gateway) create that host directory (``dir``) or run ``git worktree add``
  in the host repo around it (``worktree``), then start the worker Hermes
  process there (``hermes_cli/kanban_db.py`` ``resolve_workspace``); and
  ``project_create``'s ``path`` becomes the repo a project's kanban tasks
  add worktrees to: every such path is refused (tasks without one get
  Hermes' scratch dir, or the operator's board ``default_workdir``);
- ``skill_manage`` writes a skill's files on the host, held inside the
  skill's directory but free to name ``scripts/.git/config``: git honours
  such a repo (``core.fsmonitor`` runs a shell command at the next
  ``git status`` there), so a file path with a dot-named component is
  refused.

This feature wraps each of those tools' registry handler (the one thing
``registry.dispatch`` calls for the model, in a conversation, a cron job, a
subagent or ``execute_code``): a local path argument must resolve (links
followed) inside Hermes' media caches of this bot's home, where Hermes puts
what it generates and what users upload; anything else is refused before
the tool runs, with a message to the model and a warning in the gateway
log. URLs (``http(s)://``, ``data:``) pass as before. Hermes' own calls of
the same functions (the gateway's voice replies into ``/tmp/hermes_voice``)
do not go through the registry and are unchanged.

``vision_analyze`` needs no wrap: under the non-local terminal backend flared
selects, Hermes reads a local path on the host only inside the same caches
and reads any other path *in the sandbox* (``tools/image_source.py``).

:func:`install` fails loudly when a tool or one of its path arguments is not
where the checked Hermes has it, so a renamed argument cannot slip past.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("flared.plugin.hostpaths")

_MARK = "__flare_host_paths__"
#: Hermes' media caches under a home: the consolidated ``cache/`` and the legacy flat names.
MEDIA_CACHES = (
    "cache",
    "image_cache",
    "audio_cache",
    "video_cache",
    "document_cache",
    "browser_screenshots",
    "temp_vision_images",
    "temp_video_files",
)
URL_PREFIXES = ("http://", "https://", "data:")


@dataclass(frozen=True)
class Guard:
    """One tool: its module, the arguments that name host paths, where they may lead, and what the model is told."""

    module: str
    args: tuple[str, ...]
    # "audio": Hermes' audio cache (written); "media": any media cache (read); "none": nowhere;
    # "nodot": a path inside a directory Hermes holds it to, with no dot-named component (.git, .gitattributes)
    roots: str
    refused: str  # what happened, after "... is a path on the gateway's host"
    hint: str


GUARDS: dict[str, Guard] = {
    "text_to_speech": Guard(
        "tools.tts_tool",
        ("output_path",),
        "audio",
        "outside Hermes' audio cache, and was not written",
        "leave output_path out: the audio goes to Hermes' audio cache and is attached to your reply",
    ),
    "image_generate": Guard(
        "tools.image_generation_tool",
        ("image_url", "reference_image_urls"),
        "media",
        "outside Hermes' media caches, and was not read",
        "pass an http(s) or data: URL, or an image from Hermes' cache (one the user sent or "
        "image_generate made)",
    ),
    "video_generate": Guard(
        "tools.video_generation_tool",
        ("image_url", "reference_image_urls"),
        "media",
        "outside Hermes' media caches, and was not read",
        "pass an http(s) or data: URL, or an image from Hermes' cache (one the user sent or "
        "image_generate made)",
    ),
    "video_analyze": Guard(
        "tools.vision_tools",
        ("video_url",),
        "media",
        "outside Hermes' media caches, and was not read",
        "pass an http(s) URL, or a video the user sent (Hermes' cache)",
    ),
    # A job's workdir makes Hermes read AGENTS.md/CLAUDE.md/.cursorrules there into the job's
    # prompt and sets it as the tools' cwd; under flared the tools run in the sandbox.
    "cronjob": Guard(
        "tools.cronjob_tools",
        ("workdir",),
        "none",
        "(a job's workdir is read on the host for its context files), and was not set",
        "leave workdir out: the job's commands run in its sandbox, so say in its prompt where to cd",
    ),
    # The dispatcher mkdirs it or runs `git worktree add` in the repo around it, on the host.
    "kanban_create": Guard(
        "tools.kanban_tools",
        ("workspace_path",),
        "none",
        "(the kanban dispatcher creates it, or adds a git worktree there, on the host), and the "
        "task was not created",
        "leave workspace_path out: the task gets its own scratch workspace (or the board's "
        "default repo), and its worker's commands run in a sandbox",
    ),
    # A project's path is the repo its kanban tasks' worktrees are added to.
    "project_create": Guard(
        "tools.project_tools",
        ("path",),
        "none",
        "(kanban adds git worktrees to a project's repo on the host), and the project was not created",
        "leave path out: your files are in your sandbox, which this tool cannot see",
    ),
    # Confined to the skill's dir by Hermes, but a scripts/.git/config there is a repo git obeys.
    "skill_manage": Guard(
        "tools.skill_manager_tool",
        ("file_path",),
        "nodot",
        "with a dot-named component (git and other tools honour such files, e.g. .git/config), "
        "and was not written",
        "name the file without a leading dot in any part of its path, e.g. scripts/run.sh",
    ),
}


def hermes_home() -> Path:
    from hermes_constants import get_hermes_home  # type: ignore[import-untyped]

    return Path(get_hermes_home())


def allowed_roots(kind: str) -> list[Path]:
    """Where a guarded argument may lead on the host: the audio cache, any media cache, or nowhere."""
    if kind == "audio":
        tts = importlib.import_module("tools.tts_tool")
        return [Path(tts.DEFAULT_OUTPUT_DIR)]
    if kind == "media":
        home = hermes_home()
        return [home / name for name in MEDIA_CACHES]
    return []


def local_path(value: str) -> str | None:
    """The host path ``value`` names, or None for a URL."""
    text = value.strip()
    if text.lower().startswith(URL_PREFIXES):
        return None
    if text.lower().startswith("file://"):
        text = text[len("file://") :]
    return os.path.expanduser(text)


def outside(path: str, roots: Iterable[Path]) -> bool:
    """Whether ``path`` (links followed, relative to the gateway's cwd as the tools read it) leaves ``roots``."""
    real = os.path.realpath(path)
    for root in roots:
        base = os.path.realpath(root)
        if real == base or real.startswith(base.rstrip(os.sep) + os.sep):
            return False
    return True


def refusal(tool: str, arg: str, value: str, guard: Guard) -> str:
    """What the model is told (and the gateway log says) about a refused path."""
    return (
        f"{tool}: {arg} {value!r} is a path on the gateway's host {guard.refused}. "
        "hermes-flare keeps the agent's files in its sandbox, and this tool runs on the host "
        f"(it cannot see the sandbox): {guard.hint}"
    )


def check(tool: str, guard: Guard, args: dict[str, Any]) -> str | None:
    """The refusal for the first argument of ``args`` that names a host path outside the roots."""
    roots: list[Path] | None = None
    for arg in guard.args:
        raw = args.get(arg)
        values = raw if isinstance(raw, list) else [raw]
        for value in values:
            if not isinstance(value, str) or not value.strip():
                continue
            if guard.roots == "nodot":
                if any(part.startswith(".") for part in value.strip().replace("\\", "/").split("/")):
                    return refusal(tool, arg, value, guard)
                continue
            # A written path is a path whatever it looks like; a read one may be a URL.
            path = os.path.expanduser(value.strip()) if guard.roots != "media" else local_path(value)
            if path is None:
                continue
            roots = roots if roots is not None else allowed_roots(guard.roots)
            if outside(path, roots):
                return refusal(tool, arg, value, guard)
    return None


def guarded(tool: str, guard: Guard, handler: Callable[..., Any], is_async: bool) -> Callable[..., Any]:
    """``handler`` that first refuses host paths outside the caches."""

    def refused(args: Any) -> str | None:
        message = check(tool, guard, args if isinstance(args, dict) else {})
        if message is not None:
            log.warning("%s", message)
            return json.dumps({"success": False, "error": message}, ensure_ascii=False)
        return None

    if is_async:

        @functools.wraps(handler)
        async def run_async(args: Any, **kw: Any) -> Any:
            answer = refused(args)
            if answer is not None:
                return answer
            return await handler(args, **kw)

        wrapper: Callable[..., Any] = run_async
    else:

        @functools.wraps(handler)
        def run(args: Any, **kw: Any) -> Any:
            answer = refused(args)
            if answer is not None:
                return answer
            return handler(args, **kw)

        wrapper = run
    setattr(wrapper, _MARK, handler)
    return wrapper


def install(ctx: Any) -> None:
    """Wrap each guarded tool's registry handler; idempotent. Fails loudly if Hermes moved one."""
    del ctx
    from tools.registry import registry

    problems: list[str] = []
    for tool, guard in GUARDS.items():
        importlib.import_module(guard.module)  # registers the tool
        entry = registry.get_entry(tool)
        if entry is None:
            problems.append(f"{guard.module} registers no {tool!r} tool")
            continue
        props = set(((entry.schema or {}).get("parameters") or {}).get("properties") or {})
        missing = [a for a in guard.args if a not in props]
        if missing:
            problems.append(f"{tool} takes no {', '.join(missing)} (it takes {sorted(props)})")
            continue
        if getattr(entry.handler, _MARK, None) is not None:
            continue
        is_async = bool(entry.is_async) or inspect.iscoroutinefunction(entry.handler)
        entry.handler = guarded(tool, guard, entry.handler, is_async)
    if problems:
        raise RuntimeError(
            "cannot confine the host paths of Hermes' tools: "
            + "; ".join(problems)
            + ": they could write or read any file on the host; not loading"
        )
    # The audio cache must resolve now: a broken one would refuse every call, quietly.
    allowed_roots("audio")
