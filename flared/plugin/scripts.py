"""No agent-reachable script runs on the host: cron ``script`` jobs and skills' inline shell.

Hermes 0.19 lets a cron job carry a ``script`` (under ``<HERMES_HOME>/scripts/``):
a pre-run data script whose stdout goes into the prompt, or, with
``no_agent``, the whole job. ``cron.scheduler._run_job_script`` runs it with
``subprocess.run`` inside the gateway, that is on the host next to the bot's
``.env``, not in a sandbox; and the agent makes such jobs itself with its
``cronjob`` tool. Today no tool of the agent can put a file in that
directory (its file, terminal and ``execute_code`` tools work in the
sandbox), but any file that lands there would become agent-chosen host code,
and there is no safe way to tell an operator's script from one that got
there otherwise. hermes-flare's periodic commands are flared's own
``action: exec`` cron jobs, which run in the bot's sandbox.

So this feature refuses both ways in:

- the ``cronjob`` tool refuses ``script`` (its path validator always
  answers with the refusal), so the agent learns at once;
- the scheduler's script runner is replaced by one that runs nothing and
  returns the refusal as the script's error, for jobs that reach the store
  otherwise (``hermes cron``, a restore, a hand edit). Hermes then reports it
  as it reports a failed script: a ``no_agent`` job fails with it, a pre-run
  job's agent is told (``## Script Error``). The gateway log names the script.

Skills' inline shell is the same hole one step shorter: with
``skills.inline_shell`` on, Hermes runs each ``!`cmd``` of a skill with
``bash -c`` in the gateway whenever the skill is viewed or invoked
(``agent.skill_preprocessing.run_inline_shell``), and the agent writes
skills on the host with ``skill_manage``. The snippet runner is replaced by
one that runs nothing and leaves a marker in the skill's text, whatever the
config says.

Every name is looked up by Hermes at call time, so the wrappers take effect
for every later call; :func:`install` fails loudly if Hermes moved them.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("flared.plugin.scripts")

SCHEDULER, RUNNER = "cron.scheduler", "_run_job_script"
TOOL, VALIDATOR = "tools.cronjob_tools", "_validate_cron_script_path"
SKILLS, INLINE = "agent.skill_preprocessing", "run_inline_shell"
REFUSED = "cron scripts do not run on the host"
INLINE_REFUSED = "a skill's inline shell does not run on the host"
_MARK = "__flare_no_host_scripts__"


def refusal(script: str) -> str:
    """What the agent, the job's output and the gateway log are told about ``script``."""
    return (
        f"{REFUSED}: {script} was not run. hermes-flare runs commands only in the bot's "
        "sandbox: put the work in the job's prompt (the agent runs it in its sandbox), or "
        "ask the operator for a flared cron job with `action: exec` (docs/cron.md)"
    )


def refuse_runs(original: Callable[..., Any]) -> Callable[[str], tuple[bool, str]]:
    """A stand-in for the scheduler's script runner that runs nothing."""

    @functools.wraps(original)
    def run(script_path: str) -> tuple[bool, str]:
        message = refusal(str(script_path))
        log.warning("%s", message)
        return False, message

    setattr(run, _MARK, original)
    return run


def refuse_scripts(original: Callable[..., Any]) -> Callable[[str | None], str | None]:
    """The ``cronjob`` tool's path check, refusing every script (clearing one stays allowed)."""

    @functools.wraps(original)
    def validate(script: str | None) -> str | None:
        if not script or not str(script).strip():
            return None
        message = refusal(str(script).strip())
        log.warning("cronjob tool: %s", message)
        return message

    setattr(validate, _MARK, original)
    return validate


def refuse_inline(original: Callable[..., Any]) -> Callable[..., str]:
    """A stand-in for the skill snippet runner that runs nothing; the skill's text says so."""

    @functools.wraps(original)
    def run(command: str, cwd: Any, timeout: int) -> str:
        del timeout
        log.warning("%s: %r (skill in %s) was not run", INLINE_REFUSED, command, cwd)
        return f"[{INLINE_REFUSED}: this snippet was not run; run it in the sandbox with the terminal tool]"

    setattr(run, _MARK, original)
    return run


def _wrap(module_name: str, attr: str, params: list[str], wrapper: Callable[..., Any]) -> None:
    module = importlib.import_module(module_name)
    current = getattr(module, attr)
    if getattr(current, _MARK, None) is not None:
        return
    found = list(inspect.signature(current).parameters)
    if found != params:
        raise RuntimeError(
            f"{module_name}.{attr} takes {found}, not {params} as in the Hermes version this "
            "plugin was checked against: it could run code on the host; not loading"
        )
    setattr(module, attr, wrapper(current))


def install(ctx: Any) -> None:
    """Refuse cron scripts in the tool and in the scheduler, and skills' inline shell; idempotent."""
    del ctx
    _wrap(SCHEDULER, RUNNER, ["script_path"], refuse_runs)
    _wrap(TOOL, VALIDATOR, ["script"], refuse_scripts)
    _wrap(SKILLS, INLINE, ["command", "cwd", "timeout"], refuse_inline)
