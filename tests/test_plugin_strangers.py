"""The `flare` plugin's strangers feature on Hermes' real adapter classes (the e2e test has the gateway)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from flared.plugin import strangers


@pytest.fixture
def installed() -> Iterator[None]:
    strangers.install()
    yield
    strangers.uninstall()


def make_adapter_class() -> type:
    from gateway.platforms.base import BasePlatformAdapter

    class FakeSlackAdapter(BasePlatformAdapter):  # type: ignore[misc]
        """Only what the guard touches; Hermes' own adapter is exercised in tests/e2e."""

        def __init__(self) -> None:
            self._authorization_check = None
            self.handled: list[str] = []

        async def _handle_slack_message(self, event: dict[str, Any], payload: Any = None) -> None:
            self.handled.append(event["text"])

        connect = disconnect = get_chat_info = send = _handle_slack_message  # abstract in Hermes' base

    return FakeSlackAdapter


def test_strangers_are_dropped_and_others_pass(installed: None) -> None:
    cls = make_adapter_class()
    adapter = cls()
    asyncio.run(adapter._handle_slack_message({"text": "before any check", "user": "U1"}))
    adapter.set_authorization_check(lambda user, chat_type, chat_id: user == "UALICE")
    for event in (
        {"text": "alice", "user": "UALICE", "channel_type": "im", "channel": "D1"},
        {"text": "mallory", "user": "UMALLORY", "channel_type": "im", "channel": "D2"},
        {"text": "a bot", "bot_id": "B1", "user": "UMALLORY"},
        {"text": "no user"},
    ):
        asyncio.run(adapter._handle_slack_message(event))
    assert adapter.handled == ["before any check", "alice", "a bot", "no user"]
    strangers.unpatch(cls)


def test_unknown_answers_let_hermes_decide() -> None:
    class A:
        def _is_sender_authorized(self, *a: Any) -> None:
            return None

    assert not strangers.is_stranger(A(), "U1", "dm", "D1")
    assert not strangers.is_stranger(object(), "U1", "dm", "D1")


def test_hermes_slack_adapter_still_has_every_entry_point() -> None:
    """Fails when a Hermes upgrade renames what the guard wraps (checked against 0.19.0)."""
    from plugins.platforms.slack.adapter import SlackAdapter

    for name in strangers.ENTRY_POINTS:
        assert asyncio.iscoroutinefunction(getattr(SlackAdapter, name)), name
    assert callable(SlackAdapter._is_sender_authorized)


def test_hermes_still_registers_its_slash_commands_through_app_command() -> None:
    """The slash guard wraps slack_bolt's AsyncApp.command, which Hermes 0.19.0's adapter calls."""
    from pathlib import Path

    from plugins.platforms.slack import adapter

    assert "self._app.command(" in Path(adapter.__file__).read_text()
