"""Litestream: each bot's SQLite databases streamed to the store within about a second.

Owns Litestream's config (rendered from the YAML), its supervisord program,
reading its control socket, and `litestream restore` into a staging dir. It
never touches the snapshots' pointer or blobs: the fence and the restore
order are :mod:`flared.snapshots`' (which calls in here), and which bots are
streamed is :mod:`flared.gateways`' decision.
"""
