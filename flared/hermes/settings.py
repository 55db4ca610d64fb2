"""What a bot's Slack, model and toolsets become in Hermes' own settings.

:func:`render_bot_settings` returns a ``config.yaml`` fragment and ``.env``
variables; :mod:`flared.hermes.home` merges them into the bot's Hermes home.

Two rules shape it:

- **No secret in config.yaml.** The Hermes home is snapshotted, ``.env`` is
  not. Tokens and keys go to ``.env``; where config.yaml must name a secret
  it uses Hermes' ``${VAR}`` expansion, so the file holds only the name.
- **Use what Hermes 0.19 actually honours** (checked by
  ``tests/test_hermes_bot.py`` against Hermes' own resolution code):

  * Slack is switched on by ``SLACK_BOT_TOKEN``/``SLACK_APP_TOKEN``; who may
    talk is ``SLACK_ALLOWED_USERS``; ``require_mention``, ``reply_in_thread``
    and ``allowed_channels`` are top-level ``slack:`` keys that Hermes bridges
    into the platform's settings. Strangers get silence
    (``unauthorized_dm_behavior: ignore``) rather than Hermes' pairing-code
    reply, since flared's allow-list is the YAML.
  * Hermes has no Slack API URL setting: ``FLARE_SLACK_API_URL`` is read by
    the ``flare`` plugin (:mod:`flared.plugin.slack`).
  * Slack gets no tools unless ``platform_toolsets.slack`` lists them. A
    platform with no ``platform_toolsets`` entry gets Hermes' full default
    set, so the bot's toolsets are rendered for every platform Hermes knows
    (its own registry), ``cron`` and ``cli`` included; a cron job's own
    ``enabled_toolsets`` is held to them by :mod:`flared.plugin.cron`.
  * ``provider: anthropic`` ignores ``model.base_url`` unless the URL looks
    like an Anthropic endpoint, but honours ``ANTHROPIC_BASE_URL`` for any
    URL, so a base URL is always also given as ``ANTHROPIC_BASE_URL``.
  * OpenAI-compatible endpoints (openai, custom, anything through AI Gateway
    except Anthropic's native route) run as Hermes' ``custom`` provider with
    ``model.base_url``; extra headers such as ``cf-aig-authorization`` go in
    ``model.default_headers``. Anthropic's client takes no configured
    headers, so for it the header travels in ``FLARE_MODEL_HEADERS`` and the
    ``flare`` plugin adds it (:mod:`flared.plugin.model`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flared.config.models import BotConfig, ModelConfig

SLACK_DEFAULT_API_URL = "https://slack.com/api/"
AI_GATEWAY_ROOT = "https://gateway.ai.cloudflare.com/v1"
OPENAI_BASE_URL = "https://api.openai.com/v1"
OPENROUTER_BASE_URL = "https://openrouter.ai/api/v1"

#: AI Gateway's path segment per provider; ``compat`` is its OpenAI-compatible route.
AI_GATEWAY_SEGMENT = {
    "anthropic": "anthropic",
    "openai": "openai",
    "openrouter": "openrouter",
    "custom": "compat",
}


MODEL_KEY_VAR = "FLARE_MODEL_API_KEY"
AIG_TOKEN_VAR = "FLARE_AIG_TOKEN"
HEADERS_VAR = "FLARE_MODEL_HEADERS"
SLACK_API_URL_VAR = "FLARE_SLACK_API_URL"


def _secret(value: Any) -> str:
    """A SecretStr's value, '' when unset or empty (``${X:-}`` renders as '')."""
    if value is None:
        return ""
    return str(value.get_secret_value()).strip()


def ai_gateway_url(model: ModelConfig) -> str | None:
    """``https://gateway.ai.cloudflare.com/v1/<account>/<gateway>/<provider>``, when configured."""
    gw = model.ai_gateway
    if gw is None:
        return None
    return f"{AI_GATEWAY_ROOT}/{gw.account_id}/{gw.gateway_id}/{AI_GATEWAY_SEGMENT[model.provider]}"


def render_model(model: ModelConfig) -> tuple[dict[str, Any], dict[str, str]]:
    """The ``model:`` block and the environment for one bot's LLM."""
    key = _secret(model.api_key)
    base_url = (model.base_url or "").strip().rstrip("/")
    gateway_url = ai_gateway_url(model)
    token = _secret(model.ai_gateway.token) if model.ai_gateway else ""
    headers = {"cf-aig-authorization": f"Bearer {token}"} if token else {}
    env: dict[str, str] = {}
    block: dict[str, Any] = {"default": model.model}
    if key:
        env[MODEL_KEY_VAR] = key
    if token:
        env[AIG_TOKEN_VAR] = token

    if model.provider == "anthropic":
        url = gateway_url or base_url
        block["provider"] = "anthropic"
        if key:
            env["ANTHROPIC_API_KEY"] = key
        if url:
            block["base_url"] = url
            env["ANTHROPIC_BASE_URL"] = url
        if headers:
            env[HEADERS_VAR] = json.dumps(headers)
        return {"model": block}, env

    if model.provider == "openrouter" and not gateway_url and not base_url:
        block["provider"] = "openrouter"
        if key:
            env["OPENROUTER_API_KEY"] = key
        return {"model": block}, env

    # Everything else speaks the OpenAI wire format to a known URL: Hermes' custom provider.
    default = {"openai": OPENAI_BASE_URL, "openrouter": OPENROUTER_BASE_URL}.get(model.provider, "")
    url = gateway_url or base_url or default  # '' only for custom, which validation refuses
    block.update({"provider": "custom", "api_mode": "chat_completions"})
    if url:
        block["base_url"] = url
    if key:
        block["api_key"] = "${" + MODEL_KEY_VAR + "}"
        if model.provider == "openai":
            env["OPENAI_API_KEY"] = key
    if headers:
        block["default_headers"] = {"cf-aig-authorization": "Bearer ${" + AIG_TOKEN_VAR + "}"}
        env[HEADERS_VAR] = json.dumps(headers)
    return {"model": block}, env


def render_slack(bot: BotConfig) -> tuple[dict[str, Any], dict[str, str]]:
    slack = bot.slack
    if slack is None:
        return {}, {}
    env = {
        "SLACK_BOT_TOKEN": slack.bot_token.get_secret_value(),
        "SLACK_APP_TOKEN": slack.app_token.get_secret_value(),
    }
    if slack.allowed_users:
        env["SLACK_ALLOWED_USERS"] = ",".join(slack.allowed_users)
    if slack.home_channel:
        env["SLACK_HOME_CHANNEL"] = slack.home_channel
    if slack.api_url.rstrip("/") != SLACK_DEFAULT_API_URL.rstrip("/"):
        env[SLACK_API_URL_VAR] = slack.api_url
    block: dict[str, Any] = {
        "require_mention": slack.require_mention,
        "reply_in_thread": slack.reply_in_thread,
        "unauthorized_dm_behavior": "ignore",
    }
    if slack.allowed_channels:
        block["allowed_channels"] = list(slack.allowed_channels)
    return {"slack": block}, env


def toolset_platforms() -> tuple[str, ...]:
    """Every platform Hermes resolves ``platform_toolsets`` for (Slack, the API, cron, the CLI...)."""
    from hermes_cli.platforms import PLATFORMS  # a plain table, no import-time side effects

    return tuple(PLATFORMS)


def render_toolsets(bot: BotConfig) -> dict[str, Any]:
    return {"platform_toolsets": {p: list(bot.toolsets) for p in toolset_platforms()}}


def render_bot_settings(bot: BotConfig, state_dir: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """(config.yaml fragment to deep-merge, .env variables) for a bot's slack, model and toolsets.

    ``state_dir`` is accepted for symmetry with the other renderers; nothing
    here depends on it yet.
    """
    del state_dir
    settings: dict[str, Any] = {}
    env: dict[str, str] = {}
    for frag, more in (render_model(bot.model), render_slack(bot), (render_toolsets(bot), {})):
        settings.update(frag)
        env.update(more)
    return settings, env
