"""A Slack user who may not talk to the bot gets nothing at all.

Hermes 0.19.0 checks ``allowed_users`` in the gateway runner, after its Slack
adapter has already shown work on the message: the assistant thread title
(the stranger's own text), a 👀 reaction swapped for ✅, and the "is
thinking…" status. Its adapter has the same check at hand
(``_is_sender_authorized``, which the runner wires to its full rules:
allow-list, pairing store, allow-all), so this feature asks it first, in the
adapter's entry points, and drops the event when the answer is *no*: no
reaction, no status, no title, no suggested prompts, no slash-command
answer (its acknowledgement is empty), no agent turn. An answer of *unknown* (no check registered yet)
lets the event through to Hermes' own handling.

Checked against hermes-agent 0.19.0 (:data:`ENTRY_POINTS`); when a name is
missing, :func:`install` logs it and installs nothing for it, and Hermes'
own (later) check still keeps the stranger from the agent.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("flared.plugin.strangers")

BASE_MODULE = "gateway.platforms.base"
SLACK_METHOD = "_handle_slack_message"  # what marks an adapter class as Slack's
_MARK = "__flare_strangers__"


def _message_sender(event: dict[str, Any]) -> tuple[str, str, str]:
    """(user, chat type, channel) of a message event; bots' messages have no user here."""
    if event.get("bot_id") or event.get("subtype") == "bot_message":
        return "", "", ""
    channel_type = str(event.get("channel_type") or "")
    chat_type = "dm" if channel_type == "im" else "group"
    return str(event.get("user") or ""), chat_type, str(event.get("channel") or "")


def _lifecycle_sender(event: dict[str, Any]) -> tuple[str, str, str]:
    thread = event.get("assistant_thread") or {}
    user = thread.get("user_id") or event.get("user") or event.get("user_id") or ""
    channel = thread.get("channel_id") or event.get("channel") or event.get("channel_id") or ""
    return str(user), "dm", str(channel)


def _file_sender(event: dict[str, Any]) -> tuple[str, str, str]:
    channel = str(event.get("channel_id") or event.get("channel") or "")
    return (
        str(event.get("user_id") or event.get("user") or ""),
        "dm" if channel.startswith("D") else "group",
        channel,
    )


def _slash_sender(command: dict[str, Any]) -> tuple[str, str, str]:
    channel = str(command.get("channel_id") or "")
    return str(command.get("user_id") or ""), "dm" if channel.startswith("D") else "group", channel


#: Adapter method -> how to find who sent its first argument.
ENTRY_POINTS: dict[str, Callable[[dict[str, Any]], tuple[str, str, str]]] = {
    "_handle_slack_message": _message_sender,
    "_handle_assistant_thread_lifecycle_event": _lifecycle_sender,
    "_handle_app_home_opened": _lifecycle_sender,
    "_handle_slack_file_shared": _file_sender,
    "_handle_slash_command": _slash_sender,
}


def is_stranger(adapter: Any, user: str, chat_type: str, channel: str) -> bool:
    """True only when the adapter's own check says *no* for this user."""
    if not user:
        return False
    check = getattr(adapter, "_is_sender_authorized", None)
    if check is None:
        return False
    return check(user, chat_type, channel) is False


def _guard(
    name: str,
    original: Callable[..., Awaitable[Any]],
    sender: Callable[[dict[str, Any]], tuple[str, str, str]],
) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(original)
    async def guarded(self: Any, event: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(event, dict):
            user, chat_type, channel = sender(event)
            if is_stranger(self, user, chat_type, channel):
                log.info("ignoring Slack %s from %s: not in allowed_users", name.strip("_"), user)
                return None
        return await original(self, event, *args, **kwargs)

    setattr(guarded, _MARK, original)
    return guarded


def patch(cls: type) -> list[str]:
    """Guard each entry point of ``cls`` (idempotent); returns the names guarded."""
    done = []
    for name, sender in ENTRY_POINTS.items():
        method = cls.__dict__.get(name)
        if method is None:
            log.warning("Slack adapter has no %s: strangers may see signs of work there", name)
            continue
        if not hasattr(method, _MARK):
            setattr(cls, name, _guard(name, method, sender))
        done.append(name)
    return done


def unpatch(cls: type) -> None:
    """Undo :func:`patch` (tests)."""
    for name in ENTRY_POINTS:
        original = getattr(cls.__dict__.get(name), _MARK, None)
        if original is not None:
            setattr(cls, name, original)


_ADAPTERS: weakref.WeakSet[Any] = weakref.WeakSet()  # Slack adapters seen, to find an app's adapter


def _guard_slash_listener(app: Any, listener: Callable[..., Any]) -> Callable[..., Any]:
    """A slash-command listener that acks a stranger with nothing and stops.

    Hermes' listener acks first with "Running `/hermes`…", which Slack shows
    the stranger; bolt injects arguments by the names of the wrapped
    function, so the wrapper takes them as keywords.
    """

    @functools.wraps(listener)
    async def guarded(**kwargs: Any) -> Any:
        command = kwargs.get("command") or kwargs.get("body") or {}
        adapter = next((a for a in list(_ADAPTERS) if getattr(a, "_app", None) is app), None)
        if adapter is not None and isinstance(command, dict):
            user, chat_type, channel = _slash_sender(command)
            if is_stranger(adapter, user, chat_type, channel) and "ack" in kwargs:
                log.info("ignoring Slack slash command from %s: not in allowed_users", user)
                await kwargs["ack"]()
                return None
        result = listener(**kwargs)
        return await result if inspect.isawaitable(result) else result

    return guarded


def _patch_bolt() -> None:
    try:
        bolt = importlib.import_module("slack_bolt.app.async_app")
    except ImportError:
        return
    cls = bolt.AsyncApp
    current = cls.__dict__["command"]
    if hasattr(current, _MARK):
        return

    @functools.wraps(current)
    def command(self: Any, *args: Any, **kwargs: Any) -> Any:
        register = current(self, *args, **kwargs)

        def wrapped_register(*functions: Any, **named: Any) -> Any:
            return register(*(_guard_slash_listener(self, f) for f in functions), **named)

        return wrapped_register

    setattr(command, _MARK, current)
    cls.command = command


def install(ctx: Any = None) -> None:
    """Plugin feature entry point: guard every Slack adapter when the runner wires its auth check.

    Hermes loads its Slack platform plugin under a name of its own choosing
    (``hermes_plugins.platforms__slack``), possibly after this plugin, so the
    class is found where it is certain to exist: the runner calls
    ``set_authorization_check`` on each adapter before it connects.
    """
    base = importlib.import_module(BASE_MODULE).BasePlatformAdapter
    current = base.__dict__["set_authorization_check"]
    if hasattr(current, _MARK):
        return

    @functools.wraps(current)
    def set_authorization_check(self: Any, callback: Any) -> None:
        current(self, callback)
        cls = type(self)
        if SLACK_METHOD in dir(cls):
            _ADAPTERS.add(self)
            if not hasattr(getattr(cls, SLACK_METHOD), _MARK):
                log.info("Slack strangers get nothing: guarded %s", ", ".join(patch(_defining(cls))))

    setattr(set_authorization_check, _MARK, current)
    base.set_authorization_check = set_authorization_check
    _patch_bolt()


def uninstall() -> None:
    """Undo :func:`install` (tests)."""
    base = importlib.import_module(BASE_MODULE).BasePlatformAdapter
    original = getattr(base.__dict__["set_authorization_check"], _MARK, None)
    if original is not None:
        base.set_authorization_check = original
    with contextlib.suppress(ImportError):
        cls = importlib.import_module("slack_bolt.app.async_app").AsyncApp
        original = getattr(cls.__dict__["command"], _MARK, None)
        if original is not None:
            cls.command = original


def _defining(cls: type) -> type:
    """The class in ``cls``'s MRO that defines the Slack entry points (a subclass may not)."""
    for klass in cls.__mro__:
        if SLACK_METHOD in klass.__dict__:
            return klass
    return cls
