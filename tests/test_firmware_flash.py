"""The firmware on the flash it really runs on: the host client's littlefs image with the
ESP8266 core's LittleFS rules (seek past the end refused, a folder removed with its last
file, 31-character names, rename replacing atomically), against real hubs. Each test here
failed on the firmware as it was when it still ran on a POSIX folder: each is a defect a
folder could not show."""

from __future__ import annotations

import json
import re

import pytest
import requests
from firmware_support import ADMIN, HostClient, Proxy, admin_get, register, stage
from support import ADMIN_TOKEN
from sync_support import wait_until

pytestmark = pytest.mark.slow

OUTBOX_HEADER, OUTBOX_SLOT = 16, 320


@pytest.fixture
def hub(hub_process):
    return hub_process({"DROPSYNC_ADMIN_TOKEN": ADMIN_TOKEN, "DROPSYNC_CHUNK_SIZE": "1024",
                        "DROPSYNC_STAGING_WATCH": "false", "DROPSYNC_POLL_INTERVAL_S": "1"})


@pytest.fixture
def client(firmware_build, tmp_path):
    started: list[HostClient] = []

    def start(url, device_id, token, *args, flash="flash.img"):
        run = HostClient(firmware_build["client"], url, device_id, token, tmp_path / flash,
                         *args)
        started.append(run)
        return run

    yield start
    for run in started:
        run.stop()


def sync_once(client, url, device_id, token, *args):
    run = client(url, device_id, token, "--exit-after-sync", *args)
    run.wait(60)
    return run


def device_states(hub, package_id):
    return [(d["device_id"], d["state"], d.get("reason"))
            for d in admin_get(hub, f"/packages/{package_id}")["devices"]]


def messages(hub, device_id):
    return admin_get(hub, f"/devices/{device_id}/messages")["messages"]


# -- defect 1: the outbox ----------------------------------------------------------------
def test_outbox_keeps_reports_on_littlefs_and_delivers_them(hub, client):
    """ESP8266 LittleFS refuses a seek past the end of a file, so a ring whose slots were
    reached by seeking never stored a thing: the outbox file stayed 0 bytes."""
    token = register(hub, "esp-box")
    hub.stop()
    run = client(hub.url, "esp-box", token, "--heartbeat-s", "1", "--backoff-base-ms", "100",
                 "--backoff-cap-ms", "400", "--outbox-slots", "4", "--message", "made offline")
    run.wait_for(r"attempt 16,", timeout=30)  # 5 s or so: more heartbeats than slots
    run.stop()
    outbox = run.flash.read("/.dropsync/outbox")
    assert outbox is not None and len(outbox) == OUTBOX_HEADER + 4 * OUTBOX_SLOT, outbox

    hub.start()
    again = client(hub.url, "esp-box", token, "--heartbeat-s", "30")
    again.wait_for(r"^outbox delivered$")
    texts = [m["text"] for m in messages(hub, "esp-box")]
    # Four slots: the message and the first heartbeats were pushed out by later ones, and
    # the loss was counted and said.
    assert any("oldest reports dropped" in t for t in texts), texts
    assert len(run.flash.read("/.dropsync/outbox")) == OUTBOX_HEADER + 4 * OUTBOX_SLOT


def test_a_message_made_offline_arrives_when_the_hub_returns(hub, client):
    token = register(hub, "esp-msg")
    hub.stop()
    run = client(hub.url, "esp-msg", token, "--heartbeat-s", "600", "--backoff-base-ms", "100",
                 "--backoff-cap-ms", "300", "--message", "made while the hub was away")
    run.wait_for(r"attempt 2,", timeout=30)
    hub.start()
    run.wait_for(r"^outbox delivered$")
    texts = [m["text"] for m in messages(hub, "esp-msg")]
    assert "made while the hub was away" in texts, texts
    heartbeat = admin_get(hub, "/devices/esp-msg")["inventory"]
    assert heartbeat.get("firmware_version") == "host-1.0.0", heartbeat


# -- defect 2: replacing a file alone in its folder ----------------------------------------
def stage_and_sync(hub, client, device_id, token, target, path, data):
    """Stages a file, syncs the node once and checks the file is on flash as staged."""
    package = stage(hub, target, path, data)
    run = sync_once(client, hub.url, device_id, token)
    assert run.flash.read("/" + path) == data, run.output
    return package, run


def test_a_file_alone_in_its_folder_is_replaced(hub, client):
    """The glue removed the target before renaming; ESP8266 LittleFS then removed the
    emptied folder and the rename failed, the old file already gone."""
    token = register(hub, "esp-rep")
    stage_and_sync(hub, client, "esp-rep", token, "esp-rep", "solo/only.txt", b"first")
    second_package, _ = stage_and_sync(hub, client, "esp-rep", token, "esp-rep",
                                       "solo/only.txt", b"second version, longer")
    assert device_states(hub, second_package["id"]) == [("esp-rep", "applied", None)]


# -- defect 3: a path that moves from one target to another --------------------------------
def test_a_path_moved_from_all_to_the_device_is_kept(hub, client):
    token = register(hub, "esp-mv")
    stage_and_sync(hub, client, "esp-mv", token, "all", "config/shared.json",
                   b'{"from": "all"}')
    own, second = stage_and_sync(hub, client, "esp-mv", token, "esp-mv",
                                 "config/shared.json", b'{"from": "device"}')
    assert not re.search(r"^withdrawn .* config/shared.json$", second.output, re.M), \
        second.output
    third = sync_once(client, hub.url, "esp-mv", token)
    assert third.flash.read("/config/shared.json") == b'{"from": "device"}', third.output
    assert ("esp-mv", "applied", None) in device_states(hub, own["id"])


# -- defect 4: names of 32 characters or more ----------------------------------------------
def test_a_name_the_flash_cannot_hold_is_refused_before_any_chunk(hub, client):
    """The hub refuses such a path at staging now (test_staging.py); a hub that does not
    (an older one) is played by the proxy, which lengthens a staged name in the manifest."""
    token = register(hub, "esp-long")
    name = "data/greenhouse-north-calibration-table-v2.json"  # a 41-character name
    package = stage(hub, "esp-long", "data/placeholder-name.json", b"x" * 3000)
    stage(hub, "esp-long", "data/short.json", b"fits")
    proxy = Proxy(hub.port)
    proxy.rewrite = [(b"data/placeholder-name.json", name.encode())]
    try:
        first = sync_once(client, proxy.url, "esp-long", token)
        assert first.flash.read("/data/short.json") == b"fits", first.output
        assert not first.flash.exists("/" + name)
        chunk_urls = [p for p in proxy.counts if f"/{package['id']}/" in p]
        assert chunk_urls == [], chunk_urls  # refused before downloading, not after
        [(_, state, reason)] = device_states(hub, package["id"])
        assert state == "failed" and "31 characters" in reason, reason
        # Not retried at every check for ever: the list was applied as far as it can be.
        second = sync_once(client, proxy.url, "esp-long", token)
        assert "sync up_to_date" in second.output, second.output
        assert [p for p in proxy.counts if f"/{package['id']}/" in p] == []
    finally:
        proxy.close()


def test_the_hub_refuses_a_name_the_boards_cannot_store(hub):
    response = requests.put(f"{hub.url}/api/v1/admin/staging/esp-any/data/"
                            "greenhouse-north-calibration-table-v2.json", headers=ADMIN,
                            data=b"x", timeout=10)
    assert response.status_code == 400, response.text
    assert "31 characters" in response.json()["error"]["message"], response.text


# -- defect 5: silent truncation and unescaped text ----------------------------------------
@pytest.mark.parametrize("text", ['"' * 200, "a" + "\u00e9" * 150, "\\" * 199 + "\u20ac"])
def test_a_message_too_long_for_its_buffer_is_cut_valid(hub, client, text):
    """200 quotes escape to 400 bytes: the body was cut mid-document and the hub refused
    it; a cut may also split a UTF-8 character."""
    token = register(hub, "esp-text")
    run = client(hub.url, "esp-text", token, "--message", text, "--heartbeat-s", "600")
    run.wait_for(r"^sync ")
    found = messages(hub, "esp-text")
    assert found, run.output
    sent = found[0]["text"]
    assert sent and text.startswith(sent) and len(sent) >= 60, sent


def test_an_uploaded_file_name_is_escaped(hub, client):
    """The name went raw into ``?filename=``: a space ended the request line early and
    ``&``, ``#`` or ``%`` changed what the hub read. Escaped, the hub reads the whole name
    (and refuses it, for its own name rule, saying so)."""
    token = register(hub, "esp-up")
    name = "a b&c#d%e+f.txt"
    first = sync_once(client, hub.url, "esp-up", token)  # formats the flash
    first.flash.write(f"/logs/{name}", b"logged")
    first.flash.write("/logs/plain-name_1.txt", b"fine")
    proxy = Proxy(hub.port)
    try:
        for path in (f"/logs/{name}", "/logs/plain-name_1.txt"):
            response = requests.post(f"{hub.url}/api/v1/admin/devices/esp-up/command",
                                     headers=ADMIN, timeout=10,
                                     json={"command": "upload-log", "params": {"path": path}})
            assert response.status_code == 201, response.text
        run = client(proxy.url, "esp-up", token, "--poll-s", "1")
        run.wait_for(r"^command \d+ upload-log ran$")
        sent = [p for p in proxy.counts if p.startswith("/api/v1/files/upload/")]
        assert sent == ["/api/v1/files/upload/esp-up?filename=a%20b%26c%23d%25e%2bf.txt",
                        "/api/v1/files/upload/esp-up?filename=plain-name_1.txt"], sent
        refused = admin_get(hub, "/devices/esp-up/commands")["commands"]
        statuses = sorted(c["result"].get("status") for c in refused if c.get("result"))
        assert statuses == [201, 400], refused
        uploads = admin_get(hub, "/uploads", device="esp-up")["uploads"]
        assert [u["name"] for u in uploads] == ["plain-name_1.txt"], uploads
    finally:
        proxy.close()


def test_a_command_id_above_2_31_runs(hub, client):
    """Ids are 64-bit on the hub; the node kept them in an int32_t, so 2^31 became
    negative and the command was ignored (handed out again and again)."""
    token = register(hub, "esp-big")
    hub.stop()
    meta_path = hub.data_dir / "meta.json"
    meta = json.loads(meta_path.read_text())
    table = meta.setdefault("meta", {})
    for key, record in list(table.items()):
        if record.get("name") == "next_command_id":
            del table[key]
    table[str(len(table) + 100)] = {"name": "next_command_id", "value": 2**31 + 10}
    meta_path.write_text(json.dumps(meta))
    hub.start()
    response = requests.post(f"{hub.url}/api/v1/admin/devices/esp-big/command", headers=ADMIN,
                             json={"command": "echo", "params": {"n": 1}}, timeout=10)
    assert response.status_code == 201, response.text
    command_id = response.json()["id"]
    assert command_id > 2**31
    run = client(hub.url, "esp-big", token, "--poll-s", "1")
    run.wait_for(rf"^command {command_id} echo ran$")

    def completed():
        found = admin_get(hub, "/devices/esp-big/commands")["commands"]
        return next(c for c in found if c["id"] == command_id)["state"] == "completed"
    wait_until(completed, 20, message="the big id completed")
    assert run.flash.text("/ran.log").split() == [str(command_id)]


def test_uptime_does_not_wrap_at_49_7_days(hub, client):
    """millis() is 32 bits: it wraps after 49.7 days, and the heartbeat's uptime with it.
    The host clock starts 3 s before the wrap here."""
    token = register(hub, "esp-up49")
    start_ms = 2**32 - 3000
    run = client(hub.url, "esp-up49", token, "--clock-start-ms", str(start_ms),
                 "--heartbeat-s", "1", "--poll-s", "1")

    def uptime():
        value = admin_get(hub, "/devices/esp-up49")["inventory"].get("uptime_s") or 0
        return value if value > 2**32 // 1000 else None
    assert wait_until(uptime, 20, message=f"uptime past the wrap; {run.output}") >= 2**32 // 1000


def test_a_token_too_long_for_its_buffer_is_said(hub, client):
    run = client(hub.url, "esp-tok", "t" * 120, "--backoff-cap-ms", "300")
    run.wait_for(r"^token over 88 characters$", timeout=10)
