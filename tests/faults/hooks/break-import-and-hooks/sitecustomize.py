"""Test only (tests/faults/test_plugin_fail_closed.py): no flare plugin, and a Hermes that loads no gateway hooks.

On ``PYTHONPATH`` of ``flared up`` (which passes it to supervisord and so to
the gateways), Python imports this in every process there; it acts only in
``hermes gateway run``: the plugin cannot be imported (hermes-flare missing
from Hermes' Python) and Hermes skips ``<home>/hooks`` (as a release that
moved them might), so flared's ``flare-guard`` hook never runs either. What
is left is flared's own check. It can only make things fail, never skip a check.
"""

import sys

if sys.argv[1:3] == ["gateway", "run"]:

    class _NoFlarePlugin:
        def find_spec(self, name, path=None, target=None):  # type: ignore[no-untyped-def]
            if name == "flared.plugin" or name.startswith("flared.plugin."):
                raise ImportError("hermes-flare is not installed in this Python (test)")
            return None

    sys.meta_path.insert(0, _NoFlarePlugin())

    import gateway.hooks as _hooks

    _hooks.HookRegistry.discover_and_load = lambda self: None
