"""Staging rules, packages and manifests, and the watcher, inside one process."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest
from support import ADMIN_TOKEN
from sync_support import bearer, wait_until

from dropsync.sync.staging import StagingFolder, is_ignored_name, path_problem, target_problem

ADMIN = bearer(ADMIN_TOKEN)


def drop(staging: Path, rel: str, data: bytes) -> Path:
    path = staging / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def manifest(client, device_id, token, **headers):
    return client.get(f"/api/v1/files/manifest/{device_id}",
                      headers={**bearer(token), **headers})


def paths_of(response) -> dict[str, str]:
    return {f["path"]: f["sha256"] for f in response.get_json()["files"]}


# -- names -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", [".hidden", "notes.txt~", "a.part", "A.TMP", ".x.swp",
                                  "video.mp4.crdownload", "x.swp"])
def test_temp_and_hidden_names_are_ignored(name):
    assert is_ignored_name(name)


@pytest.mark.parametrize("name", ["firmware.bin", "config.json", "tmp", "part"])
def test_ordinary_names_are_not_ignored(name):
    assert not is_ignored_name(name)


@pytest.mark.parametrize("target, ok", [("esp001", True), ("AA:BB:CC:DD:EE:FF", True),
                                        ("group-field", True), ("all", True),
                                        ("group-", False), ("group-a b", False),
                                        ("my files", False), ("x" * 65, False)])
def test_target_folder_names(target, ok):
    assert (target_problem(target) is None) == ok


@pytest.mark.parametrize("parts, ok", [
    (["a.bin"], True), (["config", "wifi (2).json"], True),
    ([".."], False), (["a", "..", "b"], False), ([], False),
    (["caf\u00e9.txt"], False), (["a\uff0fb"], False), (["a\u2215b"], False),
    (["\u2024\u2024"], False), (["a\\b"], False), (["a\0b"], False), ([" lead"], False),
    (["x" * 201], False),
    # what an ESP8266's LittleFS holds: 31 characters a name, and (here) 8 folders deep
    (["data", "x" * 26 + ".json"], True), (["data", "greenhouse-north-calibration-v2.json"], False),
    (["y" * 32, "a.txt"], False), (["d"] * 8 + ["a.txt"], True), (["d"] * 9 + ["a.txt"], False),
    (["abcdefghijklmnopqrstuvwxyz01234"] * 6 + ["f"], True),  # 193 characters in all
])
def test_staged_paths_must_be_portable_to_a_device(parts, ok):
    assert (path_problem(parts) is None) == ok


def test_classify_ignores_top_level_files_and_refuses_links_out(tmp_path):
    staging = tmp_path / "staging"
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    folder = StagingFolder(staging)
    drop(staging, "README.md", b"x")
    drop(staging, "esp001/app.bin", b"x")
    (staging / "esp001" / "link.txt").symlink_to(outside)
    (staging / "esp001" / "inside.bin").symlink_to(staging / "esp001" / "app.bin")
    (staging / "esp002").symlink_to(tmp_path)
    scan = folder.scan()
    assert sorted(scan.files) == ["esp001/app.bin", "esp001/inside.bin"]
    assert sorted((p.kind, p.path) for p in scan.problems) == [
        ("outside_staging", "esp001/link.txt"), ("outside_staging", "esp002")]


# -- ingest and packages ---------------------------------------------------------------
def test_ingest_makes_a_package_once_and_new_content_a_new_version(hub, settings):
    staging = Path(settings["STAGING_DIR"])
    path = drop(staging, "esp001/fw/app.bin", b"one")
    first, changed = hub.staging.ingest_staged_file(path)
    assert changed and first["version"] == 1 and first["source"] == "folder"
    assert (first["target"], first["path"], first["size"]) == ("esp001", "fw/app.bin", 3)
    assert first["sha256"] == hashlib.sha256(b"one").hexdigest()
    assert hub.staging.ingest_staged_file(path) == (first, False)  # nothing new: same record

    other, _ = hub.staging.ingest_staged_file(drop(staging, "all/readme.txt", b"hi"))
    path.write_bytes(b"two")
    second, changed = hub.staging.ingest_staged_file(path)
    assert changed and second["id"] == first["id"]
    assert second["version"] > other["version"] > first["version"]  # one hub-wide counter
    assert first["sha256"] not in hub.blobs  # the replaced blob is gone
    assert second["sha256"] in hub.blobs


def test_touched_file_with_the_same_content_keeps_its_version(hub, settings):
    path = drop(Path(settings["STAGING_DIR"]), "esp001/a.bin", b"same")
    first, _ = hub.staging.ingest_staged_file(path)
    os.utime(path, ns=(1, 1))
    again, changed = hub.staging.ingest_staged_file(path)
    assert not changed and again["version"] == first["version"]
    assert again["staged"]["mtime_ns"] == 1


def test_versions_are_never_reused_after_a_withdraw(hub, settings):
    path = drop(Path(settings["STAGING_DIR"]), "esp001/a.bin", b"v1")
    first, _ = hub.staging.ingest_staged_file(path)
    hub.staging.withdraw(first["id"])
    assert not path.exists()  # the folder is the desired state: the file goes too
    drop(Path(settings["STAGING_DIR"]), "esp001/a.bin", b"v2")
    again, _ = hub.staging.ingest_staged_file(path)
    assert again["id"] == first["id"] and again["version"] > first["version"]


def test_reconcile_withdraws_removed_files_and_returns_new_ones(hub, settings):
    staging = Path(settings["STAGING_DIR"])
    kept = drop(staging, "esp001/kept.bin", b"k")
    removed = drop(staging, "esp001/removed.bin", b"r")
    for path in (kept, removed):
        hub.staging.ingest_staged_file(path)
    removed.unlink()
    fresh = drop(staging, "group-field/new.bin", b"n")
    kept.write_bytes(b"changed")
    waiting = hub.staging.reconcile()
    assert sorted(s.path for s in waiting) == sorted([kept, fresh])
    assert [p["path"] for p in hub.packages.list_packages()] == ["kept.bin"]


# -- manifests -------------------------------------------------------------------------
def test_manifest_is_the_union_with_the_most_specific_winning(hub, admin, client, settings):
    staging = Path(settings["STAGING_DIR"])
    token = admin.register_device("esp001", groups=["field", "north"])
    other = admin.register_device("esp002")
    for rel, data in [("all/common.txt", b"all"), ("all/config.json", b"all"),
                      ("group-field/config.json", b"field"), ("group-north/config.json",
                                                                b"north"),
                      ("group-north/north.txt", b"n"), ("esp001/config.json", b"mine"),
                      ("esp002/theirs.txt", b"t"), ("group-south/south.txt", b"s")]:
        hub.staging.ingest_staged_file(drop(staging, rel, data))
    sha = {data: hashlib.sha256(data).hexdigest() for data in (b"all", b"n", b"mine")}
    assert paths_of(manifest(client, "esp001", token)) == {
        "common.txt": sha[b"all"], "config.json": sha[b"mine"], "north.txt": sha[b"n"]}
    (staging / "esp001" / "config.json").unlink()
    hub.staging.reconcile()
    # between two groups, the one whose name sorts first wins
    assert paths_of(manifest(client, "esp001", token))["config.json"] == \
        hashlib.sha256(b"field").hexdigest()
    assert set(paths_of(manifest(client, "esp002", other))) == \
        {"common.txt", "config.json", "theirs.txt"}


def test_manifest_version_rises_only_when_its_content_changes(hub, admin, client, settings,
                                                              tmp_path):
    staging = Path(settings["STAGING_DIR"])
    token = admin.register_device("esp001")
    empty = manifest(client, "esp001", token)
    assert empty.get_json() == {"device": "esp001", "version": 1, "files": []}
    etag = empty.headers["ETag"]
    hub.staging.ingest_staged_file(drop(staging, "esp002/other.bin", b"x"))
    unchanged = manifest(client, "esp001", token, **{"If-None-Match": etag})
    assert unchanged.status_code == 304 and unchanged.data == b""

    path = drop(staging, "esp001/a.bin", b"1")
    hub.staging.ingest_staged_file(path)
    added = manifest(client, "esp001", token, **{"If-None-Match": etag})
    assert added.status_code == 200 and added.get_json()["version"] == 2
    path.write_bytes(b"22")
    hub.staging.ingest_staged_file(path)
    assert manifest(client, "esp001", token).get_json()["version"] == 3
    admin.patch("/devices/esp001", json={"groups": ["field"]})
    hub.staging.ingest_staged_file(drop(staging, "group-field/g.bin", b"g"))
    joined = manifest(client, "esp001", token)
    assert joined.get_json()["version"] == 4 and len(joined.get_json()["files"]) == 2
    hub.staging.withdraw(joined.get_json()["files"][0]["id"])
    assert manifest(client, "esp001", token).get_json()["version"] == 5


def test_a_manifest_poll_that_changes_nothing_writes_nothing(hub, admin, client, settings):
    token = admin.register_device("esp001")
    hub.staging.ingest_staged_file(drop(Path(settings["STAGING_DIR"]), "all/a.bin", b"a"))
    first = manifest(client, "esp001", token)
    hub.stores.liveness.checkpoint()
    data_dir = Path(settings["DATA_DIR"])

    def stamps():
        return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in data_dir.rglob("*")
                if p.is_file() and p.name != "liveness.json"}

    before = stamps()
    for _ in range(5):
        assert manifest(client, "esp001", token).get_json() == first.get_json()
        assert manifest(client, "esp001", token,
                        **{"If-None-Match": first.headers["ETag"]}).status_code == 304
    assert stamps() == before


def test_manifest_size_for_twenty_files_stays_small(hub, admin, client, settings):
    token = admin.register_device("esp001")
    staging = Path(settings["STAGING_DIR"])
    for i in range(20):
        hub.staging.ingest_staged_file(drop(staging, f"esp001/config/file{i:02d}.json",
                                            b"x" * 1000))
    body = manifest(client, "esp001", token).data
    assert len(body) < 6 * 1024, len(body)
    # no single entry needs more than a few hundred bytes of parse buffer
    assert max(len(line) for line in body.split(b'},{')) < 400


# -- problems --------------------------------------------------------------------------
def test_unknown_and_invalid_targets_are_reported(hub, admin, client, settings, caplog):
    staging = Path(settings["STAGING_DIR"])
    admin.register_device("esp001", groups=["field"])
    for rel in ("esp001/a.bin", "group-field/b.bin", "all/c.bin", "esp999/d.bin",
                "group-nobody/e.bin", "bad target/f.bin", "esp001/caf\u00e9.txt",
                "esp001/data/greenhouse-north-calibration-table-v2.json"):
        drop(staging, rel, b"x")
    hub.staging.reconcile()
    health = client.get("/health").get_json()
    assert health["status"] == "degraded"
    reported = {(p["kind"], p["path"]) for p in health["staging"]["problems"]}
    assert reported == {("unknown_target", "esp999"), ("unknown_target", "group-nobody"),
                        ("invalid_target", "bad target"),
                        ("unsupported_name", "esp001/caf\u00e9.txt"),
                        # a name an ESP8266's LittleFS cannot hold (31 characters at most)
                        ("unsupported_name",
                         "esp001/data/greenhouse-north-calibration-table-v2.json")}
    via_admin = admin.get("/staging").get_json()
    assert {(p["kind"], p["path"]) for p in via_admin["problems"]} == reported
    assert any("esp999" in r.getMessage() and r.levelname == "WARNING"
               for r in caplog.records)
    # registering the device fixes it
    admin.register_device("esp999")
    remaining = {p["path"] for p in client.get("/health").get_json()["staging"]["problems"]}
    assert "esp999" not in remaining


# -- the watcher -----------------------------------------------------------------------
def test_watcher_takes_in_a_dropped_file_once(watched_hub, settings):
    hub = watched_hub()
    staging = Path(settings["STAGING_DIR"])
    path = staging / "esp001" / "app.bin"
    path.parent.mkdir(parents=True)
    with open(path, "wb") as out:
        for _ in range(5):
            out.write(b"x" * 1000)
            out.flush()
    package = wait_until(lambda: hub.packages.catalog.by_slot.get("esp001/app.bin"),
                         message="package")
    assert package["size"] == 5000 and package["version"] == 1
    # the hub's own read of the file and a touch-free wait must not make a second version
    wait_until(lambda: hub.watcher.state()["pending"] == 0, message="nothing pending")
    # the counter moves just after the package is published: wait for it, then it must be 1
    wait_until(lambda: hub.watcher.ingested >= 1, message="ingest counted")
    assert hub.watcher.ingested == 1


def test_watcher_temp_then_rename_makes_exactly_one_package(watched_hub, settings):
    hub = watched_hub()
    staging = Path(settings["STAGING_DIR"])
    (staging / "esp001").mkdir(parents=True)
    temp = staging / "esp001" / "app.bin.part"
    temp.write_bytes(b"a" * 10_000)
    temp.rename(staging / "esp001" / "app.bin")
    wait_until(lambda: hub.packages.catalog.by_slot.get("esp001/app.bin"), message="package")
    wait_until(lambda: hub.watcher.state()["pending"] == 0, message="nothing pending")
    wait_until(lambda: hub.watcher.ingested >= 1, message="ingest counted")
    assert [p["slot"] for p in hub.packages.list_packages()] == ["esp001/app.bin"]
    assert hub.watcher.ingested == 1


def test_watcher_withdraws_a_deleted_file_and_a_removed_folder(watched_hub, settings):
    hub = watched_hub()
    staging = Path(settings["STAGING_DIR"])
    drop(staging, "esp001/a.bin", b"a")
    drop(staging, "group-x/sub/b.bin", b"b")
    wait_until(lambda: len(hub.packages.list_packages()) == 2, message="two packages")
    (staging / "esp001" / "a.bin").unlink()
    (staging / "group-x" / "sub" / "b.bin").unlink()
    (staging / "group-x" / "sub").rmdir()
    wait_until(lambda: not hub.packages.list_packages(), message="both withdrawn")


def test_polling_observer_works_without_close_events(watched_hub, settings):
    hub = watched_hub(STAGING_OBSERVER="polling")
    drop(Path(settings["STAGING_DIR"]), "all/polled.txt", b"p")
    wait_until(lambda: hub.packages.catalog.by_slot.get("all/polled.txt"), message="package")
    assert hub.watcher.state()["observer"] == "polling"


def test_files_present_at_start_are_taken_in_by_the_first_rescan(watched_hub, settings):
    staging = Path(settings["STAGING_DIR"])
    drop(staging, "esp001/early.bin", b"e")
    drop(staging, "esp001/.hidden", b"h")
    hub = watched_hub()
    wait_until(lambda: hub.packages.list_packages(), message="package")
    wait_until(lambda: hub.watcher.state()["pending"] == 0, message="nothing pending")
    assert [p["slot"] for p in hub.packages.list_packages()] == ["esp001/early.bin"]


def test_open_for_writing_is_told_by_a_read_lease(tmp_path):
    from dropsync.sync.watcher import is_open_for_writing

    path = tmp_path / "f.bin"
    with open(path, "wb") as writer:
        writer.write(b"x")
        assert is_open_for_writing(str(path)) is True
        with open(path, "rb"):
            assert is_open_for_writing(str(path)) is True
    with open(path, "rb"):
        assert is_open_for_writing(str(path)) is False
    assert is_open_for_writing(str(tmp_path / "missing")) is None


def test_a_writer_the_events_never_saw_open_holds_the_file_back(watched_hub, settings):
    """Opened before the watcher started: no open event, found by the first rescan."""
    path = Path(settings["STAGING_DIR"]) / "esp001" / "slow.bin"
    path.parent.mkdir(parents=True)
    hub = watched_hub(start_watcher=False)
    with open(path, "wb") as writer:
        writer.write(b"a" * 1000)
        writer.flush()
        hub.watcher.start()
        wait_until(lambda: hub.watcher.last_rescan, message="first rescan")
        time.sleep(1.0)  # ten settle times with the writer pausing
        assert hub.packages.list_packages() == []
        writer.write(b"b" * 1000)
    package = wait_until(lambda: hub.packages.catalog.by_slot.get("esp001/slow.bin"),
                         message="taken in once closed")
    assert package["size"] == 2000


def test_a_missing_staging_folder_withdraws_nothing_and_is_watched_again(watched_hub,
                                                                        settings):
    staging = Path(settings["STAGING_DIR"])
    drop(staging, "esp001/kept.bin", b"k")
    hub = watched_hub(STAGING_RESCAN_S=0.3)
    wait_until(lambda: hub.packages.list_packages(), message="package")
    staging.rename(staging.with_name("away"))  # not deleted file by file: just gone
    report = wait_until(lambda: (r := hub.staging_report())["state"] != "ok" and r,
                        message="reported")
    assert [p["kind"] for p in report["problems"]] == ["staging_missing"]
    assert [p["path"] for p in hub.packages.list_packages()] == ["kept.bin"]
    drop(staging, "esp001/kept.bin", b"k")
    drop(staging, "esp001/new.bin", b"n")
    wait_until(lambda: len(hub.packages.list_packages()) == 2, message="back")
    drop(staging, "esp001/after.bin", b"a")  # seen by the renewed watch or a rescan
    wait_until(lambda: len(hub.packages.list_packages()) == 3, message="watched again")
    assert [p["kind"] for p in hub.staging_report()["problems"]] == ["unknown_target"]
