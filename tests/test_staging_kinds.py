"""What kind of file the staging folder takes in: regular files with one name that were
never the hub's own. A FIFO (or socket, or device) is never opened and is reported; a hard
link to a hub file stays refused after the hub rewrites that file, across restarts."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest
from support import ADMIN_TOKEN
from sync_support import bearer, wait_until

from dropsync import create_app
from dropsync.sync.staging import Refused

ADMIN = bearer(ADMIN_TOKEN)


def manifest_paths(client, device_id: str, token: str) -> list[str]:
    files = client.get(f"/api/v1/files/manifest/{device_id}", headers=bearer(token))
    return sorted(f["path"] for f in files.get_json()["files"])


def problems(client) -> set[tuple[str, str]]:
    found = client.get("/api/v1/admin/staging", headers=ADMIN).get_json()["problems"]
    return {(p["kind"], p["path"]) for p in found if p["kind"] != "unknown_target"}


def unblock(fifo: Path) -> None:
    """Give a reader stuck in a blocking open of ``fifo`` its writer, so it returns."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass  # no reader is waiting


def test_a_fifo_in_staging_is_reported_and_later_files_are_still_taken_in(watched_hub):
    hub = watched_hub(start_watcher=True)
    folder = hub.staging.root / "esp001" / "data"
    folder.mkdir(parents=True)
    fifo = folder / "pipe.txt"
    os.mkfifo(fifo)
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(folder / "sock.txt"))
        wait_until(lambda: not hub.watcher.state()["pending"], timeout=10,
                   message="the FIFO settled and tried")  # settle 0.1 s
        time.sleep(0.3)
        (folder / "later.txt").write_text("dropped after the FIFO")
        try:
            wait_until(lambda: "esp001/data/later.txt" in hub.packages.catalog.by_slot,
                       timeout=10, message="the file dropped after a FIFO taken in")
        finally:
            unblock(fifo)  # the old code sat in open(): let its thread end
        report = hub.staging_report()
        kinds = {(p["kind"], p["path"]) for p in report["problems"]}
        assert ("not_regular_file", "esp001/data/pipe.txt") in kinds
        assert hub.watcher.running
        hub.watcher.rescan()  # the rescan reports both, and still opens neither
        scanned = {(p.kind, p.path) for p in hub.staging.folder.scan().problems}
        assert {("not_regular_file", "esp001/data/pipe.txt"),
                ("not_regular_file", "esp001/data/sock.txt")} <= scanned
        assert sorted(hub.packages.catalog.by_slot) == ["esp001/data/later.txt"]
    finally:
        sock.close()
        unblock(fifo)


def test_a_fifo_swapped_in_after_the_check_is_opened_without_blocking(hub):
    folder = hub.staging.root / "esp001"
    folder.mkdir(parents=True)
    path = folder / "a.txt"
    path.write_text("regular when classified")
    staged = hub.staging.folder.classify(path)
    path.unlink()
    os.mkfifo(path)
    rescue = threading.Timer(5, unblock, (path,))  # a blocking open would never return
    rescue.start()
    try:
        with pytest.raises(Refused) as refused:
            hub.staging.folder.open(staged).close()
        assert refused.value.problem.kind == "not_regular_file"
    finally:
        rescue.cancel()
        unblock(path)


def test_a_hard_link_to_a_hub_file_stays_refused_after_the_hub_rewrites_it(settings):
    app = create_app(settings)
    hub = app.extensions["dropsync"]
    client = app.test_client()
    token = client.post("/api/v1/admin/devices/register", json={"id": "esp001"},
                        headers=ADMIN).get_json()["token"]
    data = hub.stores.data_dir
    (hub.staging.root / "esp001").mkdir(parents=True)
    (hub.staging.root / "all").mkdir()
    links = {"esp001/devices.json": data / "devices.json", "all/auth.json": data / "auth.json"}
    for slot, hub_file in links.items():
        os.link(hub_file, hub.staging.root / slot)
    # a device's upload, linked into staging, then deleted by the device
    upload = client.post("/api/v1/files/upload/esp001?filename=secret.txt", data=b"mine",
                         headers={**bearer(token), "Content-Type": "application/octet-stream"})
    assert upload.status_code == 201, upload.get_json()
    os.link(data / "uploads" / "esp001" / "secret.txt", hub.staging.root / "all" / "up.txt")
    assert client.delete("/api/v1/files/files/esp001/secret.txt",
                         headers=bearer(token)).status_code == 200
    (hub.staging.root / "all" / "fine.txt").write_text("an operator's file")

    def take_in_everything() -> None:
        for staged in hub.staging.reconcile():
            hub.staging.ingest_staged_file(staged.path)
        for slot in links:
            assert hub.staging.ingest_staged_file(hub.staging.root / slot) == (None, False)

    take_in_everything()
    assert problems(client) >= {("hardlink", slot) for slot in links}
    # the hub rewrites both files by rename: each staged name is now the only link
    for n in range(3):
        client.post("/api/v1/admin/devices/register", json={"id": f"esp10{n}"}, headers=ADMIN)
        client.post("/api/v1/admin/operators", headers=ADMIN,
                    json={"username": f"op{n}", "password": "a-long-enough-password"})
    for slot in links:
        assert os.stat(hub.staging.root / slot).st_nlink == 1
    take_in_everything()
    assert manifest_paths(client, "esp001", token) == ["fine.txt"]
    assert {("hub_file", slot) for slot in [*links, "all/up.txt"]} <= problems(client)
    hub.close()

    # after a restart (the record is on disk), and fresh files still come in
    app = create_app(settings)
    hub = app.extensions["dropsync"]
    client = app.test_client()
    try:
        (hub.staging.root / "all" / "new.txt").write_text("dropped after the restart")
        take_in_everything()
        assert manifest_paths(client, "esp001", token) == ["fine.txt", "new.txt"]
        assert {("hub_file", slot) for slot in [*links, "all/up.txt"]} <= problems(client)
    finally:
        hub.close()


def test_a_staged_file_the_disk_cannot_hold_is_reported_without_a_traceback(
        watched_hub, settings, tiny_fs, caplog):
    data = tiny_fs(8 * 1024)  # the data folder on an 8 MiB disk
    hub = watched_hub(start_watcher=True, DATA_DIR=str(data / "data"))
    folder = hub.staging.root / "all"
    folder.mkdir(parents=True)
    with open(folder / "sparse.bin", "wb") as sparse:  # 64 MiB, nothing on the disk
        sparse.truncate(64 << 20)

    def reported():
        return [p for p in hub.staging_report()["problems"] if p["kind"] == "storage_full"]

    found = wait_until(reported, timeout=20, message="the full disk in the staging report")
    assert found[0]["path"] == "all/sparse.bin"
    assert not any(r.exc_info for r in caplog.records), "a traceback was logged"
    assert "all/sparse.bin" not in hub.packages.catalog.by_slot
    (folder / "sparse.bin").unlink()
    (folder / "small.bin").write_bytes(os.urandom(1000))
    wait_until(lambda: "all/small.bin" in hub.packages.catalog.by_slot, timeout=20,
               message="a file that fits taken in")
