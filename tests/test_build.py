"""The build id: the same source gives the same id, any edit of a module another."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import flared
from flared.build import PACKAGE, release, source_digest


def copy_of_package(tmp_path: Path) -> Path:
    root = tmp_path / "flared"
    shutil.copytree(PACKAGE, root, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def test_a_copy_of_the_source_has_the_same_id_and_bytecode_does_not_count(tmp_path: Path) -> None:
    root = copy_of_package(tmp_path)
    assert source_digest(root) == source_digest(PACKAGE)
    (root / "__pycache__").mkdir(exist_ok=True)
    (root / "__pycache__" / "build.cpython-311.pyc").write_bytes(b"\x00" * 64)
    (root / "notes.txt").write_text("not a module")
    assert source_digest(root) == source_digest(PACKAGE)


def test_an_edited_added_or_renamed_module_changes_the_id(tmp_path: Path) -> None:
    root = copy_of_package(tmp_path)
    before = source_digest(root)
    daemon = root / "daemon.py"
    daemon.write_text(daemon.read_text() + "\n# a hot fix\n")
    edited = source_digest(root)
    assert edited != before
    (root / "extra.py").write_text("")
    added = source_digest(root)
    assert added not in {before, edited}
    (root / "extra.py").rename(root / "extra2.py")
    assert source_digest(root) not in {before, edited, added}


def test_release_is_the_version_and_the_id_and_the_cli_prints_it() -> None:
    assert re.fullmatch(re.escape(flared.__version__) + r"\+[0-9a-f]{12}", release())
    out = subprocess.run(
        [sys.executable, "-m", "flared", "--version"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"flared {release()}"
