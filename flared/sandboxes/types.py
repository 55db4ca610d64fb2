"""What providers and the lease manager share: the command request and result, ids, errors."""

from __future__ import annotations

import re
import secrets
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from flared.config.models import SandboxProfile

TRUNCATION_MARKER = "\n[flare: output truncated]\n"
TIMEOUT_EXIT = 124  # what coreutils' timeout(1) returns; the contract uses it too

# Sandbox SDK ids are DNS labels; flared's lease ids are always of this form.
_ID = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_B32 = "abcdefghijklmnopqrstuvwxyz234567"


class SandboxError(Exception):
    """A sandbox operation failed; the message is fit to show the agent."""


def valid_lease_id(value: str) -> bool:
    return bool(_ID.match(value))


def lease_prefix(group: str) -> str:
    """Ids of one flared deployment group start with this (orphan reconcile lists by it)."""
    return f"fl-{group}-"


def in_group(lease_id: str, group: str) -> bool:
    """Whether a lease id was made by `new_lease_id(group)`: the prefix alone is not enough,
    since group `a`'s prefix `fl-a-` also starts group `a-b`'s ids."""
    prefix = lease_prefix(group)
    tail = lease_id[len(prefix) :]
    return lease_id.startswith(prefix) and len(tail) == 12 and all(c in _B32 for c in tail)


def reconcile_groups(config_groups: set[str], running_group: str | None) -> list[str]:
    """The groups whose sandboxes this flared may destroy as orphans: only its own when it runs
    one group of a fleet (FLARE_GROUP on Cloudflare), else every group of the config."""
    if running_group:
        return [running_group]
    return sorted(config_groups | {"default"})


def new_lease_id(group: str) -> str:
    lease_id = lease_prefix(group) + "".join(secrets.choice(_B32) for _ in range(12))
    if not valid_lease_id(lease_id):  # group names are checked names, so this is a bug
        raise ValueError(f"cannot make a valid sandbox id from group {group!r}")
    return lease_id


@dataclass(frozen=True)
class ExecRequest:
    command: str
    cwd: str
    env: dict[str, str] = field(default_factory=dict)
    stdin: str | None = None
    timeout: float = 120.0
    output_limit: int = 1024**2


@dataclass
class ExecResult:
    exit_code: int
    stdout: str
    stderr: str
    duration_ms: int
    truncated: bool = False
    timed_out: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Provider(Protocol):
    """Where leases live. ``data`` is what :meth:`create` returned, kept in the lease table."""

    name: str
    lazy: bool  # a sandbox exists only once a command ran in it (so absence proves nothing)

    def create(self, lease_id: str, profile: SandboxProfile) -> dict[str, Any]: ...

    def exec(
        self, lease_id: str, data: dict[str, Any], profile: SandboxProfile, req: ExecRequest
    ) -> ExecResult: ...

    def destroy(self, lease_id: str, data: dict[str, Any]) -> None: ...

    def existing(self, prefix: str) -> set[str]:
        """Ids of sandboxes that exist with this prefix (for orphan reconcile)."""
        ...


def cap_output(raw: bytes, limit: int, dropped: int) -> tuple[str, bool]:
    """Decode ``raw`` (already at most ``limit`` bytes) and mark it if ``dropped`` > 0."""
    text = raw.decode("utf-8", errors="replace")
    if dropped > 0:
        return text + TRUNCATION_MARKER, True
    return text, False
