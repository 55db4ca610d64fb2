"""remove_tree: a tree written by a sandbox goes, and nothing a link in it points at is touched."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from flared.sandboxes.providers.removal import remove_tree

NOBODY = 65534


def plant(tree: Path, outside: Path) -> None:
    """Links to a dir and a file outside, at the top and inside dirs locked to 000/500."""
    (tree / "a" / "b").mkdir(parents=True)
    for d in (tree, tree / "a", tree / "a" / "b"):
        (d / "dir-link").symlink_to(outside)
        (d / "file-link").symlink_to(outside / "f")
        (d / "f").write_text("x")
    (tree / "a" / "b").chmod(0o000)
    (tree / "a").chmod(0o500)


def snapshot(outside: Path) -> list[tuple[str, int, int]]:
    return sorted((str(p), p.lstat().st_mode, p.lstat().st_uid) for p in [outside, *outside.rglob("*")])


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    out = tmp_path / "outside"
    (out / "sub").mkdir(parents=True)
    (out / "f").write_text("keep")
    out.chmod(0o751)
    return out


def test_removes_links_and_locked_dirs_without_touching_targets(tmp_path: Path, outside: Path) -> None:
    tree = tmp_path / "lease"
    plant(tree, outside)
    before = snapshot(outside)
    remove_tree(tree)
    assert not os.path.lexists(tree)
    assert snapshot(outside) == before and (outside / "f").read_text() == "keep"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_owner_that_is_not_root_gets_through_000_dirs(tmp_path: Path, outside: Path) -> None:
    """flared not run as root: it owns the lease, not the power to read a 000 dir it owns."""
    tmp_path.chmod(0o755)
    tree = tmp_path / "lease"
    plant(tree, outside)
    for p in [tmp_path, tree, *tree.rglob("*")]:
        os.chown(p, NOBODY, NOBODY, follow_symlinks=False)
    before = snapshot(outside)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.chdir(tmp_path)  # its parents are root's 0700 pytest dirs
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            remove_tree(Path(tree.name))
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert not os.path.lexists(tree)
    assert snapshot(outside) == before


def test_a_tree_thousands_deep_needs_no_recursion(tmp_path: Path) -> None:
    tree = tmp_path / "lease"
    tree.mkdir()
    fd = os.open(tree, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(1200):  # deeper than Python's recursion limit, and than PATH_MAX
        os.mkdir("d", dir_fd=fd)
        os.symlink("/", "up", dir_fd=fd)
        nxt = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = nxt
    os.close(fd)
    remove_tree(tree)
    assert not os.path.lexists(tree)


def test_a_top_that_is_a_link_is_unlinked_not_followed(tmp_path: Path, outside: Path) -> None:
    link = tmp_path / "lease"
    link.symlink_to(outside)
    before = snapshot(outside)
    remove_tree(link)
    assert not os.path.lexists(link) and snapshot(outside) == before
    remove_tree(link)  # already gone: fine
