"""End to end: a real hub (``dropsync serve``, gunicorn) with its watcher, real files
written into its staging folder, real HTTP."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import socket
import time

import pytest
import requests
from support import ADMIN_TOKEN, assert_error
from sync_support import bearer, tree, wait_until

pytestmark = pytest.mark.slow

ADMIN = bearer(ADMIN_TOKEN)
PIECE = 64 * 1024


def start_hub(hub_process, settle_s: float = 0.5):
    return hub_process({"DROPSYNC_ADMIN_TOKEN": ADMIN_TOKEN,
                        "DROPSYNC_STAGING_SETTLE_S": str(settle_s)})


def stop_cleanly(hub) -> None:
    """Stop the hub and check nothing in it failed unexpectedly, shutdown included."""
    hub.stop()
    assert "Traceback" not in hub.log and "[ERROR]" not in hub.log, hub.log


def register(hub, device_id: str, **fields) -> str:
    response = requests.post(hub.url + "/api/v1/admin/devices/register", headers=ADMIN,
                             json={"id": device_id, **fields}, timeout=5)
    assert response.status_code == 201, response.text
    return response.json()["token"]


def manifest(hub, device_id: str, token: str) -> dict:
    response = requests.get(f"{hub.url}/api/v1/files/manifest/{device_id}",
                            headers=bearer(token), timeout=5)
    assert response.status_code == 200, response.text
    return response.json()


def listed(hub, device_id, token, path):
    return next((f for f in manifest(hub, device_id, token)["files"] if f["path"] == path),
                None)


def ingest_lines(hub, slot: str) -> list[str]:
    """The hub's log lines announcing a new version of ``slot``."""
    return re.findall(rf"package \w+: {re.escape(slot)} version (\d+)", hub.log)


def test_slow_writer_becomes_a_verified_package_then_is_replaced_and_withdrawn(
        hub_process, tmp_path):
    # shorter than the writer's pauses: only the close-write rule keeps it from being taken
    # in half-written, the settle time alone would not
    settle_s = 0.2
    hub = start_hub(hub_process, settle_s)
    token = register(hub, "esp001")
    auth = bearer(token)
    target = tmp_path / "staging" / "esp001" / "firmware.bin"
    target.parent.mkdir(parents=True, exist_ok=True)
    data = os.urandom(16 * PIECE)  # 1 MiB

    # 1 MiB in 64 KiB pieces, 300 ms apart: nothing appears while it is being written
    with open(target, "wb") as writer:
        for index in range(16):
            writer.write(data[index * PIECE:(index + 1) * PIECE])
            writer.flush()
            assert listed(hub, "esp001", token, "firmware.bin") is None, index
            time.sleep(0.3)
    closed = time.monotonic()
    settled = closed + settle_s

    # nor before it has settled; then within 2 s of settling
    while True:
        entry = listed(hub, "esp001", token, "firmware.bin")
        answered = time.monotonic()
        if entry is not None:
            break
        assert answered < settled + 10, "never listed"
        time.sleep(0.05)
    assert answered >= settled, f"listed {settled - answered:.2f}s before it settled"
    assert answered - settled <= 2.0, f"listed {answered - settled:.2f}s after settling"
    assert (entry["size"], entry["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
    assert entry["md5"] == hashlib.md5(data).hexdigest()

    # every chunk and the whole file verify against the manifest
    session = requests.Session()
    chunks = []
    for index in range(entry["chunks"]):
        chunk = session.get(f"{hub.url}{entry['url']}/{index}", headers=auth, timeout=5)
        assert chunk.status_code == 200
        assert hashlib.sha256(chunk.content).hexdigest() == chunk.headers["X-Chunk-SHA256"]
        chunks.append(chunk.content)
    assert hashlib.sha256(b"".join(chunks)).hexdigest() == entry["sha256"]
    whole = session.get(hub.url + entry["url"], headers=auth, timeout=10)
    assert whole.content == data and whole.headers["x-MD5"] == entry["md5"]

    # a resume from the middle with Range returns identical bytes
    middle = len(data) // 2 + 123
    resumed = session.get(hub.url + entry["url"], timeout=10,
                          headers={**auth, "Range": f"bytes={middle}-"})
    assert resumed.status_code == 206
    assert resumed.headers["Content-Range"] == f"bytes {middle}-{len(data) - 1}/{len(data)}"
    assert whole.content[:middle] + resumed.content == data
    assert_error(session.get(hub.url + entry["url"], timeout=5,
                             headers={**auth, "Range": f"bytes={len(data)}-"}), 416)

    # replacing the file gives a new version; the old version's chunks get 409
    replacement = os.urandom(300_000)
    staged_tmp = target.with_name("firmware.bin.part")
    staged_tmp.write_bytes(replacement)
    staged_tmp.rename(target)
    newer = wait_until(lambda: (e := listed(hub, "esp001", token, "firmware.bin")) and
                       e["version"] != entry["version"] and e, message="new version")
    assert newer["version"] > entry["version"]
    assert newer["sha256"] == hashlib.sha256(replacement).hexdigest()
    stale = session.get(f"{hub.url}{entry['url']}/1", headers=auth, timeout=5)
    assert_error(stale, 409, "version_replaced")
    assert session.get(f"{hub.url}{newer['url']}/1", headers=auth,
                       timeout=5).status_code == 200

    # deleting it withdraws it
    target.unlink()
    wait_until(lambda: listed(hub, "esp001", token, "firmware.bin") is None,
               message="withdrawn")
    assert_error(session.get(f"{hub.url}{newer['url']}/0", headers=auth, timeout=5), 404)
    assert len(ingest_lines(hub, "esp001/firmware.bin")) == 2  # one per complete content
    stop_cleanly(hub)


def test_temp_then_rename_and_files_dropped_while_stopped_are_ingested_once(
        hub_process, tmp_path):
    hub = start_hub(hub_process)
    token = register(hub, "esp001")
    staging = tmp_path / "staging"
    (staging / "esp001").mkdir(parents=True, exist_ok=True)

    temp = staging / "esp001" / ".config.json.tmp"
    temp.write_bytes(b'{"interval": 10}')
    temp.rename(staging / "esp001" / "config.json")
    first = wait_until(lambda: listed(hub, "esp001", token, "config.json"), message="listed")
    wait_until(lambda: requests.get(hub.url + "/health", timeout=5).json()["staging"]
               ["watcher"]["pending"] == 0, message="nothing pending")
    assert ingest_lines(hub, "esp001/config.json") == [str(first["version"])]
    assert [f["path"] for f in manifest(hub, "esp001", token)["files"]] == ["config.json"]
    stop_cleanly(hub)

    # dropped while the hub is down
    (staging / "all").mkdir()
    (staging / "all" / "common.txt").write_bytes(b"for everyone")
    (staging / "esp001" / "late.bin").write_bytes(os.urandom(5000))
    (staging / "esp001" / "editor.swp").write_bytes(b"ignored")

    restarted = start_hub(hub_process)
    wait_until(lambda: len(manifest(restarted, "esp001", token)["files"]) == 3,
               message="all three listed")
    wait_until(lambda: requests.get(restarted.url + "/health", timeout=5).json()["staging"]
               ["watcher"]["pending"] == 0, message="nothing pending")
    files = {f["path"]: f for f in manifest(restarted, "esp001", token)["files"]}
    assert set(files) == {"config.json", "common.txt", "late.bin"}
    assert files["config.json"]["version"] == first["version"]  # unchanged: not re-ingested
    assert len(ingest_lines(restarted, "all/common.txt")) == 1
    assert len(ingest_lines(restarted, "esp001/late.bin")) == 1
    assert ingest_lines(restarted, "esp001/config.json") == []
    stop_cleanly(restarted)


def test_devices_are_kept_apart_and_links_out_of_staging_are_refused(hub_process, tmp_path):
    hub = start_hub(hub_process)
    token_a, token_b = register(hub, "esp001"), register(hub, "esp002")
    staging = tmp_path / "staging"
    (staging / "esp001").mkdir(parents=True, exist_ok=True)
    (staging / "esp001" / "private.bin").write_bytes(b"esp001 only")
    secret = tmp_path / "secret.txt"
    secret.write_text("hub-side secret")
    (staging / "esp001" / "leak.txt").symlink_to(secret)
    (staging / "esp001" / "etc").symlink_to("/etc")
    mine = wait_until(lambda: listed(hub, "esp001", token_a, "private.bin"), message="listed")

    for path, token in ((mine["url"], token_b), (mine["url"] + "/0", token_b),
                        (f"/api/v1/files/download/esp002/{mine['id']}/{mine['version']}",
                         token_b)):
        response = requests.get(hub.url + path, headers=bearer(token), timeout=5)
        assert_error(response, 403)
        assert b"esp001 only" not in response.content
    assert manifest(hub, "esp002", token_b)["files"] == []

    health = wait_until(lambda: (h := requests.get(hub.url + "/health", timeout=5).json())
                        ["staging"]["problems"] and h, message="problems reported")
    assert health["status"] == "degraded"
    assert {(p["kind"], p["path"]) for p in health["staging"]["problems"]} == {
        ("outside_staging", "esp001/leak.txt"), ("outside_staging", "esp001/etc")}
    assert [f["path"] for f in manifest(hub, "esp001", token_a)["files"]] == ["private.bin"]
    blobs = tree(hub.data_dir / "blobs")
    assert not any(b"hub-side secret" in content for content in blobs.values())
    assert not any(b"root:" in content for content in blobs.values())
    stop_cleanly(hub)


def raw_request(hub, method: str, path: str, headers: dict[str, str],
                body: bytes = b"") -> tuple[int, bytes]:
    """A request whose path goes out exactly as written (no client normalising '..')."""
    connection = http.client.HTTPConnection("127.0.0.1", hub.port, timeout=5)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            connection.putheader(name, value)
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_upload_traversal_and_cut_connections_touch_nothing_outside(hub_process, tmp_path):
    hub = start_hub(hub_process)
    token = register(hub, "esp001")
    (tmp_path / "victim.txt").write_text("keep me")
    device = {"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"}
    outside_before = {k: v for k, v in tree(tmp_path).items()
                      if not k.startswith(("data/", "staging/")) and not k.endswith(".log")}

    for path in ("/api/v1/files/upload/esp001?filename=../../victim.txt",
                 "/api/v1/files/upload/esp001?filename=%2E%2E%2Fvictim.txt",
                 "/api/v1/files/upload/esp001?filename=a%EF%BC%8Fb.txt",
                 "/api/v1/files/upload/esp001/../../admin/devices",
                 "/api/v1/files/files/esp001/../../../victim.txt",
                 "/api/v1/files/files/esp001/..%2F..%2Fvictim.txt",
                 "/api/v1/files/list/..%2Fesp001"):
        method = "POST" if "upload" in path else "DELETE" if "/files/files/" in path \
            else "GET"
        status, body = raw_request(hub, method, path, device, b"overwritten")
        assert status in (400, 401, 403, 404, 405), (path, status)
        assert b"keep me" not in body

    # a body cut short by a dropped connection leaves no file, not even a temp one
    with socket.create_connection(("127.0.0.1", hub.port), timeout=5) as sock:
        sock.sendall(b"POST /api/v1/files/upload/esp001?filename=cut.bin HTTP/1.1\r\n"
                     b"Host: hub\r\nAuthorization: Bearer " + token.encode() +
                     b"\r\nContent-Type: application/octet-stream\r\n"
                     b"Content-Length: 1000000\r\n\r\n" + b"x" * 200_000)
    ok = requests.post(hub.url + "/api/v1/files/upload/esp001", params={"filename": "ok.txt"},
                       data=b"fine", headers=device, timeout=5)
    assert ok.status_code == 201
    wait_until(lambda: tree(hub.data_dir / "uploads") == {"esp001/ok.txt": b"fine"},
               message="only the complete upload on disk")
    outside_after = {k: v for k, v in tree(tmp_path).items()
                     if not k.startswith(("data/", "staging/")) and not k.endswith(".log")}
    assert outside_after == outside_before
    stop_cleanly(hub)


def test_cli_stages_through_the_running_hub(hub_process, tmp_path):
    hub = start_hub(hub_process)
    token = register(hub, "esp001", groups=["field"])
    source = tmp_path / "settings.json"
    source.write_text('{"led": true}')
    staged = hub.cli("stage", str(source), "--to", "group-field").stdout
    assert "Staged group-field/settings.json" in staged
    entry = listed(hub, "esp001", token, "settings.json")  # no settle wait: taken in at once
    assert entry["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    packages = json.loads(hub.cli("packages", "--json").stdout)
    assert [(p["id"], p["source"]) for p in packages] == [(entry["id"], "api")]
    hub.cli("withdraw", entry["id"], "--yes")
    assert manifest(hub, "esp001", token)["files"] == []
    assert not (tmp_path / "staging" / "group-field" / "settings.json").exists()
    assert ingest_lines(hub, "group-field/settings.json") == [str(entry["version"])]
    stop_cleanly(hub)
