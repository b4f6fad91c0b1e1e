"""One virtual device: what the firmware does on the wire, as an asyncio task.

The cycle follows the firmware (``firmware/``, ``node.h``): poll for commands at the
``next_poll_s`` the hub sends (plus a little jitter of its own), run and complete each
command once (ids are deduped, as a delivery may repeat); every ``manifest_every_s``
(300 s, as the firmware; at once after boot and on ``sync``) check the manifest with
``If-None-Match`` and download what is new chunk by chunk, verifying every chunk and then
the whole file, reporting progress and the outcome; every ``heartbeat_every_s`` (60 s)
heartbeat with drifting RSSI, free heap and uptime; once in a while log a message. Each
device has its own connection (an aiohttp connector of one), kept alive through a
wake-up and closed before it sleeps, so a fleet of thousands is one process, no threads,
and holds sockets only for the devices awake.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, NoReturn

import aiohttp

from .. import __version__
from ..sync.firmware_images import is_firmware_path
from .faults import FaultPlan
from .stats import FleetStats

FIRMWARE_VERSION = f"sim-{__version__}"
#: Seconds an idle connection is kept within a wake-up (it is closed before sleeping).
#: Below the hub's own keep-alive (gunicorn: 5 s), so the device, not the hub, closes it.
KEEPALIVE_S = 4.0
#: Seconds between heartbeats and between manifest checks (the firmware's defaults).
HEARTBEAT_EVERY_S = 60.0
MANIFEST_EVERY_S = 300.0
#: Chance per poll of a log message.
MESSAGE_CHANCE = 0.05
#: The device's own spread around ``next_poll_s`` (the hub spreads it too).
POLL_JITTER = 0.05
#: Progress reports per download (besides verified and applied).
REPORTS_PER_DOWNLOAD = 4
#: Command ids remembered to dedupe repeated deliveries (the firmware keeps a small ring
#: in flash, so it survives a reboot).
REMEMBERED_COMMANDS = 256
#: Attempts at one chunk whose hash does not match before the download is failed.
CHUNK_ATTEMPTS = 3
#: A 429 this soon after a refused wrong token (same source address) is that fault's doing.
FAILED_AUTH_WINDOW_S = 65.0
#: Where the interval is unknown (before the first answer).
DEFAULT_INTERVAL_S = 10.0
#: Seconds a board with no token waits after its enrollment was refused (a rejected
#: board, an unknown key): it tries again, slowly, in case an operator changes that.
ENROLL_REFUSED_WAIT_S = 60.0

MESSAGE_LEVELS = (("debug", 3), ("info", 10), ("warning", 3), ("error", 1))
MESSAGE_TEXTS = {
    "debug": "sensor loop took {n} ms",
    "info": "soil moisture {n}%",
    "warning": "battery low: {n} mV",
    "error": "sensor read failed (attempt {n})",
}


class RequestFailed(Exception):
    """A request did not get an answer the device can use (already counted)."""


@dataclass
class Reply:
    status: int
    headers: Any
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class HubLink:
    """What every device of a fleet shares: where the hub is, the faults, the tally."""

    url: str
    host: str
    port: int
    stats: FleetStats
    faults: FaultPlan = field(default_factory=FaultPlan)
    request_timeout_s: float = 30.0
    #: When devices share one source address, a refused token counts against them all.
    shared_address: bool = True
    heartbeat_every_s: float = HEARTBEAT_EVERY_S
    manifest_every_s: float = MANIFEST_EVERY_S
    last_bad_token_at: float = -1e9


@dataclass
class PartialDownload:
    version: int
    next_index: int = 0
    received: int = 0
    hasher: Any = field(default_factory=hashlib.sha256)


class VirtualDevice:
    def __init__(self, link: HubLink, device_id: str, token: str | None, *, seed: int,
                 source_address: str | None = None, device_type: str = "esp8266",
                 enroll_key: str | None = None):
        self.link = link
        self.stats = link.stats
        self.id = device_id
        self.token = token
        self.source_address = source_address
        self.rng = random.Random(seed)
        self.device_type = device_type
        #: With no token: the key it enrolls with, and the MAC and secret a board has.
        self.enroll_key = enroll_key
        self.mac = ":".join(f"{b:02x}" for b in [0x02, *self.rng.randbytes(5)])
        self.secret = self.rng.randbytes(32).hex()
        self.heap_range = (150_000, 290_000) if device_type == "esp32" else (18_000, 42_000)
        self.rssi = self.rng.randint(-82, -48)
        self.free_heap = self.rng.randint(*self.heap_range)
        self.booted_at = time.monotonic()
        self.next_heartbeat_at = self.next_manifest_at = 0.0
        self.interval_s: float | None = None
        self.done: OrderedDict[int, tuple[bool, Any]] = OrderedDict()
        self.manifest_etag: str | None = None
        self.manifest_version: int | None = None
        self.held: dict[str, tuple[int, str]] = {}        # package id -> (version, sha256)
        self.partial: dict[str, PartialDownload] = {}
        self.session: aiohttp.ClientSession | None = None
        self.last_bad_token_at = -1e9
        #: What the heartbeat reports running; an image applied replaces it.
        self.firmware_version = FIRMWARE_VERSION
        #: The image (its SHA-256) this device went quiet on ("never-return"), or None.
        self.lost_to: str | None = None

    # -- life cycle ----------------------------------------------------------------------
    async def run(self, first_delay_s: float = 0.0) -> None:
        """Boot after ``first_delay_s``, then poll until cancelled."""
        try:
            await asyncio.sleep(first_delay_s)
            while self.token is None:
                await self.enroll()
            await self.boot("power on")
            while True:
                await self.cycle()
                interval = self.interval_s or DEFAULT_INTERVAL_S
                await asyncio.sleep(interval * self.rng.uniform(1 - POLL_JITTER,
                                                                1 + POLL_JITTER))
        finally:
            self.stats.online.discard(self.id)
            await self.disconnect()

    async def boot(self, reason: str) -> None:
        self.booted_at = time.monotonic()
        self.next_manifest_at = self.booted_at  # the first cycle checks it
        try:
            await self.heartbeat()
            await self.send_message("info", f"booted ({reason}), firmware {FIRMWARE_VERSION}")
        except RequestFailed:
            pass  # the next cycle tries again, as the firmware does

    async def enroll(self) -> None:
        """One step of a board with no token: enroll, and once accepted claim the token
        (then it is a device like any other). Waits as the hub says, or a minute after a
        refusal (a rejected board, a revoked key), as the firmware does."""
        body = {"enroll_key": self.enroll_key, "hardware_id": self.mac,
                "board": self.device_type, "firmware_version": FIRMWARE_VERSION,
                "name_hint": self.id,
                "secret_sha256": hashlib.sha256(self.secret.encode()).hexdigest()}
        try:
            reply = await self.call("enroll", "POST", "/api/v1/enroll", body=body,
                                    ok=(200, 202), token="", fault="enrollment")
            answer = reply.json()
            if reply.status == 200:
                reply = await self.call("enroll", "POST", "/api/v1/enroll/claim",
                                        body={"hardware_id": self.mac,
                                              "secret": self.secret},
                                        ok=(200, 202), token="", fault="enrollment")
                answer = reply.json()
                if reply.status == 200:
                    self.id, self.token = answer["device_id"], answer["token"]
                    self.stats.enrolled += 1
                    return
        except RequestFailed:
            answer = {"retry_after_s": ENROLL_REFUSED_WAIT_S}
        await asyncio.sleep(float(answer.get("retry_after_s") or ENROLL_REFUSED_WAIT_S))

    def connect(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=1, keepalive_timeout=KEEPALIVE_S,
            local_addr=(self.source_address, 0) if self.source_address else None)
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.link.request_timeout_s),
            headers={"User-Agent": f"dropsync-simulator/{__version__}"})

    async def disconnect(self) -> None:
        if self.session is not None:
            session, self.session = self.session, None
            await session.close()

    async def cycle(self) -> None:
        """One wake-up: poll, commands, manifest, and now and then heartbeat and log."""
        faults = self.link.faults
        if self.lost_to is not None:
            if faults.bad_image(self.id, self.lost_to) == "never-return":
                return
            self.lost_to = None  # the fault is cleared: it comes back on its old image
            await self.boot("recovered")
        try:
            if faults.roll("offline", self.rng):
                await self.go_offline()
                return
            reply = await self.call("poll", "GET", f"/api/v1/device/commands/{self.id}")
            self.stats.record_poll()
            answer = reply.json()
            self.interval_s = answer["next_poll_s"]
            self.stats.online.add(self.id)
            reboot_in = await self.run_commands(answer["commands"])
            if time.monotonic() >= self.next_manifest_at:
                await self.check_manifest()
            if time.monotonic() >= self.next_heartbeat_at:
                await self.heartbeat()
            if self.rng.random() < MESSAGE_CHANCE:
                await self.send_message(*self.some_message())
            if faults.roll("drop", self.rng):
                await self.drop_connection()
            if faults.roll("stall", self.rng):
                await self.stall_body()
            if faults.roll("bad-token", self.rng):
                await self.present_bad_token()
            if reboot_in is not None:
                await self.reboot(reboot_in)
        except RequestFailed:
            self.stats.online.discard(self.id)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            # An answer the firmware could not parse: an error, and the device carries on.
            self.stats.error("unreadable answer", f"{self.id}: {exc!r}")
            self.stats.online.discard(self.id)
        finally:
            # Asleep, a node holds no socket (the firmware closes it too): the hub's open
            # connections follow the devices awake, not the size of the fleet.
            await self.disconnect()

    # -- HTTP --------------------------------------------------------------------------
    async def call(self, kind: str, method: str, path: str, *, body: Any = None,
                   raw: bytes | None = None, headers: dict[str, str] | None = None,
                   ok: tuple[int, ...] = (200,), token: str | None = None,
                   fault: str | None = None) -> Reply:
        """One request on the device's connection, counted; an answer outside ``ok``
        raises ``RequestFailed`` (an error, or explained by ``fault`` when given).

        A kept-alive connection the hub closed in the meantime is retried once at once,
        as the firmware does (counted as a reconnect, not an error).
        """
        send = {"Authorization": f"Bearer {token or self.token}", **(headers or {})}
        data = raw
        if body is not None:
            data = json.dumps(body, separators=(",", ":")).encode()
            send["Content-Type"] = "application/json"
        if self.session is None:
            self.connect()
        for attempt in (1, 2):
            started = time.perf_counter()
            try:
                async with self.session.request(method, self.link.url + path, data=data,
                                                headers=send) as response:
                    payload = await response.read()
                    status, got_headers = response.status, response.headers
                break
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                if attempt == 1 and not isinstance(exc, aiohttp.ClientConnectorError):
                    self.stats.reconnects += 1
                    continue
                self.fail(kind, "connection", f"{method} {path}: {exc!r}", fault)
            except (aiohttp.ClientError, TimeoutError) as exc:
                reason = "timeout" if isinstance(exc, TimeoutError) else "connection"
                self.fail(kind, reason, f"{method} {path}: {exc!r}", fault)
        self.stats.record(kind, status, time.perf_counter() - started,
                          len(data or b""), len(payload))
        reply = Reply(status, got_headers, payload)
        if status in ok:
            return reply
        if status == 429 and self.recently_refused():
            fault = fault or "bad-token"
        self.fail(kind, f"http {status}", f"{method} {path} -> {status} {payload[:200]!r}",
                  fault)

    def fail(self, kind: str, reason: str, detail: str, fault: str | None) -> NoReturn:
        if fault:
            self.stats.explained[fault] += 1
        else:
            self.stats.error(f"{kind}: {reason}", f"{self.id}: {detail}")
        raise RequestFailed(detail)

    def recently_refused(self) -> bool:
        last = self.link.last_bad_token_at if self.link.shared_address \
            else self.last_bad_token_at
        return time.monotonic() - last < FAILED_AUTH_WINDOW_S

    # -- commands ----------------------------------------------------------------------
    async def run_commands(self, commands: list[dict]) -> float | None:
        """Run each new command once and complete it; answer a repeat with the first
        outcome. A reboot is done last, after the rest are completed; returns its delay."""
        reboot_in = None
        for command in commands:
            command_id = command["id"]
            if command_id in self.done:
                self.stats.duplicates += 1
                await self.complete(command_id, *self.done[command_id])
                continue
            name, args = command["name"], command.get("args") or {}
            if name == "reboot":
                reboot_in = float(args.get("delay_s", self.rng.uniform(2, 5)))
                reboot_in = min(max(reboot_in, 0.5), 30.0)
                result = {"rebooting_in_s": round(reboot_in, 1)}
            elif name == "sync":
                await self.check_manifest()
                result = {"files": len(self.held), "manifest_version": self.manifest_version}
            elif name == "upload-log":
                result = await self.upload_log(command_id)
            else:
                result = {"ok": True, "args_received": sorted(args)[:16]}
            self.remember(command_id, (True, result))
            self.stats.commands[name] += 1
            await self.complete(command_id, True, result)
        return reboot_in

    def remember(self, command_id: int, outcome: tuple[bool, Any]) -> None:
        self.done[command_id] = outcome
        while len(self.done) > REMEMBERED_COMMANDS:
            self.done.popitem(last=False)

    async def complete(self, command_id: int, success: bool, result: Any) -> None:
        # 409: the hub already ended it (expired, cancelled, timed out): nothing to do.
        await self.call("complete", "POST", f"/api/v1/device/commands/{self.id}/complete",
                        body={"command_id": command_id, "success": success,
                              "result": result}, ok=(200, 409))

    async def reboot(self, delay_s: float) -> None:
        """Go quiet (connection closed, no requests) and come back with uptime reset."""
        self.stats.online.discard(self.id)
        await self.disconnect()
        await asyncio.sleep(delay_s)
        await self.boot("reboot command")

    async def upload_log(self, command_id: int) -> dict[str, Any]:
        uptime = int(time.monotonic() - self.booted_at)
        lines = [f"{uptime - 60 + i:>8} {level.upper():7} {MESSAGE_TEXTS[level].format(n=i)}"
                 for i, (level, _) in enumerate(MESSAGE_LEVELS * 16)]
        content = ("\n".join(lines) + "\n").encode()
        name = f"{self.id.replace(':', '-')}-{command_id}.log"
        reply = await self.call("upload", "POST", f"/api/v1/files/upload/{self.id}"
                                f"?filename={name}", raw=content, ok=(201,),
                                headers={"Content-Type": "application/octet-stream"})
        stored = reply.json()
        digest = hashlib.sha256(content).hexdigest()
        if stored.get("sha256") != digest:
            self.stats.error("upload: sha256", f"{self.id}: hub stored {stored!r}")
        self.stats.uploads += 1
        return {"name": name, "size": len(content), "sha256": digest}

    # -- files -------------------------------------------------------------------------
    async def check_manifest(self) -> None:
        self.next_manifest_at = time.monotonic() + self.link.manifest_every_s
        headers = {"If-None-Match": self.manifest_etag} if self.manifest_etag else {}
        reply = await self.call("manifest", "GET", f"/api/v1/files/manifest/{self.id}",
                                headers=headers, ok=(200, 304))
        if reply.status == 304:
            return
        manifest = reply.json()
        self.manifest_version = manifest["version"]
        listed = {entry["id"]: entry for entry in manifest["files"]}
        for withdrawn in set(self.held) - set(listed):
            del self.held[withdrawn]
        for withdrawn in set(self.partial) - set(listed):
            del self.partial[withdrawn]
        complete = True
        for entry in manifest["files"]:
            self.stats.offered.setdefault(entry["sha256"], set()).add(self.id)
            if self.held.get(entry["id"]) != (entry["version"], entry["sha256"]):
                complete = await self.download(entry) and complete
        # Remember the version only when everything in it is held: otherwise the next
        # check fetches the list again and resumes.
        self.manifest_etag = reply.headers.get("ETag") if complete else None

    async def download(self, entry: dict[str, Any]) -> bool:
        """Fetch a file chunk by chunk (resuming), verify it; True once it is held."""
        package, version = entry["id"], entry["version"]
        part = self.partial.get(package)
        if part is None or part.version != version:
            part = self.partial[package] = PartialDownload(version)
        report_every = max(1, entry["chunks"] // REPORTS_PER_DOWNLOAD)
        attempts = 0
        while part.next_index < entry["chunks"]:
            index = part.next_index
            reply = await self.call("chunk", "GET", f"{entry['url']}/{index}",
                                    ok=(200, 403, 409, 410))
            if reply.status == 410:  # its download ticket expired: the next manifest has
                return False          # a fresh url; the chunks so far are kept
            if reply.status != 200:
                code = (reply.json() or {}).get("error", {}).get("code")
                if reply.status == 403 and code != "not_in_manifest":
                    self.stats.error("chunk: http 403", f"{self.id}: {reply.body[:200]!r}")
                self.stats.restarts += 1   # replaced or withdrawn meanwhile: start over
                del self.partial[package]
                return False
            data = reply.body
            corrupted = self.link.faults.roll("corrupt", self.rng)
            if corrupted:
                self.stats.faults["corrupt"] += 1
                flip = self.rng.randrange(len(data)) if data else 0
                data = data[:flip] + bytes([data[flip] ^ 0xFF]) + data[flip + 1:] \
                    if data else b"\x00"
            if hashlib.sha256(data).hexdigest() != reply.headers.get("X-Chunk-SHA256"):
                if corrupted:
                    self.stats.caught["corrupt"] += 1
                    continue            # refetch the chunk
                attempts += 1
                self.stats.error("chunk: sha256", f"{self.id}: chunk {index} of "
                                 f"{package} v{version} does not match X-Chunk-SHA256")
                if attempts >= CHUNK_ATTEMPTS:
                    await self.report(package, version, "failed",
                                      reason=f"chunk {index} failed verification")
                    del self.partial[package]
                    return False
                continue
            part.hasher.update(data)
            part.received += len(data)
            part.next_index += 1
            self.stats.chunks += 1
            if part.next_index % report_every == 0 and part.next_index < entry["chunks"]:
                await self.report(package, version, "downloading", received=part.received)
        del self.partial[package]
        if part.received != entry["size"] or part.hasher.hexdigest() != entry["sha256"]:
            self.stats.error("file: sha256", f"{self.id}: {package} v{version} does not "
                             "match the manifest's size and SHA-256")
            await self.report(package, version, "failed", reason="sha256 mismatch")
            return False
        await self.report(package, version, "verified", received=part.received)
        self.stats.files_verified += 1
        if is_firmware_path(entry["path"]) and not await self.run_image(entry):
            return False
        self.held[package] = (version, entry["sha256"])
        await self.report(package, version, "applied")
        return True

    async def run_image(self, entry: dict[str, Any]) -> bool:
        """Flash and boot a firmware image: True when it runs (the heartbeat then reports
        it); with the bad-image fault, fail as the fault says."""
        failure = self.link.faults.bad_image(self.id, entry["sha256"])
        if failure is None:
            self.firmware_version = f"fw-{entry['sha256'][:12]}"
            self.next_heartbeat_at = 0.0  # after the reboot, as a node does
            return True
        self.stats.faults["bad-image"] += 1
        if failure == "never-return":
            self.lost_to = entry["sha256"]
            return False
        reason = "boot loop: the image restarted before it could mark itself valid" \
            if failure == "reboot-loop" else "rolled back: the image before runs again"
        await self.report(entry["id"], entry["version"], "failed", reason=reason)
        return False

    async def report(self, package: str, version: int, state: str, **extra: Any) -> None:
        # 409: that version was replaced meanwhile; the next manifest brings the new one.
        await self.call("sync-status", "POST", f"/api/v1/files/sync-status/{self.id}",
                        body={"package": package, "version": version, "state": state,
                              **extra}, ok=(201, 409))

    # -- reports -----------------------------------------------------------------------
    async def heartbeat(self) -> None:
        self.next_heartbeat_at = time.monotonic() + self.link.heartbeat_every_s
        self.rssi = min(-35, max(-95, self.rssi + self.rng.choice((-2, -1, 0, 0, 1, 2))))
        low, high = self.heap_range
        self.free_heap = min(high, max(low, self.free_heap + self.rng.randint(-800, 800)))
        reply = await self.call("heartbeat", "POST", f"/api/v1/device/heartbeat/{self.id}",
                                body={"firmware_version": self.firmware_version,
                                      "uptime_s": int(time.monotonic() - self.booted_at),
                                      "free_heap": self.free_heap, "rssi": self.rssi,
                                      "ip": self.source_address or "10.0.0.2",
                                      "simulated": True})
        self.interval_s = reply.json()["next_poll_s"]
        self.stats.heartbeats += 1

    def some_message(self) -> tuple[str, str]:
        levels, weights = zip(*MESSAGE_LEVELS, strict=True)
        level = self.rng.choices(levels, weights)[0]
        return level, MESSAGE_TEXTS[level].format(n=self.rng.randint(1, 4000))

    async def send_message(self, level: str, text: str) -> None:
        await self.call("message", "POST", f"/api/v1/device/messages/{self.id}",
                        body={"level": level, "text": text,
                              "timestamp": int(time.monotonic() - self.booted_at)},
                        ok=(201,))
        self.stats.messages += 1

    # -- faults ------------------------------------------------------------------------
    async def go_offline(self) -> None:
        """Lose the network for 2-4 poll intervals, then come back (uptime goes on)."""
        self.stats.faults["offline"] += 1
        self.stats.online.discard(self.id)
        await self.disconnect()
        await asyncio.sleep((self.interval_s or DEFAULT_INTERVAL_S) * self.rng.uniform(2, 4))

    async def open_raw(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(
            self.link.host, self.link.port,
            local_addr=(self.source_address, 0) if self.source_address else None)

    async def drop_connection(self) -> None:
        """Send a request (whole, or cut mid-headers) and drop the connection unanswered."""
        self.stats.faults["drop"] += 1
        request = (f"GET /api/v1/device/status/{self.id} HTTP/1.1\r\n"
                   f"Host: {self.link.host}:{self.link.port}\r\n"
                   f"Authorization: Bearer {self.token}\r\n\r\n").encode()
        if self.rng.random() < 0.5:
            request = request[:self.rng.randrange(10, len(request) - 4)]
        try:
            _, writer = await self.open_raw()
            writer.write(request)
            await writer.drain()
            writer.close()
        except OSError:
            self.stats.explained["drop"] += 1

    async def stall_body(self) -> None:
        """Send a heartbeat's headers and half its body, pause, then the rest."""
        self.stats.faults["stall"] += 1
        body = json.dumps({"uptime_s": int(time.monotonic() - self.booted_at),
                           "rssi": self.rssi, "free_heap": self.free_heap}).encode()
        head = (f"POST /api/v1/device/heartbeat/{self.id} HTTP/1.1\r\n"
                f"Host: {self.link.host}:{self.link.port}\r\n"
                f"Authorization: Bearer {self.token}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        half = len(body) // 2
        try:
            reader, writer = await self.open_raw()
            writer.write(head + body[:half])
            await writer.drain()
            await asyncio.sleep(self.link.faults.stall_s)
            writer.write(body[half:])
            await writer.drain()
            status_line = await asyncio.wait_for(reader.readline(),
                                                 self.link.request_timeout_s)
            writer.close()
        except (OSError, TimeoutError):
            self.stats.explained["stall"] += 1
            return
        if b" 200 " not in status_line:  # the hub may cut a slow client off: explained
            self.stats.explained["stall"] += 1

    async def present_bad_token(self) -> None:
        """A request with a wrong token: the hub must refuse it (401)."""
        self.stats.faults["bad-token"] += 1
        self.last_bad_token_at = self.link.last_bad_token_at = time.monotonic()
        wrong = "wrong-" + "".join(self.rng.choices("abcdef0123456789", k=26))
        try:
            await self.call("bad-token", "GET", f"/api/v1/device/ping/{self.id}",
                            token=wrong, ok=(401, 429))
        except RequestFailed:
            return
        self.stats.caught["bad-token"] += 1
