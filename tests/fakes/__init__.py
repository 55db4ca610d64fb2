"""Protocol-faithful stand-ins for the outside services the real gateway talks to.

They run on loopback so a real ``hermes gateway run`` process (started by
flared under supervisord) reaches them over TCP exactly as it would reach
Slack or a model provider.
"""
