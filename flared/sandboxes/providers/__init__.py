"""Sandbox providers: ``local`` (bubblewrap) and ``cloudflare`` (the Worker's Exec containers)."""
