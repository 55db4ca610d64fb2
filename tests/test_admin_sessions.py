"""Local admin sign-in: a link token works once, a session works until it expires."""

from __future__ import annotations

from flared.admin.sessions import LINK_TTL, SESSION_TTL, AdminSessions


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_link_token_is_spent_on_first_use() -> None:
    s = AdminSessions()
    link = s.new_link()
    session = s.exchange(link)
    assert session and s.valid(session)
    assert s.exchange(link) is None  # a second browser (or a leaked scrollback) gets nothing


def test_unknown_and_expired_tokens_are_refused() -> None:
    clock = Clock()
    s = AdminSessions(clock=clock)
    assert s.exchange("made-up") is None
    assert not s.valid("made-up") and not s.valid("")
    link = s.new_link()
    clock.now += LINK_TTL + 1
    assert s.exchange(link) is None
    session = s.exchange(s.new_link())
    assert session is not None
    clock.now += SESSION_TTL + 1
    assert not s.valid(session)


def test_a_printed_link_token_can_be_registered() -> None:
    s = AdminSessions()
    s.add_link("printed-by-flared-up")
    assert s.exchange("printed-by-flared-up") is not None
