"""Rules that span fields of hermes-flare.yaml: names, references, shared tokens and ports.

They run on the raw parsed data, before the models validate, so these
problems are reported together with type errors elsewhere in the file.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from flared.config import yamlpos
from flared.config.units import check_name


def cross_checks(data: dict[str, Any], interpolated: set[yamlpos.Path]) -> list[tuple[yamlpos.Path, str]]:
    """Rules that span fields: names, references, shared tokens and ports.

    Runs on the raw data so these problems are reported together with type
    errors elsewhere in the file.
    """
    out: list[tuple[yamlpos.Path, str]] = []
    bots = [b if isinstance(b, dict) else {} for b in _as_list(data.get("bots"))]
    sandboxes = data.get("sandboxes", {"default": {}})
    sandboxes = sandboxes if isinstance(sandboxes, dict) else {}
    seen: dict[str, int] = {}
    for i, bot in enumerate(bots):
        name = bot.get("name")
        if isinstance(name, str):
            if name in seen:
                out.append((("bots", i, "name"), f"duplicate bot name {name!r} (also bots[{seen[name]}])"))
            else:
                seen[name] = i
        ref = bot.get("sandbox", "default")
        if isinstance(ref, str) and ref not in sandboxes:
            out.append((("bots", i, "sandbox"), _unknown_ref("sandbox profile", ref, sandboxes)))
        model: dict[str, Any] = bot["model"] if isinstance(bot.get("model"), dict) else {}
        if (
            model.get("provider", "custom") == "custom"
            and not model.get("base_url")
            and not model.get("ai_gateway")
        ):
            if "model" not in bot:
                out.append(
                    (
                        ("bots", i),
                        "no `model:`: say which LLM the bot talks to, e.g. "
                        "`model: {provider: anthropic, model: claude-sonnet-4-5, api_key: ${ANTHROPIC_API_KEY}}`",
                    )
                )
            elif "provider" not in model:
                out.append(
                    (
                        ("bots", i, "model"),
                        "no `provider:` (anthropic, openai, openrouter, or custom with base_url)",
                    )
                )
            else:
                out.append((("bots", i, "model"), "provider 'custom' needs base_url"))

    app_tokens: dict[str, str] = {}
    for i, bot in enumerate(bots):
        slack = bot.get("slack")
        tok = slack.get("app_token") if isinstance(slack, dict) else None
        if isinstance(tok, str) and tok:
            if tok in app_tokens:
                out.append(
                    (
                        ("bots", i, "slack", "app_token"),
                        f"same app token as bot {app_tokens[tok]!r}: each bot needs its own Slack app",
                    )
                )
            app_tokens.setdefault(tok, str(bot.get("name")))
    operator = data.get("operator")
    op_slack = operator.get("slack") if isinstance(operator, dict) else None
    op_tok = op_slack.get("app_token") if isinstance(op_slack, dict) else None
    if isinstance(op_tok, str) and op_tok in app_tokens:
        out.append(
            (
                ("operator", "slack", "app_token"),
                f"same app token as bot {app_tokens[op_tok]!r}: the operator needs its own Slack app",
            )
        )

    ports: dict[Any, str] = {}  # port -> bot
    for i, bot in enumerate(bots):
        api = bot.get("api")
        if isinstance(api, dict):
            port = api.get("port", 8642)
            if port in ports:
                out.append(
                    (("bots", i, "api", "port"), f"port {port} is already used by bot {ports[port]!r}")
                )
            ports.setdefault(port, str(bot.get("name")))
            key = api.get("key")
            if isinstance(key, str) and len(key) < 16:
                out.append(
                    (("bots", i, "api", "key"), "must be at least 16 characters (Hermes refuses shorter)")
                )

    names: dict[str, int] = {}
    for i, job in enumerate(_as_list(data.get("cron"))):
        if not isinstance(job, dict):
            continue
        jname = job.get("name")
        if isinstance(jname, str):
            if jname in names:
                out.append((("cron", i, "name"), f"duplicate cron job name {jname!r}"))
            names.setdefault(jname, i)
        jbot = job.get("bot")
        if isinstance(jbot, str) and jbot not in seen:
            out.append((("cron", i, "bot"), _unknown_ref("bot", jbot, seen)))

    for pname, profile in sandboxes.items():
        try:
            check_name(str(pname), "sandbox profile name")
        except ValueError as exc:
            out.append((("sandboxes", pname), str(exc)))
        if isinstance(profile, dict) and not profile.get("allow_secrets"):
            env = profile.get("env")
            for key in env if isinstance(env, dict) else {}:
                if ("sandboxes", pname, "env", key) in interpolated:
                    out.append(
                        (
                            ("sandboxes", pname, "env", key),
                            "`${VAR}` in a sandbox env puts that value inside the sandbox; "
                            "set allow_secrets: true on this profile if that is intended",
                        )
                    )
    out += _stream_checks(data)
    return out


def _stream_checks(data: dict[str, Any]) -> list[tuple[yamlpos.Path, str]]:
    """Streaming with client-side encryption cannot hold: Litestream 0.5 uploads plain pages."""
    snapshots = data.get("snapshots")
    snapshots = snapshots if isinstance(snapshots, dict) else {}
    encryption, stream = snapshots.get("encryption"), snapshots.get("stream")
    key = encryption.get("key") if isinstance(encryption, dict) else None
    if key and isinstance(stream, dict) and stream.get("enabled") is True:
        return [
            (
                ("snapshots", "stream", "enabled"),
                "cannot stream with snapshots.encryption.key set: Litestream 0.5 has no client-side "
                "encryption, so the databases would reach the store unencrypted. Remove this line "
                "(streaming stays off and the databases go in the encrypted snapshots) or the key",
            )
        ]
    return []


def _as_list(v: Any) -> list[Any]:
    return v if isinstance(v, list) else []


def _unknown_ref(what: str, name: str, known: Mapping[str, Any]) -> str:
    msg = f"no {what} named {name!r}"
    hint = difflib.get_close_matches(name, list(known), n=1)
    if hint:
        return msg + f" (did you mean {hint[0]!r}?)"
    if known:
        return msg + f"; defined: {', '.join(known)}"
    return msg
