"""The blob store, streamed atomic files and the checkpointed sync state."""

from __future__ import annotations

import hashlib
import io
import os

import pytest

from dropsync.errors import NotFound, StorageFull
from dropsync.store import Stores
from dropsync.store.files import AtomicFile
from dropsync.store.history import HistoryLog
from dropsync.store.syncstate import SyncStateTable
from dropsync.sync.blobs import BlobStore


@pytest.fixture
def blobs(tmp_path):
    return BlobStore(tmp_path / "blobs", chunk_size=4096)


def files_in(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# -- AtomicFile ------------------------------------------------------------------------
def test_atomic_file_appears_whole_only_on_commit(tmp_path):
    target = tmp_path / "out" / "file.bin"
    with AtomicFile(tmp_path, "file.bin") as incoming:
        incoming.write(b"abc")
        incoming.write(b"def")
        assert not target.exists()
        incoming.commit(target)
    assert target.read_bytes() == b"abcdef" and incoming.size == 6
    assert files_in(tmp_path) == ["out/file.bin"]


def test_atomic_file_left_uncommitted_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), AtomicFile(tmp_path, "file.bin") as incoming:
        incoming.write(b"partial")
        raise RuntimeError("connection dropped")
    assert files_in(tmp_path) == []


def test_atomic_file_on_a_full_disk_answers_storage_full(tiny_fs):
    folder = tiny_fs(64)
    with pytest.raises(StorageFull), AtomicFile(folder, "big.bin") as incoming:
        for _ in range(100):
            incoming.write(b"x" * 4096)
    assert files_in(folder) == []


# -- blob store ------------------------------------------------------------------------
def test_blob_is_named_by_content_with_hashes_computed_once(blobs):
    data = os.urandom(4096 * 2 + 100)
    info = blobs.add_stream(io.BytesIO(data))
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert info.md5 == hashlib.md5(data).hexdigest()
    assert (info.size, info.chunk_count) == (len(data), 3)
    for index in range(3):
        chunk = data[index * 4096:(index + 1) * 4096]
        assert blobs.read_chunk(info, index) == chunk
        assert info.chunk_sha256(index) == hashlib.sha256(chunk).hexdigest()
    assert blobs.path_of(info.sha256).read_bytes() == data
    with pytest.raises(NotFound):
        info.chunk_sha256(3)


def test_chunk_table_is_read_from_disk_not_rehashed(blobs, tmp_path):
    data = os.urandom(10_000)
    info = blobs.add_stream(io.BytesIO(data))
    reopened = BlobStore(tmp_path / "blobs", chunk_size=4096)
    # damage the bytes: a store that rehashed per lookup would now disagree
    blob = reopened.path_of(info.sha256)
    blob.chmod(0o600)
    blob.write_bytes(b"\0" * len(data))
    assert reopened.info(info.sha256, 4096) == info


def test_missing_chunk_table_is_rebuilt_from_the_blob(blobs, tmp_path):
    data = os.urandom(5000)
    info = blobs.add_stream(io.BytesIO(data))
    for table in (tmp_path / "blobs").rglob("*.json"):
        table.unlink()
    reopened = BlobStore(tmp_path / "blobs", chunk_size=4096)
    assert reopened.info(info.sha256, 4096) == info
    assert reopened.info(info.sha256, 1024).chunk_count == 5  # another chunk size: computed
    assert len(list((tmp_path / "blobs").rglob("*.json"))) == 2


def test_same_content_is_stored_once_and_unreferenced_blobs_go(blobs, tmp_path):
    a = blobs.add_stream(io.BytesIO(b"same"))
    assert blobs.add_stream(io.BytesIO(b"same")) == a
    b = blobs.add_stream(io.BytesIO(b"other"))
    assert len([p for p in (tmp_path / "blobs").rglob("*") if p.is_file()]) == 4
    assert blobs.remove_unreferenced([b.sha256]) == [a.sha256]
    assert a.sha256 not in blobs and b.sha256 in blobs
    assert files_in(tmp_path / "blobs") == sorted(
        [f"{b.sha256[:2]}/{b.sha256}", f"{b.sha256[:2]}/{b.sha256}.4096.json"])


def test_empty_file_is_one_empty_chunk(blobs):
    info = blobs.add_stream(io.BytesIO(b""))
    assert (info.size, info.chunk_count) == (0, 1)
    assert blobs.read_chunk(info, 0) == b""
    assert info.chunk_sha256(0) == hashlib.sha256(b"").hexdigest()


@pytest.mark.parametrize("name", ["../../etc/passwd", "ab", "x" * 64, "A" * 64])
def test_blob_names_are_only_sha256_hex(blobs, name):
    with pytest.raises(NotFound):
        blobs.path_of(name)


# -- sync state ------------------------------------------------------------------------
def report(device, package, state):
    return {"device_id": device, "package_id": package, "version": 1, "state": state}


def test_sync_state_keeps_the_latest_report_per_pair(tmp_path):
    history = HistoryLog(tmp_path / "sync")
    table = SyncStateTable(tmp_path / "sync_state.json", history)
    table.record(report("a", "p1", "downloading"))
    table.record(report("a", "p1", "applied"))
    table.record(report("b", "p1", "failed"))
    grouped = table.by_package()
    assert {d: e["state"] for d, e in grouped["p1"].items()} == {"a": "applied", "b": "failed"}
    assert len(history) == 3


def test_sync_state_lost_since_the_checkpoint_is_replayed_from_history(tmp_path):
    history = HistoryLog(tmp_path / "sync")
    table = SyncStateTable(tmp_path / "sync_state.json", history, interval_s=3600)
    table.record(report("a", "p1", "downloading"))
    table.checkpoint()
    table.record(report("a", "p1", "applied"))  # never checkpointed: a crash now
    table.record(report("b", "p2", "verified"))
    history.close()
    reopened = SyncStateTable(tmp_path / "sync_state.json", HistoryLog(tmp_path / "sync"))
    grouped = reopened.by_package()
    assert grouped["p1"]["a"]["state"] == "applied"
    assert grouped["p2"]["b"]["state"] == "verified"


def test_a_forgotten_package_stays_forgotten_after_a_restart(tmp_path):
    history = HistoryLog(tmp_path / "sync")
    table = SyncStateTable(tmp_path / "sync_state.json", history, interval_s=3600)
    table.record(report("a", "p1", "applied"))
    table.record(report("a", "p2", "applied"))  # the newest report is p2's
    table.forget_package("p2")  # p2 withdrawn
    table.checkpoint()
    history.close()
    reopened = SyncStateTable(tmp_path / "sync_state.json", HistoryLog(tmp_path / "sync"))
    assert set(reopened.by_package()) == {"p1"}


def test_stores_open_the_file_sync_tables(tmp_path):
    stores = Stores(tmp_path / "data")
    try:
        stores.packages.insert({"id": "p1", "slot": "esp001/a.bin"})
        stores.sync_state.record(report("esp001", "p1", "applied"))
        assert stores.packages.get_by("slot", "esp001/a.bin")["id"] == "p1"
    finally:
        stores.close()
    reopened = Stores(tmp_path / "data")
    try:
        assert reopened.sync_state.by_package()["p1"]["esp001"]["state"] == "applied"
        assert len(reopened.history["sync"]) == 1
    finally:
        reopened.close()
