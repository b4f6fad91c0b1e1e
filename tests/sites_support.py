"""A real Syncthing daemon per hub for the many-sites tests: own home folder, loopback
only, discovery, relays, NAT traversal and usage reporting off."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from support import free_port, stop_process_group

from dropsync.sites.syncthing import Syncthing, SyncthingError, api_key_from_home

#: What every test daemon is set to through the REST API, right after it starts.
LOOPBACK_OPTIONS = {"globalAnnounceEnabled": False, "localAnnounceEnabled": False,
                    "relaysEnabled": False, "natEnabled": False, "urAccepted": -1,
                    "crashReportingEnabled": False, "autoUpgradeIntervalH": 0,
                    "startBrowser": False, "reconnectionIntervalS": 1}


class SyncthingDaemon:
    def __init__(self, home: Path):
        self.home = home
        self.gui_port = free_port()
        self.listen_port = free_port()
        self.url = f"http://127.0.0.1:{self.gui_port}"
        self.address = f"tcp://127.0.0.1:{self.listen_port}"
        self.process: subprocess.Popen | None = None
        self.api: Syncthing | None = None

    def start(self, timeout: float = 30.0) -> SyncthingDaemon:
        self.home.mkdir(parents=True, exist_ok=True)
        subprocess.run(["syncthing", "generate", f"--home={self.home}",
                        "--no-default-folder"], check=True, capture_output=True, timeout=60)
        self._log = open(self.home / "syncthing.log", "ab")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            ["syncthing", "serve", f"--home={self.home}", "--no-browser", "--no-restart",
             "--no-upgrade", f"--gui-address=http://127.0.0.1:{self.gui_port}"],
            env={**os.environ, "STNODEFAULTFOLDER": "1", "STNOUPGRADE": "1"},
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.api = Syncthing(self.url, api_key_from_home(self.home))
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.device_id = self.api.my_id()
                break
            except SyncthingError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError("syncthing did not start:\n" + self.log) from None
                time.sleep(0.1)
        self.api.set_options({**LOOPBACK_OPTIONS, "listenAddresses": [self.address]})
        return self

    @property
    def log(self) -> str:
        path = self.home / "syncthing.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.process is None:
            return
        stop_process_group(self.process)
        self._log.close()
        self.process = None
