"""The `flare` Hermes plugin, loaded by every gateway flared starts.

Hermes finds it through the ``hermes_agent.plugins`` entry point and calls
:func:`register` when ``plugins.enabled`` lists ``flare``. Each feature lives
in its own module with an ``install(ctx)`` function:

- :mod:`flared.plugin.terminal`: the fail-closed terminal backend that sends
  every command to a flared sandbox lease;
- :mod:`flared.plugin.slack`: applies ``slack.api_url`` to the Slack SDK;
- :mod:`flared.plugin.strangers`: a Slack user not in ``allowed_users`` sees
  no sign of work (no reaction, status or title);
- :mod:`flared.plugin.model`: model-provider headers the YAML asks for;
- :mod:`flared.plugin.cron`: a cron job's own ``enabled_toolsets`` may narrow
  the bot's toolsets, never widen them;
- :mod:`flared.plugin.scripts`: a cron job's ``script`` never runs on the
  host (the ``cronjob`` tool refuses it, the scheduler runs nothing).

Everything here runs inside a gateway process, with that bot's rights only:
it may import nothing of flared's but :mod:`flared.control.tokens`, and
reaches flared only through the control socket with the bot's token.
"""

from __future__ import annotations

import logging
from typing import Any

from flared.plugin import cron, model, scripts, slack, strangers, terminal

log = logging.getLogger("flared.plugin")

# cron and scripts first: a feature that fails to install stops the ones after it, and these guard
# tools and host code.
FEATURES = {
    "cron": cron,
    "scripts": scripts,
    "terminal": terminal,
    "slack": slack,
    "strangers": strangers,
    "model": model,
}
REGISTERED: dict[str, Any] = {}


def register(ctx: Any) -> None:
    """Install every feature; a feature that fails to install fails loudly."""
    REGISTERED["ctx"] = ctx
    for name, module in FEATURES.items():
        module.install(ctx)
        REGISTERED[name] = module
    log.info("flare plugin registered: %s", ", ".join(k for k in REGISTERED if k != "ctx"))
