"""The operator bot: a second Slack app that manages the agent from outside it.

It talks to flared's control API only (never a shell in the Agent
container), so it keeps working while a bot's gateway is down, which is when
it is needed. Modules: :mod:`.commands` (parsing and rendering, pure),
:mod:`.audit` (JSON-lines audit log), :mod:`.core` (what each command does),
:mod:`.app` (slack-bolt over Socket Mode), :mod:`.program` (its supervisord
program).
"""
