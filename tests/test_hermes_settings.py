"""render_bot_settings, checked against Hermes' own resolution code.

Each case renders a bot, writes the result as a Hermes home (config.yaml and
.env), then asks the installed Hermes in a clean subprocess what it makes of
it: the runtime provider the gateway would use, the model, the Slack platform
settings, and the tools Slack gets.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from flared.config.models import BotConfig
from flared.hermes.home import render_env
from flared.hermes.settings import render_bot_settings

PROBE = r"""
import json, os, sys
import gateway.run as run                      # loads $HERMES_HOME/.env like the gateway does
from gateway.config import Platform, load_gateway_config
from hermes_cli.config import load_config
from hermes_cli.tools_config import _get_platform_tools
from hermes_cli.platforms import PLATFORMS
from agent.auxiliary_client import _apply_user_default_headers

out = {}
try:
    kw = run._resolve_runtime_agent_kwargs()
    out["runtime"] = {k: kw.get(k) for k in ("provider", "base_url", "api_key", "api_mode")}
except Exception as exc:
    out["runtime_error"] = f"{type(exc).__name__}: {exc}"
out["model"] = run._resolve_gateway_model()
out["headers"] = _apply_user_default_headers(None)
gw = load_gateway_config()
slack = gw.platforms.get(Platform.SLACK)
if slack is not None:
    out["slack"] = {
        "enabled": slack.enabled,
        "connected": Platform.SLACK in gw.get_connected_platforms(),
        "extra": {k: v for k, v in slack.extra.items() if not k.startswith("_")},
        "home": slack.home_channel.chat_id if slack.home_channel else None,
        "dm_behavior": gw.get_unauthorized_dm_behavior(Platform.SLACK),
    }
cfg = load_config()
out["tools"] = {p: sorted(_get_platform_tools(cfg, p)) for p in PLATFORMS}
out["env"] = {k: os.environ.get(k) for k in (
    "SLACK_ALLOWED_USERS", "SLACK_ALLOWED_CHANNELS", "FLARE_SLACK_API_URL", "FLARE_MODEL_HEADERS")}
print(json.dumps(out))
"""


def bot(**kw: Any) -> BotConfig:
    return BotConfig.model_validate({"name": "hermes", **kw})


SLACK = {
    "bot_token": "xoxb-1-abc",
    "app_token": "xapp-1-A1-1-def",
    "allowed_users": ["U01ABC2DEF3"],
    "allowed_channels": ["C0123ABCD"],
    "home_channel": "C0123ABCD",
    "reply_in_thread": False,
    "require_mention": False,
    "api_url": "http://127.0.0.1:1/api/",
}


def write_home(tmp: Path, b: BotConfig, drop_env: tuple[str, ...] = ()) -> tuple[Path, str, str]:
    settings, env = render_bot_settings(b, tmp)
    for k in drop_env:
        env.pop(k, None)
    home = tmp / "home"
    home.mkdir(parents=True)
    cfg_text = yaml.safe_dump(settings, sort_keys=True)
    env_text = render_env(env)
    (home / "config.yaml").write_text(cfg_text)
    (home / ".env").write_text(env_text)
    return home, cfg_text, env_text


def probe(home: Path) -> dict[str, Any]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home.parent),
        "HERMES_HOME": str(home),
    }
    proc = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


CASES: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "custom+slack": (
        {
            "model": {
                "provider": "custom",
                "model": "fake-model",
                "base_url": "http://127.0.0.1:9/v1",
                "api_key": "sk-c",
            },
            "slack": SLACK,
            "toolsets": ["terminal", "file", "memory"],
        },
        (),
    ),
    "anthropic-unknown-host": (
        {
            "model": {
                "provider": "anthropic",
                "model": "claude-x",
                "api_key": "sk-ant-k",
                "base_url": "http://127.0.0.1:9/",
            }
        },
        (),
    ),
    "anthropic-without-ANTHROPIC_BASE_URL": (
        {
            "model": {
                "provider": "anthropic",
                "model": "claude-x",
                "api_key": "sk-ant-k",
                "base_url": "http://127.0.0.1:9/",
            }
        },
        ("ANTHROPIC_BASE_URL",),
    ),
    "anthropic-aig": (
        {
            "model": {
                "provider": "anthropic",
                "model": "claude-x",
                "api_key": "sk-ant-k",
                "ai_gateway": {"account_id": "acc", "gateway_id": "gw", "token": "aig-tok"},
            }
        },
        (),
    ),
    "openai-aig": (
        {
            "model": {
                "provider": "openai",
                "model": "gpt-x",
                "api_key": "sk-o",
                "ai_gateway": {"account_id": "acc", "gateway_id": "gw", "token": "aig-tok"},
            }
        },
        (),
    ),
    "openrouter": ({"model": {"provider": "openrouter", "model": "a/b", "api_key": "sk-or-k"}}, ()),
    "openai": ({"model": {"provider": "openai", "model": "gpt-x", "api_key": "sk-o"}}, ()),
}


@pytest.fixture(scope="module")
def probed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Probe every case at once (parallel subprocesses; Hermes takes ~2 s to import)."""
    procs: dict[str, subprocess.Popen[str]] = {}
    for name, (kw, drop) in CASES.items():
        home, _, _ = write_home(tmp_path_factory.mktemp(name.replace("+", "-")), bot(**kw), drop)
        env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home.parent), "HERMES_HOME": str(home)}
        procs[name] = subprocess.Popen(
            [sys.executable, "-c", PROBE], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    out: dict[str, dict[str, Any]] = {}
    for name, p in procs.items():
        stdout, stderr = p.communicate(timeout=180)
        assert p.returncode == 0, f"{name}: {stderr[-3000:]}"
        out[name] = json.loads(stdout.strip().splitlines()[-1])
    return out


@pytest.mark.integration
def test_custom_model_and_slack(probed: dict[str, dict[str, Any]]) -> None:
    r = probed["custom+slack"]
    assert r["runtime"] == {
        "provider": "custom",
        "base_url": "http://127.0.0.1:9/v1",
        "api_key": "sk-c",
        "api_mode": "chat_completions",
    }
    assert r["model"] == "fake-model"
    slack = r["slack"]
    assert slack["enabled"] and slack["connected"]
    assert slack["extra"]["require_mention"] is False
    assert slack["extra"]["reply_in_thread"] is False
    assert slack["home"] == "C0123ABCD"
    assert slack["dm_behavior"] == "ignore"
    assert r["env"]["SLACK_ALLOWED_USERS"] == "U01ABC2DEF3"
    assert r["env"]["SLACK_ALLOWED_CHANNELS"] == "C0123ABCD"
    assert r["env"]["FLARE_SLACK_API_URL"] == "http://127.0.0.1:1/api/"
    # Every platform Hermes knows gets the bot's toolsets: cron (issue 20 item 1) and the CLI too.
    assert {"slack", "api_server", "cron", "cli"} <= set(r["tools"])
    # kanban: Hermes adds it to every platform (not configurable); its tools exist only in a kanban worker.
    for platform in ("slack", "api_server", "cron", "cli"):
        assert set(r["tools"][platform]) - {"kanban"} == {"terminal", "file", "memory"}, platform
    for platform, tools in r["tools"].items():  # others add only their own native tools (feishu_doc...)
        assert {"terminal", "file", "memory"} <= set(tools), platform
        assert not set(tools) & {"web", "browser", "code_execution", "delegation", "skills", "cronjob"}, (
            platform
        )


@pytest.mark.integration
def test_anthropic_base_url_for_any_host(probed: dict[str, dict[str, Any]]) -> None:
    r = probed["anthropic-unknown-host"]["runtime"]
    assert r["provider"] == "anthropic"
    assert r["api_mode"] == "anthropic_messages"
    assert r["base_url"].rstrip("/") == "http://127.0.0.1:9"
    assert r["api_key"] == "sk-ant-k"
    # Why flared also sets ANTHROPIC_BASE_URL: model.base_url alone is dropped for this host.
    dropped = probed["anthropic-without-ANTHROPIC_BASE_URL"]["runtime"]
    assert "127.0.0.1" not in dropped["base_url"]


@pytest.mark.integration
def test_anthropic_through_ai_gateway(probed: dict[str, dict[str, Any]]) -> None:
    r = probed["anthropic-aig"]
    assert r["runtime"]["base_url"] == "https://gateway.ai.cloudflare.com/v1/acc/gw/anthropic"
    assert r["runtime"]["provider"] == "anthropic"
    assert json.loads(r["env"]["FLARE_MODEL_HEADERS"]) == {"cf-aig-authorization": "Bearer aig-tok"}


@pytest.mark.integration
def test_openai_through_ai_gateway_sends_the_header(probed: dict[str, dict[str, Any]]) -> None:
    r = probed["openai-aig"]
    assert r["runtime"] == {
        "provider": "custom",
        "base_url": "https://gateway.ai.cloudflare.com/v1/acc/gw/openai",
        "api_key": "sk-o",
        "api_mode": "chat_completions",
    }
    assert r["headers"] == {"cf-aig-authorization": "Bearer aig-tok"}


@pytest.mark.integration
def test_openrouter_and_openai_native(probed: dict[str, dict[str, Any]]) -> None:
    orr = probed["openrouter"]["runtime"]
    assert orr["provider"] == "openrouter"
    assert orr["base_url"] == "https://openrouter.ai/api/v1"
    assert orr["api_key"] == "sk-or-k"
    oai = probed["openai"]["runtime"]
    assert (oai["provider"], oai["base_url"], oai["api_key"]) == (
        "custom",
        "https://api.openai.com/v1",
        "sk-o",
    )
    assert probed["openai"]["headers"] is None


def test_no_secret_in_config_yaml(tmp_path: Path) -> None:
    b = bot(
        model={
            "provider": "openai",
            "model": "m",
            "api_key": "sk-secret-1",
            "ai_gateway": {"account_id": "a", "gateway_id": "g", "token": "aig-secret-2"},
        },
        slack=SLACK,
    )
    _, cfg_text, env_text = write_home(tmp_path, b)
    for secret in ("sk-secret-1", "aig-secret-2", SLACK["bot_token"], SLACK["app_token"]):
        assert secret not in cfg_text
        assert secret in env_text
    assert "${FLARE_MODEL_API_KEY}" in cfg_text


def test_no_slack_no_slack_settings(tmp_path: Path) -> None:
    settings, env = render_bot_settings(
        bot(model={"provider": "custom", "base_url": "http://x/v1"}), tmp_path
    )
    assert "slack" not in settings
    assert not any(k.startswith("SLACK_") for k in env)
    assert "FLARE_MODEL_API_KEY" not in env
    assert "api_key" not in settings["model"]


def test_default_slack_api_url_is_not_patched(tmp_path: Path) -> None:
    s = dict(SLACK, api_url="https://slack.com/api/")
    _, env = render_bot_settings(bot(slack=s), tmp_path)
    assert "FLARE_SLACK_API_URL" not in env


def test_custom_through_ai_gateway_uses_compat_route(tmp_path: Path) -> None:
    b = bot(
        model={
            "provider": "custom",
            "model": "workers-ai/@cf/meta/llama",
            "base_url": "http://ignored/v1",
            "ai_gateway": {"account_id": "a", "gateway_id": "g"},
        }
    )
    settings, env = render_bot_settings(b, tmp_path)
    assert settings["model"]["base_url"] == "https://gateway.ai.cloudflare.com/v1/a/g/compat"
    assert "default_headers" not in settings["model"]  # no token, no header
    assert "FLARE_MODEL_HEADERS" not in env


def test_probe_helper_reports_failures(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.yaml").write_text(
        "model: {provider: custom, default: m, base_url: http://127.0.0.1:9/v1}\n"
    )
    r = probe(home)
    assert r["model"] == "m"
    assert "slack" not in r


def test_slack_manifest_asks_for_what_hermes_uses() -> None:
    """docs/slack-app-manifest.yaml keeps Hermes' own scopes and events (plus reactions)."""
    from hermes_cli.slack_cli import _build_full_manifest

    ours = yaml.safe_load((Path(__file__).parent.parent / "docs" / "slack-app-manifest.yaml").read_text())
    theirs = _build_full_manifest("Hermes", "x")
    assert set(theirs["oauth_config"]["scopes"]["bot"]) | {"reactions:write"} == set(
        ours["oauth_config"]["scopes"]["bot"]
    )
    assert set(theirs["settings"]["event_subscriptions"]["bot_events"]) == set(
        ours["settings"]["event_subscriptions"]["bot_events"]
    )
    assert ours["settings"]["socket_mode_enabled"] is True
    assert [c["command"] for c in ours["features"]["slash_commands"]] == ["/hermes"]
