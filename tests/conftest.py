"""How the suite is shared out when it runs in parallel (`make test`: pytest-xdist, `--dist loadgroup`).

Most of the suite's wall time is waiting (gateways starting, polls, timeouts), so
`make test` runs it in several worker processes. xdist hands out "groups": a
test without a group is a unit of its own, any worker may take it. Three rules:

- A module whose tests share a module-scoped fixture (one `flared up`, one
  `wrangler dev`, a built image) stays on one worker: its fixture is set up
  once, as in a serial run, not once per worker.
- The tests named in :data:`SERIAL` run on one worker, one after another:
  they share something machine-wide (podman's images and containers, the
  Cloudflare topology's bridge) or assert a time bound tight enough that they
  should not also compete with each other for the two cores.
- Heavy groups are handed out first (:data:`FIRST`), so no worker starts a
  long one when the others are nearly done.

Without `-n` (a plain `pytest`, or one file) none of this matters: tests run
in order, one at a time, as before.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

#: Group name -> the test files (or node-id prefixes) it holds.
SERIAL: dict[str, tuple[str, ...]] = {
    # podman: image builds, containers, the podman bridge (10.88.0.1 exists only while a
    # container is on it), wrangler's workerd containers. One at a time, as before.
    "podman": (
        "tests/test_topology.py",
        "tests/test_agent_image.py",
        "tests/test_compose.py",
    ),
}

#: Groups (or files) to hand out first: the longest ones, measured with `--durations`.
FIRST: tuple[str, ...] = ("podman",)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """A worker's temp dir is ``<run's basetemp>/gw1``, not xdist's ``.../popen-gw1``.

    Unix socket paths are limited to 108 bytes, and supervisord binds
    ``<state>/supervisor/supervisor.sock.<pid>``: under
    ``/tmp/pytest-of-root/pytest-NN/popen-gwN/<test name, 30 chars>0/state`` it no
    longer fits. Six characters fewer leave the room a serial run has, less four.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    base = config.option.basetemp
    if worker and base and Path(base).name == f"popen-{worker}":
        config.option.basetemp = str(Path(base).with_name(worker))


def _module_scoped(item: pytest.Item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    return any(
        d.scope in ("module", "package", "class") for defs in info.name2fixturedefs.values() for d in defs
    )


def group_of(item: pytest.Item) -> str | None:
    """The xdist group of a test: a SERIAL group, its module's, or None (a unit of its own)."""
    nodeid = item.nodeid
    for name, prefixes in SERIAL.items():
        if any(nodeid == p or nodeid.startswith((f"{p}::", f"{p}[")) for p in prefixes):
            return name
    if _module_scoped(item):
        return nodeid.split("::", 1)[0]
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    groups: dict[pytest.Item, str | None] = {}
    for item in items:
        if any(item.iter_markers("xdist_group")):
            continue  # a test that names its own group keeps it
        group = groups[item] = group_of(item)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return  # a serial run keeps the usual order
    rank = {name: i for i, name in enumerate(FIRST)}

    def key(item: pytest.Item) -> int:
        return rank.get(groups.get(item) or item.nodeid.split("::", 1)[0], len(rank))

    items.sort(key=key)  # stable: within a rank, the usual order
