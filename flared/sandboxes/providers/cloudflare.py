"""The cloudflare provider (placeholder until the HTTP client lands)."""

from __future__ import annotations

from typing import Any

from flared.config import SandboxProfile
from flared.sandboxes.types import ExecRequest, ExecResult, SandboxError


class CloudflareProvider:
    name = "cloudflare"
    lazy = True

    @classmethod
    def from_profile(cls, profile: SandboxProfile) -> CloudflareProvider:
        raise SandboxError("the cloudflare sandbox provider is not available in this build")

    def create(self, lease_id: str, profile: SandboxProfile) -> dict[str, Any]:
        raise SandboxError("the cloudflare sandbox provider is not available in this build")

    def exec(
        self, lease_id: str, data: dict[str, Any], profile: SandboxProfile, req: ExecRequest
    ) -> ExecResult:
        raise SandboxError("the cloudflare sandbox provider is not available in this build")

    def destroy(self, lease_id: str, data: dict[str, Any]) -> None:
        raise SandboxError("the cloudflare sandbox provider is not available in this build")

    def existing(self, prefix: str) -> set[str]:
        return set()
