"""Who a control request comes from (flared.control.auth): decisions, and process trees for real."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flared.control.auth import UNKNOWN, Peer, ProcessTree, authenticate, bearer, peer_of
from flared.control.tokens import bot_token


class Tree:
    """A stand-in ProcessTree that answers one program for every pid."""

    def __init__(self, program: str | None) -> None:
        self.program = program

    def program_of(self, pid: int) -> str | None:
        return self.program


ME = Peer(pid=12345, uid=os.geteuid(), gid=os.getegid())


def call(
    tmp_path: Path, token: str = "", *, unix: bool = True, program: str | None = None, peer: Peer | None = ME
):
    return authenticate(
        token=token,
        state_dir=tmp_path,
        admin_token="admin-secret",
        unix=unix,
        peer=peer,
        tree=Tree(program),  # type: ignore[arg-type]
    )


def test_tcp_needs_the_control_token_or_a_bot_token(tmp_path: Path) -> None:
    assert call(tmp_path, "admin-secret", unix=False).admin
    assert call(tmp_path, bot_token(tmp_path, "a"), unix=False).bot == "a"
    nobody = call(tmp_path, "", unix=False)
    assert nobody.anonymous and not nobody.admin and nobody.status == 401
    assert call(tmp_path, "flb_a_forged", unix=False).reject_all


def test_unix_the_operators_processes_are_admin(tmp_path: Path) -> None:
    assert call(tmp_path).admin  # the CLI of the user who ran `flared up`
    assert call(tmp_path, program="operator").admin  # the operator bot's program
    assert call(tmp_path, bot_token(tmp_path, "a")).bot == "a"  # a bot token is that bot, anywhere


def test_unix_a_gateway_is_its_bot_and_nothing_more(tmp_path: Path) -> None:
    own, other = bot_token(tmp_path, "a"), bot_token(tmp_path, "b")
    assert call(tmp_path, own, program="gateway-a").bot == "a"
    none = call(tmp_path, program="gateway-a")
    assert none.anonymous and not none.admin and none.status == 401 and "must present" in (none.reason or "")
    minted = call(tmp_path, other, program="gateway-a")
    assert minted.anonymous and minted.bot is None and minted.status == 403
    assert not call(tmp_path, "admin-secret", program="gateway-a").admin


def test_unix_sandboxes_unknown_programs_and_other_users_are_refused(tmp_path: Path) -> None:
    assert call(tmp_path, program="flared").status == 403  # a child of flared: a sandbox
    assert call(tmp_path, program="flared", peer=Peer(os.getpid(), os.geteuid(), 0)).admin  # flared itself
    assert call(tmp_path, program=UNKNOWN).status == 403
    stranger = call(tmp_path, peer=Peer(1, os.geteuid() + 4242 if os.geteuid() else 4242, 0))
    assert stranger.anonymous and stranger.status == 403
    assert call(tmp_path, peer=None).admin  # no SO_PEERCRED: the socket's mode decides


def test_bearer_header() -> None:
    assert bearer("Bearer abc ") == "abc" and bearer("bearer x") == "x"
    assert bearer(None) == "" and bearer("Basic abc") == ""


@pytest.fixture
def family() -> Iterator[tuple[int, int]]:
    """A program (bash) and its child (sleep), like a gateway and something it started."""
    proc = subprocess.Popen(["bash", "-c", "sleep 30 & echo $!; wait"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    child = int(proc.stdout.readline())
    yield proc.pid, child
    proc.kill()
    proc.wait()
    subprocess.run(["kill", str(child)], check=False)


def test_process_tree_finds_the_program_of_a_descendant(family: tuple[int, int]) -> None:
    program, child = family
    asked: list[float] = []

    def programs() -> tuple[int | None, dict[int, str]]:
        asked.append(time.monotonic())
        return os.getpid(), {program: "gateway-a"}

    tree = ProcessTree(programs)
    assert tree.program_of(child) == "gateway-a"
    assert tree.program_of(program) == "gateway-a"
    assert tree.program_of(os.getppid()) is None  # not under "supervisord" (this test process)
    assert len(asked) == 1  # cached


def test_process_tree_refuses_unknown_processes_under_supervisord(family: tuple[int, int]) -> None:
    program, child = family
    known: dict[int, str] = {}
    tree = ProcessTree(lambda: (os.getpid(), dict(known)))
    assert tree.program_of(child) == UNKNOWN  # under "supervisord", in no program it reported
    known[program] = "gateway-b"  # the program just started: a miss asks again
    time.sleep(0.3)
    assert tree.program_of(child) == "gateway-b"


def test_peer_of_a_unix_socket_is_the_connecting_process(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(1)
    proc = subprocess.Popen(
        [
            "python3",
            "-c",
            f"import socket,time; s=socket.socket(socket.AF_UNIX); s.connect({path!r}); time.sleep(5)",
        ]
    )
    try:
        conn, _ = srv.accept()
        peer = peer_of(conn)
        assert peer == Peer(proc.pid, os.geteuid(), os.getegid())
        conn.close()
    finally:
        proc.kill()
        proc.wait()
        srv.close()


def test_process_tree_fails_closed_when_supervisord_does_not_answer(family: tuple[int, int]) -> None:
    """Before supervisord first answers, a process under it is refused, not taken for the admin."""
    from flared.control.auth import parent_if_supervisord

    _, child = family

    def down() -> tuple[int | None, dict[int, str]]:
        raise OSError("supervisord is not answering")

    assert ProcessTree(down, supervisord=os.getpid()).program_of(child) == UNKNOWN
    assert ProcessTree(down).program_of(child) is None  # nothing known: as without a tree
    assert parent_if_supervisord() is None  # pytest's parent is not supervisord
