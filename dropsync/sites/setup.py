"""Setting up a link, one command on each side, through Syncthing's REST API.

``init_site`` (on a site hub) and ``add_site`` (on the central hub) each add the other
end's device and the folders of the link with the same folder ids, so either may run
first; both are idempotent (running one again updates addresses, groups and settings).
Versioning is off on every folder: old versions would fill a Pi's SD card, and the hub
keeps its own history. Permissions are ignored (a FAT-formatted card has none).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .layout import (
    ALL_SITES,
    GROUP_FEED_PREFIX,
    SITE_FEED_PREFIX,
    CentralFolders,
    SiteFolders,
    check_name,
    commands_folder_id,
    export_folder_id,
    feed_folder_id,
    feeds_for,
)
from .syncthing import Syncthing

#: Temp and hidden names (the hub's own atomic writes, editors, copy tools) are not sent.
SEND_IGNORES = ["(?d).*.tmp", "(?d)*.part", "(?d)*~", "(?d)*.swp", "(?d)*.crdownload"]


def folder_config(folder_id: str, label: str, path: Path, kind: str, devices: list[str],
                  settings: dict[str, Any]) -> dict[str, Any]:
    """A Syncthing folder as the link wants it; fields not named keep Syncthing's defaults."""
    return {"id": folder_id, "label": label, "path": str(path), "type": kind,
            "devices": [{"deviceID": d} for d in sorted(set(devices))],
            "versioning": {"type": ""}, "ignorePerms": True,
            "fsWatcherEnabled": True, "fsWatcherDelayS": settings["SITES_FS_WATCHER_DELAY_S"],
            "rescanIntervalS": settings["SITES_RESCAN_S"], "paused": False}


def share(st: Syncthing, folder_id: str, label: str, path: Path, kind: str, device_id: str,
          settings: dict[str, Any]) -> None:
    """Create the folder, or add ``device_id`` to the devices it is shared with."""
    path.mkdir(parents=True, exist_ok=True)
    current = st.folder(folder_id)
    devices = [device_id] + [d["deviceID"] for d in (current or {}).get("devices", [])]
    st.put_folder(folder_config(folder_id, label, path, kind, devices, settings))
    if kind == "sendonly":  # what the staging folder ignores is never sent either
        st.call("POST", f"/rest/db/ignores?folder={folder_id}", {"ignore": SEND_IGNORES})


def init_site(st: Syncthing, settings: dict[str, Any], *, name: str, groups: list[str],
              central_id: str, central_address: str | None) -> dict[str, Any]:
    """Make this hub a site of the central hub whose Syncthing device is ``central_id``."""
    check_name(name)
    for group in groups:
        check_name(group, "group")
    folders = SiteFolders(settings["SITES_DIR"], settings["STAGING_DIR"])
    st.put_device(central_id, "dropsync-central",
                  [central_address] if central_address else [])
    made = []
    for feed in feeds_for(name, groups):
        share(st, feed_folder_id(feed), f"DropSync from the centre: {feed}",
              folders.feed(feed), "receiveonly", central_id, settings)
        made.append(feed_folder_id(feed))
    share(st, commands_folder_id(name), "DropSync commands from the centre",
          folders.commands, "receiveonly", central_id, settings)
    share(st, export_folder_id(name), "DropSync export to the centre", folders.export,
          "sendonly", central_id, settings)
    made += [commands_folder_id(name), export_folder_id(name)]
    return {"site": name, "device_id": st.my_id(), "folders": made}


def add_site(st: Syncthing, settings: dict[str, Any], *, name: str, groups: list[str],
             device_id: str, address: str | None) -> dict[str, Any]:
    """Share the feeds, the commands and the export folder with the site ``name``."""
    check_name(name)
    for group in groups:
        check_name(group, "group")
    folders = CentralFolders(settings["SITES_DIR"])
    st.put_device(device_id, f"dropsync-site-{name}", [address] if address else [])
    made = []
    for feed in feeds_for(name, groups):
        share(st, feed_folder_id(feed), f"DropSync to {describe_feed(feed)}",
              folders.feed(feed), "sendonly", device_id, settings)
        made.append(feed_folder_id(feed))
    share(st, commands_folder_id(name), f"DropSync commands to {name}",
          folders.site_commands(name), "sendonly", device_id, settings)
    share(st, export_folder_id(name), f"DropSync export from {name}",
          folders.site_export(name), "receiveonly", device_id, settings)
    made += [commands_folder_id(name), export_folder_id(name)]
    return {"site": name, "device_id": st.my_id(), "folders": made}


def describe_feed(feed: str) -> str:
    if feed == ALL_SITES:
        return "all sites"
    if feed.startswith(SITE_FEED_PREFIX):
        return "site " + feed[len(SITE_FEED_PREFIX):]
    return "sites in group " + feed[len(GROUP_FEED_PREFIX):]
