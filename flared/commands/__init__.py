"""CLI command modules; each has ``register(subparsers)``."""

COMMAND_MODULES: list[str] = [
    "core",
    "snapshots",
    "sandboxes",
    "chat",
    "operator",
]
