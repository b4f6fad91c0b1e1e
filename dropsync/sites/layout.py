"""Which folder is which, on a site hub and on the central hub.

A site hub (``SITES_DIR`` = ``sites/`` by default)::

    staging/@central/<feed>/<target>/<path>   receive-only: packages from the centre
    sites/commands/<id>.json                  receive-only: commands from the centre
    sites/export/seg-<seq>.json               send-only: this site's state, in segments

The central hub::

    sites/outbox/<feed>/<target>/<path>       send-only, one Syncthing folder per feed
    sites/commands/<site>/<id>.json           send-only to that site
    sites/exports/<site>/seg-<seq>.json       receive-only from that site

A feed is a destination: ``all`` (every site), ``site-<name>`` (one site) or
``sites-<group>`` (a group of sites). ``@central`` cannot be a target folder (a device id
or group never contains ``@``), so the centre's files never collide with a site's own
target folders; a site owns no files below it.
"""

from __future__ import annotations

import re
from pathlib import Path

#: The subtree of a site's staging folder its central feeds land in.
CENTRAL_SUBDIR = "@central"
ALL_SITES = "all"
SITE_FEED_PREFIX = "site-"
GROUP_FEED_PREFIX = "sites-"
#: Folder ids in Syncthing; the same on both ends of a link.
FOLDER_ID_PREFIX = "dropsync-"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
SEGMENT_RE = re.compile(r"^seg-(\d{8,})\.json$")
COMMAND_FILE_RE = re.compile(r"^([A-Za-z0-9_-]{1,64})\.json$")


def check_name(name: str, what: str = "site") -> str:
    if not NAME_RE.match(name):
        raise ValueError(f"a {what} name is 1-40 lowercase letters, digits, '-' or '_', "
                         f"starting with a letter or digit (got {name!r})")
    return name


def feeds_for(site: str, groups: list[str]) -> list[str]:
    """The feeds a site receives: every site's, its own, and its groups'."""
    return [ALL_SITES, SITE_FEED_PREFIX + site, *(GROUP_FEED_PREFIX + g for g in groups)]


def feed_rank(feed: str) -> int:
    """Which feed wins when two carry the same target and path: the narrower one."""
    if feed.startswith(SITE_FEED_PREFIX):
        return 0
    if feed.startswith(GROUP_FEED_PREFIX):
        return 1
    return 2


def feed_folder_id(feed: str) -> str:
    return f"{FOLDER_ID_PREFIX}feed-{feed}"


def commands_folder_id(site: str) -> str:
    return f"{FOLDER_ID_PREFIX}commands-{site}"


def export_folder_id(site: str) -> str:
    return f"{FOLDER_ID_PREFIX}export-{site}"


def segment_name(seq: int) -> str:
    return f"seg-{seq:08d}.json"


class SiteFolders:
    """Where a site hub finds its link folders."""

    def __init__(self, sites_dir: Path | str, staging_dir: Path | str):
        self.root = Path(sites_dir).resolve()
        self.central = Path(staging_dir).resolve() / CENTRAL_SUBDIR
        self.commands = self.root / "commands"
        self.export = self.root / "export"

    def feed(self, feed: str) -> Path:
        return self.central / feed

    @property
    def configured(self) -> bool:
        """A site once ``dropsync site init`` made its export folder."""
        return self.export.is_dir()


class CentralFolders:
    """Where the central hub finds its link folders."""

    def __init__(self, sites_dir: Path | str):
        self.root = Path(sites_dir).resolve()
        self.outbox = self.root / "outbox"
        self.exports = self.root / "exports"
        self.commands = self.root / "commands"

    def feed(self, feed: str) -> Path:
        return self.outbox / feed

    def site_export(self, site: str) -> Path:
        return self.exports / site

    def site_commands(self, site: str) -> Path:
        return self.commands / site

    @property
    def configured(self) -> bool:
        """A central hub once ``dropsync central add-site`` made its exports folder."""
        return self.exports.is_dir()

    def sites(self) -> list[str]:
        try:
            return sorted(p.name for p in self.exports.iterdir()
                          if p.is_dir() and NAME_RE.match(p.name))
        except OSError:
            return []
