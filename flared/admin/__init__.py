"""The admin page: one static page (static/) over the control API, served by flared on
127.0.0.1 locally and by the Worker at /admin on Cloudflare.

Owns the page, its local listener and sign-in (one-time link tokens exchanged
for session tokens). Must not add API behaviour of its own: the page calls
the same routes as the CLI and the Worker, through :mod:`flared.api`.
"""
