"""A gateway hook flared writes into every Hermes home: the gateway ends if the flare plugin did not load.

The ``flare`` plugin ends a gateway itself when one of its features does
not install, but a plugin that never loads (hermes-flare missing from
Hermes' Python, an import error) runs no code at all. Hermes 0.19 loads a
home's gateway hooks (``<home>/hooks/*/handler.py``, ``gateway/hooks.py``)
after its plugins and before it serves anything or starts its cron ticker,
so this hook's ``handler.py`` checks, as Hermes imports it, that the
plugin registered every feature in this process; if not, it records why
where flared looks (``state/flare-plugin.json``) and exits 78 (fatal config).

It needs nothing of flared's (which may be what is missing). flared's own
check in :mod:`flared.gateways` (a gateway running without the plugin's
record is stopped) stays behind it, for a Hermes that no longer loads hooks.
"""

from __future__ import annotations

from pathlib import Path

NAME = "flare-guard"

MANIFEST = """\
# Written by flared (flared/hermes/guard.py) at every render; edits are replaced.
name: flare-guard
description: "Ends the gateway (exit 78) when the flare plugin did not load: nothing runs unguarded."
events: ["gateway:startup"]
"""

HANDLER = '''\
"""Written by flared (flared/hermes/guard.py) at every render; edits are replaced.

Hermes imports this after it loaded its plugins and before it serves
anything: without every feature of the flare plugin installed in this
process, the gateway ends with exit 78 and says why.
"""

import json
import os
import sys
import time
from pathlib import Path

EXIT = 78


def _check():
    plugin = sys.modules.get("flared.plugin")
    features = getattr(plugin, "FEATURES", None) or {}
    registered = getattr(plugin, "REGISTERED", None) or {}
    missing = [name for name in features if name not in registered]
    if plugin is not None and features and not missing:
        return
    why = "it did not load" if plugin is None else "these features are not installed: " + ", ".join(missing)
    message = (
        "the flare plugin is not working in this gateway (" + why + "); without it agent activity "
        "could run code or touch files on the host, so this gateway stops (exit 78). Check that "
        "hermes-flare is installed in the Python that runs `hermes`"
    )
    print("CRITICAL flare-guard: " + message, file=sys.stderr, flush=True)
    home = os.environ.get("HERMES_HOME")
    if home:
        path = Path(home) / "state" / "flare-plugin.json"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                data = {}
            if not isinstance(data, dict):
                data = {}
            data["registered"] = {"ok": False, "pid": os.getpid(), "at": time.time(), "error": message}
            tmp = path.with_suffix(".tmp%d" % os.getpid())
            tmp.write_text(json.dumps(data, indent=2) + "\\n")
            os.replace(tmp, path)
        except OSError:
            pass
    os._exit(EXIT)


_check()


async def handle(event_type, context):
    """Nothing to do at an event: the check ran when the hook was loaded."""
    return None
'''


def files() -> dict[str, str]:
    """The hook's files, by name within ``<home>/hooks/flare-guard/``."""
    return {"HOOK.yaml": MANIFEST, "handler.py": HANDLER}


def hook_dir(home: Path) -> Path:
    return home / "hooks" / NAME
