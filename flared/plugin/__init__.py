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
  host (the ``cronjob`` tool refuses it, the scheduler runs nothing);
- :mod:`flared.plugin.hostpaths`: tools that run on the host (``text_to_speech``,
  ``image_generate``, ``video_generate``, ``video_analyze``) write or read no
  host path the model names outside Hermes' media caches; ``cronjob`` ``workdir``,
  ``kanban_create`` ``workspace_path`` and ``project_create`` ``path`` are
  refused; ``skill_manage`` writes no dot-named file (``scripts/.git/config``).

Fail closed: every feature guards something, so a gateway with one missing
must not run. Hermes catches what ``register`` raises and goes on without the
plugin, so :func:`register` does not raise: when a feature does not install
it logs why, records it, and ends the process with Hermes' fatal-config
status 78 before the gateway serves anything (flared shows the gateway as
failed, with that line). When every feature is in, the gateway's process records
``{"registered": {"pid", "at", "features"}}`` in
``$HERMES_HOME/state/flare-plugin.json``. A plugin that never loads runs
nothing, so flared's ``flare-guard`` gateway hook (:mod:`flared.hermes.guard`)
ends such a gateway, and flared stops one that reports running without that
record for its own run (:mod:`flared.gateways`).

Everything here runs inside a gateway process, with that bot's rights only:
it may import nothing of flared's but :mod:`flared.control.tokens`, and
reaches flared only through the control socket with the bot's token.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import time
from typing import Any, NoReturn

from flared.plugin import cron, hostpaths, model, scripts, slack, strangers, terminal

log = logging.getLogger("flared.plugin")

# The guards of tools and host code first (a feature that fails to install ends the process anyway).
FEATURES = {
    "cron": cron,
    "scripts": scripts,
    "hostpaths": hostpaths,
    "terminal": terminal,
    "slack": slack,
    "strangers": strangers,
    "model": model,
}
REGISTERED: dict[str, Any] = {}


#: Hermes' exit status for a fatal config problem: supervisord does not restart it, flared shows it.
FATAL_CONFIG_EXIT = 78
#: The key of ``state/flare-plugin.json`` that says whether every feature is installed, and in which run.
RECORD = "registered"


def register(ctx: Any) -> None:
    """Install every feature, or end the process (exit 78) when one does not install."""
    REGISTERED["ctx"] = ctx
    for name, module in FEATURES.items():
        try:
            module.install(ctx)
        except Exception as exc:  # Hermes would log it and run on without the guard
            refuse_to_run(name, exc)
        REGISTERED[name] = module
    if is_gateway():
        terminal.record_status(
            {"pid": os.getpid(), "at": time.time(), "features": list(FEATURES)}, key=RECORD
        )
    log.info("flare plugin registered: %s", ", ".join(k for k in REGISTERED if k != "ctx"))


def is_gateway() -> bool:
    """Whether this process is the gateway flared started (its command line is flared's own choice).

    Only the gateway writes the record flared checks: another Hermes process
    on the same home (a CLI, a kanban worker) must not stand in for it.
    """
    return sys.argv[1:3] == ["gateway", "run"]


def refuse_to_run(feature: str, exc: BaseException) -> NoReturn:
    """Say why, where flared and the operator look, and end the process with status 78."""
    message = (
        f"the flare plugin's {feature} feature did not install ({exc}); without it agent "
        "activity could run code or touch files on the host, so this gateway stops "
        f"(exit {FATAL_CONFIG_EXIT}). Install the hermes-agent version this hermes-flare was "
        "checked against, or a hermes-flare that supports this one"
    )
    log.critical("%s", message)
    if is_gateway():
        terminal.record_status(
            {"ok": False, "pid": os.getpid(), "at": time.time(), "error": message}, key=RECORD
        )
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    drain_hermes_log()
    os._exit(FATAL_CONFIG_EXIT)


def drain_hermes_log(timeout: float = 2.0) -> None:
    """Let Hermes write what is queued for agent.log before a hard exit.

    Hermes' file handlers sit behind a queue that a thread of its own empties
    (``hermes_logging``); flushing the root logger's handlers does not wait for
    it, and ``os._exit`` ends that thread: the line saying why the gateway
    stops could be lost on a busy machine. Bounded, as Hermes' own hard exits are.
    """
    with contextlib.suppress(Exception):
        importlib.import_module("hermes_logging").drain_log_queue(timeout=timeout)
