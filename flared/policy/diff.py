"""What changed between two configs, and what applying each change takes.

Pure: two validated configs -> a list of :class:`Change` -> a :class:`Plan`,
so every classification is a unit test. :mod:`flared.policy.reload` applies
the plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from flared.config import yamlpos
from flared.config.loader import Issue, LoadedConfig
from flared.config.models import HermesFlareConfig

Kind = Literal["added", "removed", "changed"]
Effect = Literal[
    "live",  # applied in place, nothing restarted
    "restart-gateway",  # that bot's gateway restarts (a snapshot first)
    "start-bot",  # restore, then start
    "stop-bot",  # final snapshot, stop, program removed (state stays in the store)
    "next-snapshot",  # store settings: used from the next snapshot on
    "deploy",  # Cloudflare-only settings: take effect at the next `wrangler deploy`
    "restart-flared",  # cannot apply live: refused
]

# Bot fields that are rendered into the gateway's Hermes home or environment.
GATEWAY_FIELDS = frozenset({"model", "slack", "api", "toolsets", "env", "hermes"})
# Top-level sections a running flared cannot switch to.
RESTART_SECTIONS = frozenset({"state_dir", "control", "admin"})


@dataclass(frozen=True)
class Change:
    """One difference between the running config and the new one."""

    section: str  # top-level key: bots, snapshots, sandboxes, cron...
    target: str | None  # bot, sandbox profile or cron job name
    kind: Kind
    fields: tuple[str, ...]  # dotted paths inside the target that differ (never values: secrets)
    effect: Effect

    @property
    def where(self) -> str:
        return f"{self.section}.{self.target}" if self.target else self.section

    def __str__(self) -> str:
        what = self.kind if self.kind != "changed" or not self.fields else ", ".join(self.fields)
        return f"{self.where}: {what} -> {EFFECT_TEXT[self.effect]}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "section": self.section,
            "target": self.target,
            "kind": self.kind,
            "fields": list(self.fields),
            "effect": self.effect,
            "text": str(self),
        }


EFFECT_TEXT: dict[Effect, str] = {
    "live": "applied live",
    "restart-gateway": "its gateway restarts",
    "start-bot": "restored, then started",
    "stop-bot": "final snapshot, then stopped",
    "next-snapshot": "used from the next snapshot",
    "deploy": "takes effect at the next deploy (`flared render wrangler`)",
    "restart-flared": "cannot change while flared runs: restart it",
}


def changed_paths(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two dumped values differ; lists compare whole.

    Works on ``model_dump()`` output, where secrets are still ``SecretStr``
    and compare by value, so a rotated token counts as a change while the
    paths returned never carry the value.
    """
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in old or key not in new:
                out.append(path)
            else:
                out.extend(changed_paths(old[key], new[key], path))
        return out
    return [] if old == new else [prefix or "(value)"]


def _bot_effect(fields: list[str]) -> Effect:
    tops = {f.split(".", 1)[0] for f in fields}
    if tops & GATEWAY_FIELDS:
        return "restart-gateway"
    if tops <= {"group"}:
        return "deploy"
    return "live"  # sandbox profile choice: applies to the bot's next lease


def _bots(old: HermesFlareConfig, new: HermesFlareConfig) -> list[Change]:
    out: list[Change] = []
    before = {b.name: b for b in old.bots}
    after = {b.name: b for b in new.bots}
    for name in [b.name for b in new.bots if b.name not in before]:
        bot = after[name]
        out.append(Change("bots", name, "added", (), "start-bot" if bot.enabled else "live"))
    for name in [b.name for b in old.bots if b.name not in after]:
        out.append(Change("bots", name, "removed", (), "stop-bot" if before[name].enabled else "live"))
    for name in [b.name for b in new.bots if b.name in before]:
        a, b = before[name], after[name]
        fields = changed_paths(a.model_dump(), b.model_dump())
        if not fields:
            continue
        if a.enabled != b.enabled:
            effect: Effect = "start-bot" if b.enabled else "stop-bot"
        elif not b.enabled:
            effect = "live"  # a disabled bot's settings: used when it is enabled
        else:
            effect = _bot_effect(fields)
        out.append(Change("bots", name, "changed", tuple(fields), effect))
    return out


def _named(section: str, old: dict[str, Any], new: dict[str, Any], effect: Effect) -> list[Change]:
    out: list[Change] = []
    for name in new:
        if name not in old:
            out.append(Change(section, name, "added", (), effect))
        else:
            fields = changed_paths(old[name], new[name])
            if fields:
                out.append(Change(section, name, "changed", tuple(fields), effect))
    out.extend(Change(section, name, "removed", (), effect) for name in old if name not in new)
    return out


SECTION_EFFECT: dict[str, Effect] = {
    "log_level": "live",
    "snapshots": "live",
    "restore": "live",
    "store": "next-snapshot",
    "operator": "live",  # the operator program is reconciled like the gateways
    "cloudflare": "deploy",
    "state_dir": "restart-flared",
    "control": "restart-flared",
    "admin": "restart-flared",
    "version": "restart-flared",
}


def diff(old: HermesFlareConfig, new: HermesFlareConfig) -> list[Change]:
    """Every difference, classified by what applying it takes."""
    a, b = old.model_dump(), new.model_dump()
    out: list[Change] = []
    for section in HermesFlareConfig.model_fields:
        if section == "bots":
            out.extend(_bots(old, new))
        elif section == "sandboxes":
            out.extend(_named("sandboxes", a["sandboxes"], b["sandboxes"], "live"))
        elif section == "cron":
            jobs_a = {j["name"]: j for j in a["cron"]}
            jobs_b = {j["name"]: j for j in b["cron"]}
            out.extend(_named("cron", jobs_a, jobs_b, "live"))
        else:
            fields = changed_paths(a[section], b[section])
            if fields:
                kind: Kind = "changed"
                if a[section] is None:
                    kind = "added"
                elif b[section] is None:
                    kind = "removed"
                nested = tuple(f for f in fields if f != "(value)")
                out.append(Change(section, None, kind, nested, SECTION_EFFECT.get(section, "live")))
    return out


def refused(changes: list[Change]) -> list[Change]:
    return [c for c in changes if c.effect == "restart-flared"]


@dataclass
class Plan:
    """What :func:`apply` will do, derived from the changes."""

    start: list[str] = field(default_factory=list)  # bots to boot (restore, then start)
    stop: list[str] = field(default_factory=list)  # bots to stop and retire
    restart: list[str] = field(default_factory=list)  # bots whose gateway config changed
    cron: bool = False
    log_level: bool = False


def plan(changes: list[Change]) -> Plan:
    p = Plan()
    for c in changes:
        if c.section == "bots" and c.target:
            {"start-bot": p.start, "stop-bot": p.stop, "restart-gateway": p.restart}.get(c.effect, []).append(
                c.target
            )
        elif c.section == "cron":
            p.cron = True
        elif c.section == "log_level":
            p.log_level = True
    return p


def refusal_issues(new: LoadedConfig, changes: list[Change]) -> list[Issue]:
    """Refused changes as positioned issues, like validation errors."""
    try:
        located: yamlpos.Located | None = yamlpos.load(new.text)
    except yamlpos.YamlSyntaxError:
        located = None
    issues = []
    for c in refused(changes):
        paths = [f"{c.section}.{f}" for f in c.fields] or [c.section]
        for dotted_path in paths:
            parts: yamlpos.Path = tuple(dotted_path.split("."))
            mark = located.mark(parts, prefer_key=True) if located else yamlpos.Mark(0, 0)
            issues.append(
                Issue(
                    str(new.path),
                    mark.line or 1,
                    mark.col or 1,
                    dotted_path,
                    "cannot change while flared runs; restart flared (`flared up` again, "
                    "or restart the container) to apply it",
                )
            )
    return issues
