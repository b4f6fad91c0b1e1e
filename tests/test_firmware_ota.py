"""The stock updaters' route against a real hub: ESP8266httpUpdate's and ESP32
HTTPUpdate's exact requests (their header sets, HTTP/1.0, HTTP Basic credentials) replayed
over raw sockets, and firmware images refused at staging when they could never boot."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil

import pytest
import requests
from firmware_support import ADMIN, HostClient, admin_get
from support import ADMIN_TOKEN, NginxFront, assert_error
from sync_support import wait_until
from updater_support import basic, esp32_request, esp8266_request

pytestmark = pytest.mark.slow

ESP8266_LIMIT, ESP32_LIMIT = 6000, 9000


@pytest.fixture
def hub(hub_process):
    return hub_process({"DROPSYNC_ADMIN_TOKEN": ADMIN_TOKEN, "DROPSYNC_LOG_LEVEL": "DEBUG",
                        "DROPSYNC_STAGING_SETTLE_S": "0.2",
                        "DROPSYNC_FIRMWARE_MAX_BYTES":
                            f"esp8266={ESP8266_LIMIT},esp32={ESP32_LIMIT}"})


def register(hub, device_id, device_type):
    response = requests.post(f"{hub.url}/api/v1/admin/devices/register", headers=ADMIN,
                             json={"id": device_id, "type": device_type}, timeout=10)
    assert response.status_code == 201, response.text
    return response.json()["token"]


def stage(hub, target, path, data):
    return requests.put(f"{hub.url}/api/v1/admin/staging/{target}/{path}", headers=ADMIN,
                        data=data, timeout=30)


def firmware(size, appended_digest=False):
    image = b"\xe9\x03\x02\x20" + os.urandom(size - 4)
    if appended_digest:  # an ESP-IDF image: its SHA-256 in its last 32 bytes
        image = image[:-32] + hashlib.sha256(image[:-32]).digest()
    return image


def test_esp8266_stock_updater_gets_the_image_then_no_update(hub):
    token = register(hub, "esp-ota", "esp8266")
    register(hub, "esp-other", "esp8266")
    image = firmware(5000)
    assert stage(hub, "esp-ota", "firmware/app.bin", image).status_code in (200, 201)
    path, auth = "/api/v1/ota/esp-ota", basic("esp-ota", token)

    answer = esp8266_request(hub.port, path, auth, sketch_md5="0" * 32)
    assert answer.status_code == 200, answer.body
    assert answer.body == image and int(answer.headers["Content-Length"]) == len(image)
    assert answer.headers["x-MD5"] == hashlib.md5(image).hexdigest()

    # The node now runs it and reports its MD5: "no updates", nothing sent.
    answer = esp8266_request(hub.port, path, auth, sketch_md5=hashlib.md5(image).hexdigest())
    assert answer.status_code == 304 and answer.body == b""
    # getAvailableVersion(): headers only.
    answer = esp8266_request(hub.port, path, auth, sketch_md5="0" * 32, mode="version")
    assert answer.status_code == 200 and answer.body == b"" and answer.headers["x-version"]

    history = requests.get(f"{hub.url}/api/v1/files/sync-history/esp-ota",
                           headers={"Authorization": f"Bearer {token}"}, timeout=10).json()
    assert [h["state"] for h in history["history"]] == ["applied", "downloading"]

    # A bearer token works too (a sketch that adds the header itself).
    answer = esp8266_request(hub.port, path, f"Bearer {token}", sketch_md5="0" * 32)
    assert answer.status_code == 200 and answer.body == image


def test_updater_credentials_and_secrecy(hub):
    token = register(hub, "esp-ota", "esp8266")
    other = register(hub, "esp-other", "esp8266")
    assert stage(hub, "esp-ota", "firmware/app.bin", firmware(1000)).status_code in (200, 201)
    path = "/api/v1/ota/esp-ota"
    refused = {
        "no credentials": (None, 401),
        "a wrong password": (basic("esp-ota", "not-the-token-000000000000"), 401),
        "another device's user": (basic("esp-other", other), 403),
        "another device's token": (basic("esp-ota", other), 403),
    }
    for label, (auth, status) in refused.items():
        answer = esp8266_request(hub.port, path, auth, sketch_md5="0" * 32)
        assert answer.status_code == status, label
        assert set(answer.json()) == {"error"}, label
        if status == 401:
            assert answer.headers["WWW-Authenticate"].startswith("Basic"), label
    # A token in the query string is refused: it would end up in access logs.
    answer = esp8266_request(hub.port, f"{path}?token={token}", None, sketch_md5="0" * 32)
    assert answer.status_code == 401
    assert_error(requests.get(f"{hub.url}{path}", timeout=10), 401, "missing_credentials")
    # user:token@ in the URL is sent by the updaters as this same Basic header.
    response = requests.get(f"http://esp-ota:{token}@127.0.0.1:{hub.port}{path}", timeout=10)
    assert response.status_code == 200
    hub.stop()
    encoded = base64.b64encode(f"esp-ota:{token}".encode()).decode()
    assert token not in hub.log and encoded not in hub.log and other not in hub.log


def test_esp32_stock_updater_compares_its_sketch_sha256(hub):
    token = register(hub, "esp32-ota", "esp32")
    image = firmware(8000, appended_digest=True)  # over the ESP8266 limit, under the ESP32's
    assert stage(hub, "esp32-ota", "firmware/app.bin", image).status_code in (200, 201)
    path, auth = "/api/v1/ota/esp32-ota", basic("esp32-ota", token)
    answer = esp32_request(hub.port, path, auth, sketch_sha256="AB" * 32)
    assert answer.status_code == 200 and answer.body == image
    assert answer.headers["x-MD5"] == hashlib.md5(image).hexdigest()
    # What esp_partition_get_sha256() reports for the running image: its appended digest.
    running = hashlib.sha256(image[:-32]).hexdigest().upper()
    assert esp32_request(hub.port, path, auth, sketch_sha256=running).status_code == 304
    whole = hashlib.sha256(image).hexdigest().upper()  # an image without an appended digest
    assert esp32_request(hub.port, path, auth, sketch_sha256=whole).status_code == 304


def test_most_specific_image_wins_and_nothing_staged_is_404(hub):
    token = register(hub, "esp-a", "esp8266")
    auth = basic("esp-a", token)
    answer = esp8266_request(hub.port, "/api/v1/ota/esp-a", auth, sketch_md5="0" * 32)
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "no_firmware"
    fleet, own = firmware(2000), firmware(2100)
    assert stage(hub, "all", "firmware/fleet.bin", fleet).status_code in (200, 201)
    assert stage(hub, "all", "config/readme.txt", b"not firmware").status_code in (200, 201)
    answer = esp8266_request(hub.port, "/api/v1/ota/esp-a", auth, sketch_md5="0" * 32)
    assert answer.body == fleet
    assert stage(hub, "esp-a", "firmware/own.bin", own).status_code in (200, 201)
    answer = esp8266_request(hub.port, "/api/v1/ota/esp-a", auth, sketch_md5="0" * 32)
    assert answer.body == own
    assert stage(hub, "esp-a", "firmware/second.bin", own[:-1]).status_code in (200, 201)
    answer = esp8266_request(hub.port, "/api/v1/ota/esp-a", auth, sketch_md5="0" * 32)
    assert answer.status_code == 409 and answer.json()["error"]["code"] == "several_images"


def test_a_smaller_board_that_joins_later_is_not_offered_an_image_over_its_flash(hub):
    """The image fitted every device of the group when it was staged; an ESP8266 that
    joins the group afterwards must not download it (it would not fit its flash)."""
    big_token = register(hub, "esp32-a", "esp32")
    requests.post(f"{hub.url}/api/v1/admin/groups/field/members", headers=ADMIN,
                  json={"devices": ["esp32-a"]}, timeout=10)
    image = firmware(ESP8266_LIMIT + 500)
    assert stage(hub, "group-field", "firmware/app.bin", image).status_code in (200, 201)
    small_token = register(hub, "esp-late", "esp8266")
    joined = requests.post(f"{hub.url}/api/v1/admin/groups/field/members", headers=ADMIN,
                           json={"devices": ["esp-late"]}, timeout=10)
    assert joined.status_code == 200, joined.text
    answer = esp8266_request(hub.port, "/api/v1/ota/esp-late", basic("esp-late", small_token),
                             sketch_md5="0" * 32)
    assert answer.status_code == 409, answer.status_code
    assert answer.json()["error"]["code"] == "image_too_large"
    assert image[:64] not in answer.body
    answer = esp8266_request(hub.port, "/api/v1/ota/esp32-a", basic("esp32-a", big_token),
                             sketch_md5="0" * 32)
    assert answer.status_code == 200 and answer.body == image


def test_images_that_cannot_boot_are_refused_at_staging(hub, tmp_path):
    register(hub, "esp-ota", "esp8266")
    register(hub, "esp32-ota", "esp32")
    # Through the admin API: refused with the reason, nothing kept.
    response = stage(hub, "esp-ota", "firmware/app.bin", b"\x7fELF" + bytes(100))
    error = assert_error(response, 400, "refused_content")
    assert "0xE9" in error["message"] and "0x7F" in error["message"]
    assert not (tmp_path / "staging" / "esp-ota" / "firmware" / "app.bin").exists()
    for stub in (b"\xe9", b"\xe9\x01" + bytes(29)):  # the magic byte, but no image
        error = assert_error(stage(hub, "esp-ota", "firmware/app.bin", stub), 400,
                             "refused_content")
        assert "header" in error["message"]
    error = assert_error(stage(hub, "esp-ota", "firmware/big.bin", firmware(ESP8266_LIMIT + 1)),
                         400, "refused_content")
    assert str(ESP8266_LIMIT) in error["message"]
    # The same size fits the ESP32's flash; other files never get the check.
    assert stage(hub, "esp32-ota", "firmware/big.bin", firmware(ESP8266_LIMIT + 1)) \
        .status_code in (200, 201)
    assert stage(hub, "esp-ota", "notes/app.bin", b"plain data").status_code in (200, 201)

    # Dropped into the folder: reported in the staging report and /health, not published.
    folder = tmp_path / "staging" / "esp-ota" / "firmware"
    folder.mkdir(parents=True, exist_ok=True)  # the refused upload left the folder
    (folder / "dropped.bin").write_bytes(b"PK\x03\x04 a zip, not an image")

    def reported():
        problems = admin_get(hub, "/staging")["problems"]
        return [p for p in problems if p["kind"] == "refused_content"]
    problem = wait_until(reported, 20, message="refused image reported")[0]
    assert problem["path"] == "esp-ota/firmware/dropped.bin"
    assert "first byte is 0x50" in problem["message"]
    health = requests.get(f"{hub.url}/health", timeout=10).json()
    assert health["status"] == "degraded"
    assert problem in health["staging"]["problems"]
    packages = admin_get(hub, "/packages", target="esp-ota")["packages"]
    assert [p["path"] for p in packages] == ["notes/app.bin"]


def test_node_and_stock_updater_through_nginx(hub_process, firmware_build, tmp_path):
    """Behind nginx with DOWNLOAD_ACCEL_PREFIX and download tickets, chunks come from
    nginx's cache of the hub's answers (the first node's fill it, the second's are hits)
    and images from its internal location: the firmware core and the stock updater both
    take them."""
    if shutil.which("nginx", path=os.environ.get("PATH", "") + ":/usr/sbin") is None:
        pytest.skip("nginx is not installed (tests/system-deps.sh installs it)")
    secret = "firmware-test-ticket-secret-0123456789ab"
    hub = hub_process({"DROPSYNC_ADMIN_TOKEN": ADMIN_TOKEN, "DROPSYNC_STAGING_WATCH": "false",
                       "DROPSYNC_DOWNLOAD_ACCEL_PREFIX": "/_blobs/",
                       "DROPSYNC_TRUSTED_PROXIES": "127.0.0.1",
                       "DROPSYNC_DOWNLOAD_TICKET_SECRET": secret})
    nginx = NginxFront(tmp_path / "nginx", hub.port, hub.data_dir,
                       settings={"DOWNLOAD_TICKET_SECRET": secret}).start()
    try:
        token = register(hub, "esp-ngx", "esp8266")
        content, image = os.urandom(3 * 32768 + 10), firmware(5000)  # 4 chunks of 32 KiB
        assert stage(hub, "all", "data/blob.bin", content).status_code in (200, 201)
        for device in ("esp-ngx", "esp-ngx2"):
            device_token = token if device == "esp-ngx" else register(hub, device, "esp8266")
            manifest = requests.get(f"{nginx.url}/api/v1/files/manifest/{device}",
                                    headers={"Authorization": f"Bearer {device_token}"},
                                    timeout=10).json()
            assert manifest["files"][0]["url"].startswith("/api/v1/files/t/")  # a ticket
            node = HostClient(firmware_build["client"], nginx.url, device, device_token,
                              tmp_path / f"{device}.img", "--exit-after-sync")
            assert node.wait(60) == 0, node.output
            assert "chunks=4 rejected=0" in node.output, node.output
            assert node.flash.read("/data/blob.bin") == content
        ticket_chunks = [line for line in hub.log.splitlines()
                         if "/files/t/" in line and "<int:index> 200" in line]
        assert len(ticket_chunks) == 4, ticket_chunks  # the second node's: all from nginx

        assert stage(hub, "esp-ngx", "firmware/app.bin", image).status_code in (200, 201)
        answer = esp8266_request(nginx.port, "/api/v1/ota/esp-ngx",
                                 basic("esp-ngx", token), sketch_md5="0" * 32)
        assert answer.status_code == 200 and answer.body == image
        assert answer.headers["Server"].startswith("nginx")
        assert answer.headers["x-MD5"] == hashlib.md5(image).hexdigest()
    finally:
        nginx.stop()
