"""`flared render wrangler`: wrangler.toml from the YAML, and what it refuses."""

from __future__ import annotations

import json
import os
import re
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest

from flared.build import release
from flared.config.loader import load_config
from flared.config.models import MIN_COMPATIBILITY_DATE
from flared.config.wrangler import DO_CLASSES, INSTANCE_TYPES, RenderError, render
from tests.fixtures.flare import run_cli

ROOT = Path(__file__).resolve().parent.parent
MODEL = "{provider: anthropic, model: claude-sonnet-4-5}"
ACCOUNT = "0123456789abcdef0123456789abcdef"


def render_yaml(tmp_path: Path, text: str, *, account: bool = True) -> dict[str, Any]:
    path = tmp_path / "hermes-flare.yaml"
    text = textwrap.dedent(text)
    if "bots:" not in text:  # a file must say which bots it runs, even none
        text += "\nbots: []\n"
    if account:
        text += f"\ncloudflare:\n  account_id: {ACCOUNT}\n" if "cloudflare:" not in text else ""
    path.write_text(text)
    return tomllib.loads(render(load_config(path, environ={}, check_state_dir=False)))


def shipped_render() -> str:
    """wrangler.toml as the shipped YAML renders it (the Worker's tests run on this)."""
    env = {k: v for k, v in os.environ.items() if k != "CLOUDFLARE_ACCOUNT_ID"}
    res = run_cli(
        "render",
        "wrangler",
        "-c",
        str(ROOT / "hermes-flare.yaml"),
        env={**env, "CLOUDFLARE_ACCOUNT_ID": ACCOUNT},
    )
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_the_shipped_yaml_renders_with_an_account_id_only() -> None:
    cfg = tomllib.loads(shipped_render())
    assert cfg["account_id"] == ACCOUNT and cfg["vars"]["CF_ACCOUNT_ID"] == ACCOUNT
    assert cfg["compatibility_date"] >= MIN_COMPATIBILITY_DATE
    assert not (ROOT / "wrangler.toml").exists() or "wrangler.toml" in (ROOT / ".gitignore").read_text()


def test_an_r2_store_without_account_id_is_refused_with_file_line_and_what_to_set(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CLOUDFLARE_ACCOUNT_ID"}
    res = run_cli("render", "wrangler", "-c", str(ROOT / "hermes-flare.yaml"), env=env)
    assert res.returncode == 2
    text = (ROOT / "hermes-flare.yaml").read_text().splitlines()
    line = next(i for i, row in enumerate(text, 1) if "account_id:" in row)
    assert f"hermes-flare.yaml:{line}:" in res.stderr and "cloudflare.account_id" in res.stderr
    assert "wrangler whoami" in res.stderr and "CLOUDFLARE_ACCOUNT_ID" in res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""
    # No cloudflare section at all: the same refusal.
    path = tmp_path / "hermes-flare.yaml"
    path.write_text(f"version: 1\nbots:\n  - {{name: hermes, model: {MODEL}}}\n")
    res = run_cli("render", "wrangler", "-c", str(path), env=env)
    assert res.returncode == 2 and "cloudflare.account_id: is not set" in res.stderr
    # A malformed id is a validation error at its line.
    path.write_text("version: 1\ncloudflare:\n  account_id: my-account\n")
    res = run_cli("render", "wrangler", "-c", str(path), env=env)
    assert res.returncode == 2 and ":3:" in res.stderr and "32 hexadecimal digits" in res.stderr


def test_the_compatibility_date_gives_durable_objects_ctx_exports(tmp_path: Path) -> None:
    """@cloudflare/containers intercepts the Agent's egress through ctx.exports (2025-11-17 on)."""
    cfg = render_yaml(tmp_path, "version: 1\n")
    assert cfg["compatibility_date"] == MIN_COMPATIBILITY_DATE == "2025-11-17"
    path = tmp_path / "old.yaml"
    path.write_text(
        f"version: 1\ncloudflare:\n  account_id: {ACCOUNT}\n  compatibility_date: '2025-11-01'\nbots: []\n"
    )
    res = run_cli("render", "wrangler", "-c", str(path))
    assert res.returncode == 2 and "ctx.exports" in res.stderr and "old.yaml:4:" in res.stderr
    # workerd in worker/node_modules must support the date (its version is its newest date).
    pkg = ROOT / "worker/node_modules/workerd/package.json"
    if pkg.is_file():
        newest = json.loads(pkg.read_text())["version"].split(".")[1]
        assert cfg["compatibility_date"].replace("-", "") <= newest


def test_egress_secrets_and_service_tokens_come_from_the_yaml(tmp_path: Path) -> None:
    cfg = render_yaml(
        tmp_path,
        f"""
        version: 1
        bots:
          - name: hermes
            model: {{provider: anthropic, model: claude-sonnet-4-5, api_key: "${{ANTHROPIC_API_KEY:-}}"}}
        cloudflare:
          account_id: {ACCOUNT}
          egress_secrets: [ANTHROPIC_API_KEY]
          access:
            team_domain: example.cloudflareaccess.com
            aud: abc
            allowed_service_tokens: [0123abcd.access]
        """,
    )
    assert cfg["vars"]["EGRESS_SECRETS"] == "ANTHROPIC_API_KEY"
    assert cfg["vars"]["ACCESS_ALLOWED_SERVICE_TOKENS"] == "0123abcd.access"
    path = tmp_path / "bad.yaml"
    path.write_text(
        f"version: 1\ncloudflare:\n  account_id: {ACCOUNT}\n  egress_secrets:\n    - NOT_USED\nbots: []\n"
    )
    res = run_cli("render", "wrangler", "-c", str(path))
    assert (
        res.returncode == 2 and "bad.yaml:5:" in res.stderr and "NOT_USED is not a ${NOT_USED}" in res.stderr
    )


def test_rendered_wrangler_toml_points_at_real_files_and_exports() -> None:
    cfg = tomllib.loads(shipped_render())
    assert (ROOT / cfg["main"]).is_file()
    assert "nodejs_compat" in cfg["compatibility_flags"]
    index = (ROOT / cfg["main"]).read_text()
    for container in cfg["containers"]:
        assert (ROOT / container["image"]).is_file()
        assert re.search(rf"export \{{ {container['class_name']} \}}", index), container["class_name"]
    bindings = {b["name"]: b["class_name"] for b in cfg["durable_objects"]["bindings"]}
    assert bindings == dict(DO_CLASSES)
    for cls in bindings.values():
        assert re.search(rf"export \{{ {cls} \}}", index), f"worker does not export {cls}"
    # Every Durable Object class is created by a migration, SQLite-backed.
    assert sorted(cfg["migrations"][0]["new_sqlite_classes"]) == sorted(bindings.values())
    # The container classes' outbound proxy must be exported too.
    assert "ContainerProxy" in index
    # The YAML is bundled as a text module.
    assert cfg["rules"] == [{"type": "Text", "globs": ["**/*.yaml"], "fallthrough": True}]


def test_defaults_with_only_an_account_id(tmp_path: Path) -> None:
    cfg = render_yaml(
        tmp_path,
        """
        version: 1
        bots:
          - {name: hermes, model: MODEL}
        """.replace("MODEL", MODEL),
    )
    assert cfg["name"] == "hermes-flare"
    assert cfg["account_id"] == ACCOUNT
    assert cfg["triggers"]["crons"] == ["*/5 * * * *"]
    assert cfg["r2_buckets"] == [{"binding": "SNAPSHOTS", "bucket_name": "hermes-flare-data"}]
    agent, exe = cfg["containers"]
    assert (agent["class_name"], agent["instance_type"], agent["max_instances"]) == ("Agent", "standard-1", 4)
    assert agent["image_build_context"] == "."
    assert (exe["class_name"], exe["instance_type"], exe["max_instances"]) == ("Exec", "basic", 20)
    v = cfg["vars"]
    assert json.loads(v["BOT_GROUPS"]) == {"hermes": "default"}
    assert v["SANDBOX_PROFILES"] == "default"
    # Longest lease lifetime (default 2h) plus a 10 minute margin.
    assert v["SANDBOX_MAX_IDLE_MS"] == str((7200 + 600) * 1000)
    assert v["ACCESS_TEAM_DOMAIN"] == v["ACCESS_AUD"] == v["ACCESS_ALLOWED_EMAILS"] == ""
    assert v["EGRESS_SECRETS"] == v["ACCESS_ALLOWED_SERVICE_TOKENS"] == ""
    # Empty on deploy: only a local topology points the store elsewhere.
    assert v["R2_ENDPOINT"] == ""
    assert v["FLARED_VERSION"] == release()


def test_cloudflare_section_groups_and_access(tmp_path: Path) -> None:
    cfg = render_yaml(
        tmp_path,
        """
        version: 1
        sandboxes:
          default: {max_lifetime: 1h}
          heavy: {max_lifetime: 4h, idle_ttl: 30m}
        bots:
          - {name: hermes, model: MODEL}
          - {name: scout, group: research, sandbox: heavy, model: MODEL}
          - {name: scribe, group: research, model: MODEL}
        cloudflare:
          worker: my-agents
          account_id: 0123456789abcdef0123456789abcdef
          bucket: my-bucket
          keepalive: "*/2 * * * *"
          compatibility_date: "2026-01-15"
          agent: {instance_type: standard-2, max_instances: 3}
          exec: {instance_type: lite, max_instances: 50}
          access:
            team_domain: example.cloudflareaccess.com
            aud: abc123
            allowed_emails: [ops@example.com, boss@example.com]
        """.replace("MODEL", MODEL),
    )
    assert cfg["name"] == "my-agents"
    assert cfg["account_id"] == "0123456789abcdef0123456789abcdef"
    assert cfg["compatibility_date"] == "2026-01-15"
    assert cfg["triggers"]["crons"] == ["*/2 * * * *"]
    assert cfg["r2_buckets"][0]["bucket_name"] == "my-bucket"
    assert [(c["instance_type"], c["max_instances"]) for c in cfg["containers"]] == [
        ("standard-2", 3),
        ("lite", 50),
    ]
    v = cfg["vars"]
    assert json.loads(v["BOT_GROUPS"]) == {"hermes": "default", "scout": "research", "scribe": "research"}
    assert v["SANDBOX_PROFILES"] == "default,heavy"
    assert v["SANDBOX_MAX_IDLE_MS"] == str((4 * 3600 + 600) * 1000)
    assert v["R2_BUCKET_NAME"] == "my-bucket"
    assert v["CF_ACCOUNT_ID"] == "0123456789abcdef0123456789abcdef"
    assert v["ACCESS_TEAM_DOMAIN"] == "example.cloudflareaccess.com"
    assert v["ACCESS_AUD"] == "abc123"
    assert v["ACCESS_ALLOWED_EMAILS"] == "ops@example.com,boss@example.com"


def test_more_groups_than_agent_instances_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "hermes-flare.yaml"
    path.write_text(
        f"version: 1\nbots:\n  - {{name: a, group: g1, model: {MODEL}}}\n  - {{name: b, group: g2, model: {MODEL}}}\n"
        f"cloudflare:\n  account_id: {ACCOUNT}\n  agent: {{instance_type: basic, max_instances: 1}}\n"
    )
    with pytest.raises(
        RenderError, match=r"2 bot groups \(g1, g2\) need cloudflare.agent.max_instances >= 2"
    ):
        render(load_config(path, environ={}, check_state_dir=False))


def test_unknown_instance_type_is_a_clear_cli_error(tmp_path: Path) -> None:
    path = tmp_path / "hermes-flare.yaml"
    path.write_text(
        f"version: 1\ncloudflare:\n  account_id: {ACCOUNT}\n  exec: {{instance_type: huge, max_instances: 1}}\n"
        "bots: []\n"
    )
    res = run_cli("render", "wrangler", "-c", str(path))
    assert res.returncode == 2
    assert "cloudflare.exec.instance_type 'huge'" in res.stderr
    assert "Traceback" not in res.stderr


def test_cli_prints_the_render() -> None:
    loaded = load_config(
        ROOT / "hermes-flare.yaml", environ={"CLOUDFLARE_ACCOUNT_ID": ACCOUNT}, check_state_dir=False
    )
    assert shipped_render() == render(loaded)


def test_strings_are_escaped(tmp_path: Path) -> None:
    cfg = render_yaml(
        tmp_path,
        """
        version: 1
        cloudflare:
          account_id: ACCOUNT
          access: {team_domain: 'a"b.cloudflareaccess.com', aud: "x\\\\y"}
        """.replace("ACCOUNT", ACCOUNT),
    )
    assert cfg["vars"]["ACCESS_TEAM_DOMAIN"] == 'a"b.cloudflareaccess.com'
    assert cfg["vars"]["ACCESS_AUD"] == "x\\y"


def test_instance_types_agree_with_wranglers_schema() -> None:
    schema_path = ROOT / "worker/node_modules/wrangler/config-schema.json"
    if not schema_path.is_file():
        pytest.skip("worker/node_modules not installed (./scripts/setup --worker)")
    schema = json.loads(schema_path.read_text())
    spec = schema["definitions"]["ContainerApp"]["properties"]["instance_type"]
    named = {a["const"] for a in spec["anyOf"] if "const" in a}
    deprecated = {"dev", "standard"}
    assert set(INSTANCE_TYPES) == named - deprecated


def test_render_needs_no_secrets(tmp_path: Path) -> None:
    """Secrets live in Cloudflare; the deploying machine need not have them."""
    path = tmp_path / "hermes-flare.yaml"
    path.write_text(
        textwrap.dedent(
            """
            version: 1
            cloudflare: {account_id: 0123456789abcdef0123456789abcdef}
            bots:
              - name: hermes
                group: team
                model: {provider: anthropic, model: claude-sonnet-4-5, api_key: "${HFT_KEY}"}
                slack:
                  bot_token: ${HFT_BOT}
                  app_token: ${HFT_APP}
                  allowed_users: ["${HFT_USER}"]
            """
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HFT_")}
    res = run_cli("render", "wrangler", "-c", str(path), env=env)
    assert res.returncode == 0, res.stderr
    assert json.loads(tomllib.loads(res.stdout)["vars"]["BOT_GROUPS"]) == {"hermes": "team"}
    assert "placeholder" not in res.stdout
    # Everything else is still validated.
    path.write_text(path.read_text().replace("group: team", "group: Team_Bad"))
    res = run_cli("render", "wrangler", "-c", str(path), env=env)
    assert res.returncode == 2
    assert "bots[0].group" in res.stderr


def test_deploy_render_only_says_the_account_id_is_missing_before_npm_ci(tmp_path: Path) -> None:
    """`scripts/deploy --render-only` spent ~14 s in `npm ci` before saying so (issue 23).

    The real script in a copy of the tree; `scripts/setup` there only records how
    it was called (the real one would install into this worktree), `.venv` is this one.
    """
    import shutil
    import subprocess

    from tests.fixtures.flare import ROOT

    (tmp_path / "scripts").mkdir()
    shutil.copy2(ROOT / "scripts" / "deploy", tmp_path / "scripts" / "deploy")
    setup = tmp_path / "scripts" / "setup"
    setup.write_text('#!/bin/sh\necho "setup $*" >> "$(dirname "$0")/../setup.calls"\n')
    setup.chmod(0o755)
    shutil.copy2(ROOT / "hermes-flare.yaml", tmp_path / "hermes-flare.yaml")
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    env = {k: v for k, v in os.environ.items() if k != "CLOUDFLARE_ACCOUNT_ID"}
    out = subprocess.run(
        [str(tmp_path / "scripts" / "deploy"), "--render-only"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr
    assert re.search(r"hermes-flare\.yaml:\d+:\d+: cloudflare\.account_id: is not set", out.stderr)
    assert (tmp_path / "setup.calls").read_text() == "setup \n"  # never `--worker` (npm ci)
    assert not (tmp_path / "wrangler.toml").exists() and not (tmp_path / "wrangler.toml.new").exists()
