"""``dropsync demo``: the whole system alive on one machine, and gone again at Ctrl-C.

A real hub (``dropsync serve`` as a child process) on a free loopback port, a temporary
data directory and staging folder, a few simulated devices in two groups, a sample file
staged to one group and commands queued. Ctrl-C (or SIGTERM) stops the devices and the
hub and deletes the temporary directory; the hub is also told by the kernel to stop if
the demo itself dies (``PR_SET_PDEATHSIG``), so nothing outlives it.
"""

from __future__ import annotations

import asyncio
import ctypes
import hashlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import aiohttp
import click

from ..hubclient import HubError
from .fleet import AdminAPI, Fleet, FleetOptions, prepare_credentials
from .stats import progress_printer

GROUPS = ("greenhouse", "barn")
SAMPLE_TARGET, SAMPLE_PATH = "group-greenhouse", "data/calibration.bin"
#: A pretend firmware image for every device, offered in waves: a canary, then half,
#: then all, each wave holding DEMO_SOAK_S once it succeeded.
IMAGE_PATH = "firmware/demo.bin"
#: Boards that arrive with no token, enroll and wait for the person at the dashboard.
NEW_BOARDS = 2
DEMO_WAVES = {"canary": 1, "percents": [50.0, 100.0], "soak_s": 10.0, "deadline_s": 120.0}
#: Seconds to wait for the hub to answer, and for it to stop.
HUB_START_S, HUB_STOP_S = 30.0, 15.0
PR_SET_PDEATHSIG = 1
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sample_file() -> bytes:
    """24 KiB of pretend calibration data: six chunks for the devices to fetch and verify
    (not under ``firmware/``, where the hub accepts only real ESP images)."""
    blocks, seed = [], b"dropsync demo"
    while sum(map(len, blocks)) < 24 * 1024:
        seed = hashlib.sha256(seed).digest()
        blocks.append(seed)
    return b"".join(blocks)[:24 * 1024]


def sample_image() -> bytes:
    """8 KiB that pass the hub's checks of an ESP image (its first byte is the magic 0xE9);
    the simulated devices "run" it and report its digest as their firmware version."""
    return b"\xe9\x03\x02\x20" + hashlib.sha256(b"dropsync demo image").digest() * 255


def stop_with_parent() -> None:
    """In the hub's child process: the kernel sends SIGTERM when the demo dies."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: Ctrl-C and SIGTERM still stop the hub


def say(text: str = "") -> None:
    try:
        click.echo(text)
        sys.stdout.flush()
    except OSError:  # the terminal is gone (SIGHUP): clean up all the same
        pass


class Demo:
    def __init__(self, devices: int = 6, port: int | None = None, poll_s: int = 5):
        self.devices = devices
        self.port = port or free_port()
        self.poll_s = poll_s
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_token = secrets.token_urlsafe(24)
        self.password = secrets.token_urlsafe(12)
        self.hub: subprocess.Popen | None = None

    def run(self) -> int:
        # SIGTERM and a closed terminal (SIGHUP) stop the demo as Ctrl-C does: cleanly.
        for signum in STOP_SIGNALS[1:]:
            signal.signal(signum, signal.default_int_handler)
        workdir = Path(tempfile.mkdtemp(prefix="dropsync-demo-"))
        try:
            self.start_hub(workdir)
            asyncio.run(self.live(workdir))
            return 0
        except KeyboardInterrupt:
            return 0
        except HubStartFailed as exc:
            click.echo(f"Error: {exc}", err=True)
            return 1
        except HubError as exc:
            click.echo(f"Error: the demo hub refused a request: {exc.message} ({exc.code})",
                       err=True)
            return 1
        finally:
            for signum in STOP_SIGNALS:  # a second Ctrl-C must not leave it half done
                signal.signal(signum, signal.SIG_IGN)
            say("Stopping the demo hub...")
            self.stop_hub()
            shutil.rmtree(workdir, ignore_errors=True)
            say(f"Stopped. Removed {workdir}.")

    # -- the hub -----------------------------------------------------------------------
    def start_hub(self, workdir: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DROPSYNC_")}
        env.update({
            "DROPSYNC_DATA_DIR": str(workdir / "data"),
            "DROPSYNC_STAGING_DIR": str(workdir / "staging"),
            "DROPSYNC_HOST": "127.0.0.1", "DROPSYNC_PORT": str(self.port),
            "DROPSYNC_ADMIN_TOKEN": self.admin_token,
            "DROPSYNC_ADMIN_PASSWORD": self.password,
            "DROPSYNC_POLL_INTERVAL_S": str(self.poll_s),
            "DROPSYNC_STAGING_SETTLE_S": "0.5",
            "DROPSYNC_LOG_LEVEL": "WARNING",
        })
        log_path = workdir / "hub.log"
        with open(log_path, "ab") as log:
            self.hub = subprocess.Popen(
                [sys.executable, "-m", "dropsync", "serve"], cwd=workdir, env=env,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=stop_with_parent)
        deadline = time.monotonic() + HUB_START_S
        while time.monotonic() < deadline:
            if self.hub.poll() is not None:
                raise HubStartFailed(f"the hub exited ({self.hub.returncode}):\n"
                                     + log_path.read_text(errors="replace")[-2000:])
            if probe(self.url + "/health") == 200:
                return
            time.sleep(0.1)
        raise HubStartFailed(f"the hub did not answer within {HUB_START_S:.0f} s")

    def stop_hub(self) -> None:
        if self.hub is None or self.hub.poll() is not None:
            return
        for signum, wait_s in ((signal.SIGTERM, HUB_STOP_S), (signal.SIGKILL, HUB_STOP_S)):
            try:
                os.killpg(self.hub.pid, signum)
            except ProcessLookupError:
                pass
            try:
                self.hub.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue

    # -- the fleet ---------------------------------------------------------------------
    async def live(self, workdir: Path) -> None:
        # Livelier than the firmware's defaults, so a newcomer sees things happen.
        options = FleetOptions(devices=self.devices, prefix="demo-", groups=GROUPS,
                               ramp_s=min(self.poll_s, 3), heartbeat_every_s=4 * self.poll_s,
                               manifest_every_s=2 * self.poll_s)
        credentials = await prepare_credentials(self.url, self.admin_token, options, None)
        async with aiohttp.ClientSession() as session:
            admin = AdminAPI(session, self.url, self.admin_token)
            content = sample_file()
            await admin.request("PUT", f"/staging/{SAMPLE_TARGET}/{SAMPLE_PATH}",
                                data=content)
            image = await admin.request("PUT", f"/staging/all/{IMAGE_PATH}?release=draft",
                                        data=sample_image())
            rollout = await admin.request("POST", "/rollouts",
                                          {"package": image["id"], **DEMO_WAVES})
            enroll_key = (await admin.request("POST", "/enroll-keys",
                                              {"group": GROUPS[0], "label": "demo"}))["key"]
            first = next(iter(credentials))
            await admin.request("POST", "/commands",
                                {"target": f"group:{GROUPS[1]}", "name": "upload-log"})
            await admin.request("POST", "/commands", {"target": first, "name": "reboot",
                                                      "args": {"delay_s": 3}})
        dashboard = probe(self.url + "/dashboard/login") == 200
        members = {g: [d for i, d in enumerate(credentials) if i % len(GROUPS) == n]
                   for n, g in enumerate(GROUPS)}
        say("DropSync demo is running. Ctrl-C stops it and removes everything it made.")
        say(f"  Hub:          {self.url}   (process {self.hub.pid})")
        if dashboard:
            say(f"  Dashboard:    {self.url}/dashboard/   login: admin / {self.password}")
        else:
            say(f"  API docs:     {self.url}/api/v1/docs")
        say(f"  Admin token:  {self.admin_token}")
        say(f"  Devices:      {len(credentials)} simulated, polling every ~{self.poll_s} s: "
            + "; ".join(f"{g}: {', '.join(ids)}" for g, ids in members.items()))
        say(f"  Staged:       {SAMPLE_TARGET}/{SAMPLE_PATH} ({len(content) // 1024} KiB, "
            f"for the {GROUPS[0]} group)")
        say(f"  Rollout:      {IMAGE_PATH} to every device in waves (1, 50%, 100%); "
            f"rollout {rollout['id']}"
            + (f": {self.url}/dashboard/rollouts/{rollout['id']}" if dashboard else ""))
        say(f"  Queued:       upload-log for group:{GROUPS[1]}; reboot for {first}")
        say(f"  New boards:   {NEW_BOARDS} arrive with no token and wait for you: accept "
            "them on the dashboard's Pending page (or: dropsync device pending, then "
            "dropsync device accept MAC)")
        say(f"  Data:         {workdir} (deleted on exit)")
        say("  Try:")
        say(f"    curl -H 'Authorization: Bearer {self.admin_token}' "
            f"{self.url}/api/v1/admin/devices")
        say(f"    DROPSYNC_DATA_DIR={workdir / 'data'} dropsync packages")
        say(f"    DROPSYNC_DATA_DIR={workdir / 'data'} dropsync rollout show {rollout['id']}")
        say()
        show, every_s = progress_printer(False, None)
        # The boards with no token enroll beside the fleet and stop with it.
        arriving = Fleet(self.url, dict.fromkeys(f"new-{i}" for i in range(1, NEW_BOARDS + 1)),
                         replace(options, devices=NEW_BOARDS, prefix="new-",
                                 enroll_key=enroll_key, ramp_s=5))
        newcomers = asyncio.create_task(arriving.run(stop_on_signals=()))
        summary = await Fleet(self.url, credentials, options).run(
            show, every_s, stop_on_signals=STOP_SIGNALS)
        arriving.stop.set()
        await newcomers
        if sys.stderr.isatty():
            sys.stderr.write("\n")
        say(f"The devices made {summary['requests']['total']} requests, verified "
            f"{summary['files']['verified']} files, ran "
            f"{sum(summary['commands']['run'].values())} commands; "
            f"{summary['errors']['unexplained']} errors.")


class HubStartFailed(Exception):
    pass


def probe(url: str) -> int | None:
    """The status of a GET, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


