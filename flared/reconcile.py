"""Pure reconcile: desired programs + what supervisord has -> the actions to take.

No I/O here, so every case is a unit test. :mod:`flared.supervisor` applies
the actions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MANAGED_PREFIXES = ("gateway-", "operator", "litestream")
#: Programs added before the others in one plan: Litestream watches a restored home before
#: its gateway writes to it.
FIRST = ("litestream",)


@dataclass(frozen=True)
class Observed:
    """What exists now: program files flared wrote, and groups supervisord runs."""

    files: dict[str, str]  # program name -> conf text on disk
    groups: frozenset[str]  # process groups loaded in supervisord
    stopped: frozenset[str] = frozenset()  # loaded groups in a terminal state (FATAL/EXITED/STOPPED)
    processes: tuple[Any, ...] = ()  # supervisord's process infos, for callers that also track pids


@dataclass(frozen=True)
class WriteProgram:
    name: str
    text: str


@dataclass(frozen=True)
class DeleteProgram:
    name: str


@dataclass(frozen=True)
class AddGroup:
    name: str


@dataclass(frozen=True)
class RemoveGroup:
    """Stop the group's processes (SIGINT for gateways) and unload it."""

    name: str


@dataclass(frozen=True)
class StartGroup:
    name: str


Action = WriteProgram | DeleteProgram | AddGroup | RemoveGroup | StartGroup


def managed(name: str) -> bool:
    return name.startswith(MANAGED_PREFIXES)


def plan(desired: dict[str, str], observed: Observed, *, restart_stopped: bool = False) -> list[Action]:
    """Actions that make supervisord run exactly ``desired`` (name -> conf text).

    A changed conf means remove + re-add, which restarts only that program.
    Programs flared does not manage are never touched. With
    ``restart_stopped``, loaded programs that gave up (FATAL) are started again.
    """
    actions: list[Action] = []
    for name in sorted(desired, key=lambda n: (n not in FIRST, n)):
        text = desired[name]
        changed = observed.files.get(name) != text
        loaded = name in observed.groups
        if changed:
            actions.append(WriteProgram(name, text))
            if loaded:
                actions.append(RemoveGroup(name))
            actions.append(AddGroup(name))
        elif not loaded:
            actions.append(AddGroup(name))
        elif restart_stopped and name in observed.stopped:
            actions.append(StartGroup(name))
    for name in sorted((set(observed.files) | set(observed.groups)) - set(desired)):
        if not managed(name):
            continue
        if name in observed.groups:
            actions.append(RemoveGroup(name))
        if name in observed.files:
            actions.append(DeleteProgram(name))
    return actions
