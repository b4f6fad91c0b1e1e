"""The firmware's protocol core, compiled for Linux as the host client, against real hubs:
commands run once and completed, files downloaded and verified chunk by chunk, a download
resumed after SIGKILL, a corrupted chunk refetched, and backoff while the hub is down."""

from __future__ import annotations

import hashlib
import os
import re

import pytest
import requests
from firmware_support import ADMIN, HostClient, Proxy, admin_get, register, stage
from support import ADMIN_TOKEN
from sync_support import wait_until

pytestmark = pytest.mark.slow

#: What a whole sync may take from the heap (an ESP8266 has ~50 KB free with WiFi up).
PEAK_HEAP_LIMIT = 12 * 1024


@pytest.fixture
def hub(hub_process):
    return hub_process({"DROPSYNC_ADMIN_TOKEN": ADMIN_TOKEN, "DROPSYNC_COMMAND_LEASE_S": "1",
                        "DROPSYNC_COMMAND_SWEEP_S": "0.2", "DROPSYNC_CHUNK_SIZE": "1024",
                        "DROPSYNC_STAGING_WATCH": "false", "DROPSYNC_POLL_INTERVAL_S": "1"})


@pytest.fixture
def proxy(hub):
    proxy = Proxy(hub.port)
    yield proxy
    proxy.close()


@pytest.fixture
def client(firmware_build, tmp_path):
    started: list[HostClient] = []

    def start(url, device_id, token, *args, flash="flash.img", binary="client"):
        run = HostClient(firmware_build[binary], url, device_id, token, tmp_path / flash,
                         *args)
        started.append(run)
        return run

    yield start
    for run in started:
        run.stop()


def queue(hub, device_id, name, args=None):
    response = requests.post(f"{hub.url}/api/v1/admin/devices/{device_id}/command",
                             headers=ADMIN, json={"command": name, "params": args or {}},
                             timeout=10)
    assert response.status_code == 201, response.text
    delivery.devices[response.json()["id"]] = device_id
    return response.json()["id"]


def delivery(hub, command_id):
    """One command's delivery to its device, open or ended."""
    device_id = delivery.devices[command_id]
    found = admin_get(hub, f"/devices/{device_id}/commands")["commands"]
    return next(c for c in found if c["id"] == command_id)


def test_commands_run_once_completed_and_deduplicated_across_a_restart(hub, proxy, client,
                                                                        tmp_path):
    token = register(hub, "esp-cmd")
    echo = queue(hub, "esp-cmd", "echo", {"greeting": "hello", "n": 3})
    # The completion of the echo is refused (502) until the client has been killed: it ran
    # the command but the hub never heard, so the hub hands it out again after its lease.
    refusing = {"on": True}
    proxy.refuse = lambda method, path: refusing["on"] and path.endswith("/complete")
    first = client(proxy.url, "esp-cmd", token, "--poll-s", "1", "--backoff-base-ms", "100",
                   "--backoff-cap-ms", "400")
    first.wait_for(rf"^command {echo} echo ran$")
    first.wait_for(r"^retry in \d+ ms")
    first.kill()
    refusing["on"] = False

    second = client(proxy.url, "esp-cmd", token, "--poll-s", "1")
    unknown = queue(hub, "esp-cmd", "water-plants")
    second.wait_for(rf"^command {echo} echo duplicate: not run again$")
    wait_until(lambda: delivery(hub, echo)["state"] == "completed", 20,
               message="echo completed")
    wait_until(lambda: delivery(hub, unknown)["state"] == "failed", 20,
               message="unknown command failed")
    # Ran exactly once, across two deliveries and a restart of the node.
    assert first.flash.text("/ran.log").split() == [str(echo)]
    assert delivery(hub, echo)["attempts"] >= 2
    assert delivery(hub, echo)["result"] == {"duplicate": True}
    failed = delivery(hub, unknown)
    assert "no handler" in failed["reason"], failed

    # A command completed for the first time carries the handler's result; heartbeats and
    # messages arrive with what the node says about itself.
    again = queue(hub, "esp-cmd", "echo", {"k": [1, 2]})
    wait_until(lambda: delivery(hub, again)["state"] == "completed", 20, message="completed")
    assert delivery(hub, again)["result"] == {"echo": {"k": [1, 2]}}
    inventory = admin_get(hub, "/devices/esp-cmd")["inventory"]
    assert inventory["firmware_version"] == "host-1.0.0" and inventory["board"] == "host"
    assert inventory["free_heap"] > 0 and inventory["rssi"] == -55


def test_reboot_and_upload_log(hub, client, tmp_path):
    token = register(hub, "esp-log")
    upload = queue(hub, "esp-log", "upload-log")
    node = client(hub.url, "esp-log", token, "--poll-s", "1")
    wait_until(lambda: delivery(hub, upload)["state"] == "completed", 20, message="uploaded")
    uploads = admin_get(hub, "/uploads", device="esp-log")["uploads"]
    assert [u["name"] for u in uploads] == ["log.txt"], uploads
    reboot = queue(hub, "esp-log", "reboot")
    assert node.wait(30) == 3  # the host board's restart(): exit code 3
    assert "restart requested" in node.output
    assert delivery(hub, reboot)["state"] == "completed"


delivery.devices = {}


def staged_file(hub, device_id, size, name="data/blob.bin"):
    content = os.urandom(size)
    stage(hub, device_id, name, content)
    manifest = None

    def listed():
        nonlocal manifest
        response = requests.get(f"{hub.url}/api/v1/admin/packages", headers=ADMIN,
                                params={"target": device_id}, timeout=10)
        manifest = response.json()
        return manifest.get("packages")

    wait_until(listed, 10, message="package listed")
    return content, manifest["packages"][0]


def test_download_resumes_after_sigkill_from_the_last_verified_chunk(hub, proxy, client,
                                                                     tmp_path):
    token = register(hub, "esp-dl")
    content, package = staged_file(hub, "esp-dl", 10 * 1024 + 300)  # 11 chunks of 1 KiB
    chunk_url = f"/api/v1/files/download/esp-dl/{package['id']}/{package['version']}"
    proxy.hold = f"{chunk_url}/6"
    first = client(proxy.url, "esp-dl", token)
    assert proxy.held.wait(30), first.output
    first.kill()  # mid-download: chunks 0-5 verified, 6 asked for and never answered
    proxy.release.set()
    assert "chunk fetched" in first.output

    second = client(proxy.url, "esp-dl", token, "--exit-after-sync")
    assert second.wait(60) == 0, second.output
    assert re.search(rf"^resume {package['id']} 6$", second.output, re.M), second.output
    assert second.flash.read("/data/blob.bin") == content
    # Nothing verified was fetched twice: only the chunk in flight at the kill was.
    counts = proxy.chunk_counts()
    assert counts == {i: (2 if i == 6 else 1) for i in range(11)}, counts
    history = admin_get(hub, f"/packages/{package['id']}")
    assert history["devices"][0]["state"] == "applied", history
    peak = int(re.search(r"^peak_heap_bytes (\d+)$", second.output, re.M).group(1))
    print(f"resume: {sum(counts.values())} chunk requests for 11 chunks; peak heap {peak}")
    assert peak <= PEAK_HEAP_LIMIT


def test_corrupted_chunk_is_rejected_and_fetched_again(hub, proxy, client, tmp_path):
    token = register(hub, "esp-bad")
    content, package = staged_file(hub, "esp-bad", 5 * 1024)
    chunk_url = f"/api/v1/files/download/esp-bad/{package['id']}/{package['version']}"
    proxy.corrupt_once = {f"{chunk_url}/2"}
    run = client(proxy.url, "esp-bad", token, "--exit-after-sync")
    assert run.wait(60) == 0, run.output
    assert proxy.corrupted == [f"{chunk_url}/2"]
    assert re.search(rf"^chunk rejected {package['id']} 2 sha256 mismatch$", run.output, re.M)
    assert run.flash.read("/data/blob.bin") == content
    assert proxy.chunk_counts() == {0: 1, 1: 1, 2: 2, 3: 1, 4: 1}
    assert hashlib.sha256(content).hexdigest() == package["sha256"]
    # Synced again: the manifest answers 304 and nothing is fetched.
    before = sum(proxy.chunk_counts().values())
    again = client(proxy.url, "esp-bad", token, "--exit-after-sync")
    assert again.wait(60) == 0 and "sync up_to_date" in again.output, again.output
    assert sum(proxy.chunk_counts().values()) == before


def test_backoff_grows_under_the_cap_while_the_hub_is_down_and_the_outbox_waits(
        hub, client):
    token = register(hub, "esp-off")
    cap = 1600
    run = client(hub.url, "esp-off", token, "--poll-s", "1", "--heartbeat-s", "1",
                 "--backoff-base-ms", "100", "--backoff-cap-ms", str(cap),
                 "--outbox-slots", "3")
    run.wait_for(r"^sync (up_to_date|done)")
    hub.stop()
    run.wait_for(r"attempt 8,", timeout=60)
    delays = [int(d) for d in re.findall(r"^retry in (\d+) ms", run.output, re.M)]
    assert all(d <= cap for d in delays), delays
    # Doubling from 100 ms, less up to a quarter of jitter: each longer than the last
    # until the cap, then between 3/4 of the cap and the cap.
    growing = delays[:5]
    assert growing == sorted(growing) and len(set(growing)) == 5, delays
    assert all(d >= cap * 3 // 4 for d in delays[5:]), delays
    hub.start()
    run.wait_for(r"^hub reachable after \d+ retries$", timeout=30)
    run.wait_for(r"^outbox delivered$", timeout=30)
    messages = admin_get(hub, "/devices/esp-off/messages")["messages"]
    # Heartbeats every second for longer than the 3-slot ring holds: the oldest went.
    dropped = [m for m in messages if (m.get("data") or {}).get("dropped")]
    assert dropped and dropped[0]["level"] == "warning", messages
    assert dropped[0]["data"]["dropped"] >= 1


def test_firmware_package_streams_into_update_then_restarts(hub_process, client, tmp_path):
    """A staged firmware/<name>.bin goes chunk by chunk (each checked) into the board's
    firmware sink (Update on a node, a file here); then the node restarts. 4 KiB chunks,
    as on an ESP8266: one is held in RAM, so this is the sync with the largest heap."""
    hub = hub_process({"DROPSYNC_ADMIN_TOKEN": ADMIN_TOKEN, "DROPSYNC_STAGING_WATCH": "false",
                       "DROPSYNC_POLL_INTERVAL_S": "1"})
    token = register(hub, "esp-fw")
    image = b"\xe9\x03\x02\x20" + os.urandom(3 * 4096 + 100)
    package = stage(hub, "esp-fw", "firmware/app.bin", image)
    run = client(hub.url, "esp-fw", token)
    assert run.wait(60) == 3, run.output  # the host board's restart()
    assert (tmp_path / "flash.img.firmware.bin").read_bytes() == image
    assert not run.flash.exists("/firmware")  # streamed, not kept as a file
    devices = admin_get(hub, f"/packages/{package['id']}")["devices"]
    assert [(d["device_id"], d["state"]) for d in devices] == [("esp-fw", "applied")]
    peak = int(re.search(r"^peak_heap_bytes (\d+)$", run.output, re.M).group(1))
    print(f"firmware sync: peak heap {peak} bytes (node object + one 4 KiB chunk)")
    assert 4096 < peak <= PEAK_HEAP_LIMIT


def test_withdrawn_files_are_deleted_from_the_node(hub, client, tmp_path):
    token = register(hub, "esp-wd")
    stage(hub, "esp-wd", "keep/a.txt", b"stays")
    gone = stage(hub, "esp-wd", "drop/b.txt", b"goes away")
    first = client(hub.url, "esp-wd", token, "--exit-after-sync")
    assert first.wait(60) == 0, first.output
    flash = first.flash
    assert flash.read("/keep/a.txt") == b"stays"
    assert flash.read("/drop/b.txt") == b"goes away"
    flash.write("/mine.txt", b"not synced: never touched")

    response = requests.delete(f"{hub.url}/api/v1/admin/packages/{gone['id']}",
                               headers=ADMIN, timeout=10)
    assert response.status_code == 200, response.text
    second = client(hub.url, "esp-wd", token, "--exit-after-sync")
    assert second.wait(60) == 0, second.output
    assert re.search(rf"^withdrawn {gone['id']} drop/b.txt$", second.output, re.M)
    assert not flash.exists("/drop/b.txt")
    assert flash.read("/keep/a.txt") == b"stays"
    assert flash.exists("/mine.txt")


def test_a_command_cut_short_by_a_restart_ends_interrupted_and_never_runs_twice(
        hub, proxy, client):
    """The node marks a command running on flash before its handler runs. upload-log's
    handler is held at its upload request, the node killed there: delivered again after
    the lease, the command ends "interrupted by a restart" and its handler does not run
    again (no second upload)."""
    token = register(hub, "esp-int")
    upload_path = "/api/v1/files/upload/esp-int?filename=log.txt"
    proxy.hold = upload_path
    upload = queue(hub, "esp-int", "upload-log")
    first = client(proxy.url, "esp-int", token, "--poll-s", "1")
    assert proxy.held.wait(30), first.output
    first.kill()  # mid-handler: the upload never answered
    proxy.release.set()
    second = client(proxy.url, "esp-int", token, "--poll-s", "1")
    second.wait_for(rf"^command {upload} upload-log interrupted by a restart$")
    wait_until(lambda: delivery(hub, upload)["state"] == "failed", 20, message="failed")
    assert delivery(hub, upload)["reason"] == "interrupted by a restart"
    assert proxy.counts[upload_path] == 1, proxy.counts  # the handler ran once
    assert admin_get(hub, "/uploads", device="esp-int")["uploads"] == []


def test_a_chunk_longer_than_the_manifest_says_is_refused(hub, proxy, client):
    """The proxy lengthens the last chunk by 100 bytes, its X-Chunk-SHA256 made to match:
    only the length check stands between those bytes and the end of the file. Under
    AddressSanitizer."""
    token = register(hub, "esp-long")
    content, package = staged_file(hub, "esp-long", 5 * 1024 + 300)  # 6 chunks
    chunk_url = f"/api/v1/files/download/esp-long/{package['id']}/{package['version']}"
    proxy.lengthen_once = {f"{chunk_url}/5"}
    run = client(proxy.url, "esp-long", token, "--exit-after-sync", binary="asan")
    assert run.wait(60) == 0, run.output
    assert re.search(rf"^chunk rejected {package['id']} 5 wrong length$", run.output, re.M), \
        run.output
    assert run.flash.read("/data/blob.bin") == content
    assert proxy.chunk_counts() == {0: 1, 1: 1, 2: 1, 3: 1, 4: 1, 5: 2}


def test_a_firmware_chunk_longer_than_its_buffer_is_refused(hub_process, client, tmp_path):
    """A firmware chunk is held in a buffer of chunk_size bytes until its hash is checked;
    100 bytes more must be refused, not written past it (AddressSanitizer aborts on that)."""
    hub = hub_process({"DROPSYNC_ADMIN_TOKEN": ADMIN_TOKEN, "DROPSYNC_STAGING_WATCH": "false",
                       "DROPSYNC_POLL_INTERVAL_S": "1"})
    proxy = Proxy(hub.port)
    try:
        token = register(hub, "esp-fwl")
        image = b"\xe9\x03\x02\x20" + os.urandom(3 * 4096 + 100)
        package = stage(hub, "esp-fwl", "firmware/app.bin", image)
        chunk_url = f"/api/v1/files/download/esp-fwl/{package['id']}/{package['version']}"
        proxy.lengthen_once = {f"{chunk_url}/1"}
        run = client(proxy.url, "esp-fwl", token, binary="asan")
        assert run.wait(60) == 3, run.output  # applied, then the host board's restart()
        assert re.search(rf"^chunk rejected {package['id']} 1 wrong length$", run.output,
                         re.M), run.output
        assert (tmp_path / "flash.img.firmware.bin").read_bytes() == image
    finally:
        proxy.close()
