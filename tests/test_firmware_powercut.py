"""Power cuts: the host client SIGKILLed at 200+ random moments while it syncs, runs
commands and pushes to its outbox, then booted again on the same littlefs image (the
block device writes through, so the image is what a chip's flash holds after a cut).

After every cut: every synced file is one of the versions staged for its path (never
missing once it was there, never partial), no command ran twice, the outbox file is its
fixed size, and no chunk the flash had verified is fetched again by the next boot. At the
end, with the hub back: every command ended, every file is the newest, the outbox drained.
"""

from __future__ import annotations

import os
import random
import re
import struct
import time

import pytest
import requests
from firmware_support import ADMIN, HostClient, Proxy, admin_get, register, stage
from support import ADMIN_TOKEN
from sync_support import wait_until

pytestmark = pytest.mark.slow

KILLS = int(os.environ.get("DROPSYNC_POWERCUT_KILLS", "200"))
OUTBOX_BYTES = 16 + 16 * 320
CHUNK_URL = re.compile(r"^/api/v1/files/download/[^/]+/([0-9a-f]+)/(\d+)/(\d+)$")
#: Rounds in which the hub is out of reach (the proxy answers 502): reports go to the outbox.
OUTAGES = (range(40, 70), range(130, 150))


@pytest.fixture
def hub(hub_process):
    return hub_process({"DROPSYNC_ADMIN_TOKEN": ADMIN_TOKEN, "DROPSYNC_COMMAND_LEASE_S": "1",
                        "DROPSYNC_COMMAND_SWEEP_S": "0.2", "DROPSYNC_CHUNK_SIZE": "1024",
                        "DROPSYNC_STAGING_WATCH": "false", "DROPSYNC_POLL_INTERVAL_S": "1",
                        "DROPSYNC_COMMAND_MAX_ATTEMPTS": "1000"})


def progress_of(files: dict[str, bytes]) -> dict[tuple[str, int], int]:
    """Chunks verified per (package, version), from /.dropsync/dl/<package> on flash."""
    found = {}
    for path, data in files.items():
        match = re.fullmatch(r"/\.dropsync/dl/([0-9a-f]+)", path)
        fields = data.decode(errors="replace").split()
        if match and len(fields) == 3 and fields[0].isdigit() and fields[2].isdigit():
            found[(match.group(1), int(fields[0]))] = int(fields[2])
    return found


def test_power_cuts_during_syncs_commands_and_outbox_pushes(hub, firmware_build, tmp_path):
    rng = random.Random(int(os.environ.get("DROPSYNC_POWERCUT_SEED", "20261205")))
    token = register(hub, "esp-cut")
    proxy = Proxy(hub.port)
    versions: dict[str, set[bytes]] = {}   # every content staged for a path
    latest: dict[str, bytes] = {}
    seen: set[str] = set()                 # paths that have been on flash

    def publish(path: str, size: int) -> None:
        content = rng.randbytes(size)
        stage(hub, "esp-cut", path, content)
        versions.setdefault(path, set()).add(content)
        latest[path] = content

    publish("data/big.bin", 160 * 1024)
    publish("cfg/only.json", 300)       # alone in its folder: replaced in place
    publish("data/small.txt", 3 * 1024)
    queued: list[int] = []
    flash = tmp_path / "flash.img"
    resume: dict[tuple[str, int], int] = {}
    verified_refetched: list[str] = []
    landed = {"mid_download": 0, "outage": 0}
    started = time.monotonic()
    final = None
    try:
        for round_ in range(KILLS):
            outage = any(round_ in r for r in OUTAGES)
            proxy.refuse = (lambda method, path: True) if outage else (lambda m, p: False)
            if round_ % 4 == 1 and not outage:  # a new version, often a big one
                publish(rng.choice(sorted(latest)), rng.choice((300, 160 * 1024, 160 * 1024)))
            if round_ % 3 == 0 and not outage:
                command = rng.choice([{"command": "echo", "params": {"round": round_}},
                                      {"command": "nap", "params": {"ms": 150}}])
                response = requests.post(
                    f"{hub.url}/api/v1/admin/devices/esp-cut/command", headers=ADMIN,
                    json=command, timeout=10)
                assert response.status_code == 201, response.text
                queued.append(response.json()["id"])
            first_request = len(proxy.requests)
            run = HostClient(firmware_build["client"], proxy.url, "esp-cut", token, flash,
                             "--poll-s", "1", "--heartbeat-s", "1", "--manifest-s", "1",
                             "--backoff-base-ms", "50", "--backoff-cap-ms", "200",
                             "--message", f"boot {round_}")
            time.sleep(rng.uniform(0.01, 0.6))
            run.kill()
            landed["outage"] += outage

            # What this boot asked for: nothing the flash had verified before it.
            with proxy.lock:
                asked = proxy.requests[first_request:]
            for path in asked:
                match = CHUNK_URL.match(path)
                if not match:
                    continue
                package, version, index = match.group(1), int(match.group(2)), int(match.group(3))
                if index < resume.get((package, version), 0):
                    verified_refetched.append(f"round {round_}: {path}")

            files = run.flash.files()
            for path, contents in versions.items():
                on_flash = files.get("/" + path)
                if on_flash is None:
                    assert path not in seen, f"round {round_}: {path} vanished after a cut"
                    continue
                seen.add(path)
                assert on_flash in contents, f"round {round_}: {path} is partial or foreign"
            ran = files.get("/ran.log", b"").split()
            assert len(ran) == len(set(ran)), f"round {round_}: a command ran twice: {ran}"
            outbox = files.get("/.dropsync/outbox")
            assert outbox is None or len(outbox) == OUTBOX_BYTES, len(outbox)
            resume = progress_of(files)
            landed["mid_download"] += bool(resume)
        assert not verified_refetched, verified_refetched[:10]
        cut_time = time.monotonic() - started

        # The hub is back for good: everything settles.
        proxy.refuse = lambda method, path: False
        log = tmp_path / "flash.img-client.log"
        log.rename(tmp_path / "cuts-client.log")  # the final boot's output on its own
        final = HostClient(firmware_build["client"], proxy.url, "esp-cut", token, flash,
                           "--poll-s", "1", "--heartbeat-s", "600", "--manifest-s", "1")

        def settled():
            commands = admin_get(hub, "/devices/esp-cut/commands", limit=500)["commands"]
            return all(c["state"] in ("completed", "failed") for c in commands)
        wait_until(settled, 60, message=f"commands ended; {final.output[-2000:]}")

        def outbox_empty():  # the image read while the client runs: a power cut's view
            ring = final.flash.read("/.dropsync/outbox")
            return ring is not None and struct.unpack_from("<I", ring, 8)[0] == 0
        wait_until(outbox_empty, 30, message=f"outbox drained; {final.output[-2000:]}")
        wait_until(lambda: all(final.flash.read("/" + p) == c for p, c in latest.items()),
                   30, message="newest files on flash")
    finally:
        if final:
            final.stop()
        proxy.close()

    commands = {c["id"]: c
                for c in admin_get(hub, "/devices/esp-cut/commands", limit=500)["commands"]}
    ran = [int(i) for i in final.flash.text("/ran.log").split()]
    assert len(ran) == len(set(ran)), ran
    for command_id in queued:
        command = commands[command_id]
        assert command["state"] in ("completed", "failed"), command
        if command["state"] == "completed" and command["result"] != {"duplicate": True}:
            assert command_id in ran, command  # completed with its result: it ran
        if command["state"] == "failed":
            assert command["reason"] in ("interrupted by a restart", "failed earlier"), command
    outbox = final.flash.read("/.dropsync/outbox")
    assert outbox is not None and len(outbox) == OUTBOX_BYTES  # drained above, still bounded
    texts = [m["text"] for m in admin_get(hub, "/devices/esp-cut/messages", limit=500)["messages"]]
    made_offline = [t for t in texts
                    if t.startswith("boot ") and any(int(t[5:]) in r for r in OUTAGES)]
    assert made_offline, texts[-40:]
    interrupted = sum(c["state"] == "failed" for c in commands.values())
    print(f"power cuts: {KILLS} kills in {cut_time:.1f}s ({landed['mid_download']} with a "
          f"download part-way, {landed['outage']} during an outage), {len(queued)} commands "
          f"({len(ran)} ran, {interrupted} interrupted), {len(made_offline)} messages made "
          f"offline delivered, {len(proxy.requests)} requests")
