"""Import a capability module if this build has it.

Capabilities (snapshots, sandboxes, hot reload, cron...) plug in by module
name; a missing module means "not part of this build", while an import error
inside a present module is a real bug and propagates.
"""

from __future__ import annotations

import importlib
from types import ModuleType


def optional_import(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing == name or name.startswith(missing + "."):
            return None
        raise
