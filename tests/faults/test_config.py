"""Fault rows for config input: empty files and YAML bombs, in the CLI and in a running flared.

Every refusal must name the file (and the line, where there is one), exit 2
in the CLI, leave the running config and the bots as they were, and keep
flared's RSS within 50 MB of what it was before.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from flared.config.yamlpos import MAX_BYTES
from flared.control.client import ControlClient, ControlError
from tests.fixtures.flare import FLARED, FlareUp, bot, run_cli

pytestmark = pytest.mark.integration

BOUND = 50 * 1024 * 1024
LAUGHS = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{c}: &{c} [{','.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)
)
MERGES = "a0: &a0 {k: 1, j: 2}\n" + "".join(
    f"a{i}: &a{i} {{<<: [*a{i - 1}, *a{i - 1}]}}\n" for i in range(1, 40)
)
BIG = "bots: []\n" + ("# " + "x" * 98 + "\n") * 100_000
BIG_LINE = BIG.encode()[:MAX_BYTES].count(b"\n") + 1  # where the size limit is crossed
BOMBS: dict[str, tuple[str, str]] = {
    # name: (text, what the refusal says)
    "alias bomb": (LAUGHS, ":5:4: more than 20,000 values once aliases"),
    "100,000 nested [": ("[" * 100_000, ":1:65: nested more than 64 levels deep"),
    "10 MB file": (BIG, f":{BIG_LINE}:1: the file is larger than"),
    "self-referencing alias": (
        "bots: &b [*b]\n",
        ":1:7: an alias refers to a value that contains it",
    ),
}


def _cap_memory() -> None:
    """A regression must fail the row, not take the machine (the bomb reached 13.9 GB)."""
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))


def max_rss_of(argv: list[str], timeout: float = 60) -> tuple[int, str, int]:
    """(exit code, stderr, peak RSS in bytes) of one process, killed after ``timeout``."""
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=_cap_memory
    )
    killer = threading.Timer(timeout, proc.kill)
    killer.start()
    try:
        assert proc.stderr is not None
        err = proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        killer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, err, usage.ru_maxrss * 1024


@pytest.mark.parametrize("name", list(BOMBS))
def test_validate_refuses_a_yaml_bomb_quickly_in_bounded_memory(tmp_path: Path, name: str) -> None:
    text, expected = BOMBS[name]
    good = tmp_path / "good.yaml"
    good.write_text("bots: []\n")
    _, _, baseline = max_rss_of([*FLARED, "validate", "-c", str(good)])
    bad = tmp_path / "hermes-flare.yaml"
    bad.write_text(text)
    t = time.monotonic()
    code, err, peak = max_rss_of([*FLARED, "validate", "-c", str(bad)])
    assert code == 2, err
    assert f"{bad}{expected}" in err, err
    assert "Traceback" not in err
    assert time.monotonic() - t < 10
    assert peak - baseline < BOUND, f"validate peaked {(peak - baseline) >> 20} MiB over a good file"


def test_merge_key_doubling_is_linear(tmp_path: Path) -> None:
    """Merge keys that double at each level (2^39 pairs if flattened naively) load at once."""
    p = tmp_path / "hermes-flare.yaml"
    p.write_text("bots: []\nx-anchors:\n" + "".join("  " + line + "\n" for line in MERGES.splitlines()))
    t = time.monotonic()
    code, err, _ = max_rss_of([*FLARED, "validate", "-c", str(p)])
    assert time.monotonic() - t < 10
    assert code == 2 and "unknown key 'x-anchors'" in err, err  # got as far as the schema


# --------------------------------------------------------------------------- a running flared


class Running:
    def __init__(self, flare: FlareUp) -> None:
        self.flare = flare
        self.client = ControlClient(flare.state_dir / "flared.sock")
        self.good = flare.config_path.read_text()
        self.pid = int(flare.status()["flared"]["pid"])

    def rss(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def errors(self) -> list[str]:
        return list(self.flare.status()["config"]["error"] or [])

    def restore(self) -> None:
        self.flare.config_path.write_text(self.good)
        wait_for(lambda: not self.errors(), 10, "the good file to be read back")


def wait_for(probe: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"{what} within {timeout}s (last: {last!r})")


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    tmp = tmp_path_factory.mktemp("config-faults")
    with FlareUp(tmp, [bot("alpha")]) as flare:
        flare.wait_running("alpha", timeout=120)
        yield Running(flare)


@pytest.fixture
def kept(running: Running) -> Iterator[Callable[[], None]]:
    """After the row: same config digest, same gateway process, RSS within the bound."""
    digest = running.flare.status()["config"]["digest"]
    gateway = running.flare.bot_status("alpha")["pid"]
    rss0 = running.rss()
    peak = [rss0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.02):
            with contextlib.suppress(OSError, AssertionError):
                peak[0] = max(peak[0], running.rss())

    t = threading.Thread(target=sample, daemon=True)
    t.start()

    def check() -> None:
        status = running.flare.status()
        assert status["config"]["digest"] == digest, "a refused config was applied"
        alpha = running.flare.bot_status("alpha")
        assert alpha["state"] == "RUNNING" and alpha["pid"] == gateway, "the bot's gateway was touched"
        assert peak[0] - rss0 < BOUND, f"flared's RSS grew by {(peak[0] - rss0) >> 20} MiB while refusing"

    yield check
    stop.set()
    t.join()
    running.restore()


def test_emptied_file_is_refused_by_the_watcher_and_the_bot_keeps_running(
    running: Running, kept: Any
) -> None:
    """`: > hermes-flare.yaml` while running: nothing stops."""
    with running.flare.config_path.open("w"):
        pass
    errors = wait_for(running.errors, 10, "the empty file to be refused")
    assert any("the file is empty" in e and "bots: []" in e for e in errors), errors
    time.sleep(1)  # a reload that went through would have stopped the bot by now
    kept()


@pytest.mark.parametrize("text", ["", "   \n\n", "# only a comment\n  # and another\n"])
def test_reload_and_sighup_refuse_an_empty_file(running: Running, kept: Any, text: str) -> None:
    running.flare.config_path.write_text(text)
    wait_for(running.errors, 10, "the watcher to refuse it")
    out = running.flare.cli("reload")
    assert out.returncode == 2, out
    assert "the file is empty" in out.stdout + out.stderr
    os.kill(running.pid, signal.SIGHUP)
    time.sleep(1)
    kept()


def test_put_config_refuses_an_empty_or_comment_only_body(running: Running, kept: Any) -> None:
    for body in (b"", b"# nothing but this comment\n"):
        with pytest.raises(ControlError) as info:
            running.client.request("PUT", "/config", raw=body)
        assert info.value.status == 400
        assert "empty" in str(info.value.body)
    kept()


@pytest.mark.parametrize("name", list(BOMBS))
def test_put_config_refuses_a_yaml_bomb(running: Running, kept: Any, name: str) -> None:
    text, expected = BOMBS[name]
    with pytest.raises(ControlError) as info:
        running.client.request("PUT", "/config", raw=text.encode(), timeout=60)
    assert info.value.status in (400, 413), info.value.body
    if info.value.status == 400:
        (issue,) = info.value.body["errors"]
        line, col = expected.split(":")[1:3]
        assert (issue["line"], issue["col"]) == (int(line), int(col)), issue
    kept()


@pytest.mark.parametrize("name", ["alias bomb", "10 MB file", "100,000 nested ["])
def test_the_watcher_refuses_a_yaml_bomb(running: Running, kept: Any, name: str) -> None:
    text, expected = BOMBS[name]
    running.flare.config_path.write_text(text)
    errors = wait_for(running.errors, 15, "the bomb to be refused")
    message = expected.split(":", 3)[3].strip()
    assert any(message in e for e in errors), errors
    kept()


def test_the_cli_reports_the_refusal_without_a_traceback(running: Running, kept: Any) -> None:
    running.flare.config_path.write_text(LAUGHS)
    wait_for(running.errors, 15, "the bomb to be refused")
    out = subprocess.run(
        [*FLARED, "reload", "-c", str(running.flare.config_path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2
    assert "more than 20,000 values" in out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    kept()


def test_a_config_that_becomes_a_symlink_loop_is_reported_once(running: Running, kept: Any) -> None:
    """The file is swapped for a link into a loop: status says so, the log says it once."""
    path = running.flare.config_path
    log = running.flare.state_dir / "logs" / "flared.log"
    said = "hermes-flare.yaml is a symbolic link loop; the running config stays"
    before = log.read_text().count(said)
    loop = path.with_name("loop.yaml")
    os.symlink(path.name, loop)
    os.symlink(loop.name, path.with_name(".swap"))
    os.replace(path.with_name(".swap"), path)
    try:
        errors = wait_for(running.errors, 10, "the loop to be refused")
        assert any(
            e
            == f"{path}: cannot be read: it is a symbolic link loop (its links lead back to themselves); make it a file, or a link to one"
            for e in errors
        ), errors

        out = running.flare.cli("status")
        assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
        assert "the config file on disk was NOT applied" in out.stdout
        assert "cannot be read: it is a symbolic link loop (its links lead back to themselves)" in out.stdout

        # No daemon runs the other name of the loop: offline status, the file's own error.
        offline = run_cli("status", "-c", str(loop))
        assert offline.returncode == 2 and "Traceback" not in offline.stderr, offline.stderr
        assert f"{loop}: cannot be read: it is a symbolic link loop" in offline.stderr

        time.sleep(3)  # the watch wakes every second
        assert log.read_text().count(said) == before + 1
        kept()
    finally:
        path.unlink()
        loop.unlink()
        path.write_text(running.good)
