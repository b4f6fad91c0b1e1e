"""The firmware core enrolls by itself, against a real hub: the host client, built once
with no device id or token, enrolls with the fleet's key, waits until an operator accepts
it through the admin API, claims its token and keeps it on its flash (a littlefs image with
the ESP8266 core's rules), boots on it after a restart without enrolling again, and
enrolls again after a factory reset (the factory_reset command, and the sketch's reset)."""

from __future__ import annotations

import hashlib
import re

import pytest
import requests
from firmware_support import ADMIN, HostClient
from support import ADMIN_TOKEN
from sync_support import bearer, wait_until

MAC = "02:00:5e:10:20:30"
FAST = ("--poll-s", "1", "--heartbeat-s", "2", "--backoff-base-ms", "200",
        "--backoff-cap-ms", "2000")


@pytest.fixture
def hub(hub_process):
    return hub_process({"DROPSYNC_ADMIN_TOKEN": ADMIN_TOKEN, "DROPSYNC_ENROLL_RETRY_S": "1",
                        "DROPSYNC_POLL_INTERVAL_S": "1", "DROPSYNC_LOG_LEVEL": "WARNING"})


def admin(hub, method, path, body=None):
    response = requests.request(method, f"{hub.url}/api/v1/admin{path}", headers=ADMIN,
                                json=body, timeout=10)
    assert response.status_code < 300, response.text
    return response.json()


def board(firmware_build, hub, tmp_path, key, *args):
    """One boot of the board: no id, no token, only the fleet's enrollment key (each boot
    with a log of its own: the one before is moved aside)."""
    log = tmp_path / "flash.img-client.log"
    if log.exists():
        log.rename(tmp_path / f"boot-{len(list(tmp_path.glob('boot-*')))}.log")
    return HostClient(firmware_build["client"], hub.url, "", "", tmp_path / "flash.img",
                      "--enroll-key", key, "--hardware-id", MAC, "--name-hint", "field-1",
                      *FAST, *args)


def enrollments(hub) -> list[dict]:
    return admin(hub, "GET", "/enrollments")["enrollments"]


def test_enrolls_once_keeps_its_token_and_enrolls_again_after_a_factory_reset(
        firmware_build, hub, tmp_path):
    key = admin(hub, "POST", "/enroll-keys", {"group": "field"})["key"]
    run = board(firmware_build, hub, tmp_path, key)
    try:
        run.wait_for(r"enroll: pending")
        wait_until(lambda: [e["hardware_id"] for e in enrollments(hub)
                            if e["state"] == "pending"] == [MAC], timeout=15,
                   message="the board pending")
        assert admin(hub, "GET", "/devices")["count"] == 0
        admin(hub, "POST", "/enrollments/accept", {"hardware_ids": [MAC]})
        run.wait_for(r"enroll: claimed field-1")
        wait_until(lambda: admin(hub, "GET", "/devices/field-1")["connection"] == "online",
                   timeout=15, message="the enrolled board online")
    finally:
        run.stop()
    device_id, token = run.flash.text("/.dropsync/identity").split("\n")
    assert device_id == "field-1"
    assert requests.get(f"{hub.url}/api/v1/device/ping/field-1", headers=bearer(token),
                        timeout=10).status_code == 200
    secret = run.flash.text("/.dropsync/secret")
    assert re.fullmatch(r"[0-9a-f]{64}", secret)
    assert [e["secret_fingerprint"] for e in enrollments(hub)] == \
        [hashlib.sha256(secret.encode()).hexdigest()[:12]]
    seen = enrollments(hub)[0]["last_seen"]

    # a restart boots on the stored identity: no enrollment, no claim
    again = board(firmware_build, hub, tmp_path, key)
    try:
        again.wait_for(r"enroll: identity on flash")
        again.wait_for(r"sync up_to_date", timeout=15)
        queued = admin(hub, "POST", "/devices/field-1/command", {"command": "factory_reset"})
        assert again.wait(30) == 3, again.output  # completed, forgot, restarted
    finally:
        again.stop()
    assert "enroll: pending" not in again.output and "claimed" not in again.output
    assert enrollments(hub)[0]["last_seen"] == seen
    done = admin(hub, "GET", f"/commands/{queued['id']}")
    assert [d["state"] for d in done["deliveries"]] == ["completed"]
    assert not again.flash.exists("/.dropsync/identity")
    assert not again.flash.exists("/.dropsync/secret")

    # after the reset: a new secret, a re-enrollment an operator must accept
    third = board(firmware_build, hub, tmp_path, key)
    try:
        third.wait_for(r"enroll: pending")
        entry = wait_until(lambda: next((e for e in enrollments(hub)
                                         if e["state"] == "pending"), None), timeout=15,
                           message="the re-enrollment pending")
        assert entry["re_enrollment_of"] == "field-1"
        admin(hub, "POST", "/enrollments/accept", {"hardware_ids": [MAC]})
        third.wait_for(r"enroll: claimed field-1")
    finally:
        third.stop()
    new_token = third.flash.text("/.dropsync/identity").split("\n")[1]
    assert new_token != token
    assert requests.get(f"{hub.url}/api/v1/device/ping/field-1", headers=bearer(token),
                        timeout=10).status_code == 401
    assert third.flash.text("/.dropsync/secret") != secret

    # the sketch's reset (a long press): forgets before enrolling
    fourth = board(firmware_build, hub, tmp_path, key, "--factory-reset", "--run-s", "3")
    fourth.wait_for(r"enroll: pending")
    fourth.wait(30)
    assert "factory reset: identity forgotten" in fourth.output  # the sketch's reset
    assert [e["state"] for e in enrollments(hub)] == ["pending"]


def test_a_wrong_key_backs_off_without_hammering_the_hub(firmware_build, hub, tmp_path):
    admin(hub, "POST", "/enroll-keys", {})
    run = board(firmware_build, hub, tmp_path, "not-the-key", "--refused-wait-ms", "60000",
                "--run-s", "4")
    run.wait(30)
    assert run.output.count("enroll: refused 401") == 1, run.output
    assert enrollments(hub) == []
    assert run.flash.exists("/.dropsync/secret")  # made once, kept for the next try
