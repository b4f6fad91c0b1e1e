"""Many sites through real Syncthing daemons: a central hub and two site hubs, each with
its own ``syncthing`` on loopback, set up with the project's own commands.

Evidence comes from the hubs (packages verified by the simulated devices, commands and
their deliveries, the centre's Sites API) and from their files, never from Syncthing's
word alone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests
from sites_support import SyncthingDaemon
from support import ADMIN_TOKEN, BIN, HubProcess
from sync_support import bearer, wait_until

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("syncthing") is None,
                                 reason="syncthing is not installed (tests/system-deps.sh)")]

#: Syncthing's watcher settings the link's folders get in this test (stated in the notes).
WATCHER_DELAY_S = 1
RESCAN_S = 10
TIMEOUT_S = 60


def hub_env(daemon: SyncthingDaemon) -> dict[str, str]:
    return {"DROPSYNC_ADMIN_TOKEN": ADMIN_TOKEN, "DROPSYNC_LOG_LEVEL": "INFO",
            "DROPSYNC_POLL_INTERVAL_S": "1", "DROPSYNC_STAGING_SETTLE_S": "0.3",
            "DROPSYNC_SITES_CHECK_S": "0.3", "DROPSYNC_SITES_EXPORT_S": "5",
            "DROPSYNC_SYNCTHING_URL": daemon.url, "DROPSYNC_SYNCTHING_HOME": str(daemon.home),
            "DROPSYNC_SITES_FS_WATCHER_DELAY_S": str(WATCHER_DELAY_S),
            "DROPSYNC_SITES_RESCAN_S": str(RESCAN_S)}


def admin(hub: HubProcess, method: str, path: str, **kwargs):
    response = requests.request(method, f"{hub.url}/api/v1/admin{path}",
                                headers=bearer(ADMIN_TOKEN), timeout=30, **kwargs)
    assert response.status_code < 400, response.text
    return response.json()


def drop(path: Path, data: bytes) -> None:
    """As an operator's copy tool does: a temp name, then a rename into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(path.name + ".part")
    temp.write_bytes(data)
    os.replace(temp, path)


def package(hub: HubProcess, slot: str) -> dict | None:
    return next((p for p in admin(hub, "GET", "/packages")["packages"]
                 if f"{p['target']}/{p['path']}" == slot), None)


def verified(hub: HubProcess, slot: str, sha256: str | None = None) -> bool:
    found = package(hub, slot)
    progress = (found or {}).get("progress") or {}
    return bool(progress.get("targets") and progress["have"] == progress["targets"]
                and (sha256 is None or found["sha256"] == sha256))


def site_view(central: HubProcess, name: str) -> dict:
    return next((s for s in admin(central, "GET", "/sites")["sites"] if s["name"] == name),
                {})


def command_outcome(central: HubProcess, site: str, central_id: str) -> dict | None:
    return next((c for c in site_view(central, site).get("commands", [])
                 if c["id"] == central_id), None)


def deliveries_named(hub: HubProcess, device_id: str, name: str) -> list[dict]:
    return [c for c in admin(hub, "GET", f"/devices/{device_id}/commands")["commands"]
            if c["name"] == name]


def published_count(hub: HubProcess, slot: str) -> int:
    """``package.published`` events for ``slot`` in the hub's history files (hub stopped)."""
    count = 0
    for segment in (hub.data_dir / "history" / "events").glob("*.jsonl"):
        for line in segment.read_text().splitlines():
            event = json.loads(line)
            if event.get("kind") == "package.published" and \
                    f"{event.get('target')}/{event.get('path')}" == slot:
                count += 1
    return count


def newest_segment(hub: HubProcess) -> int:
    return max(int(p.name[4:-5]) for p in (hub.workdir / "sites" / "export").glob("seg-*.json"))


@pytest.fixture
def three_hubs(tmp_path):
    """Central, site a and site b, each a hub with its own Syncthing; all stopped after."""
    started: list = []
    try:
        daemons = {}
        for name in ("central", "a", "b"):
            daemons[name] = SyncthingDaemon(tmp_path / name / "syncthing")
            started.append(daemons[name].start())
        hubs = {}
        for name, daemon in daemons.items():
            hubs[name] = HubProcess(tmp_path / name / "hub", hub_env(daemon))
            started.append(hubs[name].start())
        yield hubs, daemons
    finally:
        for thing in reversed(started):
            thing.stop()


@pytest.fixture
def simulated(tmp_path):
    """One simulated device per site hub (``dropsync simulate``), stopped after."""
    running: list[subprocess.Popen] = []

    def start(hub: HubProcess, prefix: str) -> str:
        running.append(subprocess.Popen(
            [str(BIN / "dropsync"), "simulate", "--hub", hub.url, "--admin-token",
             ADMIN_TOKEN, "--devices", "1", "--prefix", prefix, "--group", "pumps",
             "--ramp", "0", "--duration", "600", "--manifest-every", "1",
             "--heartbeat-every", "1", "--quiet", "--seed", "3"],
            cwd=hub.workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True))
        device_id = f"{prefix}0001"
        wait_until(lambda: any(d["id"] == device_id
                               for d in admin(hub, "GET", "/devices")["devices"]),
                   timeout=TIMEOUT_S, message=f"{device_id} registered")
        return device_id

    yield start
    for process in running:
        process.kill()
        process.wait()


def test_central_packages_commands_and_exports_reach_every_site_exactly_once(
        three_hubs, simulated):
    hubs, daemons = three_hubs
    central, site_a, site_b = hubs["central"], hubs["a"], hubs["b"]
    # -- set-up: one command on each side per site, through Syncthing's REST API -------
    for name in ("a", "b"):
        central.cli("central", "add-site", name, daemons[name].device_id,
                    "--address", daemons[name].address)
        out = hubs[name].cli("site", "init", "--name", name, "--central",
                             daemons["central"].device_id, "--central-address",
                             daemons["central"].address).stdout
        assert "dropsync central add-site" in out
    folder = daemons["a"].api.folder("dropsync-feed-all")
    assert folder["type"] == "receiveonly" and folder["versioning"]["type"] == ""
    assert Path(folder["path"]) == (site_a.workdir / "staging" / "@central" / "all").resolve()
    assert daemons["central"].api.folder("dropsync-feed-all")["type"] == "sendonly"
    assert daemons["central"].api.folder("dropsync-export-b")["type"] == "receiveonly"
    devices = {name: simulated(hubs[name], f"{name}-") for name in ("a", "b")}
    outbox = central.workdir / "sites" / "outbox"

    # -- down: a file for all sites reaches a device at each site, verified -------------
    started = time.monotonic()
    drop(outbox / "all" / "all" / "config" / "site.json", b'{"mode": "summer"}\n')
    first = wait_until(lambda: [n for n in ("a", "b") if verified(hubs[n], "all/config/site.json")],
                       timeout=TIMEOUT_S, every=0.1, message="a site verified the drop")
    drop_to_verified_s = time.monotonic() - started
    wait_until(lambda: all(verified(hubs[n], "all/config/site.json") for n in ("a", "b")),
               timeout=TIMEOUT_S, message="both sites verified the drop")
    assert package(site_a, "all/config/site.json")["source"] == "central"

    # -- a command for one site's group runs there once; its result comes back ----------
    sent = central.cli("central", "command", "a", "group:pumps", "blink",
                       "--args", '{"times": 3}').stdout.strip()
    outcome = wait_until(lambda: (o := command_outcome(central, "a", sent))
                         and o["state"] == "done" and o, timeout=TIMEOUT_S,
                         message="the command's result at the centre")
    assert [(d["device_id"], d["state"]) for d in outcome["deliveries"]] == \
        [(devices["a"], "completed")]
    assert outcome["deliveries"][0]["result"]["args_received"] == ["times"]
    assert len(deliveries_named(site_a, devices["a"], "blink")) == 1
    assert deliveries_named(site_b, devices["b"], "blink") == []

    # -- a site change reaches the centre's Sites view ----------------------------------
    started = time.monotonic()
    admin(site_a, "PUT", "/staging/all/local/notes.txt", data=b"site a's own\n")
    wait_until(lambda: any(p["slot"] == "all/local/notes.txt"
                           for p in site_view(central, "a").get("packages", [])),
               timeout=TIMEOUT_S, every=0.1, message="site a's change at the centre")
    change_to_central_s = time.monotonic() - started

    # -- site b cut off: it keeps serving; the centre moves on --------------------------
    daemons["central"].api.set_paused(daemons["b"].device_id, True)
    wait_until(lambda: not daemons["b"].api.call("GET", "/rest/system/connections")
               ["connections"].get(daemons["central"].device_id, {}).get("connected"),
               timeout=TIMEOUT_S, message="b's link down")
    segments_before = site_view(central, "b")["last_seq"]
    (outbox / "all" / "all" / "config" / "site.json").unlink()          # withdrawn
    drop(outbox / "all" / "all" / "config" / "pump.json", b'{"rpm": 1200}\n')
    sent_b = central.cli("central", "command", "b", "group:pumps", "flush").stdout.strip()
    admin(site_b, "PUT", "/staging/group-pumps/offline.txt", data=b"b alone\n")
    wait_until(lambda: verified(site_b, "group-pumps/offline.txt"), timeout=TIMEOUT_S,
               message="b serves its devices while cut off")
    wait_until(lambda: verified(site_a, "all/config/pump.json")
               and package(site_a, "all/config/site.json") is None, timeout=TIMEOUT_S,
               message="a has the new file and the withdrawal")
    time.sleep(2 * WATCHER_DELAY_S + 1)  # what a live link would have carried by now
    assert package(site_b, "all/config/pump.json") is None
    assert package(site_b, "all/config/site.json") is not None
    assert deliveries_named(site_b, devices["b"], "flush") == []
    assert site_view(central, "b")["last_seq"] == segments_before  # nothing came from b

    # -- the link back: everything arrives, once -----------------------------------------
    daemons["central"].api.set_paused(daemons["b"].device_id, False)
    wait_until(lambda: verified(site_b, "all/config/pump.json")
               and package(site_b, "all/config/site.json") is None, timeout=TIMEOUT_S,
               message="b caught up with the centre's packages")
    wait_until(lambda: (o := command_outcome(central, "b", sent_b)) and o["state"] == "done",
               timeout=TIMEOUT_S, message="b's command result at the centre")
    wait_until(lambda: any(p["slot"] == "group-pumps/offline.txt"
                           for p in site_view(central, "b").get("packages", [])),
               timeout=TIMEOUT_S, message="b's export at the centre")
    time.sleep(2)  # more ticks and rescans: a second delivery would show now
    assert len(deliveries_named(site_b, devices["b"], "flush")) == 1
    assert len(deliveries_named(site_a, devices["a"], "blink")) == 1
    # Syncthing may bring the newest segment before an older one: wait until the centre
    # has read up to b's newest and every segment before it, each once
    view_b = wait_until(lambda: (v := site_view(central, "b"))["last_seq"] == newest_segment(
        site_b) and v["segments_read"] == v["last_seq"] and v, timeout=TIMEOUT_S,
        message="the centre read every one of b's segments")
    assert view_b["missed"] == 0, view_b
    assert view_b["problems"] == []
    # the command files of finished commands are gone from the centre's folder
    wait_until(lambda: not any((central.workdir / "sites" / "commands" / "b").glob("*.json")),
               timeout=TIMEOUT_S, message="b's finished command file removed")

    for name in ("a", "b"):
        hubs[name].stop()
        assert published_count(hubs[name], "all/config/pump.json") == 1
        assert published_count(hubs[name], "all/config/site.json") == 1
    print(f"\nMEASURED drop_to_first_verified_s={drop_to_verified_s:.2f} (site {first[0]}) "
          f"site_change_to_central_s={change_to_central_s:.2f} "
          f"fsWatcherDelayS={WATCHER_DELAY_S} rescanIntervalS={RESCAN_S}")
