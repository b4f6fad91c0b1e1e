"""The files API in one process: manifests, chunk and Range downloads, sync reports, and
the admin package routes."""

from __future__ import annotations

import hashlib
import os
import signal
from pathlib import Path

import pytest
import requests
from conftest import AdminClient
from support import ADMIN_TOKEN, Observed, assert_error
from sync_support import bearer, entry_of, fetch, stage, tree

from dropsync import create_app

ADMIN = bearer(ADMIN_TOKEN)
FILES = "/api/v1/files"


@pytest.fixture
def fleet(admin, client):
    """Two devices, esp001 (group field) and esp002, and their tokens."""
    return {"esp001": admin.register_device("esp001", groups=["field"]),
            "esp002": admin.register_device("esp002")}


# -- auth ------------------------------------------------------------------------------
@pytest.mark.parametrize("route", ["/manifest/{id}", "/sync-packages/{id}",
                                   "/sync-history/{id}", "/list/{id}",
                                   "/download/{id}/abc/1", "/download/{id}/abc/1/0"])
def test_every_files_route_needs_the_devices_own_token(client, fleet, route):
    path = FILES + route.format(id="esp001")
    assert_error(client.get(path), 401, "missing_credentials")
    assert_error(client.get(path, headers=bearer("nope")), 401, "invalid_token")
    assert_error(client.get(path, headers=bearer(fleet["esp002"])), 403, "wrong_device")


# -- downloads -------------------------------------------------------------------------
def test_files_get_32_kib_chunks_and_firmware_images_4_kib_by_default(settings):
    """A node streams a file's chunk to flash, but holds a firmware chunk in RAM."""
    defaults = {k: v for k, v in settings.items() if k != "CHUNK_SIZE"}
    app = create_app(defaults)
    try:
        client = app.test_client()
        token = AdminClient(client).register_device("esp001")
        image = bytes([0xE9]) + os.urandom(100_000)
        stage(AdminClient(client), "esp001/data/log.bin", image[1:])
        stage(AdminClient(client), "esp001/firmware/app.bin", image)
        chunking = {entry["path"]: (entry["chunk_size"], entry["chunks"]) for entry in
                    client.get(f"{FILES}/manifest/esp001", headers=bearer(token))
                    .get_json()["files"]}
        assert chunking == {"data/log.bin": (32768, 4), "firmware/app.bin": (4096, 25)}
    finally:
        app.extensions["dropsync"].close()


def test_every_chunk_and_the_whole_file_verify_against_the_manifest(client, admin, fleet):
    data = os.urandom(4096 * 3 + 1234)
    stage(admin, "esp001/fw/app.bin", data)
    entry = entry_of(client, "esp001", fleet["esp001"], "fw/app.bin")
    assert (entry["size"], entry["chunks"], entry["chunk_size"]) == (len(data), 4, 4096)
    received = b""
    for index in range(entry["chunks"]):
        chunk = fetch(client, f"{entry['url']}/{index}", fleet["esp001"])
        assert chunk.status_code == 200
        assert chunk.headers["Content-Type"] == "application/octet-stream"
        assert int(chunk.headers["Content-Length"]) == len(chunk.data)
        assert chunk.headers["X-Chunk-SHA256"] == hashlib.sha256(chunk.data).hexdigest()
        received += chunk.data
    assert hashlib.sha256(received).hexdigest() == entry["sha256"]

    whole = fetch(client, entry["url"], fleet["esp001"])
    assert whole.status_code == 200 and whole.data == data
    assert whole.headers["x-MD5"] == entry["md5"] == hashlib.md5(data).hexdigest()
    assert whole.headers["Content-Length"] == str(len(data))
    assert whole.headers["Accept-Ranges"] == "bytes"
    head = client.head(entry["url"], headers=bearer(fleet["esp001"]), buffered=True)
    assert head.status_code == 200 and head.headers["Content-Length"] == str(len(data))


VALID_RANGES = [("bytes=0-99", 0, 100), ("bytes=5000-", 5000, 10_000),
                ("bytes=-100", 9900, 10_000), ("bytes=9000-20000", 9000, 10_000),
                ("bytes=9999-9999", 9999, 10_000)]
UNSERVABLE_RANGES = ["bytes=10000-", "bytes=20000-20010", "bytes=0-1,5-9", "bytes=abc",
                     "bytes=-0"]


def test_ranges_get_206_with_exactly_those_bytes_or_416_never_the_whole_file(client, admin,
                                                                            fleet):
    data = os.urandom(10_000)
    stage(admin, "esp001/a.bin", data)
    entry = entry_of(client, "esp001", fleet["esp001"], "a.bin")
    for header, start, end in VALID_RANGES:
        response = fetch(client, entry["url"], fleet["esp001"], Range=header)
        assert response.status_code == 206, header
        assert response.data == data[start:end], header
        assert response.headers["Content-Range"] == f"bytes {start}-{end - 1}/10000"
        assert response.headers["Content-Length"] == str(end - start)
    for header in UNSERVABLE_RANGES:
        response = fetch(client, entry["url"], fleet["esp001"], Range=header)
        assert_error(response, 416, "requested_range_not_satisfiable")
        assert response.headers["Content-Range"] == "bytes */10000", header


def test_devices_fetch_only_what_their_manifest_lists(client, admin, fleet):
    stage(admin, "esp001/mine.bin", b"secret to esp001")
    stage(admin, "group-field/field.bin", b"for the field group")
    mine = entry_of(client, "esp001", fleet["esp001"], "mine.bin")
    field = entry_of(client, "esp001", fleet["esp001"], "field.bin")
    other = bearer(fleet["esp002"])
    for entry in (mine, field):
        own_path = f"{FILES}/download/esp002/{entry['id']}/{entry['version']}"
        for path in (own_path, own_path + "/0"):
            assert_error(client.get(path, headers=other), 403, "not_in_manifest")
        assert_error(client.get(entry["url"], headers=other), 403, "wrong_device")
    assert_error(client.post(f"{FILES}/sync-status/esp002", headers=other, json={
        "package": mine["id"], "version": mine["version"], "state": "applied"}),
        403, "not_in_manifest")


def test_a_replaced_version_gets_409_and_never_mixes_with_the_new_one(client, admin, fleet):
    old = os.urandom(9000)
    stage(admin, "esp001/app.bin", old)
    before = entry_of(client, "esp001", fleet["esp001"], "app.bin")
    token = bearer(fleet["esp001"])
    assert fetch(client, f"{before['url']}/0", fleet["esp001"]).data == old[:4096]
    stage(admin, "esp001/app.bin", os.urandom(9000))
    after = entry_of(client, "esp001", fleet["esp001"], "app.bin")
    assert after["id"] == before["id"] and after["version"] > before["version"]
    for path in (f"{before['url']}/1", before["url"]):
        error = assert_error(fetch(client, path, fleet["esp001"]), 409, "version_replaced")
        assert error["details"] == {"current_version": after["version"]}
    assert fetch(client, f"{after['url']}/1", fleet["esp001"]).status_code == 200
    future = f"{FILES}/download/esp001/{after['id']}/{after['version'] + 1}"
    assert_error(client.get(future, headers=token), 404, "no_such_version")
    assert_error(client.get(f"{after['url']}/3", headers=token), 404, "no_such_chunk")
    assert_error(client.get(f"{FILES}/download/esp001/000000000000/1", headers=token), 404,
                 "no_such_package")


def test_whole_downloads_can_be_handed_to_nginx(settings, tmp_path):
    app = create_app({**settings, "DOWNLOAD_ACCEL_PREFIX": "/_blobs/"})
    try:
        client = app.test_client()
        token = client.post("/api/v1/admin/devices/register", json={"id": "esp001"},
                            headers=ADMIN).get_json()["token"]
        client.put("/api/v1/admin/staging/esp001/a.bin", data=b"abc", headers=ADMIN)
        entry = entry_of(client, "esp001", token, "a.bin")
        response = fetch(client, entry["url"], token)
        sha = entry["sha256"]
        assert response.headers["X-Accel-Redirect"] == f"/_blobs/{sha[:2]}/{sha}"
        assert response.data == b"" and response.headers["x-MD5"] == entry["md5"]
    finally:
        app.extensions["dropsync"].close()


# -- sync status -----------------------------------------------------------------------
def test_sync_reports_become_history_and_package_progress(client, admin, fleet):
    package = stage(admin, "group-field/cfg.json", b"x" * 1000)
    admin.register_device("esp003", groups=["field"])
    token = bearer(fleet["esp001"])
    reports = [{"state": "downloading", "received": 500}, {"state": "verified"},
               {"state": "applied"}]
    for report in reports:
        response = client.post(f"{FILES}/sync-status/esp001", headers=token, json={
            "package": package["id"], "version": package["version"], **report})
        assert response.status_code == 201, response.get_json()
    shown = admin.get(f"/packages/{package['id']}").get_json()
    assert shown["progress"] == {"targets": 2, "have": 1, "downloading": 0, "failed": 0}
    by_device = {d["device_id"]: d for d in shown["devices"]}
    assert by_device["esp001"]["state"] == "applied" and by_device["esp001"]["percent"] == 100
    assert by_device["esp003"]["state"] == "pending"
    history = client.get(f"{FILES}/sync-history/esp001", headers=token,
                         query_string={"limit": 2}).get_json()
    assert [h["state"] for h in history["history"]] == ["applied", "verified"]
    assert history["count"] == 2

    newer = stage(admin, "group-field/cfg.json", b"y" * 1000)
    shown = admin.get(f"/packages/{newer['id']}").get_json()
    assert shown["progress"]["have"] == 0
    assert {d["device_id"]: d["state"] for d in shown["devices"]}["esp001"] == "outdated"
    listed = admin.get("/packages").get_json()
    assert listed["count"] == 1 and listed["packages"][0]["progress"]["targets"] == 2


@pytest.mark.parametrize("body, status, code", [
    ({"state": "failed"}, 400, "validation_failed"),
    ({"state": "done"}, 400, "validation_failed"),
    ({"state": "downloading", "received": -1}, 400, "validation_failed"),
    ({"state": "applied", "version": 99}, 404, "no_such_version"),
    ({"state": "applied", "package": "ffffffffffff"}, 404, "no_such_package"),
])
def test_bad_sync_reports_are_refused(client, admin, fleet, body, status, code):
    package = stage(admin, "esp001/a.bin", b"a")
    report = {"package": package["id"], "version": package["version"], **body}
    assert_error(client.post(f"{FILES}/sync-status/esp001", headers=bearer(fleet["esp001"]),
                             json=report), status, code)


def test_a_failure_keeps_its_reason(client, admin, fleet):
    package = stage(admin, "esp001/a.bin", b"a")
    client.post(f"{FILES}/sync-status/esp001", headers=bearer(fleet["esp001"]), json={
        "package": package["id"], "version": package["version"], "state": "failed",
        "reason": "sha256 mismatch on chunk 3"})
    device = admin.get(f"/packages/{package['id']}").get_json()["devices"][0]
    assert (device["state"], device["reason"]) == ("failed", "sha256 mismatch on chunk 3")


def test_sync_packages_lists_the_manifests_files(client, admin, fleet):
    stage(admin, "all/a.txt", b"a")
    stage(admin, "esp001/b.txt", b"b", source="dashboard")
    token = bearer(fleet["esp001"])
    listed = client.get(f"{FILES}/sync-packages/esp001", headers=token).get_json()
    manifest = client.get(f"{FILES}/manifest/esp001", headers=token).get_json()
    assert [p["id"] for p in listed["packages"]] == [f["id"] for f in manifest["files"]]
    assert {p["path"]: (p["target"], p["source"]) for p in listed["packages"]} == {
        "a.txt": ("all", "api"), "b.txt": ("esp001", "dashboard")}


# -- admin -----------------------------------------------------------------------------
def test_withdraw_removes_the_package_its_file_and_its_blob(client, admin, fleet, hub,
                                                            settings):
    package = stage(admin, "esp001/a.bin", b"gone soon")
    client.post(f"{FILES}/sync-status/esp001", headers=bearer(fleet["esp001"]), json={
        "package": package["id"], "version": package["version"], "state": "applied"})
    assert package["id"] in hub.stores.sync_state.by_package()
    staged = Path(settings["STAGING_DIR"]) / "esp001" / "a.bin"
    assert staged.read_bytes() == b"gone soon"
    assert admin.delete(f"/packages/{package['id']}").get_json() == {
        "withdrawn": package["id"], "target": "esp001", "path": "a.bin"}
    assert not staged.exists() and package["sha256"] not in hub.blobs
    assert package["id"] not in hub.stores.sync_state.by_package()
    assert_error(admin.get(f"/packages/{package['id']}"), 404, "no_such_package")
    assert_error(admin.delete(f"/packages/{package['id']}"), 404)
    assert client.get(f"{FILES}/manifest/esp001",
                      headers=bearer(fleet["esp001"])).get_json()["files"] == []


def test_staging_the_same_bytes_again_changes_nothing(admin):
    first = stage(admin, "esp001/a.bin", b"same")
    again = stage(admin, "esp001/a.bin", b"same")
    assert first["changed"] and not again["changed"]
    assert again["version"] == first["version"]


def test_staging_upload_limit_answers_413_and_leaves_nothing(settings, tmp_path):
    app = create_app({**settings, "STAGING_UPLOAD_MAX_BYTES": 1000})
    try:
        response = app.test_client().put("/api/v1/admin/staging/esp001/big.bin",
                                         data=b"x" * 5000, headers=ADMIN)
        assert_error(response, 413)
        assert tree(Path(settings["STAGING_DIR"])) == {}
    finally:
        app.extensions["dropsync"].close()


ESCAPING_STAGING_PATHS = [
    "esp001/../../outside.txt", "esp001/%2E%2E/%2E%2E/outside.txt", "../outside.txt",
    "esp001/%2Fetc%2Fpasswd", "esp001/a%00b.txt", "esp001/a%5Cb.txt",
    "esp001/a%EF%BC%8Fb.txt", "esp001/a%E2%88%95b.txt", "esp001/%E2%80%A4%E2%80%A4/x.txt",
    "esp001/.hidden", "esp001/a.part", "bad%20target/a.txt",
]


def test_staging_upload_refuses_paths_that_could_escape(admin, settings, tmp_path):
    before = tree(tmp_path)
    for target_path in ESCAPING_STAGING_PATHS:
        response = admin.client.put(f"/api/v1/admin/staging/{target_path}",
                                    data=b"payload", headers=ADMIN)
        if response.status_code == 308:  # "//" is merged by the router: a redirect
            assert response.headers["Location"].endswith("/staging/esp001/etc/passwd")
        else:
            assert response.status_code in (400, 404), target_path
            assert_error(response, response.status_code)
        assert tree(tmp_path) == before, target_path


def test_staging_upload_never_writes_through_a_symlink_out(admin, settings, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    staging = Path(settings["STAGING_DIR"])
    staging.mkdir(parents=True)
    (staging / "esp001").symlink_to(outside)
    assert_error(admin.client.put("/api/v1/admin/staging/esp001/sub/a.bin", data=b"x",
                                  headers=ADMIN), 403, "outside_staging")
    assert list(outside.iterdir()) == []


def test_openapi_documents_the_files_routes(client):
    paths = client.get("/api/v1/openapi.json").get_json()["paths"]
    whole = paths["/api/v1/files/download/{device_id}/{package_id}/{version}"]["get"]
    assert {"200", "206", "304", "403", "409", "416"} <= set(whole["responses"])
    assert "application/octet-stream" in whole["responses"]["200"]["content"]
    chunk = paths["/api/v1/files/download/{device_id}/{package_id}/{version}/{index}"]["get"]
    assert "409" in chunk["responses"]
    assert "304" in paths["/api/v1/files/manifest/{device_id}"]["get"]["responses"]
    assert paths["/api/v1/files/upload/{device_id}"]["post"]["security"] == \
        [{"deviceToken": []}]
    for route in ("/api/v1/admin/packages", "/api/v1/admin/packages/{package_id}",
                  "/api/v1/admin/staging/{target}/{path}", "/api/v1/admin/uploads",
                  "/api/v1/files/sync-status/{device_id}",
                  "/api/v1/files/files/{device_id}/{filename}"):
        assert route in paths, route


def test_a_fleets_manifests_cost_no_write_each_and_keep_their_versions(settings):
    """A file for every device changes every manifest at once: versions come from blocks
    reserved on disk (one write per thousand), not a store write each; they are
    checkpointed and survive a restart."""
    app = create_app(settings)
    client = app.test_client()
    admin = AdminClient(client)
    tokens = {f"node{i:03d}": f"node-token-{i:03d}-abcdefghijklmnop" for i in range(300)}
    assert admin.post("/devices/import", json={"tokens": tokens}).status_code == 200
    stage(admin, "all/data/a.bin", b"first")
    observed = Observed()

    def manifests() -> dict[str, int]:
        return {device_id: client.get(f"{FILES}/manifest/{device_id}",
                                      headers=bearer(token)).get_json()["version"]
                for device_id, token in tokens.items()}

    first = manifests()
    assert len(set(first.values())) == 300  # one hub-wide counter
    assert observed.count("store_write") == 1  # the block reservation, not one per device
    stage(admin, "all/data/b.bin", b"second")
    second = manifests()
    assert all(second[d] > first[d] for d in tokens)
    assert manifests() == second  # unchanged content keeps its version
    app.extensions["dropsync"].close()  # a clean stop checkpoints them

    app = create_app(settings)
    client = app.test_client()
    try:
        assert manifests() == second
    finally:
        app.extensions["dropsync"].close()


def test_a_crash_never_gives_an_old_manifest_version_to_new_content(hub_process):
    """SIGKILL before any checkpoint: the versions given are forgotten, but the next ones
    start past the whole block the killed hub had reserved."""
    env = {"DROPSYNC_ADMIN_TOKEN": ADMIN_TOKEN, "DROPSYNC_LIVENESS_CHECKPOINT_S": "3600",
           "DROPSYNC_STAGING_WATCH": "false"}
    hub = hub_process(env)
    admin_headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    tokens = {f"node{i}": f"node-token-{i}-abcdefghijklmnop" for i in range(5)}
    assert requests.post(f"{hub.url}/api/v1/admin/devices/import", json={"tokens": tokens},
                         headers=admin_headers, timeout=30).status_code == 200

    def stage_and_read(content: bytes) -> dict[str, int]:
        assert requests.put(f"{hub.url}/api/v1/admin/staging/all/data/a.bin", data=content,
                            headers=admin_headers, timeout=30).status_code == 200
        return {device_id: requests.get(f"{hub.url}{FILES}/manifest/{device_id}",
                                        headers=bearer(token), timeout=30).json()["version"]
                for device_id, token in tokens.items()}

    given = stage_and_read(b"first")
    os.killpg(hub.process.pid, signal.SIGKILL)
    hub.stop()  # reaps it and closes its log
    hub.start()
    after = stage_and_read(b"second")
    assert min(after.values()) > max(given.values()), (given, after)
