"""Many sites, inside one process: the central feeds in staging, the site's command intake
and export, the centre's reading of exports, and the hub with the feature off.

The link itself (real Syncthing daemons) is tested end to end in test_sites_e2e.py; here the
files Syncthing would deliver are written the way it writes them.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
from sync_support import wait_until

from dropsync.dashboard.views import REFRESH_S
from dropsync.sites.layout import CentralFolders, SiteFolders, segment_name

AT = "@central"


def drop(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def syncthing_writes(path: Path, data: bytes, pause_s: float = 0.0) -> None:
    """As Syncthing pulls a file: ``.syncthing.<name>.tmp`` beside it, its mtime set, then
    renamed into place. With ``pause_s``, the link drops half-way: the temp file sits
    closed, half written, for that long (Syncthing keeps temporaries for a day) before
    the rest comes."""
    temp = path.with_name(f".syncthing.{path.name}.tmp")
    temp.parent.mkdir(parents=True, exist_ok=True)
    half = len(data) // 2 if pause_s else len(data)
    temp.write_bytes(data[:half])
    time.sleep(pause_s)
    with open(temp, "ab") as out:
        out.write(data[half:])
    os.utime(temp, (time.time() - 60, time.time() - 60))
    os.replace(temp, path)


def events(hub, kind: str, slot: str) -> list[dict]:
    return [e for e in hub.stores.history["events"].find(limit=1000)
            if e.get("kind") == kind and f"{e.get('target')}/{e.get('path')}" == slot]


# -- down: central feeds in the staging folder ---------------------------------------
def test_a_central_feed_file_is_a_package_of_the_same_target(watched_hub, settings):
    hub = watched_hub()
    staging = Path(settings["STAGING_DIR"])
    drop(staging / AT / "all" / "group-pumps" / "cfg" / "pump.json", b"{}")
    package = wait_until(lambda: hub.packages.catalog.by_slot.get("group-pumps/cfg/pump.json"),
                         message="central package")
    assert package["source"] == "central" and package["target"] == "group-pumps"
    # the feed folders' own names are no target, and never reported as one
    assert hub.staging_report()["problems"] == []


def test_syncthing_temp_files_and_markers_never_become_packages(watched_hub, settings):
    hub = watched_hub(STAGING_SETTLE_S=0.2)
    feed = Path(settings["STAGING_DIR"]) / AT / "all"
    (feed / ".stfolder").mkdir(parents=True)
    drop(feed / ".stignore", b"(?d).DS_Store\n")
    drop(feed / ".stversions" / "all" / "old~20260101.txt", b"old")
    data = os.urandom(200_000)
    syncthing_writes(feed / "all" / "big.bin", data, pause_s=1.0)  # 5 settle times
    package = wait_until(lambda: hub.packages.catalog.by_slot.get("all/big.bin"),
                         message="the renamed file")
    time.sleep(0.5)
    assert [p["slot"] for p in hub.packages.list_packages()] == ["all/big.bin"]
    published = [e for e in hub.stores.history["events"].find(limit=100)
                 if e.get("kind") == "package.published"]
    assert [(e["target"], e["path"]) for e in published] == [("all", "big.bin")]
    assert package["size"] == len(data) and len(events(hub, "package.published",
                                                       "all/big.bin")) == 1
    assert hub.staging_report()["problems"] == []


def test_a_sites_own_file_wins_over_the_centres_and_hands_back_when_removed(
        watched_hub, settings):
    """The rule: a site's own staged file beats a central feed's file of the same target
    and path; the narrower feed (one site, then a group of sites, then all) beats a wider
    one. The loser is reported ``shadowed`` and takes over, without a withdrawal in
    between, once the winner is removed."""
    hub = watched_hub()
    staging = Path(settings["STAGING_DIR"])

    def slots():
        return hub.packages.catalog.by_slot

    drop(staging / AT / "all" / "all" / "mode.txt", b"central all")
    wait_until(lambda: (p := slots().get("all/mode.txt")) and p["size"] == 11,
               message="the centre's file")
    drop(staging / AT / "site-a" / "all" / "mode.txt", b"central site-a")
    wait_until(lambda: slots().get("all/mode.txt")["size"] == 14,
               message="the narrower feed wins")
    drop(staging / "all" / "mode.txt", b"local")
    wait_until(lambda: slots().get("all/mode.txt")["source"] == "folder",
               message="the site's own file wins")
    hub.watcher.rescan()
    shadowed = {p["path"] for p in hub.staging_report()["problems"] if p["kind"] == "shadowed"}
    assert shadowed == {f"{AT}/all/all/mode.txt", f"{AT}/site-a/all/mode.txt"}
    (staging / "all" / "mode.txt").unlink()
    wait_until(lambda: (p := slots().get("all/mode.txt")) and p["source"] == "central"
               and p["size"] == 14, message="the site-a feed's file takes over")
    assert events(hub, "package.withdrawn", "all/mode.txt") == []
    (staging / AT / "site-a" / "all" / "mode.txt").unlink()
    (staging / AT / "all" / "all" / "mode.txt").unlink()
    wait_until(lambda: "all/mode.txt" not in slots(), message="withdrawn at last")


def test_a_central_package_is_withdrawn_at_the_centre_not_at_the_site(hub, settings, admin):
    staging = Path(settings["STAGING_DIR"])
    drop(staging / AT / "all" / "all" / "x.txt", b"x")
    package, _ = hub.staging.ingest_staged_file(staging / AT / "all" / "all" / "x.txt")
    response = admin.delete(f"/packages/{package['id']}")
    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "central_package"
    assert (staging / AT / "all" / "all" / "x.txt").exists()


# -- a site: commands in, export out -----------------------------------------------------
@pytest.fixture
def site_hub(settings, tmp_path, request):
    """A hub that ``dropsync site init`` made a site (its folders), Syncthing aside."""
    settings.update(SITES_DIR=str(tmp_path / "sites"), SITES_EXPORT_KEEP=3)
    hub = request.getfixturevalue("app").extensions["dropsync"]
    folders = SiteFolders(tmp_path / "sites", settings["STAGING_DIR"])
    folders.export.mkdir(parents=True)
    folders.commands.mkdir(parents=True)
    return hub, folders


def test_a_central_command_is_queued_once_however_often_it_is_delivered(site_hub, admin):
    hub, folders = site_hub
    admin.register_device("p1", groups=["pumps"])
    drop(folders.commands / "c0ffee01.json",
         json.dumps({"id": "c0ffee01", "target": "group:pumps", "name": "blink"}).encode())
    for _ in range(3):
        hub.sites.tick()
    syncthing_writes(folders.commands / "c0ffee01.json",  # delivered again, as after a pause
                     json.dumps({"id": "c0ffee01", "target": "group:pumps",
                                 "name": "blink"}).encode())
    hub.sites.tick()
    deliveries = hub.commands.device_commands("p1")["commands"]
    assert [d["name"] for d in deliveries] == ["blink"]


def test_bad_command_files_are_reported_in_the_export_and_never_queued(site_hub, admin):
    hub, folders = site_hub
    admin.register_device("p1", groups=["pumps"])
    drop(folders.commands / "bad1.json", b"{not json")
    drop(folders.commands / "bad2.json", json.dumps({"id": "other", "name": "x",
                                                      "target": "all"}).encode())
    drop(folders.commands / "bad3.json", json.dumps({"id": "bad3", "name": "x",
                                                      "target": "group:nobody"}).encode())
    drop(folders.commands / "notes.txt", b"not a command file")
    hub.sites.tick()
    assert hub.commands.device_commands("p1")["commands"] == []
    segment = json.loads((folders.export / segment_name(1)).read_bytes())
    states = {c["id"]: c["state"] for c in segment["commands"]}
    assert states == {"bad1": "refused", "bad2": "refused", "bad3": "refused"}
    assert all(c["error"] for c in segment["commands"])


def test_the_export_is_appended_in_capped_segments_written_on_change(site_hub, admin):
    hub, folders = site_hub
    exporter = hub.sites.exporter
    first = exporter.export_if_due()
    assert first == 1 and exporter.export_if_due() is None  # nothing changed, period not up
    admin.register_device("p1")
    assert exporter.export_if_due() == 2  # a change: a new segment, the old one untouched
    time.sleep(REFRESH_S)  # the fleet figures the dashboard shares are this fresh
    for _ in range(4):
        exporter.export_if_due(force=True)
    names = sorted(p.name for p in folders.export.iterdir())
    assert names == [segment_name(n) for n in (4, 5, 6)]  # SITES_EXPORT_KEEP = 3
    segment = json.loads((folders.export / segment_name(6)).read_bytes())
    assert segment["seq"] == 6 and segment["state"]["fleet"]["total"] == 1
    assert not any(p.name.endswith(".tmp") for p in folders.export.iterdir())


# -- the centre: reading exports -------------------------------------------------------
@pytest.fixture
def central_hub(settings, tmp_path, request):
    """A hub that ``dropsync central add-site north`` made a central one, Syncthing aside."""
    settings.update(SITES_DIR=str(tmp_path / "sites"), SITES_SILENT_AFTER_S=30)
    hub = request.getfixturevalue("app").extensions["dropsync"]
    folders = CentralFolders(tmp_path / "sites")
    for folder in (folders.site_export("north"), folders.site_commands("north")):
        folder.mkdir(parents=True)
    return hub, folders


def segment(seq: int, written: float, **state) -> bytes:
    return json.dumps({"format": 1, "seq": seq, "written": written,
                       "written_at": "2026-12-05T00:00:00Z", "commands": [],
                       "state": {"fleet": {"online": seq}, **state}}).encode()


def test_each_export_segment_is_read_once_and_bad_ones_are_reported(central_hub):
    hub, folders = central_hub
    export = folders.site_export("north")
    drop(export / segment_name(1), segment(1, time.time()))
    drop(export / segment_name(2), b"\x00garbage")
    drop(export / segment_name(3), segment(3, time.time()))
    for _ in range(3):
        hub.sites.tick()
    drop(export / segment_name(5), segment(5, time.time()))  # 4 was pruned at the site
    hub.sites.tick()
    hub.sites.tick()
    record = hub.stores.sites.get("north")
    assert (record["last_seq"], record["segments_read"], record["missed"]) == (5, 3, 1)
    assert len(record["problems"]) == 1 and "seg-00000002" in record["problems"][0]
    (site,) = hub.sites.overview()
    assert site["fleet"] == {"online": 5} and not site["silent"]


def test_a_site_silent_too_long_stands_out(central_hub):
    hub, folders = central_hub
    drop(folders.site_export("north") / segment_name(1), segment(1, time.time() - 3600))
    hub.sites.tick()
    (site,) = hub.sites.overview()
    assert site["silent"] and site["age_s"] >= 3600


def test_dropsync_sites_lists_the_sites(central_hub, cli, tmp_path, monkeypatch):
    hub, folders = central_hub
    drop(folders.site_export("north") / segment_name(1), segment(1, time.time()))
    hub.sites.tick()
    hub.close()  # the CLI opens the data directory itself
    monkeypatch.setenv("DROPSYNC_SITES_DIR", str(tmp_path / "sites"))
    out = cli("sites").output
    assert "north" in out and "ok" in out


# -- the feature off -------------------------------------------------------------------
def test_without_the_link_the_hub_is_one_site_as_before(hub, settings, cli, tmp_path):
    hub.sites.tick()
    assert not Path(hub.settings["SITES_DIR"]).exists()
    assert hub.sites.overview() == []
    result = cli("site", "init", "--name", "a", "--central", "X" * 56, expect=1)
    assert "SYNCTHING_URL is not set" in result.output


# -- the Sites page --------------------------------------------------------------------
def test_the_sites_page_shows_each_site_and_the_silent_one_first(settings, tmp_path, request):
    settings.update(ADMIN_PASSWORD="operator-password-1")
    hub, folders = request.getfixturevalue("central_hub")
    folders.site_export("south").mkdir(parents=True)
    drop(folders.site_export("north") / segment_name(1), segment(1, time.time()))
    drop(folders.site_export("south") / segment_name(1), segment(1, time.time() - 7200))
    hub.sites.tick()
    client = request.getfixturevalue("app").test_client()
    page = client.get("/dashboard/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)[1]
    assert client.post("/dashboard/login", data={"username": "admin", "csrf_token": token,
                                                 "password": "operator-password-1"}
                       ).status_code == 302
    html = client.get("/dashboard/sites").get_data(as_text=True)
    assert html.index("south") < html.index("north")  # the silent one stands out first
    assert re.search(r'<h2 id="site-south">south\s*<span class="badge failed">silent', html)
    assert 'href="/dashboard/sites" aria-current="page"' in html
    answer = client.get("/dashboard/sites", headers={"Accept": "application/json"}).get_json()
    assert [(s["name"], s["silent"]) for s in answer["sites"]] == [("south", True),
                                                                   ("north", False)]
