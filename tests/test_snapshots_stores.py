"""The store protocol, the same tests against a directory and a real S3 server (moto)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from flared.config.models import StoreConfig
from flared.snapshots.stores import NotFound, PreconditionFailed, Store, StoreUnreachable
from flared.snapshots.stores.factory import open_store
from tests.fixtures import homes
from tests.fixtures.flare import free_port

store_cfg, store = homes.store_cfg, homes.store  # fixtures: a directory and a real S3 server

pytestmark = pytest.mark.integration


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.mark.parametrize("size", [0, 1000, 20 * 1024 * 1024 + 3])
def test_put_and_get_file_round_trip(store: Store, tmp_path: Path, size: int) -> None:
    src = tmp_path / "blob"
    src.write_bytes(os.urandom(size))
    moved: list[int] = []
    info = store.put_file(
        "b/snapshots/x.sqsh", src, sha256=sha(src), metadata={"bot": "b"}, progress=moved.append
    )
    assert info.size == size
    assert info.sha256 in (sha(src), None)
    assert sum(moved) == size
    dest = tmp_path / "out" / "blob"
    got = store.get_file("b/snapshots/x.sqsh", dest)
    assert got.size == size
    assert dest.read_bytes() == src.read_bytes()
    # With the size known from a manifest, small blobs come in one request, hashed on the way.
    again = store.get_file("b/snapshots/x.sqsh", tmp_path / "again", size=size)
    assert (tmp_path / "again").read_bytes() == src.read_bytes()
    assert again.sha256 in (sha(src), None)


def test_missing_objects_are_not_found(store: Store, tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        store.get_bytes("nope/latest.json")
    with pytest.raises(NotFound):
        store.get_file("nope/x.sqsh", tmp_path / "x")
    with pytest.raises(NotFound):
        store.head("nope/x.sqsh")
    store.delete("nope/x.sqsh")  # deleting nothing is fine
    assert store.list("nope/") == []


def test_conditional_writes(store: Store) -> None:
    etag = store.put_bytes("b/latest.json", b"one", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        store.put_bytes("b/latest.json", b"two", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        store.put_bytes("b/latest.json", b"two", if_match='"not-the-etag"')
    assert store.get_bytes("b/latest.json") == (b"one", etag)
    etag2 = store.put_bytes("b/latest.json", b"two", if_match=etag)
    assert etag2 != etag
    with pytest.raises(PreconditionFailed):  # the old etag no longer wins
        store.put_bytes("b/latest.json", b"three", if_match=etag)
    assert store.get_bytes("b/latest.json")[0] == b"two"


def test_list_and_delete(store: Store) -> None:
    for key in ("a/snapshots/1.json", "a/snapshots/1.sqsh", "a/latest.json", "b/snapshots/2.json"):
        store.put_bytes(key, key.encode())
    assert [o.key for o in store.list("a/snapshots/")] == ["a/snapshots/1.json", "a/snapshots/1.sqsh"]
    store.delete("a/snapshots/1.json")
    assert [o.key for o in store.list("a/")] == ["a/latest.json", "a/snapshots/1.sqsh"]


def test_unreachable_s3_is_not_empty(tmp_path: Path) -> None:
    """A dead endpoint must read as 'unknown', never as 'holds nothing'."""
    cfg = StoreConfig(
        url="s3://bucket/p",
        endpoint=f"http://127.0.0.1:{free_port()}",
        access_key_id="k",
        secret_access_key="super-secret-value",
        timeout=1.0,
    )
    st = open_store(cfg)
    with pytest.raises(StoreUnreachable) as err:
        st.get_bytes("b/latest.json")
    assert "super-secret-value" not in str(err.value)


def test_missing_bucket_is_unreachable() -> None:
    from tests.fixtures.s3server import shared_server

    server = shared_server()
    st = open_store(StoreConfig(**server.section("no-such-bucket-here")))
    with pytest.raises(StoreUnreachable):
        st.get_bytes("b/latest.json")


def test_local_store_writes_whole_objects_only(tmp_path: Path) -> None:
    """A reader never sees a half-written object: writes land by rename."""
    from flared.snapshots.stores.local import LocalStore

    st = LocalStore(tmp_path / "store")
    src = tmp_path / "blob"
    src.write_bytes(b"x" * (3 * 1024 * 1024))
    seen: list[list[str]] = []

    def progress(_n: int) -> None:
        seen.append(sorted(p.name for p in (tmp_path / "store" / "b").iterdir()))

    st.put_file("b/x.sqsh", src, sha256=sha(src), metadata={}, progress=progress)
    assert all("x.sqsh" not in names for names in seen)  # only a temporary while copying
    assert [o.key for o in st.list("b/")] == ["b/x.sqsh"]


def test_the_old_default_store_is_moved_only_into_an_empty_new_default(tmp_path: Path) -> None:
    from flared.snapshots.stores.factory import adopt_legacy_default

    legacy, new = tmp_path / ".flare" / "store", tmp_path / ".flare-store"
    (legacy / "athena").mkdir(parents=True)
    (legacy / "athena" / "latest.json").write_text("{}")
    other = tmp_path / "elsewhere"
    assert adopt_legacy_default(other) == other and legacy.exists()  # not the default's name
    new.mkdir()
    assert adopt_legacy_default(new) == new  # empty: made way for the rename
    assert (new / "athena" / "latest.json").read_text() == "{}" and not legacy.exists()

    (legacy / "hermes").mkdir(parents=True)
    assert adopt_legacy_default(new) == new and (legacy / "hermes").exists()  # a store there already wins


def test_the_old_default_store_stays_in_use_when_it_cannot_be_moved(tmp_path: Path) -> None:
    from flared.snapshots.stores.factory import adopt_legacy_default

    legacy = tmp_path / ".flare" / "store"
    (legacy / "athena").mkdir(parents=True)
    (tmp_path / ".flare-store").write_text("a file in the way")
    assert adopt_legacy_default(tmp_path / ".flare-store") == legacy
    assert (legacy / "athena").is_dir()
