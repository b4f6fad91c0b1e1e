"""The store: atomic files, exclusive data dir, no lost updates, history, liveness."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest
from support import Observed

from dropsync.errors import Conflict, DataDirBusy, NotFound, StorageFull, StoreCorrupt
from dropsync.store import Stores
from dropsync.store.history import HistoryLog
from dropsync.store.liveness import LivenessTable
from dropsync.store.tables import KeyedTable, TableFile


@pytest.fixture
def data_dir(tmp_path):
    return tmp_path / "data"


@pytest.fixture
def opened(data_dir):
    stores = Stores(data_dir)
    yield stores
    stores.close()


def device(device_id: str, **fields) -> dict:
    return {"id": device_id, "token_hash": f"hash-{device_id}", "groups": [], **fields}


# -- tables ----------------------------------------------------------------------------
def test_writes_survive_reopening(data_dir):
    stores = Stores(data_dir)
    stores.devices.insert(device("esp001", name="pump"))
    stores.devices.update("esp001", {"name": "pump 2"})
    stores.devices.insert(device("esp002"))
    stores.devices.delete("esp002")
    stores.close()
    reopened = Stores(data_dir)
    assert reopened.devices.get("esp001")["name"] == "pump 2"
    assert "esp002" not in reopened.devices
    reopened.close()


def test_store_files_are_whole_json_after_each_write(opened, data_dir):
    for i in range(5):
        opened.devices.insert(device(f"d{i}"))
        on_disk = json.loads((data_dir / "devices.json").read_text())
        assert len(on_disk["devices"]) == i + 1


def test_misses_raise_not_found_and_duplicates_conflict(opened):
    with pytest.raises(NotFound, match="device 'ghost' not found"):
        opened.devices.get("ghost")
    with pytest.raises(NotFound):
        opened.devices.update("ghost", {"name": "x"})
    with pytest.raises(NotFound):
        opened.devices.delete("ghost")
    opened.devices.insert(device("esp001"))
    with pytest.raises(Conflict):
        opened.devices.insert(device("esp001"))


def test_unique_fields_are_indexed_and_enforced(opened):
    opened.devices.insert(device("a", token_hash="h1"))
    opened.devices.insert(device("b", token_hash="h2"))
    assert opened.devices.get_by("token_hash", "h2")["id"] == "b"
    with pytest.raises(Conflict):
        opened.devices.update("a", {"token_hash": "h2"})
    opened.devices.update("a", {"token_hash": "h3"})
    with pytest.raises(NotFound):
        opened.devices.get_by("token_hash", "h1")
    assert opened.devices.get_by("token_hash", "h3")["id"] == "a"


def test_callers_get_copies_not_stored_data(opened):
    opened.devices.insert(device("esp001", groups=["a"]))
    fetched = opened.devices.get("esp001")
    fetched["groups"].append("mutated")
    opened.devices.all()[0]["groups"].append("mutated")
    assert opened.devices.get("esp001")["groups"] == ["a"]


def test_concurrent_read_modify_writes_lose_no_update(opened):
    opened.devices.insert(device("counter", count=0))
    threads_n, increments = 8, 40

    def bump():
        for _ in range(increments):
            opened.devices.update("counter", lambda d: {"count": d["count"] + 1})

    threads = [threading.Thread(target=bump) for _ in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert opened.devices.get("counter")["count"] == threads_n * increments


def test_unparseable_store_stops_startup_and_is_left_alone(data_dir):
    Stores(data_dir).close()
    broken = data_dir / "devices.json"
    broken.write_text('{"devices": {"1": {"id": "esp0')
    with pytest.raises(StoreCorrupt) as caught:
        Stores(data_dir)
    assert str(broken) in caught.value.message
    assert broken.read_text() == '{"devices": {"1": {"id": "esp0'
    # the failed start released the directory
    broken.unlink()
    Stores(data_dir).close()


def test_leftover_temp_files_are_removed_at_start(data_dir):
    Stores(data_dir).close()
    leftover = data_dir / ".devices.json.1a2b3c4d.tmp"
    leftover.write_text('{"half": ')
    nested = data_dir / "history" / "events" / ".x.tmp"
    nested.write_text("junk")
    stores = Stores(data_dir)
    assert not leftover.exists() and not nested.exists()
    stores.close()


def test_second_holder_of_a_data_dir_is_refused_with_the_pid(opened, data_dir):
    with pytest.raises(DataDirBusy) as caught:
        Stores(data_dir)
    assert str(data_dir.resolve()) in caught.value.message
    assert caught.value.pid == os.getpid()
    assert f"process {os.getpid()}" in caught.value.message
    opened.close()
    Stores(data_dir).close()  # free again once closed


def test_full_disk_answers_storage_full_and_loses_nothing(tiny_fs):
    folder = tiny_fs(64)
    stores = Stores(folder)
    acknowledged = []
    with pytest.raises(StorageFull):
        for i in range(10_000):
            stores.devices.insert(device(f"device-{i:05d}", note="x" * 200))
            acknowledged.append(f"device-{i:05d}")
    assert len(acknowledged) > 5
    # memory still matches the disk: the failed insert left no phantom device behind
    assert len(stores.devices) == len(acknowledged)
    stores.close()
    reopened = Stores(folder)
    assert sorted(d["id"] for d in reopened.devices.all()) == acknowledged
    reopened.close()


# -- history ---------------------------------------------------------------------------
def test_history_appends_number_records_across_restarts(tmp_path):
    folder = tmp_path / "events"
    log = HistoryLog(folder)
    assert [log.append({"n": i})["seq"] for i in range(3)] == [1, 2, 3]
    log.close()
    log = HistoryLog(folder)
    assert log.append({"n": 3})["seq"] == 4
    assert [r["n"] for r in log.records()] == [0, 1, 2, 3]
    assert [r["n"] for r in log.records(newest_first=True, where=lambda r: r["n"] % 2)] \
        == [3, 1]
    log.close()


def test_history_rolls_segments_and_drops_old_ones_by_retention(tmp_path):
    folder = tmp_path / "messages"
    log = HistoryLog(folder, segment_records=10, max_records=25)
    for i in range(100):
        log.append({"n": i})
    kept = [r["n"] for r in log.records()]
    assert 25 <= len(kept) <= 35
    assert kept == list(range(100 - len(kept), 100))  # the newest, in order, no gaps
    assert len(log) == len(kept)
    assert len(list(folder.glob("*.jsonl"))) <= 4
    log.close()
    reopened = HistoryLog(folder, segment_records=10, max_records=25)
    assert reopened.append({"n": 100})["seq"] == 101
    reopened.close()


def by_device(record):
    return [f"device:{record['device']}", f"device:{record['device']}/level:{record['level']}"]


def test_history_index_pages_one_key_newest_first_across_restarts(tmp_path):
    folder = tmp_path / "messages"
    log = HistoryLog(folder, segment_records=7, index_keys=by_device)
    for i in range(40):
        log.append({"device": f"d{i % 3}", "level": "error" if i % 5 == 0 else "info",
                    "n": i, "at": 1000 + i})
    expected = [i for i in range(39, -1, -1) if i % 3 == 1]
    page = log.find("device:d1", limit=4)
    assert [r["n"] for r in page] == expected[:4]
    rest = log.find("device:d1", before_seq=page[-1]["seq"])
    assert [r["n"] for r in rest] == expected[4:]
    assert [r["n"] for r in log.find("device:d1/level:error")] == [25, 10]
    assert [r["n"] for r in log.find("device:d2", newest_first=False, after_seq=30)] \
        == [i for i in range(30, 40) if i % 3 == 2]
    assert log.find("device:nobody") == []
    assert log.read(5)["n"] == 4 and log.read(999) is None
    assert log.first_seq_at_or_after("device:d0", "at", 1020) == log.find(
        "device:d0", newest_first=False, where=lambda r: r["at"] >= 1020, limit=1)[0]["seq"]
    log.close()
    reopened = HistoryLog(folder, segment_records=7, index_keys=by_device)
    assert [r["n"] for r in reopened.find("device:d1")] == expected
    reopened.append({"device": "d1", "level": "info", "n": 40, "at": 1040})
    assert reopened.find("device:d1", limit=1)[0]["n"] == 40
    reopened.close()


def test_history_appends_many_records_with_one_write_per_segment(tmp_path):
    folder = tmp_path / "events"
    log = HistoryLog(folder, segment_records=4, index_keys=by_device)
    log.append({"device": "d0", "level": "info", "n": 0})
    observed = Observed()
    stored = log.append_many([{"device": f"d{n % 2}", "level": "info", "n": n}
                             for n in range(1, 10)])
    # records 1-3 fill the first segment, 4-7 the second, 8-9 start a third: three writes
    assert observed.count("history_append") == 3
    assert [r["seq"] for r in stored] == list(range(2, 11))
    assert len(list(folder.iterdir())) == 3
    assert [r["n"] for r in log.find("device:d1", newest_first=False)] == [1, 3, 5, 7, 9]
    assert log.append({"device": "d0", "level": "info", "n": 10})["seq"] == 11
    log.close()
    reopened = HistoryLog(folder, segment_records=4, index_keys=by_device)
    assert [r["n"] for r in reopened.records()] == list(range(11))
    assert [r["seq"] for r in reopened.records()] == list(range(1, 12))
    reopened.close()


def test_history_appends_that_wait_for_a_write_go_together_in_the_next(tmp_path):
    """Group commit: appends queued behind a write are written and synced as one."""
    log = HistoryLog(tmp_path / "messages", index_keys=by_device)
    observed = Observed()
    results: dict[int, dict] = {}
    with log._lock:  # a write in progress: the appends below queue up behind it
        threads = [threading.Thread(target=lambda n=n: results.__setitem__(
            n, log.append({"device": f"d{n % 3}", "level": "info", "n": n})))
            for n in range(10)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while len(log._queue) < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
    for thread in threads:
        thread.join(30)
    assert observed.count("history_append") == 1
    assert sorted(r["seq"] for r in results.values()) == list(range(1, 11))
    assert all(log.read(r["seq"])["n"] == n for n, r in results.items())
    assert [r["n"] for r in log.find("device:d1", newest_first=False)] == [1, 4, 7]
    log.close()


def test_history_append_many_on_a_full_disk_keeps_only_whole_segments_written(tiny_fs):
    folder = tiny_fs(32)
    log = HistoryLog(folder / "events", segment_records=1_000_000)
    log.append({"n": -1})
    with pytest.raises(StorageFull):
        log.append_many([{"n": i, "pad": "y" * 100} for i in range(100_000)])
    assert [r["n"] for r in log.records()] == [-1]
    log.close()
    reopened = HistoryLog(folder / "events", segment_records=1_000_000)
    assert [r["n"] for r in reopened.records()] == [-1]
    reopened.close()


def test_insert_many_writes_the_file_once_and_all_or_nothing(opened, data_dir):
    opened.devices.insert(device("esp000"))
    observed = Observed()
    added = opened.devices.insert_many([device(f"esp{i:03d}") for i in range(1, 51)])
    assert len(added) == 50 and observed.count("store_write") == 1
    on_disk = json.loads((data_dir / "devices.json").read_text())["devices"]
    assert len(on_disk) == 51
    before = (data_dir / "devices.json").read_bytes()
    for refused in ([device("esp051"), device("esp001")],            # already there
                    [device("esp052"), device("esp052")],            # twice in the batch
                    [device("esp053", token_hash="hash-esp002")],    # another's unique field
                    [device("esp054"), device("esp055", token_hash="hash-esp054")]):
        with pytest.raises(Conflict):
            opened.devices.insert_many(refused)
    assert (data_dir / "devices.json").read_bytes() == before
    assert len(opened.devices) == 51 and "esp051" not in opened.devices
    assert opened.devices.get_by("token_hash", "hash-esp050")["id"] == "esp050"


def test_history_index_forgets_what_retention_dropped(tmp_path):
    log = HistoryLog(tmp_path / "messages", segment_records=10, max_records=20,
                     index_keys=by_device)
    for i in range(60):
        log.append({"device": "early" if i < 10 else "late", "level": "info", "n": i})
    assert log.find("device:early") == []
    assert "device:early" not in log._keyed  # the index shrinks with the log
    kept = [r["n"] for r in log.find("device:late", newest_first=False)]
    assert kept == list(range(60 - len(kept), 60)) and len(kept) >= 20
    log.close()


def test_concurrent_history_appends_get_unique_seqs_and_all_land(tmp_path):
    log = HistoryLog(tmp_path / "events", segment_records=50)
    seqs: list[int] = []

    def write(thread: int):
        for i in range(60):
            seqs.append(log.append({"thread": thread, "i": i})["seq"])

    threads = [threading.Thread(target=write, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seqs) == list(range(1, 361))
    stored = list(log.records())
    assert [r["seq"] for r in stored] == list(range(1, 361))
    for thread in range(6):  # each thread's records in the order it wrote them
        assert [r["i"] for r in stored if r["thread"] == thread] == list(range(60))
    log.close()


def test_history_cuts_a_torn_tail_and_appends_cleanly(tmp_path):
    folder = tmp_path / "commands"
    log = HistoryLog(folder)
    for i in range(3):
        log.append({"n": i})
    log.close()
    segment = next(folder.glob("*.jsonl"))
    with open(segment, "ab") as f:
        f.write(b'{"seq":4,"n":3,"text":"cut off by a power fa')
    log = HistoryLog(folder)
    assert log.append({"n": "after"})["seq"] == 4
    lines = segment.read_bytes().splitlines()
    assert [json.loads(line)["n"] for line in lines] == [0, 1, 2, "after"]
    log.close()


def test_history_full_disk_leaves_no_partial_record(tiny_fs):
    folder = tiny_fs(32)
    log = HistoryLog(folder / "events", segment_records=1_000_000)
    acknowledged = 0
    with pytest.raises(StorageFull):
        for i in range(100_000):
            log.append({"n": i, "pad": "y" * 100})
            acknowledged += 1
    log.close()
    reopened = HistoryLog(folder / "events", segment_records=1_000_000)
    assert [r["n"] for r in reopened.records()] == list(range(acknowledged))
    reopened.close()


def test_history_full_disk_when_a_new_segment_is_needed(tiny_fs):
    """No room for another file (inodes exhausted): still StorageFull, nothing lost."""
    folder = tiny_fs(1024, inodes=4)
    log = HistoryLog(folder / "events", segment_records=2)
    acknowledged = 0
    with pytest.raises(StorageFull):
        for i in range(100):
            log.append({"n": i})
            acknowledged += 1
    assert acknowledged >= 2
    log.close()
    reopened = HistoryLog(folder / "events", segment_records=2)
    assert [r["n"] for r in reopened.records()] == list(range(acknowledged))
    reopened.close()


# -- liveness --------------------------------------------------------------------------
def test_liveness_is_written_at_checkpoints_not_per_update(tmp_path):
    path = tmp_path / "liveness.json"
    table = LivenessTable(path, interval_s=3600)
    table.update("esp001", last_seen=1.0, rssi=-60)
    table.update("esp001", last_seen=2.0)
    assert not path.exists()
    assert table.checkpoint() is True
    assert table.checkpoint() is False  # nothing changed since
    assert json.loads(path.read_text()) == {"esp001": {"last_seen": 2.0, "rssi": -60}}
    table.update("esp002", last_seen=3.0)
    table.stop()  # shutdown writes what changed
    assert LivenessTable(path).get("esp002") == {"last_seen": 3.0}


def test_a_large_liveness_checkpoint_is_written_whole_a_slice_at_a_time(tmp_path):
    """10,000 devices' liveness took 60-130 ms to encode with the lock held; it is encoded
    a slice at a time now, and still read back whole."""
    from dropsync.store.liveness import SLICE

    path = tmp_path / "liveness.json"
    table = LivenessTable(path, interval_s=3600)
    count = SLICE * 4 + 7
    for n in range(count):
        table.update(f"esp{n:05d}", last_seen=1000.0 + n, attributes={"n": n}, ip="10.0.0.1")
    assert table.checkpoint()
    reopened = LivenessTable(path, interval_s=3600)
    assert [reopened.get(f"esp{n:05d}")["attributes"]["n"] for n in range(count)] \
        == list(range(count))
    assert json.loads(path.read_text()) == {f"esp{n:05d}": table.get(f"esp{n:05d}")
                                            for n in range(count)}


def test_liveness_checkpoints_in_the_background(tmp_path):
    path = tmp_path / "liveness.json"
    table = LivenessTable(path, interval_s=0.05)
    table.start()
    table.update("esp001", last_seen=5.0)
    for _ in range(100):
        if path.exists():
            break
        time.sleep(0.02)
    assert json.loads(path.read_text())["esp001"]["last_seen"] == 5.0
    table.stop()


def test_upsert_inserts_then_updates_one_document(tmp_path):
    table_file = TableFile(tmp_path / "meta.json")
    facts = KeyedTable(table_file, "meta", "name")
    assert facts.upsert({"name": "counter", "value": 1})["value"] == 1
    assert facts.upsert({"name": "counter", "value": 2})["value"] == 2
    assert len(facts) == 1
    table_file.close()
    reopened = KeyedTable(TableFile(tmp_path / "meta.json"), "meta", "name")
    assert reopened.get("counter")["value"] == 2


# -- an append is acknowledged only once synced ----------------------------------------
class SyncRecorder:
    """Wraps ``os.fdatasync``: per file, how many bytes a sync that has *returned* covered.
    Each sync is slowed a little, so an append acknowledged before its sync returns is
    seen by the check its caller makes at once."""

    def __init__(self, monkeypatch):
        self.real = os.fdatasync
        self.lock = threading.Lock()
        self.synced: dict[str, int] = {}
        monkeypatch.setattr(os, "fdatasync", self)

    def __call__(self, fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        size = os.fstat(fd).st_size  # written before this sync began: covered by it
        time.sleep(0.005)
        self.real(fd)
        with self.lock:
            self.synced[path] = max(size, self.synced.get(path, 0))

    def assert_synced(self, log: HistoryLog, records: list[dict]) -> None:
        for record in records:
            first, _, end = log._locate(record["seq"])
            path = str(log._path(first).resolve())
            with self.lock:
                covered = self.synced.get(path, 0)
            assert covered >= end, (record["seq"], path, covered, end)


def test_every_append_returns_only_after_its_segment_was_synced(tmp_path, monkeypatch):
    recorder = SyncRecorder(monkeypatch)
    log = HistoryLog(tmp_path / "events", segment_records=7)
    for n in range(10):  # one at a time, across a segment change
        recorder.assert_synced(log, [log.append({"n": n})])
    # a batch across three segments
    recorder.assert_synced(log, log.append_many([{"n": n} for n in range(20)]))
    failures: list[BaseException] = []

    def writer(base: int) -> None:  # appends that queue behind each other: group commit
        try:
            for n in range(15):
                if n % 5 == 4:
                    recorder.assert_synced(log, log.append_many(
                        [{"n": base + n, "part": part} for part in range(3)]))
                else:
                    recorder.assert_synced(log, [log.append({"n": base + n})])
        except BaseException as exc:  # handed to the test's thread
            failures.append(exc)

    threads = [threading.Thread(target=writer, args=(1000 * t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failures, failures[0]
    assert len(log) == 10 + 20 + 8 * (12 + 3 * 3)
    log.close()


def test_the_hubs_own_history_acknowledges_only_synced_messages(app, client, admin,
                                                                  monkeypatch):
    """The same through the hub's store: concurrent device messages (group-committed)."""
    recorder = SyncRecorder(monkeypatch)
    log = app.extensions["dropsync"].stores.history["messages"]
    tokens = {f"esp{n:03d}": admin.register_device(f"esp{n:03d}") for n in range(4)}
    failures: list[BaseException] = []

    def device(device_id: str, token: str) -> None:
        try:
            for n in range(10):
                response = client.post(f"/api/v1/device/messages/{device_id}",
                                       json={"message": f"m{n}"},
                                       headers={"Authorization": f"Bearer {token}"})
                assert response.status_code == 201, response.get_json()
                recorder.assert_synced(log, [response.get_json()])  # its seq, no lock
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=device, args=item) for item in tokens.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failures, failures[0]
