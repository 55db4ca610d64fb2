"""Render `wrangler.toml` from hermes-flare.yaml (`flared render wrangler`).

The same YAML runs locally and on Cloudflare; its `cloudflare:` section (or
its defaults) says what differs there: the Worker's name, the R2 bucket, the
container instance types and counts, the keep-warm cron, Access. Everything
the Worker needs to know about the YAML at runtime without parsing it (which
group each bot is in, the sandbox profile names, how long a lease may live)
becomes a `[vars]` entry, so the committed `wrangler.toml` must be re-rendered
when those change; a test checks it is current.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flared.build import release
from flared.config import yamlpos
from flared.config.loader import LoadedConfig, find_config, load_config, read_config_text
from flared.config.models import CloudflareConfig, HermesFlareConfig

WORKER_MAIN = "worker/src/index.ts"
AGENT_DOCKERFILE = "./images/agent/Dockerfile"
ADMIN_ASSETS = "./flared/admin/static"
EXEC_DOCKERFILE = "./images/exec/Dockerfile"

# Named instance types wrangler accepts (its config schema; a test compares).
INSTANCE_TYPES = ("lite", "basic", "standard-1", "standard-2", "standard-3", "standard-4")

# Durable Object classes the Worker exports, all SQLite-backed.
DO_CLASSES = (("Agent", "Agent"), ("Exec", "Exec"), ("Registry", "SandboxRegistry"))

# Margin past the longest lease lifetime before the cron sweep destroys a
# sandbox nobody used: flared destroys its own leases well before this.
SWEEP_MARGIN_S = 600


# `${NAME}` with no default: a secret the Worker supplies at run time.
_REQUIRED_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# Any `${NAME}` or `${NAME:-default}`: what the Worker passes to the container.
_ANY_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-[^}]*)?\}")
_KEY_BEFORE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*:\s*[\[{]?[^:]*$")


def _placeholder(key: str) -> str:
    """A value of the right shape for the field a variable fills (it is never used)."""
    if key == "account_id":  # never invented: render refuses it missing, saying what to set
        return ""
    if key == "bot_token":
        return "xoxb-render-placeholder"
    if key == "app_token":
        return "xapp-render-placeholder"
    if "user" in key or "member" in key:
        return "U0RENDER0"
    return "render-placeholder"


def load_for_render(
    path: str | os.PathLike[str] | None, environ: Mapping[str, str] | None = None
) -> LoadedConfig:
    """Load the YAML for rendering wrangler.toml without its secrets.

    Secrets live in Cloudflare (`wrangler secret put`), not on the machine that
    deploys, and rendering needs none of them: each `${VAR}` that is unset gets
    a placeholder shaped for its field, so validation still checks everything
    else.
    """
    env = dict(os.environ if environ is None else environ)
    cfg_path = find_config(path)
    text = read_config_text(cfg_path, str(path) if path else str(cfg_path))
    for m in _REQUIRED_VAR.finditer(text):
        name = m.group(1)
        if name in env:
            continue
        line = text[text.rfind("\n", 0, m.start()) + 1 : m.start()]
        key = _KEY_BEFORE.search(line)
        env[name] = _placeholder(key.group(1) if key else "")
    return load_config(Path(cfg_path), text=text, environ=env, check_state_dir=False)


def _s(value: str) -> str:
    """A TOML basic string (JSON string escapes are valid TOML)."""
    return json.dumps(value, ensure_ascii=False)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _s(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"cannot render {value!r} as TOML")


def _table(lines: list[str], header: str, items: dict[str, Any]) -> None:
    lines.append("")
    lines.append(header)
    for k, v in items.items():
        lines.append(f"{k} = {_value(v)}")


def worker_vars(cfg: HermesFlareConfig, cf: CloudflareConfig) -> dict[str, str]:
    """The Worker's `[vars]`: what it must know about the YAML without parsing it."""
    profiles = cfg.sandboxes
    max_life = max((max(p.max_lifetime, p.idle_ttl) for p in profiles.values()), default=7200.0)
    access = cf.access
    return {
        "BOT_GROUPS": json.dumps({b.name: b.group for b in cfg.bots}, separators=(",", ":")),
        "SANDBOX_PROFILES": ",".join(sorted(profiles)),
        "SANDBOX_MAX_IDLE_MS": str(int((max_life + SWEEP_MARGIN_S) * 1000)),
        "R2_BUCKET_NAME": cf.bucket,
        "CF_ACCOUNT_ID": cf.account_id or "",
        # Another S3 endpoint than R2's, for a local test topology only; empty on deploy.
        "R2_ENDPOINT": "",
        # What the Agent image should run: /api/status flags a group running another flared.
        "FLARED_VERSION": release(),
        "ACCESS_TEAM_DOMAIN": access.team_domain if access else "",
        "ACCESS_AUD": access.aud if access else "",
        "ACCESS_ALLOWED_EMAILS": ",".join(access.allowed_emails) if access else "",
        "ACCESS_ALLOWED_SERVICE_TOKENS": ",".join(access.allowed_service_tokens) if access else "",
        "EGRESS_SECRETS": ",".join(cf.egress_secrets),
    }


class RenderError(ValueError):
    """The YAML is valid but cannot become a working wrangler.toml; the message says what to set."""


def _refuse(loaded: LoadedConfig, path: tuple[str | int, ...], message: str) -> RenderError:
    """A render refusal that points at the field: FILE:LINE:COL: path: message."""
    mark = yamlpos.load(loaded.text).mark(path, prefer_key=True)
    where = ".".join(str(p) for p in path)
    return RenderError(f"{loaded.path}:{mark.line}:{mark.col}: {where}: {message}")


def _check_deployable(loaded: LoadedConfig, cf: CloudflareConfig) -> None:
    """What Cloudflare needs that the schema cannot demand (the same YAML also runs locally)."""
    if not cf.account_id:
        raise _refuse(
            loaded,
            ("cloudflare", "account_id"),
            "is not set: flared reaches the R2 snapshot store at https://<account_id>.r2.cloudflarestorage.com "
            "and without it no bot starts. Set `cloudflare.account_id` to your account id (`wrangler whoami` "
            "shows it), or export CLOUDFLARE_ACCOUNT_ID with `account_id: ${CLOUDFLARE_ACCOUNT_ID:-}` in the YAML",
        )
    used = set(_ANY_VAR.findall(loaded.text))
    for i, name in enumerate(cf.egress_secrets):
        if name not in used:
            raise _refuse(
                loaded,
                ("cloudflare", "egress_secrets", i),
                f"{name} is not a ${{{name}}} this YAML uses: only a secret the YAML interpolates reaches "
                "the container as a placeholder",
            )


def _check(cfg: HermesFlareConfig, cf: CloudflareConfig) -> None:
    for what, spec in (("agent", cf.agent), ("exec", cf.exec)):
        if spec.instance_type not in INSTANCE_TYPES:
            raise RenderError(
                f"cloudflare.{what}.instance_type {spec.instance_type!r} is not a Cloudflare Containers "
                f"instance type: use one of {', '.join(INSTANCE_TYPES)}"
            )
    groups = sorted({b.group for b in cfg.bots}) or ["default"]
    if len(groups) > cf.agent.max_instances:
        raise RenderError(
            f"{len(groups)} bot groups ({', '.join(groups)}) need cloudflare.agent.max_instances >= "
            f"{len(groups)} (it is {cf.agent.max_instances}): each group runs in its own Agent container"
        )


def render(loaded: LoadedConfig) -> str:
    """The wrangler.toml this YAML implies."""
    cfg = loaded.config
    cf = cfg.cloudflare or CloudflareConfig()
    _check_deployable(loaded, cf)
    _check(cfg, cf)

    lines = [
        "# Generated by `flared render wrangler` from hermes-flare.yaml; do not edit by hand:",
        "# change the YAML (its `cloudflare:` section) and render again.",
        f"name = {_s(cf.worker)}",
        f"main = {_s(WORKER_MAIN)}",
        f"compatibility_date = {_s(cf.compatibility_date)}",
        'compatibility_flags = ["nodejs_compat"]',
    ]
    if cf.account_id:
        lines.append(f"account_id = {_s(cf.account_id)}")

    lines += [
        "",
        "# hermes-flare.yaml is bundled as text: scheduled() pushes it to flared when it changed.",
        "[[rules]]",
        'type = "Text"',
        'globs = ["**/*.yaml"]',
        "fallthrough = true",
    ]

    lines += [
        "",
        "# The admin page's files; the Worker serves them at /admin behind the same auth as /api/*.",
    ]
    _table(
        lines,
        "[assets]",
        {
            "directory": ADMIN_ASSETS,
            "binding": "ADMIN_ASSETS",
            "run_worker_first": True,
            "html_handling": "none",
            "not_found_handling": "none",
        },
    )

    _table(lines, "[vars]", dict(worker_vars(cfg, cf)))

    lines += ["", "# One Agent container per bot group: supervisord + flared + the Hermes gateways."]
    _table(
        lines,
        "[[containers]]",
        {
            "class_name": "Agent",
            "image": AGENT_DOCKERFILE,
            "image_build_context": ".",
            "instance_type": cf.agent.instance_type,
            "max_instances": cf.agent.max_instances,
        },
    )
    lines += ["", "# Exec sandboxes (Sandbox SDK), one per flared lease."]
    _table(
        lines,
        "[[containers]]",
        {
            "class_name": "Exec",
            "image": EXEC_DOCKERFILE,
            "instance_type": cf.exec.instance_type,
            "max_instances": cf.exec.max_instances,
        },
    )
    for binding, cls in DO_CLASSES:
        _table(lines, "[[durable_objects.bindings]]", {"name": binding, "class_name": cls})
    _table(lines, "[[migrations]]", {"tag": "v1", "new_sqlite_classes": [cls for _, cls in DO_CLASSES]})
    lines += ["", "# flared writes snapshots over R2's S3 API; the binding lets wrangler check the bucket."]
    _table(lines, "[[r2_buckets]]", {"binding": "SNAPSHOTS", "bucket_name": cf.bucket})
    _table(lines, "[triggers]", {"crons": [cf.keepalive]})
    _table(lines, "[observability]", {"enabled": True})
    return "\n".join(lines) + "\n"
