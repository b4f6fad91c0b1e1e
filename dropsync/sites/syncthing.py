"""A small client for the local Syncthing daemon's REST API.

The standard library's ``urllib`` rather than ``requests`` (a test-only dependency here) or
``aiohttp`` (an event loop for a handful of calls to one loopback daemon, made from the CLI
and a periodic thread): the calls are few, synchronous and local, so a new runtime
dependency would buy nothing.

Syncthing's configuration is only ever changed through ``/rest/config/...``; its
``config.xml`` is read for the API key and never written.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any
from urllib.parse import quote

#: Where Debian's syncthing keeps its configuration when no home folder is given.
DEFAULT_HOME = Path("~/.config/syncthing")


class SyncthingError(Exception):
    """Syncthing did not answer, or refused a call; the message says what to check."""


def api_key_from_home(home: str | os.PathLike) -> str:
    """The REST API key from ``<home>/config.xml`` (read only)."""
    config = Path(home or DEFAULT_HOME).expanduser() / "config.xml"
    try:
        root = ET.parse(config).getroot()
    except (OSError, ET.ParseError) as exc:
        raise SyncthingError(f"cannot read Syncthing's API key from {config}: {exc} "
                             "(set SYNCTHING_HOME or SYNCTHING_API_KEY)") from None
    key = root.findtext("gui/apikey")
    if not key:
        raise SyncthingError(f"{config} has no <gui><apikey>; set SYNCTHING_API_KEY")
    return key


class Syncthing:
    def __init__(self, url: str, api_key: str, timeout_s: float = 10.0):
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> Syncthing:
        if not settings["SYNCTHING_URL"]:
            raise SyncthingError("SYNCTHING_URL is not set: the hub has no Syncthing to "
                                 "drive (e.g. DROPSYNC_SYNCTHING_URL=http://127.0.0.1:8384)")
        key = settings["SYNCTHING_API_KEY"] or api_key_from_home(settings["SYNCTHING_HOME"])
        return cls(settings["SYNCTHING_URL"], key)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"X-API-Key": self.api_key,
                                                  "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                text = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace").strip()
            raise SyncthingError(f"Syncthing refused {method} {path}: {exc.code} "
                                 f"{detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise SyncthingError(f"Syncthing at {self.url} does not answer ({exc}); is it "
                                 "running (syncthing serve), and is SYNCTHING_URL right?") \
                from None
        return json.loads(text) if text.strip() else None

    # -- what the hub needs ----------------------------------------------------------------
    def my_id(self) -> str:
        return self.call("GET", "/rest/system/status")["myID"]

    def folder(self, folder_id: str) -> dict[str, Any] | None:
        try:
            return self.call("GET", f"/rest/config/folders/{quote(folder_id)}")
        except SyncthingError as exc:
            if " 404 " in str(exc):
                return None
            raise

    def put_folder(self, folder: dict[str, Any]) -> None:
        self.call("PUT", f"/rest/config/folders/{quote(folder['id'])}", folder)

    def put_device(self, device_id: str, name: str, addresses: list[str]) -> None:
        """Add a device, or update its name and addresses (its pause state is kept)."""
        current = self.call("GET", "/rest/config/devices")
        known = next((d for d in current if d["deviceID"] == device_id), None)
        device = {**(known or {}), "deviceID": device_id, "name": name,
                  "addresses": addresses or ["dynamic"]}
        self.call("PUT", f"/rest/config/devices/{quote(device_id)}", device)

    def set_paused(self, device_id: str, paused: bool) -> None:
        self.call("PATCH", f"/rest/config/devices/{quote(device_id)}", {"paused": paused})

    def set_options(self, options: dict[str, Any]) -> None:
        self.call("PATCH", "/rest/config/options", options)

    def folder_status(self, folder_id: str) -> dict[str, Any]:
        return self.call("GET", f"/rest/db/status?folder={quote(folder_id)}")
