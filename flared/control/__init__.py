"""flared's control API as a protocol: the HTTP server (unix socket, and TCP for the Worker),
the client the CLI and operator use, finding the daemon's socket, and per-bot tokens.

A leaf below the services: it imports only :mod:`flared.config`. What the
API does is :mod:`flared.api`, which hands requests to the services.
"""
