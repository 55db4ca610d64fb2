"""Test only (tests/faults/test_plugin_fail_closed.py): Hermes' cron script runner takes another argument.

On ``PYTHONPATH`` of ``flared up`` (which passes it to supervisord and so to
the gateways), Python imports this in every process there; it acts only in
``hermes gateway run``. The runner still runs scripts, as a later Hermes
release's might, but its signature is not the one the flare plugin checked,
so the plugin cannot wrap it. It can only make the plugin fail, never skip a check.
"""

import sys

if sys.argv[1:3] == ["gateway", "run"]:
    import cron.scheduler as _scheduler

    _original = _scheduler._run_job_script

    def _run_job_script(script_path, timeout=None):  # type: ignore[no-untyped-def]
        return _original(script_path)

    _scheduler._run_job_script = _run_job_script
