"""Config file watching: in-place writes, rename-writes, delete+create, slow editors, noise."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flared.policy.watch import Watcher


class Seen:
    """What the file held each time the watcher fired."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.contents: list[str] = []
        self.fired = threading.Event()

    def __call__(self) -> None:
        self.contents.append(self.path.read_text())
        self.fired.set()

    def wait(self, n: int, timeout: float = 5.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while len(self.contents) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.contents


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[tuple[Path, Seen, Watcher]]:
    path = tmp_path / "hermes-flare.yaml"
    path.write_text("version: 1\n")
    seen = Seen(path)
    w = Watcher(path, seen, settle=0.1).start()
    assert w.ready.wait(5)
    time.sleep(0.2)  # let inotify arm
    yield path, seen, w
    w.stop()


def test_in_place_write_fires_once_with_the_new_content(watched: tuple[Path, Seen, Watcher]) -> None:
    path, seen, _ = watched
    started = time.monotonic()
    path.write_text("version: 1\nlog_level: debug\n")
    assert seen.wait(1) == ["version: 1\nlog_level: debug\n"]
    assert time.monotonic() - started < 1.0
    time.sleep(0.5)
    assert len(seen.contents) == 1


def test_rename_over_the_file_fires(watched: tuple[Path, Seen, Watcher]) -> None:
    path, seen, _ = watched
    tmp = path.with_name(".hermes-flare.yaml.swp")
    tmp.write_text("version: 1\nlog_level: error\n")
    os.replace(tmp, path)
    assert seen.wait(1) == ["version: 1\nlog_level: error\n"]


def test_delete_then_create_fires_after_the_file_is_back(watched: tuple[Path, Seen, Watcher]) -> None:
    path, seen, _ = watched
    path.unlink()
    time.sleep(0.3)
    assert seen.contents == []
    path.write_text("version: 1\nlog_level: warning\n")
    assert seen.wait(1) == ["version: 1\nlog_level: warning\n"]


def test_slow_editor_is_read_only_once_it_settles(watched: tuple[Path, Seen, Watcher]) -> None:
    path, seen, _ = watched
    full = "version: 1\nlog_level: debug\nsnapshots:\n  every: 5m\n"
    with path.open("w") as fh:
        for i in range(0, len(full), 8):
            fh.write(full[i : i + 8])
            fh.flush()
            time.sleep(0.03)  # pauses shorter than the settle time
    contents = seen.wait(1)
    time.sleep(0.4)
    assert contents == [full], "a half-written file was handed to the reload"


def test_other_files_and_the_state_dir_do_not_fire(watched: tuple[Path, Seen, Watcher]) -> None:
    path, seen, _ = watched
    (path.parent / "notes.txt").write_text("hello")
    state = path.parent / ".flare" / "bots" / "a"
    state.mkdir(parents=True)
    for i in range(20):
        (state / f"log{i}").write_text("x" * i)
    time.sleep(1.3)  # past one watch timeout, so the fingerprint fallback ran too
    assert seen.contents == []


def test_every_separate_edit_is_seen(watched: tuple[Path, Seen, Watcher]) -> None:
    path, seen, _ = watched
    for i in range(5):
        path.write_text(f"version: 1\n# edit {i}\n")
        assert seen.wait(i + 1)[-1] == f"version: 1\n# edit {i}\n"


def test_stop_ends_the_thread(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("x")
    w = Watcher(path, lambda: None).start()
    w.stop()
    assert w._thread is not None and not w._thread.is_alive()
