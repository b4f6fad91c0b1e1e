"""The sketch in the ESP8266 core's host emulation against a local hub, the whole scenario
of issue 18, one PASS/FAIL line a step. A developer check, not CI (it needs a checkout of
esp8266/Arduino with its submodules):

    firmware/host/emulate.sh --check /path/to/esp8266-Arduino

It starts a hub (the repository's, from its virtualenv) and the tests' counting proxy on
loopback, builds the sketch with emulate.sh against the proxy, and runs the emulated node,
reading its LittleFS image back with littlefs-python between steps.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from firmware_support import ADMIN, Flash, Proxy  # noqa: E402
from support import ADMIN_TOKEN, HubProcess  # noqa: E402

DEVICE = "emu001"
CHUNK = 32 * 1024


#: The emulated LittleFS: 4 MB in 8 KiB blocks. A 2 MiB file (and the 200 KiB one, and the
#: 2 MiB download's temp file while it is replaced) does not fit a 4M1M board's 1 MB FS.
FLASH_KB = 4096


class EmulatedFlash(Flash):
    """The emulation's LittleFS image (littlefs 2.5 as the core pins it, 31-char names)."""

    BLOCK_SIZE, BLOCK_COUNT = 8192, FLASH_KB // 8


class Node:
    def __init__(self, binary: Path, flash_dir: Path):
        self.binary, self.flash_dir = binary, flash_dir
        self.log_path = flash_dir / "node.log"
        self.process: subprocess.Popen | None = None
        self.flash = EmulatedFlash(flash_dir / f"dropsync_node-littlefs{FLASH_KB}KB")

    def start(self) -> None:
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        env = {**os.environ, "DROPSYNC_FLASH_FILE": str(self.flash.image)}
        self.process = subprocess.Popen(
            [str(self.binary), "-c", "-S", "0", "-L", str(FLASH_KB), "-P", str(self.flash_dir)],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self._log.close()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return True
        except (requests.RequestException, KeyError, ValueError):
            pass
        time.sleep(0.25)
    return False


def main(core: str) -> int:
    work = Path(tempfile.mkdtemp(prefix="dropsync-emucheck-"))
    hub = HubProcess(work / "hub", {"DROPSYNC_ADMIN_TOKEN": ADMIN_TOKEN,
                                    "DROPSYNC_STAGING_WATCH": "false",
                                    "DROPSYNC_CHUNK_SIZE": str(CHUNK),
                                    "DROPSYNC_POLL_INTERVAL_S": "2"})
    hub.start()
    proxy = Proxy(hub.port)
    results: list[tuple[str, bool, str]] = []

    def step(name: str, ok: bool, detail: str = "") -> bool:
        results.append((name, ok, detail))
        print(f"{'PASS' if ok else 'FAIL'}  {name}{'  (' + detail + ')' if detail else ''}",
              flush=True)
        return ok

    def admin(method, path, **kwargs):
        return requests.request(method, f"{hub.url}/api/v1/admin{path}", headers=ADMIN,
                                timeout=30, **kwargs)

    def stage(target, path, data):
        response = admin("PUT", f"/staging/{target}/{path}", data=data)
        response.raise_for_status()
        return response.json()

    def command(name, params=None):
        response = admin("POST", f"/devices/{DEVICE}/command",
                         json={"command": name, "params": params or {}})
        response.raise_for_status()
        return response.json()["id"]

    def delivery(command_id):
        found = admin("GET", f"/devices/{DEVICE}/commands", params={"limit": 500}).json()
        return next(c for c in found["commands"] if c["id"] == command_id)

    def package_state(package_id):
        devices = admin("GET", f"/packages/{package_id}").json()["devices"]
        return next((d for d in devices if d["device_id"] == DEVICE), {})

    def synced(package, timeout=120):
        sync = command("sync")
        return wait(lambda: package_state(package["id"]).get("state") in ("applied", "failed")
                    and delivery(sync)["state"] in ("completed", "failed"), timeout)

    node = None
    try:
        token = admin("POST", "/devices/register", json={"id": DEVICE}).json()["token"]
        flash_dir = work / "flash"
        build_dir = Path(tempfile.gettempdir())  # dropsync-emulation/ in it: kept, incremental
        env = {**os.environ, "BUILD_ONLY": "1", "TMPDIR": str(build_dir),
               "FLASH_DIR": str(flash_dir),
               "POLL_S": "2", "HEARTBEAT_S": "3", "MANIFEST_S": "600"}
        build = subprocess.run(["sh", str(ROOT / "firmware/host/emulate.sh"), core, proxy.url,
                                DEVICE, token], env=env, capture_output=True, text=True)
        (work / "build.log").write_text(build.stdout + build.stderr)
        binary = build_dir / "dropsync-emulation/core/tests/host/bin/dropsync_node/dropsync_node"
        if not step("build the sketch in the core's emulation", build.returncode == 0,
                    f"log in {work / 'build.log'}"):
            return 1
        node = Node(binary, flash_dir)
        node.start()

        # -- commands and heartbeats --------------------------------------------------
        blink, upload = command("blink", {"times": 2}), command("upload-log")
        step("commands: blink and upload-log run once, completed",
             wait(lambda: delivery(blink)["state"] == "completed"
                  and delivery(upload)["state"] == "completed", 60)
             and len(re.findall(rf"^command {blink} blink ran", node.output, re.M)) == 1)
        step("heartbeats: the inventory has the emulated firmware",
             wait(lambda: admin("GET", f"/devices/{DEVICE}").json()["inventory"]
                  .get("firmware_version") == "emulated-1.0.0", 30))

        # -- 200 KiB, byte for byte -----------------------------------------------------
        small = os.urandom(200 * 1024)
        package = stage(DEVICE, "data/200k.bin", small)
        step("200 KiB file synced byte-exact",
             synced(package) and node.flash.read("/data/200k.bin") == small,
             package_state(package["id"]).get("state", "?"))

        # -- 2 MiB, SIGKILL at chunk 20, resume -----------------------------------------
        big = os.urandom(2 * 1024 * 1024)
        package = stage(DEVICE, "data/2m.bin", big)
        chunk_url = f"/api/v1/files/download/{DEVICE}/{package['id']}/{package['version']}"
        proxy.hold = f"{chunk_url}/20"
        command("sync")
        held = proxy.held.wait(120)
        node.kill()
        proxy.release.set()
        node.start()
        done = synced(package, 180)
        counts = proxy.chunk_counts()
        chunks = len(big) // CHUNK
        expected = {i: (2 if i == 20 else 1) for i in range(chunks)}
        step("2 MiB: SIGKILL at chunk 20, resumed on the persisting flash, byte-exact",
             held and done and node.flash.read("/data/2m.bin") == big and counts == expected,
             f"{sum(counts.values())} chunk requests for {chunks} chunks")

        # -- hub outage: the outbox keeps reports, delivers them ------------------------
        hub.stop()
        time.sleep(30)  # heartbeats every 3 s (each try blocks the sketch a few seconds)
        ring = node.flash.read("/.dropsync/outbox") or b""
        queued = int.from_bytes(ring[8:12], "little") if len(ring) >= 16 else 0
        hub.start()
        delivered = wait(lambda: "outbox delivered" in node.output, 60)
        step("hub outage: reports kept in the outbox and delivered when it returns",
             queued >= 2 and delivered and len(ring) == 16 + 16 * 320,
             f"{queued} queued, outbox file {len(ring)} bytes")

        # -- a file alone in its folder replaced ----------------------------------------
        first = stage(DEVICE, "solo/only.txt", b"first version")
        synced(first)
        second = stage(DEVICE, "solo/only.txt", b"second version")
        step("replace: a file alone in its folder replaced",
             synced(second) and node.flash.read("/solo/only.txt") == b"second version",
             package_state(second["id"]).get("state", "?"))

        # -- a name the flash cannot hold -------------------------------------------------
        # The hub refuses such a name at staging; the proxy plays a hub that does not.
        name = "data/greenhouse-north-calibration-table-v2.json"
        proxy.rewrite = [(b"data/placeholder-name.json", name.encode())]
        long_package = stage(DEVICE, "data/placeholder-name.json", b"x" * 5000)
        synced(long_package)
        state = package_state(long_package["id"])
        fetched = [p for p in proxy.counts if f"/{long_package['id']}/" in p]
        step("long name: refused with a reason, nothing fetched",
             state.get("state") == "failed" and "31 characters" in (state.get("reason") or "")
             and not fetched, f"{state.get('state')}: {state.get('reason')}")

        # -- a path moved from all/ to the device ------------------------------------------
        shared = stage("all", "config/shared.json", b'{"from": "all"}')
        synced(shared)
        own = stage(DEVICE, "config/shared.json", b'{"from": "device"}')
        moved = synced(own) and node.flash.read("/config/shared.json") == b'{"from": "device"}'
        command("sync")
        time.sleep(5)
        step("target move: all/ -> the device's own, kept on flash",
             moved and node.flash.read("/config/shared.json") == b'{"from": "device"}')

        # -- withdraw -------------------------------------------------------------------
        gone = stage(DEVICE, "drop/b.txt", b"goes away")
        synced(gone)
        admin("DELETE", f"/packages/{gone['id']}").raise_for_status()
        sync = command("sync")
        step("withdraw: a withdrawn file deleted from flash",
             # the sync "fails" while the long-named file is listed: it cannot be stored
             wait(lambda: delivery(sync)["state"] in ("completed", "failed")
                  and not node.flash.exists("/drop/b.txt"), 60)
             and node.flash.read("/data/200k.bin") == small)
    finally:
        if node:
            node.stop()
        proxy.close()
        hub.stop()
    failed = [name for name, ok, _ in results if not ok]
    print(f"{len(results) - len(failed)} of {len(results)} steps passed; "
          f"node log: {node.log_path if node else '-'}")
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1]))
