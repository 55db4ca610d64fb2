"""Live policy: applying an edited config, watching the file, and cron.

Owns *when* things happen after boot (reloads, scheduled jobs) and drives
the other services through their public methods. Must not render Hermes
homes or talk to supervisord or the store directly.
"""
