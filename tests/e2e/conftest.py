"""Fixtures of the end-to-end suite (see :mod:`tests.e2e.harness`)."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import BOTS, S3_FIXTURE, World, bot_entry, model_name
from tests.fakes.llm_server import FakeLLM
from tests.fakes.slack_server import FakeSlack
from tests.fixtures.flare import FlareUp

#: Periodic snapshots in the shared instance: short, so scenario 3 sees one without a command.
SNAPSHOT_EVERY = "2s"


@pytest.fixture(scope="session")
def fake_slack() -> Iterator[FakeSlack]:
    with FakeSlack(ack_timeout=10) as slack:
        yield slack


@pytest.fixture(scope="session")
def fake_llm() -> Iterator[FakeLLM]:
    with FakeLLM(models=tuple(model_name(b) for b in BOTS)) as server:
        yield server


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The snapshot store: S3 protocol (moto server on loopback) when the fixture exists."""
    if S3_FIXTURE:
        from tests.fixtures import s3server

        store_config = getattr(s3server, "store_config", None)
        if store_config is not None:
            with store_config() as section:
                yield section
            return
        warnings.warn("tests.fixtures.s3server has no store_config(): e2e uses a file:// store", stacklevel=1)
    yield {"url": f"file://{tmp_path_factory.mktemp('store')}"}


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, fake_slack: FakeSlack, fake_llm: FakeLLM, store: dict[str, Any]
) -> Iterator[World]:
    tmp: Path = tmp_path_factory.mktemp("flare")
    apps = {b: fake_slack.add_app(f"{b}-{tmp.name}") for b in BOTS}
    alice = fake_slack.add_user("alice")
    mallory = fake_slack.add_user("mallory")
    bots = [bot_entry(b, fake_slack, apps[b], fake_llm.base_url, [alice.id]) for b in BOTS]
    flare = FlareUp(
        tmp,
        bots,
        store=store,
        snapshots={"every": SNAPSHOT_EVERY, "on_change": {"enabled": False}, "on_shutdown": True},
    )
    flare.start()
    try:
        for b in BOTS:
            flare.wait_running(b, timeout=90)
            fake_slack.wait_connected(apps[b], timeout=90)
        yield World(fake_slack, fake_llm, apps, alice, mallory, flare, store)
    finally:
        with contextlib.suppress(Exception):
            flare.stop()


@pytest.fixture(autouse=True)
def _fresh_script(fake_llm: FakeLLM) -> Iterator[None]:
    """Every scenario starts with an empty script; leftovers mean the agent never asked."""
    fake_llm.clear()
    yield
    left = fake_llm.pending
    fake_llm.clear()
    assert not left, f"scripted replies never requested: {[r.label for r in left]}"
