"""The ``flare-guard`` gateway hook flared writes into each home (tests/faults/test_plugin_fail_closed.py runs it in gateways).

Its ``handler.py`` is imported by Hermes after the plugins: it must end the
process (78) and say why unless the flare plugin installed every feature in
that process, and do nothing otherwise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flared.hermes import guard
from flared.hermes.home import UnsafeHome, write_guard


def run_handler(home: Path, prelude: str) -> subprocess.CompletedProcess[str]:
    """Import the rendered handler the way Hermes does, after ``prelude``."""
    code = (
        prelude
        + "\nimport importlib.util, sys\n"
        + f"spec = importlib.util.spec_from_file_location('hermes_hook_flare_guard', {str(guard.hook_dir(home) / 'handler.py')!r})\n"
        + "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
        + "print('LOADED', callable(module.handle))\n"
    )
    env = {"PATH": os.environ["PATH"], "HERMES_HOME": str(home)}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)


def test_render_writes_the_hook_and_rewrites_an_edit(tmp_path: Path) -> None:
    write_guard(tmp_path)
    handler = guard.hook_dir(tmp_path) / "handler.py"
    assert handler.read_text() == guard.HANDLER and (handler.stat().st_mode & 0o777) == 0o600
    assert "events:" in (guard.hook_dir(tmp_path) / "HOOK.yaml").read_text()
    handler.write_text("def handle(*a): pass\n")
    write_guard(tmp_path)
    assert handler.read_text() == guard.HANDLER


def test_a_linked_hooks_dir_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    home = tmp_path / "home"
    home.mkdir()
    (home / "hooks").symlink_to(elsewhere)
    with pytest.raises(UnsafeHome, match="symbolic link"):
        write_guard(home)
    assert not list(elsewhere.iterdir())


def test_without_the_plugin_the_gateway_ends_with_78_and_says_why(tmp_path: Path) -> None:
    write_guard(tmp_path)
    done = run_handler(tmp_path, "")
    assert done.returncode == 78, done
    assert "LOADED" not in done.stdout
    assert "the flare plugin is not working in this gateway (it did not load)" in done.stderr
    record = json.loads((tmp_path / "state" / "flare-plugin.json").read_text())["registered"]
    assert record["ok"] is False and "exit 78" in record["error"]


def test_a_plugin_with_a_feature_missing_ends_it_too(tmp_path: Path) -> None:
    write_guard(tmp_path)
    prelude = (
        "import sys, types; m = types.ModuleType('flared.plugin'); "
        "m.FEATURES = {'cron': 1, 'scripts': 1}; m.REGISTERED = {'ctx': 0, 'cron': 1}; "
        "sys.modules['flared.plugin'] = m"
    )
    done = run_handler(tmp_path, prelude)
    assert done.returncode == 78 and "these features are not installed: scripts" in done.stderr, done


def test_with_the_plugin_registered_it_does_nothing(tmp_path: Path) -> None:
    write_guard(tmp_path)
    prelude = (
        "from flared import plugin; "
        "plugin.REGISTERED.update({name: module for name, module in plugin.FEATURES.items()})"
    )
    done = run_handler(tmp_path, prelude)
    assert done.returncode == 0 and "LOADED True" in done.stdout, done
    assert not (tmp_path / "state" / "flare-plugin.json").exists()
