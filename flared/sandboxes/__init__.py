"""Exec sandboxes: leased places where the agent's commands run, never next to its secrets.

:mod:`flared.sandboxes.manager` hands out leases (shared, per-session or
per-command) and runs commands in them; :mod:`flared.sandboxes.leases` keeps
them in a SQLite table in the state dir; providers in
:mod:`flared.sandboxes.providers` do the isolation (bubblewrap locally, the
Worker's Exec containers on Cloudflare). Must never pass a secret of flared
or of a bot into a sandbox, nor read a bot's Hermes home.
"""
