"""systemd units for the hub and its nightly backup, written with this install's paths.

``deploy/`` holds the units as they come out for the default layout (a checkout in
``/opt/dropsync``, state in ``/var/lib/dropsync``); a test keeps them identical to what
``render_units`` makes, and checks both with ``systemd-analyze verify``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SERVICE = "dropsync.service"
BACKUP_SERVICE = "dropsync-backup.service"
BACKUP_TIMER = "dropsync-backup.timer"


@dataclass(frozen=True)
class Layout:
    """Where things live on the machine the units are for."""

    executable: Path = Path("/opt/dropsync/.venv/bin/dropsync")
    home: Path = Path("/var/lib/dropsync")
    data_dir: Path = Path("/var/lib/dropsync/data")
    staging_dir: Path = Path("/var/lib/dropsync/staging")
    backup_dir: Path = Path("/var/backups/dropsync")
    env_file: Path = Path("/etc/dropsync/dropsync.env")
    user: str = "dropsync"
    keep_backups: int = 7


#: The sandbox both services run in: no privileges, a read-only system, writable only
#: where ReadWritePaths says. AF_NETLINK: zeroconf lists the interfaces to advertise on.
HARDENING = """\
NoNewPrivileges=yes
CapabilityBoundingSet=
PrivateTmp=yes
PrivateDevices=yes
ProtectSystem=strict
ProtectHome=read-only
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
RestrictNamespaces=yes
RestrictSUIDSGID=yes
RestrictRealtime=yes
LockPersonality=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
"""


def hub_unit(layout: Layout) -> str:
    return f"""\
# DropSync hub. Written by `dropsync install-service`; settings go in {layout.env_file}
# (DROPSYNC_<NAME>=value, see docs/admin/settings.md), not here.
[Unit]
Description=DropSync hub (commands and verified file sync for ESP8266/ESP32 nodes)
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
User={layout.user}
Group={layout.user}
WorkingDirectory={layout.home}
Environment=DROPSYNC_DATA_DIR={layout.data_dir}
Environment=DROPSYNC_STAGING_DIR={layout.staging_dir}
EnvironmentFile=-{layout.env_file}
ExecStart={layout.executable} serve
Restart=always
# every node holds a connection open between polls
LimitNOFILE=65536
RestartSec=2
# SIGTERM lets the worker checkpoint liveness and release the data directory.
KillSignal=SIGTERM
TimeoutStopSec=30
# Group-readable blobs (0640) let nginx, in this group, send them via X-Accel-Redirect.
UMask=0027
{HARDENING}ReadWritePaths={layout.data_dir} {layout.staging_dir}

[Install]
WantedBy=multi-user.target
"""


def backup_unit(layout: Layout) -> str:
    return f"""\
# Nightly backup of the DropSync hub (run by {BACKUP_TIMER}). Through the running hub
# when there is one, so the snapshot is consistent; keeps the newest {layout.keep_backups}.
[Unit]
Description=DropSync hub backup
After={SERVICE}

[Service]
Type=oneshot
User={layout.user}
Group={layout.user}
WorkingDirectory={layout.home}
Environment=DROPSYNC_DATA_DIR={layout.data_dir}
Environment=DROPSYNC_STAGING_DIR={layout.staging_dir}
EnvironmentFile=-{layout.env_file}
ExecStart={layout.executable} backup --dir {layout.backup_dir} --keep {layout.keep_backups}
Nice=10
IOSchedulingClass=idle
UMask=0077
{HARDENING}ReadWritePaths={layout.data_dir} {layout.backup_dir}
"""


def backup_timer() -> str:
    return f"""\
# Starts {BACKUP_SERVICE} every night; a night the machine was off is made up at boot.
[Unit]
Description=Nightly DropSync hub backup

[Timer]
OnCalendar=*-*-* 03:15:00
RandomizedDelaySec=20min
Persistent=true

[Install]
WantedBy=timers.target
"""


def env_file_template() -> str:
    return """\
# DropSync hub settings: DROPSYNC_<NAME>=value (docs/admin/settings.md lists them).
# Behind nginx on this machine (deploy/nginx.conf), listen on loopback only:
#DROPSYNC_HOST=127.0.0.1
#DROPSYNC_TRUSTED_PROXIES=127.0.0.1
#DROPSYNC_DOWNLOAD_ACCEL_PREFIX=/_blobs/
# and `sudo dropsync nginx-ticket` adds DROPSYNC_DOWNLOAD_TICKET_SECRET=... below (the
# same secret goes to nginx; keep this file 0640).
DROPSYNC_PORT=8000
"""


def render_units(layout: Layout) -> dict[str, str]:
    """File name to content of every unit."""
    return {SERVICE: hub_unit(layout), BACKUP_SERVICE: backup_unit(layout),
            BACKUP_TIMER: backup_timer()}
