"""The operator's Slack side: slack-bolt over Socket Mode, DMs and `/flare`, confirm buttons."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from slack_bolt import App
from slack_bolt.adapter.socket_mode import SocketModeHandler
from slack_sdk import WebClient

from flared.config.loader import LoadedConfig
from flared.control.client import ControlClient
from flared.operator.audit import AuditLog, audit_path
from flared.operator.core import Operator, Reply

log = logging.getLogger("flared.operator")

CONFIRM, CANCEL = "flare_confirm", "flare_cancel"


def confirm_blocks(text: str, token: str) -> list[dict[str, Any]]:
    return [
        {"type": "section", "text": {"type": "mrkdwn", "text": text}},
        {
            "type": "actions",
            "elements": [
                {
                    "type": "button",
                    "action_id": CONFIRM,
                    "style": "danger",
                    "text": {"type": "plain_text", "text": "Confirm"},
                    "value": token,
                },
                {
                    "type": "button",
                    "action_id": CANCEL,
                    "text": {"type": "plain_text", "text": "Cancel"},
                    "value": token,
                },
            ],
        },
    ]


def post_replies(
    client: WebClient,
    channel: str,
    thread_ts: str | None,
    replies: Iterator[Reply],
    prompt_ts: str | None = None,
) -> None:
    """Post each reply in the same thread: progress first, then the result.

    A reply that settles a confirmation replaces the prompt (``prompt_ts``),
    so its buttons are gone once pressed.
    """
    for reply in replies:
        if reply.replaces_prompt and prompt_ts:
            section = {"type": "section", "text": {"type": "mrkdwn", "text": reply.text}}
            client.chat_update(channel=channel, ts=prompt_ts, text=reply.text, blocks=[section])
            continue
        if reply.file is not None:
            name, content = reply.file
            client.files_upload_v2(
                channel=channel,
                thread_ts=thread_ts,
                filename=name,
                content=content,
                initial_comment=reply.text,
            )
            continue
        kwargs: dict[str, Any] = {"channel": channel, "text": reply.text}
        if thread_ts:
            kwargs["thread_ts"] = thread_ts
        if reply.confirm_token:
            kwargs["blocks"] = confirm_blocks(reply.text, reply.confirm_token)
        resp = client.chat_postMessage(**kwargs)
        thread_ts = thread_ts or resp.get("ts")


def build(loaded: LoadedConfig) -> tuple[App, str]:
    """The bolt app and its app token; the caller starts Socket Mode."""
    cfg = loaded.config.operator
    if cfg is None:
        raise ValueError("no `operator:` section in the config")
    bot_token = cfg.slack.bot_token.get_secret_value()
    api_url = cfg.slack.api_url if cfg.slack.api_url.endswith("/") else cfg.slack.api_url + "/"
    web = WebClient(token=bot_token, base_url=api_url)
    # Ack first, work after: Slack redelivers an event not acked within 3 s, and a
    # snapshot or restore takes longer (a redelivered `snapshot` would run twice).
    app = App(client=web, token=bot_token, process_before_response=False)
    op = Operator(
        ControlClient.for_config(loaded),
        AuditLog(audit_path(loaded.state_dir), loaded.config),
        cfg.allowed_users,
        list(cfg.confirm),
    )

    @app.event("message")
    def on_message(event: dict[str, Any], client: WebClient) -> None:
        if event.get("bot_id") or event.get("subtype") or event.get("channel_type") != "im":
            return  # our own posts, edits, joins; only DMs are commands
        thread = event.get("thread_ts") or event.get("ts")
        post_replies(
            client, event["channel"], thread, op.handle(event.get("user", ""), event.get("text", ""))
        )

    @app.event("app_mention")
    def on_mention(event: dict[str, Any], client: WebClient) -> None:
        thread = event.get("thread_ts") or event.get("ts")
        post_replies(
            client, event["channel"], thread, op.handle(event.get("user", ""), event.get("text", ""))
        )

    @app.command("/flare")
    def on_command(ack: Any, command: dict[str, Any], client: WebClient) -> None:
        # Answers go to the caller's DM with the operator: it may not be a member
        # of the channel the command came from, and logs and config stay private.
        user = command["user_id"]
        dm = client.conversations_open(users=user)["channel"]["id"]
        if command.get("channel_id") == dm:
            ack()
        else:
            ack(text="I answer in our DM.")
        post_replies(client, dm, None, op.handle(user, command.get("text", "")))

    def on_button(approve: bool) -> Any:
        def handler(ack: Any, body: dict[str, Any], client: WebClient) -> None:
            ack()
            container = body.get("container") or {}
            message = body.get("message") or {}
            channel = (body.get("channel") or {}).get("id") or container["channel_id"]
            prompt = message.get("ts") or container.get("message_ts")
            thread = message.get("thread_ts") or prompt
            token = body["actions"][0].get("value", "")
            post_replies(client, channel, thread, op.decide(body["user"]["id"], token, approve), prompt)

        return handler

    app.action(CONFIRM)(on_button(True))
    app.action(CANCEL)(on_button(False))
    return app, cfg.slack.app_token.get_secret_value()


def run(loaded: LoadedConfig) -> int:
    app, app_token = build(loaded)
    log.info("operator bot connecting to Slack (Socket Mode)")
    SocketModeHandler(app, app_token).start()  # type: ignore[no-untyped-call]
    return 0
