"""Run an aiohttp application on loopback in a background thread.

Tests are synchronous and the processes under test are separate, so each fake
owns an event loop in a daemon thread; helpers that touch server state from
the test thread go through :meth:`BackgroundServer.call`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web

T = TypeVar("T")


class BackgroundServer:
    """An aiohttp app served on ``127.0.0.1:<port>`` from its own thread."""

    def __init__(self, app: web.Application, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, name="fake-server", daemon=True)
        self._started = False

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        if self._started:
            return
        self._thread.start()
        self.call(self._start())
        self._started = True

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1]

    def call(self, coro: Awaitable[T], timeout: float = 30.0) -> T:
        """Run a coroutine on the server loop and wait for its result."""
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]
        return fut.result(timeout)

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        self.loop.call_soon_threadsafe(fn, *args)

    def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        try:
            if self._runner is not None:
                self.call(self._runner.cleanup(), timeout=10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
            self.loop.close()
