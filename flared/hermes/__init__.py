"""A bot's Hermes home: where it lives, what flared renders into it, Hermes' cron store.

Owns the files flared writes for Hermes (`config.yaml`, `.env`) and reading
Hermes' own liveness signals. Must not start or stop anything: gateways are
run by :mod:`flared.gateways` through supervisord.
"""
