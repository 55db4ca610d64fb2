"""Exec sandboxes: leased places where the agent's commands run, never next to its secrets.

:mod:`flared.sandboxes.manager` hands out leases (shared, per-session or
per-command) and keeps them in a SQLite table in the state dir; providers in
:mod:`flared.sandboxes.providers` do the isolation (bubblewrap locally, the
Worker's Exec containers on Cloudflare).
"""
