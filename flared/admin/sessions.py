"""Sign-in for the local admin page, the way notebook servers do it.

`flared up` prints a URL whose fragment carries a one-time link token; the
page trades it (``POST /api/admin/session``) for a session token that it
keeps in ``sessionStorage`` and sends as ``Authorization: Bearer`` on every
request. No cookie is ever set, so another site cannot make the browser act
(no CSRF), and a link that leaked from the terminal's scrollback is worth
nothing once used. Only hashes are kept.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable

LINK_TTL = 24 * 3600.0  # an unused sign-in link expires after a day
SESSION_TTL = 12 * 3600.0  # a signed-in page works for twelve hours
MAX_SESSIONS = 32


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class AdminSessions:
    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._links: dict[str, float] = {}  # digest -> expiry
        self._sessions: dict[str, float] = {}  # digest -> expiry
        self._lock = threading.Lock()

    def add_link(self, token: str, ttl: float = LINK_TTL) -> None:
        """Accept ``token`` once (e.g. the one `flared up` printed before the daemon started)."""
        with self._lock:
            self._links[_digest(token)] = self.clock() + ttl

    def new_link(self) -> str:
        token = secrets.token_urlsafe(24)
        self.add_link(token)
        return token

    def exchange(self, link_token: str) -> str | None:
        """A new session token for a valid unused link token; the link is spent either way."""
        now = self.clock()
        digest = _digest(link_token)
        with self._lock:
            expiry = self._links.pop(digest, None)
            if expiry is None or expiry < now:
                return None
            self._expire(now)
            while len(self._sessions) >= MAX_SESSIONS:  # oldest out
                self._sessions.pop(min(self._sessions, key=self._sessions.__getitem__))
            session = secrets.token_urlsafe(32)
            self._sessions[_digest(session)] = now + SESSION_TTL
            return session

    def valid(self, session_token: str) -> bool:
        if not session_token:
            return False
        digest = _digest(session_token)
        now = self.clock()
        with self._lock:
            expiry = next((e for d, e in self._sessions.items() if hmac.compare_digest(d, digest)), None)
            return expiry is not None and expiry >= now

    def _expire(self, now: float) -> None:
        for table in (self._links, self._sessions):
            for d in [d for d, e in table.items() if e < now]:
                del table[d]
