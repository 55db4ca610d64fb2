"""Point every Slack SDK client in this gateway at the bot's ``slack.api_url``.

Hermes builds its Slack clients itself (``AsyncApp(token=...)``,
``AsyncWebClient(token=...)``, ``AsyncSocketModeHandler(app, app_token)``)
and has no setting for the API URL, so GovSlack, an enterprise proxy or a
test server cannot be reached by configuration alone. flared renders the URL
as ``FLARE_SLACK_API_URL`` in the bot's ``.env``; this feature changes the
*default* ``base_url`` of slack_sdk's client classes, which covers every
client Hermes and slack-bolt create, including the one Socket Mode uses for
``apps.connections.open`` (the websocket URL then comes from that answer).
A caller that passes its own ``base_url`` keeps it.

Not covered: Hermes' out-of-process cron sender (``_standalone_send``) posts
to ``https://slack.com/api/chat.postMessage`` by a literal URL; inside the
gateway, deliveries go through the live adapter, which is covered.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import os
from collections.abc import Callable
from typing import Any

log = logging.getLogger("flared.plugin.slack")

ENV_VAR = "FLARE_SLACK_API_URL"
SLACK_DEFAULT = "https://slack.com/api/"

#: slack_sdk classes whose ``__init__`` takes ``base_url`` (sync, async, legacy).
CLIENT_CLASSES = (
    ("slack_sdk.web.base_client", "BaseClient"),
    ("slack_sdk.web.async_base_client", "AsyncBaseClient"),
    ("slack_sdk.web.legacy_base_client", "LegacyBaseClient"),
)

_state: dict[str, str] = {}
_MARK = "__flare_api_url__"


def current_api_url() -> str | None:
    """The URL applied by :func:`apply_api_url`, if any."""
    return _state.get("url")


def normalize(url: str) -> str:
    url = url.strip()
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"{ENV_VAR} must be an http(s) URL, got {url!r}")
    return url if url.endswith("/") else url + "/"


def _wrap_init(cls: type, original: Callable[..., None]) -> Callable[..., None]:
    sig = inspect.signature(original)
    default = sig.parameters["base_url"].default

    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        url = _state.get("url")
        if url:
            bound = sig.bind_partial(self, *args, **kwargs)
            given = bound.arguments.get("base_url")
            if given is None or given in (default, SLACK_DEFAULT):
                bound.arguments["base_url"] = url
                args, kwargs = tuple(bound.args[1:]), dict(bound.kwargs)
        original(self, *args, **kwargs)

    setattr(__init__, _MARK, original)
    return __init__


def apply_api_url(url: str) -> list[str]:
    """Make ``url`` the default Slack Web API base URL; idempotent. Returns patched class names."""
    _state["url"] = normalize(url)
    patched = []
    for module_name, class_name in CLIENT_CLASSES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        cls = getattr(module, class_name, None)
        if cls is None:
            continue
        init = cls.__dict__.get("__init__")
        if init is None:
            continue
        if not hasattr(init, _MARK):
            cls.__init__ = _wrap_init(cls, init)
        cls.BASE_URL = _state["url"]
        patched.append(f"{module_name}.{class_name}")
    if not patched:
        raise RuntimeError("slack_sdk is not installed: cannot apply the Slack API URL")
    return patched


def remove_api_url() -> None:
    """Undo :func:`apply_api_url` (tests)."""
    _state.pop("url", None)
    for module_name, class_name in CLIENT_CLASSES:
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError):
            continue
        init = cls.__dict__.get("__init__")
        original = getattr(init, _MARK, None)
        if original is not None:
            cls.__init__ = original
        cls.BASE_URL = SLACK_DEFAULT


def install(ctx: Any = None) -> None:
    """Plugin feature entry point: apply ``$FLARE_SLACK_API_URL`` when set."""
    url = os.environ.get(ENV_VAR, "").strip()
    if not url:
        return
    patched = apply_api_url(url)
    log.info("Slack API URL set to %s (%d client classes)", _state["url"], len(patched))
