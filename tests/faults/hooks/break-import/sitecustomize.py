"""Test only (tests/faults/test_plugin_fail_closed.py): the flare plugin cannot be imported in a gateway.

On ``PYTHONPATH`` of ``flared up`` (which passes it to supervisord and so to
the gateways), Python imports this in every process there; it acts only in
``hermes gateway run``, as if hermes-flare were not installed in the Python
that runs Hermes. It can only make the plugin fail, never skip a check.
"""

import sys

if sys.argv[1:3] == ["gateway", "run"]:

    class _NoFlarePlugin:
        def find_spec(self, name, path=None, target=None):  # type: ignore[no-untyped-def]
            if name == "flared.plugin" or name.startswith("flared.plugin."):
                raise ImportError("hermes-flare is not installed in this Python (test)")
            return None

    sys.meta_path.insert(0, _NoFlarePlugin())
