"""Helpers for the firmware tests: building the core, running the host client, and a
small HTTP proxy that counts, holds, refuses or corrupts what passes between them."""

from __future__ import annotations

import contextlib
import hashlib
import re
import shutil
import socket
import socketserver
import subprocess
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import requests
from littlefs import LittleFS, UserContext
from littlefs.errors import LittleFSError
from support import ADMIN_TOKEN, ROOT
from sync_support import wait_until

FIRMWARE = ROOT / "firmware"
SKETCH = FIRMWARE / "dropsync_node"
CORE = SKETCH / "src" / "dropsync_core"
HOST = FIRMWARE / "host"
#: The warnings the core must compile clean under, on the host and for the ESP8266.
STRICT_FLAGS = ["-Wall", "-Wextra", "-Werror", "-fno-exceptions", "-fno-rtti"]
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CHUNK_PATH = re.compile(r"^/api/v1/files/download/[^/]+/[0-9a-f]+/\d+/(\d+)$")


def build_host(out: Path) -> dict[str, Path]:
    """Builds the host client and the JSON fuzz driver with the Makefile (g++, strict)."""
    flags = " ".join(["-std=c++17", "-O1", "-g", *STRICT_FLAGS])
    result = subprocess.run(["make", "-C", str(HOST), f"OUT={out}", f"CXXFLAGS={flags}"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return {"client": out / "dropsync-host", "asan": out / "dropsync-host-asan",
            "fuzz": out / "fuzz-json"}


class Flash:
    """The host client's flash image read (and written) back with littlefs-python: a
    4M1M ESP8266 FS partition, 125 blocks of 8 KiB (esp_littlefs.h says why)."""

    BLOCK_SIZE, BLOCK_COUNT, NAME_MAX = 8192, 125, 32

    def __init__(self, image: Path):
        self.image = image

    @contextlib.contextmanager
    def _mounted(self):
        context = UserContext(self.BLOCK_SIZE * self.BLOCK_COUNT)
        context.buffer = bytearray(self.image.read_bytes())
        fs = LittleFS(context=context, block_size=self.BLOCK_SIZE,
                      block_count=self.BLOCK_COUNT, name_max=self.NAME_MAX)
        try:
            yield fs
        finally:
            fs.unmount()  # littlefs-python crashes if a mounted fs is garbage-collected

    def read(self, path: str) -> bytes | None:
        """A file's bytes, or None when it is not there."""
        with self._mounted() as fs:
            try:
                with fs.open(path, "rb") as file:
                    return file.read()
            except (FileNotFoundError, LittleFSError):
                return None

    def text(self, path: str) -> str:
        return (self.read(path) or b"").decode(errors="replace")

    def exists(self, path: str) -> bool:
        with self._mounted() as fs:
            try:
                fs.stat(path)
            except (FileNotFoundError, LittleFSError):
                return False
            return True

    def files(self) -> dict[str, bytes]:
        """Every file on the flash by path."""
        found = {}
        with self._mounted() as fs:
            for folder, _, names in fs.walk("/"):
                for name in names:
                    path = f"{folder.rstrip('/')}/{name}"
                    with fs.open(path, "rb") as file:
                        found[path] = file.read()
        return found

    def write(self, path: str, data: bytes) -> None:
        """Puts a file on the flash (the client must not be running)."""
        with self._mounted() as fs:
            folder = path.rsplit("/", 1)[0]
            if folder:
                fs.makedirs(folder, exist_ok=True)
            with fs.open(path, "wb") as file:
                file.write(data)
            self.image.write_bytes(bytes(fs.context.buffer))


def register(hub, device_id: str) -> str:
    response = requests.post(f"{hub.url}/api/v1/admin/devices/register", headers=ADMIN,
                             json={"id": device_id}, timeout=10)
    assert response.status_code == 201, response.text
    return response.json()["token"]


def admin_get(hub, path: str, **params):
    response = requests.get(f"{hub.url}/api/v1/admin{path}", headers=ADMIN, params=params,
                            timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def stage(hub, target: str, path: str, data: bytes) -> dict:
    response = requests.put(f"{hub.url}/api/v1/admin/staging/{target}/{path}", headers=ADMIN,
                            data=data, timeout=30)
    assert response.status_code in (200, 201), response.text
    return response.json()


class HostClient:
    """One run of the host client (the firmware core on Linux) as a real process."""

    def __init__(self, binary: Path, url: str, device_id: str, token: str, flash: Path,
                 *args: str):
        """``flash`` is the littlefs image (created on first use) the client boots on."""
        self.flash = Flash(flash)
        self.log_path = flash.parent / f"{flash.name}-client.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed in wait/kill)
        self.process = subprocess.Popen(
            [str(binary), "--hub", url, "--id", device_id, "--token", token,
             "--flash", str(flash), *args], stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 30.0) -> re.Match:
        def found():
            return re.search(pattern, self.output, re.M)
        try:
            return wait_until(found, timeout, message=pattern)
        except AssertionError:
            raise AssertionError(f"{pattern!r} not printed; output:\n{self.output}") from None

    def wait(self, timeout: float = 60.0) -> int:
        try:
            return self.process.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        """SIGKILL: no clean-up runs, as in a power cut."""
        self.process.kill()
        self.process.wait()
        self._log.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.wait(30)
        self._log.close()


class Proxy:
    """A tiny HTTP proxy between the client and a hub (the client speaks HTTP/1.0, one
    request per connection). It counts requests by path and can hold one path until
    released, answer 502 to paths a predicate names, or flip a byte in a response."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.counts: Counter[str] = Counter()
        self.requests: list[str] = []  # every request's path, in order
        self.lock = threading.Lock()
        self.hold: str | None = None
        self.held = threading.Event()
        self.release = threading.Event()
        self.refuse: Callable[[str, str], bool] = lambda method, path: False
        self.corrupt_once: set[str] = set()
        #: (old, new) byte strings replaced in every response body (Content-Length fixed):
        #: what a hub that checks less would send, e.g. a path the boards cannot store.
        self.rewrite: list[tuple[bytes, bytes]] = []
        #: paths whose next response gets `lengthen` extra bytes, its X-Chunk-SHA256 made to
        #: match: a chunk longer than the manifest says, that only a length check catches
        self.lengthen_once: set[str] = set()
        self.lengthen = 100
        self.corrupted: list[str] = []
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                proxy.serve(self.request)

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def chunk_counts(self) -> dict[int, int]:
        with self.lock:
            return {int(m.group(1)): n for path, n in self.counts.items()
                    if (m := CHUNK_PATH.match(path))}

    def serve(self, client: socket.socket) -> None:
        client.settimeout(30)
        request = read_message(client)
        if request is None:
            return
        method, path = request.split(b" ", 2)[:2]
        method, path = method.decode(), path.decode()
        with self.lock:
            self.counts[path] += 1
            self.requests.append(path)
        if self.hold and path == self.hold:
            self.hold = None
            self.held.set()
            self.release.wait(60)
            return  # the client is gone by now
        if self.refuse(method, path):
            client.sendall(b"HTTP/1.0 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            return
        try:
            with socket.create_connection(("127.0.0.1", self.upstream_port), timeout=30) as hub:
                hub.sendall(request)
                response = read_message(hub)
        except OSError:  # the hub is down: the client sees its connection closed
            return
        if response is None:
            return
        if self.rewrite:
            response = rewrite_body(response, self.rewrite)
        if path in self.lengthen_once:
            self.lengthen_once.discard(path)
            response = lengthened(response, self.lengthen)
        if path in self.corrupt_once:
            self.corrupt_once.discard(path)
            self.corrupted.append(path)
            response = response[:-1] + bytes([response[-1] ^ 0xFF])
        try:
            client.sendall(response)
        except OSError:
            pass

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def rewrite_body(response: bytes, replacements: list[tuple[bytes, bytes]]) -> bytes:
    head, _, body = response.partition(b"\r\n\r\n")
    for old, new in replacements:
        body = body.replace(old, new)
    head = re.sub(rb"(?im)^(content-length:\s*)\d+", lambda m: m.group(1) + b"%d" % len(body),
                  head)
    return head + b"\r\n\r\n" + body


def lengthened(response: bytes, extra: int) -> bytes:
    head, _, body = response.partition(b"\r\n\r\n")
    body += b"\xa5" * extra
    digest = hashlib.sha256(body).hexdigest().encode()
    head = re.sub(rb"(?im)^(x-chunk-sha256:\s*)[0-9a-f]+", lambda m: m.group(1) + digest, head)
    head = re.sub(rb"(?im)^(content-length:\s*)\d+", lambda m: m.group(1) + b"%d" % len(body),
                  head)
    return head + b"\r\n\r\n" + body


def read_message(sock: socket.socket) -> bytes | None:
    """One HTTP message (head and a Content-Length body, or a body up to the close)."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        if not piece:
            return data or None
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    match = re.search(rb"\r\ncontent-length:\s*(\d+)", head, re.I)
    if match is None and head.startswith(b"HTTP/"):  # a response without length: to the close
        while piece := sock.recv(65536):
            body += piece
    else:
        length = int(match.group(1)) if match else 0
        while len(body) < length:
            piece = sock.recv(65536)
            if not piece:
                break
            body += piece
    return head + b"\r\n\r\n" + body


def have_xtensa() -> bool:
    return shutil.which("xtensa-lx106-elf-g++") is not None
