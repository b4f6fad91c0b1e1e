"""Rollouts against a real hub: 200 simulated devices take a good image in waves and a bad
one that pauses by itself; the hub restarts mid-rollout; the stock updater's raw HTTP/1.0
requests and the firmware host client each take part in a rollout."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time

import pytest
import requests
from firmware_support import ADMIN, HostClient
from fleet_support import RunningFleet
from support import ADMIN_TOKEN, HubProcess
from sync_support import wait_until
from updater_support import basic, esp8266_request

from dropsync.simulator.faults import FaultPlan
from dropsync.simulator.fleet import FleetOptions, prepare_credentials
from dropsync.sync.rollouts import wave_order

pytestmark = pytest.mark.slow

DEVICES = 200
HUB_ENV = {"DROPSYNC_ADMIN_TOKEN": ADMIN_TOKEN, "DROPSYNC_LOG_LEVEL": "WARNING",
           "DROPSYNC_STAGING_RELEASE": "file=publish,firmware=draft",
           "DROPSYNC_ROLLOUT_TICK_S": "0.2", "DROPSYNC_POLL_INTERVAL_S": "1",
           "DROPSYNC_STAGING_WATCH": "false"}
WAVES = {"canary": 1, "percents": [10, 50, 100], "soak_s": 1, "success_threshold": 1.0,
         "error_threshold": 0.1}


def api(hub, method, path, body=None, data=None):
    response = requests.request(method, f"{hub.url}/api/v1/admin{path}", headers=ADMIN,
                                json=body, data=data, timeout=30)
    assert response.status_code < 300, response.text
    return response.json()


def stage_image(hub, data):
    return api(hub, "PUT", "/staging/all/firmware/app.bin", data=data)


def image():
    return b"\xe9\x03\x02\x20" + os.urandom(5000)


def started_members(rollout):
    return {d for w in rollout["waves"] if w["state"] != "waiting" for d in w["devices"]}


def follow(hub, fleet, rollout_id, sha256, until, timeout=60):
    """Watch a rollout until ``until(rollout)``; meanwhile no device outside its started
    waves may ever have been offered the image (the members are read after the offers,
    so a wave that starts in between cannot hide an offer)."""
    deadline = time.monotonic() + timeout
    seen_states = []
    while True:
        offered = fleet.offered(sha256)
        rollout = api(hub, "GET", f"/rollouts/{rollout_id}")
        assert offered <= started_members(rollout), (offered - started_members(rollout),
                                                     rollout["waves"])
        states = [w["state"] for w in rollout["waves"]]
        if not seen_states or seen_states[-1] != states:
            seen_states.append(states)
        if until(rollout):
            return rollout, seen_states
        assert time.monotonic() < deadline, (rollout["state"], rollout["waves"])
        time.sleep(0.2)


def firmware_versions(hub):
    return {d["id"]: d["inventory"].get("firmware_version")
            for d in api(hub, "GET", "/devices")["devices"]}


def bad_image_for(order_of, plan):
    """A bad image whose canary runs it and whose 10% wave has several devices that
    cannot (which devices fail is fixed per image: see FaultPlan.bad_image)."""
    while True:
        data = image()
        sha = hashlib.sha256(data).hexdigest()
        order = order_of(sha)
        first_percent = order[1:DEVICES // 10]
        failing = [d for d in first_percent if plan.bad_image(d, sha)]
        if plan.bad_image(order[0], sha) is None and len(failing) >= 3:
            return data, failing


def test_200_devices_take_a_good_image_in_waves_and_a_bad_one_pauses_by_itself(
        hub_process, tmp_path):
    hub = hub_process(HUB_ENV)
    tokens = asyncio.run(prepare_credentials(hub.url, ADMIN_TOKEN,
                                             FleetOptions(devices=DEVICES), None))
    fleet = RunningFleet(hub.url, tokens).start()
    try:
        # -- a good image: 1 -> 10% -> 50% -> 100% ----------------------------------------
        good = image()
        good_sha = hashlib.sha256(good).hexdigest()
        package = stage_image(hub, good)
        time.sleep(2)  # every device polls its manifest meanwhile: the draft holds it
        assert fleet.offered(good_sha) == set()
        started = time.monotonic()
        rollout = api(hub, "POST", "/rollouts",
                      {"package": package["id"], "deadline_s": 30, **WAVES})
        assert [(w["name"], w["size"]) for w in rollout["waves"]] == \
            [("canary", 1), ("10%", 19), ("50%", 80), ("100%", 100)]
        rollout, seen = follow(hub, fleet, rollout["id"], good_sha,
                               lambda r: r["state"] == "finished")
        good_s = time.monotonic() - started
        assert seen[0][:2] == ["running", "waiting"] and seen[-1] == ["succeeded"] * 4
        # the waves started one after another, never two at once
        assert all(s.count("running") <= 1 for s in seen), seen
        wait_until(lambda: set(firmware_versions(hub).values()) == {f"fw-{good_sha[:12]}"},
                   30, 0.5, "every device on the new version")

        # -- a bad image: 20% of devices cannot run it -------------------------------------
        plan = FaultPlan({"bad-image": 0.2})
        fleet.fleet.link.faults = plan
        bad, failing = bad_image_for(lambda sha: wave_order(tokens, sha), plan)
        bad_sha = hashlib.sha256(bad).hexdigest()
        package = stage_image(hub, bad)
        rollout = api(hub, "POST", "/rollouts",
                      {"package": package["id"], "deadline_s": 8, **WAVES})
        rollout, _ = follow(hub, fleet, rollout["id"], bad_sha,
                            lambda r: r["state"] == "paused")
        assert [w["state"] for w in rollout["waves"]] == \
            ["succeeded", "failed", "waiting", "waiting"], rollout["waves"]
        assert "error threshold" in rollout["reason"]
        members = started_members(rollout)
        assert len(members) == 20 and set(failing) <= members
        time.sleep(2)  # paused: it stays so, and nobody else is offered the image
        rollout, _ = follow(hub, fleet, rollout["id"], bad_sha, lambda r: True)
        assert rollout["state"] == "paused" and started_members(rollout) == members

        # The stock updater's route answers the same: the image to the started waves,
        # "no update" (304) to everyone else.
        old_md5 = hashlib.md5(good).hexdigest()
        for device_id, token in tokens.items():
            answer = esp8266_request(hub.port, f"/api/v1/ota/{device_id}",
                                     basic(device_id, token), sketch_md5=old_md5)
            if device_id in members:
                assert answer.status_code == 200 and answer.body == bad, device_id
            else:
                assert answer.status_code == 304 and answer.body == b"", device_id

        # -- the hub restarts while the rollout is paused: nothing is lost -----------------
        before = api(hub, "GET", f"/rollouts/{rollout['id']}")
        hub.stop()
        again = HubProcess(tmp_path, {**HUB_ENV, "DROPSYNC_PORT": str(hub.port)})
        again.port, again.url = hub.port, hub.url
        again.start()
        try:
            after = api(again, "GET", f"/rollouts/{rollout['id']}")
            assert after["state"] == "paused" and after["reason"] == before["reason"]
            assert [(w["name"], w["state"], w["devices"]) for w in after["waves"]] == \
                [(w["name"], w["state"], w["devices"]) for w in before["waves"]]
            assert {d for d, e in before["devices"].items() if e["state"] == "succeeded"} \
                <= {d for d, e in after["devices"].items() if e["state"] == "succeeded"}

            # -- the fix: the devices can run it now; retry the failed ones, resume --------
            fleet.fleet.link.faults = FaultPlan()
            api(again, "POST", f"/rollouts/{rollout['id']}/retry-failed")
            api(again, "POST", f"/rollouts/{rollout['id']}/resume")
            rollout, _ = follow(again, fleet, rollout["id"], bad_sha,
                                lambda r: r["state"] == "finished")
            wait_until(lambda: set(firmware_versions(again).values()) ==
                       {f"fw-{bad_sha[:12]}"}, 30, 0.5, "every device on the fixed image")
        finally:
            again.stop()
        print(f"good image to {DEVICES} devices in 4 waves: {good_s:.1f} s")
    finally:
        fleet.stop()


def test_the_host_client_and_a_stock_updater_take_part_in_a_rollout(hub_process,
                                                                     firmware_build,
                                                                     tmp_path):
    """A canary of one stock updater (raw HTTP/1.0, as the ESP8266 core sends it), then the
    host client (the firmware core) in the next wave, then a device whose updater keeps
    the old image past the deadline: it fails, and the last wave pauses."""
    hub = hub_process({**HUB_ENV, "DROPSYNC_CHUNK_SIZE": "1024"})
    tokens = {d: api(hub, "POST", "/devices/register", {"id": d})["token"]
              for d in ("stock", "host", "stale")}
    old = image()
    new = image()
    # the stale updater goes last: its failure pauses the rollout after the others'
    # waves (an image is picked so that the order the rollout will use puts it there)
    while wave_order(tokens, hashlib.sha256(new).hexdigest())[-1] != "stale":
        new = image()
    package = stage_image(hub, new)
    order = wave_order(tokens, package["sha256"])
    waves = {"canary": 1, "percents": [50, 100]}
    rollout = api(hub, "POST", "/rollouts", {"package": package["id"], "soak_s": 0,
                                             "deadline_s": 4, "error_threshold": 0,
                                             **waves})
    assert [w["devices"] for w in rollout["waves"]] == [[order[0]], [order[1]], [order[2]]]

    def stock(device_id, sketch):
        return esp8266_request(hub.port, f"/api/v1/ota/{device_id}",
                               basic(device_id, tokens[device_id]),
                               sketch_md5=hashlib.md5(sketch).hexdigest())

    def state():
        return api(hub, "GET", f"/rollouts/{rollout['id']}")

    for device_id in order:  # whoever is in the first wave plays its part there
        wave = next(w for w in state()["waves"] if device_id in w["devices"])
        assert wave["state"] == "running", (device_id, state()["waves"])
        later = [d for d in order if d != device_id
                 and device_id in order[:order.index(d)]]
        for outside in later:  # waves not started: "no update"
            assert stock(outside, old).status_code == 304
        if device_id == "host":
            run = HostClient(firmware_build["client"], hub.url, "host", tokens["host"],
                             tmp_path / "flash.img")
            assert run.wait(60) == 3, run.output  # restarted into the new image
            assert (tmp_path / "flash.img.firmware.bin").read_bytes() == new
        elif device_id == "stock":
            answer = stock("stock", old)
            assert answer.status_code == 200 and answer.body == new
            assert stock("stock", new).status_code == 304  # back, running the new one
        else:  # "stale": fetches it, but comes back with the old image
            assert stock("stale", old).status_code == 200
            time.sleep(0.5)
            assert stock("stale", old).status_code == 200
        if device_id != "stale":
            wait_until(lambda d=device_id: state()["devices"][d]["state"] == "succeeded",
                       20, 0.2, f"{device_id} succeeded")
    paused = wait_until(lambda: (lambda r: r if r["state"] == "paused" else None)(state()),
                        20, 0.2, "paused after the deadline")
    assert paused["devices"]["stale"] == {"wave": 2, "state": "failed",
                                          "reason": "no success before the deadline"}
    assert [w["state"] for w in paused["waves"]] == ["succeeded", "succeeded", "failed"]
