"""The hub's periodic look at its link folders: off until a set-up command made them.

Which role a hub plays is read from its folders each tick, so ``dropsync site init`` or
``dropsync central add-site`` takes effect without a restart, and a hub with neither (no
Syncthing at all) does nothing here.
"""

from __future__ import annotations

from typing import Any

from ..store.periodic import Periodic
from .central import CentralReader, sites_overview
from .export import SiteExporter
from .layout import CentralFolders, SiteFolders


class SitesLink:
    def __init__(self, hub: Any, settings: dict[str, Any]):
        self.site_folders = SiteFolders(settings["SITES_DIR"], settings["STAGING_DIR"])
        self.central_folders = CentralFolders(settings["SITES_DIR"])
        self.silent_after_s = settings["SITES_SILENT_AFTER_S"]
        self.exporter = SiteExporter(hub, self.site_folders, settings)
        self.reader = CentralReader(hub.stores, self.central_folders)
        self.periodic = Periodic("sites-link", settings["SITES_CHECK_S"], self.tick)

    def tick(self) -> None:
        if self.site_folders.configured:
            self.exporter.tick()
        if self.central_folders.configured:
            self.reader.tick()

    def overview(self) -> list[dict[str, Any]]:
        return sites_overview(self.reader.stores, self.central_folders, self.silent_after_s)

    def start(self) -> None:
        self.periodic.start()

    def stop(self) -> None:
        self.periodic.stop()
