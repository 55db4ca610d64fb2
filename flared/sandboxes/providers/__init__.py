"""Sandbox providers: ``local`` (bubblewrap) and ``cloudflare`` (the Worker's Exec containers).

:func:`make_provider` builds the provider a profile names; the lease manager
keeps one per :func:`provider_key`, so profiles that point at the same place
share it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from flared.config.models import SandboxProfile
from flared.sandboxes.types import Provider


def provider_key(profile: SandboxProfile) -> str:
    if profile.provider == "local":
        return "local"
    token = profile.token.get_secret_value() if profile.token else os.environ.get("FLARE_CONTROL_TOKEN", "")
    return f"cloudflare:{profile.endpoint}:{hashlib.sha256(token.encode()).hexdigest()[:12]}"


def make_provider(profile: SandboxProfile, state_dir: Path) -> Provider:
    if profile.provider == "local":
        from flared.sandboxes.providers.local import LocalProvider, drop_legacy_leases, sandbox_root

        root = sandbox_root(state_dir)
        provider = LocalProvider(root, hidden=[state_dir])
        drop_legacy_leases(state_dir, root)
        return provider
    from flared.sandboxes.providers.cloudflare import CloudflareProvider

    return CloudflareProvider.from_profile(profile)
