"""Removing a tree a sandbox wrote, without ever following a link it planted.

Everything under a lease directory was made by code in the sandbox: any
entry may be a symbolic link to anywhere on the host (``/``, the state dir,
another lease), and any directory may have been chmod'ed to 000. Clean-up
runs as flared's user (root on a workstation), so resolving a single path
through such a link would let the sandbox chmod or delete host files.

So nothing here takes a path below the tree's top: each directory is opened
relative to its parent's descriptor with ``O_NOFOLLOW | O_DIRECTORY`` (a link
is refused by the kernel, never resolved), made writable through that
descriptor, emptied through it (``unlink``/``rmdir`` with ``dir_fd``), and
left through ``..``, checked against the directory it came from. Only one
descriptor is open at a time and there is no recursion, so a tree nested
thousands deep costs neither stack nor descriptors.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
OWNER_RWX = 0o700


def remove_tree(path: Path) -> None:
    """Delete ``path`` and all under it; links inside are removed, never followed.

    ``path`` itself and its parents are trusted (flared made them); a ``path``
    that is a link or a file is unlinked. A missing ``path`` is fine.
    """
    parent_fd = os.open(Path(path).parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        name = Path(path).name
        try:
            top = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(top.st_mode):
            os.unlink(name, dir_fd=parent_fd)
            return
        _remove_dir(parent_fd, name)
    finally:
        os.close(parent_fd)


def _remove_dir(parent_fd: int, name: str) -> None:
    """Empty and remove the directory ``name`` of ``parent_fd``, depth first, one descriptor held."""
    top_identity = _identity(parent_fd)
    fd = _open_dir(parent_fd, name)
    # One frame per directory entered: its name in its parent, its identity, its subdirectories left.
    frames: list[tuple[str, tuple[int, int], list[str]]] = [(name, _identity(fd), _unlink_all_but_dirs(fd))]
    try:
        while frames:
            _, _, subdirs = frames[-1]
            if subdirs:
                child = subdirs.pop()
                try:
                    sub = _open_dir(fd, child)
                except FileNotFoundError:
                    continue
                os.close(fd)
                fd = sub
                frames.append((child, _identity(fd), _unlink_all_but_dirs(fd)))
                continue
            done, _, _ = frames.pop()
            parent_identity = frames[-1][1] if frames else top_identity
            up = os.open("..", DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = up
            if _identity(fd) != parent_identity:  # the tree moved under us: stop rather than guess
                raise OSError(errno.ESTALE, f"directory moved while removing {name!r}")
            os.rmdir(done, dir_fd=fd)
    finally:
        os.close(fd)


def _open_dir(parent_fd: int, name: str) -> int:
    """A readable, writable descriptor of directory ``name``; a link there raises instead of being followed.

    A directory the sandbox made unreadable (000) cannot be opened for reading
    by its non-root owner: it is first opened as a bare ``O_PATH`` handle
    (still ``O_NOFOLLOW``) and chmod'ed through ``/proc/self/fd``, which names
    that very inode, not a path.
    """
    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    except PermissionError:
        handle = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
        try:
            os.chmod(f"/proc/self/fd/{handle}", OWNER_RWX)
            fd = os.open(".", DIR_FLAGS, dir_fd=handle)
        finally:
            os.close(handle)
    mode = os.fstat(fd).st_mode
    if mode & OWNER_RWX != OWNER_RWX:
        os.fchmod(fd, stat.S_IMODE(mode) | OWNER_RWX)
    return fd


def _unlink_all_but_dirs(fd: int) -> list[str]:
    """Unlink every entry of the directory ``fd`` that is not a directory (links included); return the rest."""
    subdirs: list[str] = []
    with os.scandir(fd) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                subdirs.append(entry.name)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.name, dir_fd=fd)
    return subdirs


def _identity(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino
