"""A cron job never gets a tool the bot's ``toolsets`` do not give it.

flared renders ``bots[].toolsets`` as ``platform_toolsets`` for every
platform Hermes knows, ``cron`` included, so a job without its own list runs
with the bot's toolsets. But Hermes 0.19 lets a job's own
``enabled_toolsets`` (which the agent chooses when it creates the job with
its ``cronjob`` tool, or writes into ``cron/jobs.json``) *replace* the cron
platform's list: ``cron.scheduler._resolve_cron_enabled_toolsets`` returns
it as is, so a job asking for ``browser``, ``code_execution`` or
``hermes-cli`` would get them whatever the YAML says.

This feature wraps that one function (it is looked up by name when a job
runs, so every run goes through the wrapper): a job's list may narrow the
cron platform's toolsets, never widen them. A name the platform's list does
not have is dropped, and said so in the gateway log. When the platform's list
cannot be resolved the job gets no tools at all (Hermes itself would fall
back to every tool).
"""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("flared.plugin.cron")

SCHEDULER = "cron.scheduler"
RESOLVER = "_resolve_cron_enabled_toolsets"
_MARK = "__flare_clamped__"

Resolver = Callable[[dict[str, Any], dict[str, Any]], "list[str] | None"]


def clamp(original: Resolver) -> Resolver:
    """``original`` with a job's own toolsets cut down to the cron platform's."""

    @functools.wraps(original)
    def resolve(job: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
        platform = original({**job, "enabled_toolsets": None}, cfg)
        if platform is None:
            log.error(
                "cron job %s: the cron platform's toolsets could not be resolved; it runs with no tools",
                job.get("id"),
            )
            return []
        wanted = job.get("enabled_toolsets")
        if not wanted:
            return list(platform)
        allowed = set(platform)
        asked = original(job, cfg) or []
        kept = [t for t in asked if t in allowed]
        dropped = sorted({str(t) for t in wanted} - allowed)
        if dropped:
            log.warning(
                "cron job %s asked for toolsets the bot does not have (%s); it runs with %s",
                job.get("id"),
                ", ".join(dropped),
                ", ".join(kept) or "no tools",
            )
        return kept

    setattr(resolve, _MARK, original)
    return resolve


def install(ctx: Any) -> None:
    """Wrap Hermes' cron toolset resolver; idempotent. Fails loudly if Hermes moved it."""
    del ctx
    scheduler = importlib.import_module(SCHEDULER)
    current = getattr(scheduler, RESOLVER)
    if getattr(current, _MARK, None) is None:
        setattr(scheduler, RESOLVER, clamp(current))
