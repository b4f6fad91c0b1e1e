"""The device simulator against a real hub: a fleet with faults, checked through the hub.

The simulator's own word is not the evidence: what the devices did (files verified,
commands completed, logs uploaded) is read back from the hub's admin API.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import requests
from support import ADMIN_TOKEN, BIN
from sync_support import bearer, wait_until

from dropsync.simulator.faults import FaultPlan
from dropsync.simulator.stats import spread_band, time_until_spread

pytestmark = pytest.mark.slow

DEVICES = 200
RUN_S = 30
GROUP_FILE = os.urandom(40 * 1024 + 123)     # 11 chunks of 4 KiB, the last one short
FLEET_FILE = os.urandom(9 * 1024)


def admin(hub, method: str, path: str, missing_ok: bool = False, **kwargs):
    response = requests.request(method, f"{hub.url}/api/v1/admin{path}",
                                headers=bearer(ADMIN_TOKEN), timeout=30, **kwargs)
    if missing_ok and response.status_code == 404:
        return None
    assert response.status_code < 400, response.text
    return response.json()


def group_size(hub, name: str) -> int:
    found = admin(hub, "GET", f"/groups/{name}", missing_ok=True)
    return found["count"] if found else 0


def test_fleet_with_faults_syncs_every_file_and_completes_every_command(hub_process):
    hub = hub_process({"DROPSYNC_ADMIN_TOKEN": ADMIN_TOKEN, "DROPSYNC_POLL_INTERVAL_S": "2",
                       "DROPSYNC_LOG_LEVEL": "WARNING"})
    simulator = subprocess.Popen(
        [str(BIN / "dropsync"), "simulate", "--hub", hub.url, "--admin-token", ADMIN_TOKEN,
         "--devices", str(DEVICES), "--group", "east", "--group", "west", "--ramp", "4",
         "--duration", str(RUN_S), "--fault", "drop=0.05,corrupt=0.1", "--seed", "7",
         "--manifest-every", "10", "--heartbeat-every", "5",
         "--json", "--progress-every", "5"],
        cwd=hub.workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: admin(hub, "GET", "/system/stats")["devices"]["total"] == DEVICES,
                   timeout=RUN_S, every=0.2, message="the fleet registered")
        wait_until(lambda: group_size(hub, "west") == DEVICES // 2,
                   timeout=RUN_S, every=0.2, message="the fleet joined its groups")
        staged = [admin(hub, "PUT", "/staging/group-east/data/model.bin", data=GROUP_FILE),
                  admin(hub, "PUT", "/staging/all/config/site.json", data=FLEET_FILE)]
        queued = [admin(hub, "POST", "/commands", json={"target": target, "name": name})
                  for target, name in (("group:west", "reboot"), ("group:east", "upload-log"),
                                       ("all", "sync"), ("sim-0007", "blink"))]
        out, err = simulator.communicate(timeout=RUN_S + 60)
    finally:
        if simulator.poll() is None:
            simulator.kill()
            simulator.communicate()
    assert simulator.returncode == 0, out + err
    summary = json.loads(out)
    assert summary["errors"]["unexplained"] == 0, summary["errors"]
    injected = summary["faults"]["injected"]
    assert injected.get("drop", 0) > 0 and injected.get("corrupt", 0) > 0, injected
    assert summary["faults"]["caught"]["corrupt"] == injected["corrupt"]

    # Every staged file verified on every device it targets: the hub's own count.
    for package in staged:
        progress = admin(hub, "GET", f"/packages/{package['id']}")["progress"]
        expected = DEVICES // 2 if package["target"] == "group-east" else DEVICES
        assert progress["targets"] == expected
        assert progress["have"] == expected, progress
    # Every queued command completed by every device it named.
    for command in queued:
        found = admin(hub, "GET", f"/commands/{command['id']}")
        states = {d["device_id"]: d["state"] for d in found["deliveries"]}
        assert len(states) == len(command["deliveries"])
        assert set(states.values()) == {"completed"}, found["counts"]
    # The upload-log command left a log per east device on the hub.
    uploads = admin(hub, "GET", "/uploads")["uploads"]
    assert len({u["device_id"] for u in uploads}) == DEVICES // 2
    # Rebooted devices came back with their uptime reset (they said so in a heartbeat).
    rebooted = admin(hub, "GET", "/devices/sim-0002")
    assert rebooted["groups"] == ["west"]
    assert rebooted["connection"] == "online"


def test_simulate_without_hub_or_token_says_what_to_do(tmp_path):
    result = subprocess.run([str(BIN / "dropsync"), "--data-dir", str(tmp_path / "none"),
                             "simulate", "--duration", "1"],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 1
    assert "no hub is running" in result.stderr and "--hub" in result.stderr


def test_fault_plan_parses_kinds_and_rates():
    plan = FaultPlan.parse("drop, corrupt=0.5")
    assert plan.rates == {"drop": 0.05, "corrupt": 0.5}
    for bad in ("melt", "drop=2", "drop=x"):
        with pytest.raises(ValueError):
            FaultPlan.parse(bad)


def test_polls_in_step_are_not_spread_until_they_fan_out():
    window = 10
    # 200 devices polling in step every 10 s, then fanned out evenly from second 30.
    in_step = ([200] + [0] * 9) * 3
    fanned = [20] * 40
    assert time_until_spread(in_step + fanned, window)["spread_after_s"] == 30
    assert time_until_spread(in_step, window)["spread_after_s"] is None
    low, high = spread_band(20)
    assert 0 < low <= 20 <= high < 200


def test_fleet_from_a_token_file_survives_stalls_outages_and_wrong_tokens(hub_process,
                                                                          tmp_path):
    """The other fault kinds, a fleet that powers up in the same second, and devices
    registered beforehand (ids and tokens from a file, as a site would have them)."""
    hub = hub_process({"DROPSYNC_ADMIN_TOKEN": ADMIN_TOKEN, "DROPSYNC_POLL_INTERVAL_S": "2",
                       "DROPSYNC_LOG_LEVEL": "WARNING"})
    tokens = {f"node-{i:02d}": admin(hub, "POST", "/devices/register",
                                     json={"id": f"node-{i:02d}"})["token"]
              for i in range(30)}
    tokens_file = tmp_path / "device_auth.json"
    tokens_file.write_text(json.dumps(tokens))
    result = subprocess.run(
        [str(BIN / "dropsync"), "simulate", "--hub", hub.url, "--tokens", str(tokens_file),
         "--start", "together", "--duration", "12", "--stall-s", "1", "--seed", "3",
         "--fault", "offline=0.05,stall=0.1,bad-token=0.2", "--json", "--quiet"],
        cwd=hub.workdir, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout)
    assert summary["devices"] == 30
    assert summary["errors"]["unexplained"] == 0, summary["errors"]
    injected = summary["faults"]["injected"]
    assert {"offline", "stall", "bad-token"} <= set(injected), injected
    # Every wrong token was refused (401, or 429 once its address was shut out).
    assert summary["faults"]["caught"]["bad-token"] == injected["bad-token"]
    # Each device spoke from its own address, so one's wrong tokens never shut out another.
    devices = admin(hub, "GET", "/devices")["devices"]
    addresses = {d["address"] for d in devices}
    assert len(addresses) == 30 and all(a.startswith("127.1.") for a in addresses)
