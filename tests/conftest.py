"""How the suite is shared out when it runs in parallel (`make test`: `pytest -n 3 --dist loadfile`,
see scripts/test-suites).

Most of the suite's wall time is waiting (gateways starting, polls, timeouts),
so `make test` runs it in several pytest-xdist worker processes. A worker takes
one unit of work at a time; :class:`Scheduling` decides the units:

- By default a unit is a whole test file, as with xdist's ``loadfile``: its
  tests run in order on one worker, and a module-scoped fixture (one
  `flared up`, one `wrangler dev`, a built image) is set up once, as in a
  serial run.
- The files in :data:`SPLIT` are long and their tests independent (only
  function-scoped fixtures, checked at collection): each test is a unit of its
  own, so their slow tests spread over the workers.
- The files (or tests) of one :data:`SHARED` group form a single unit: they
  share something a serial run never had to share (podman image builds).
- :data:`FIRST`: the longest units are handed out first, so no worker starts
  a long one when the others are nearly done.

xdist's own ``loadgroup`` (an ``xdist_group`` mark) cannot be used: it renames
each test's node id, which pytest 9.2 no longer lets a plugin do.

Without ``-n`` (a plain ``pytest``, or one file) none of this applies: tests
run in order, one at a time, as before.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

#: Files whose tests are each a unit of their own (long files of independent tests).
SPLIT: frozenset[str] = frozenset(
    {
        "tests/faults/test_gateways.py",
        "tests/faults/test_host_scripts.py",
        "tests/faults/test_orphans.py",
        "tests/faults/test_plugin_fail_closed.py",
        "tests/faults/test_shutdown.py",
        "tests/faults/test_snapshots.py",
        "tests/faults/test_stream.py",
        "tests/test_gateways.py",
        "tests/test_sandboxes_daemon.py",
        "tests/test_up.py",
    }
)

#: Units made of several files (or of tests of several files).
SHARED: dict[str, tuple[str, ...]] = {
    # podman image builds, one at a time: the Agent image that `agent_image()` builds once per
    # process (scripts/agent-image), and wrangler's own build of the same Dockerfile in the
    # topology test. A build beside another one that replaces the image failed podman's layer
    # cache ("checking if cached image exists ...: layer not known").
    "podman": (
        "tests/test_agent_image.py",
        "tests/test_compose.py",
        "tests/test_topology.py",
        "tests/faults/test_stream.py::test_in_the_image_kill_9_of_the_container_then_a_new_volume_loses_at_most_a_second",
    ),
}

#: Units handed out first, longest first (from `--durations`; the rest follow in file order).
FIRST: tuple[str, ...] = (
    "podman",
    "tests/faults/test_host_scripts.py::test_no_cron_script_runs_on_the_host",
    "tests/faults/test_gateways.py::test_a_hung_gateway_is_reported_named_by_chat_and_restarted",
    "tests/faults/test_sandboxes.py",
    "tests/faults/test_server.py",
    "tests/e2e/test_slack_e2e.py",
    "tests/test_operator.py",
    "tests/faults/test_shutdown.py::test_a_stalled_store_ends_the_final_snapshot_at_its_deadline_and_stop_and_up_exit_1",
    "tests/faults/test_gateways.py::test_port_taken_gateway_is_failed_with_its_error_then_recovers",
    "tests/test_cli_up.py",
)


def unit_of(nodeid: str) -> str:
    """The unit of work a test belongs to (see the module's docstring)."""
    path = nodeid.split("::", 1)[0]
    for name, members in SHARED.items():
        if path in members or nodeid in members:
            return name
    return nodeid if path in SPLIT else path


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadfile` with this module's units, handed out in the order the workers collected
    them (:func:`pytest_collection_modifyitems` puts FIRST first)."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class Scheduling(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return unit_of(nodeid)

    config.option.loadscopereorder = False  # not by the number of tests in a unit: in FIRST's order
    return Scheduling(config, log)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """A worker's temp dir is a ``pytest-NN`` of its own, as a serial run's, not xdist's
    ``<run's basetemp>/popen-gw1``.

    Unix socket paths are limited to 108 bytes, and supervisord binds
    ``<state>/supervisor/supervisor.sock.<pid>``: a test's state dir under
    ``/tmp/pytest-of-root/pytest-NNN/popen-gwN/<test name, 30 chars>0/`` leaves it
    no room. pytest numbers, locks and prunes these dirs across concurrent runs.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    base = config.option.basetemp
    if worker and base and Path(base).name == f"popen-{worker}":
        config.option.basetemp = None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In a worker, put FIRST's units first; refuse a SPLIT file whose tests share a module fixture."""
    for item in items:
        path = item.nodeid.split("::", 1)[0]
        if path not in SPLIT:
            continue
        info = getattr(item, "_fixtureinfo", None)
        shared = [
            name
            for name, defs in (info.name2fixturedefs.items() if info else ())
            if any(d.scope in ("module", "package", "class") for d in defs)
        ]
        if shared:
            raise pytest.UsageError(
                f"{item.nodeid} uses the {shared[0]!r} fixture shared by its module: take {path} "
                "out of SPLIT in tests/conftest.py (its tests must stay on one worker)"
            )
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # Every worker sorts alike (the controller checks that they all collected the same list).
        rank = {name: i for i, name in enumerate(FIRST)}
        items.sort(key=lambda item: rank.get(unit_of(item.nodeid), len(rank)))
