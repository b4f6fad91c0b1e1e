"""Helpers shared by the tests: the one error-shape assertion and a real hub process."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

from dropsync import timings

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ADMIN_TOKEN = "test-admin-token-0123456789abcdef"


def assert_error(response, status: int, code: str | None = None) -> dict:
    """Every error answers with exactly ``{"error": {"code", "message", "details"}}``."""
    body = response.json() if hasattr(response, "json") and callable(response.json) \
        else response.get_json()
    assert response.status_code == status, body
    assert response.headers["Content-Type"].startswith("application/json")
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"code", "message", "details"}, error
    assert isinstance(error["code"], str) and error["code"]
    assert isinstance(error["message"], str) and error["message"]
    text = json.dumps(body)
    assert "Traceback" not in text and "<html" not in text.lower()
    if code is not None:
        assert error["code"] == code, error
    return error


#: A value for each path parameter of a JSON route.
PATH_VALUES = {"device_id": "esp001", "username": "admin", "command_id": "1", "name": "field"}


def json_routes(app) -> list[tuple[str, str, str, list[str]]]:
    """(method, concrete path, blueprint, body field names) of every route that takes a
    JSON body."""
    routes = []
    for rule in app.url_map.iter_rules():
        declared = getattr(app.view_functions[rule.endpoint], "contract", None)
        if declared is None or declared.body is None:
            continue
        path = rule.rule
        for name, value in PATH_VALUES.items():
            path = path.replace(f"<{name}>", value).replace(f"<int:{name}>", value)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            routes.append((method, path, rule.endpoint.partition(".")[0],
                           sorted(declared.body.fields)))
    return routes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def browse_mdns(timeout: float = 20.0, port: int | None = None):
    """The first ``_dropsync._tcp`` service (on the given port) advertised on loopback, as
    a node's mDNS query would find it on the LAN, or None. Multicast stays on the machine."""
    import zeroconf

    found: list = []
    seen = threading.Event()
    browser_zc = zeroconf.Zeroconf(interfaces=["127.0.0.1"],
                                   ip_version=zeroconf.IPVersion.V4Only)

    class Listener(zeroconf.ServiceListener):
        def add_service(self, zc, type_, name):
            info = zc.get_service_info(type_, name, timeout=3000)
            if info is not None and (port is None or info.port == port):
                found.append(info)
                seen.set()

        def update_service(self, zc, type_, name):
            self.add_service(zc, type_, name)

        def remove_service(self, zc, type_, name):
            pass

    browser = zeroconf.ServiceBrowser(browser_zc, "_dropsync._tcp.local.", Listener())
    try:
        seen.wait(timeout)
        return found[0] if found else None
    finally:
        browser.cancel()
        browser_zc.close()


def readme_command(index: int) -> str:
    """The README's n-th ``sh`` code block (0: run the hub, 1: run the tests)."""
    blocks = re.findall(r"```sh\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S)
    return blocks[index].strip()


def stop_process_group(process: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM a process started with ``start_new_session``, and its children; SIGKILL
    them if they have not gone within ``timeout``."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


class HubProcess:
    """A real hub, started as ``dropsync serve`` (granian, or ``DROPSYNC_SERVER``) on a free
    loopback port."""

    def __init__(self, workdir: Path, env: dict[str, str] | None = None,
                 serve_args: tuple[str, ...] = (), executable: Path | None = None):
        self.workdir = workdir
        self.executable = executable or BIN / "dropsync"  # another install's, if given
        self.serve_args = serve_args
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = workdir / "data"
        self.log_path = workdir / f"hub-{self.port}.log"
        self.env = {**os.environ, "DROPSYNC_HOST": "127.0.0.1",
                    "DROPSYNC_PORT": str(self.port), "DROPSYNC_LOG_LEVEL": "INFO",
                    "DROPSYNC_MDNS": "false",  # tests that want mDNS ask for it
                    # images go out at once; tests of rollouts ask for drafts
                    "DROPSYNC_STAGING_RELEASE": "file=publish,firmware=publish",
                    **(env or {})}
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> HubProcess:
        workdir = self.workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen([str(self.executable), "serve", *self.serve_args],
                                        cwd=workdir,
                                        env=self.env, stdout=self._log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"hub exited with {self.process.returncode}:\n{self.log}")
            try:
                if requests.get(self.url + "/health", timeout=5).status_code == 200:
                    return self
            except (requests.ConnectionError, requests.Timeout):
                pass  # still booting; on a loaded machine the first answer can be slow
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"hub did not answer within {timeout}s:\n{self.log}")

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run the ``dropsync`` command against this hub's data directory."""
        result = subprocess.run([str(BIN / "dropsync"), *args], cwd=self.workdir, env=self.env,
                                capture_output=True, text=True, timeout=60)
        if check:
            assert result.returncode == 0, result.stdout + result.stderr
        return result

    def stop(self) -> int | None:
        if self.process is None:
            return None
        stop_process_group(self.process)
        self._log.close()
        return self.process.returncode


class NginxFront:
    """A real nginx (foreground, everything under ``prefix``) in front of a hub, with the
    site ``dropsync.ops.nginx.render_site`` makes: what deploy/nginx.conf is for a Pi."""

    def __init__(self, prefix: Path, hub_port: int, data_dir: Path, *,
                 tls: tuple[Path, Path] | None = None, settings: dict | None = None):
        from dropsync.config import load_config
        from dropsync.ops.nginx import (
            Listen,
            Site,
            render_main,
            render_site,
            render_ticket_conf,
        )

        self.prefix = prefix
        prefix.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        listens = [Listen(self.port, address="127.0.0.1")]
        if tls:
            self.tls_port = free_port()
            self.tls_url = f"https://127.0.0.1:{self.tls_port}"
            listens.append(Listen(self.tls_port, tls=True, address="127.0.0.1"))
        config = load_config({"DATA_DIR": str(data_dir), **(settings or {})}, environ={})
        # The hub's ticket secret (or one no hub knows: every ticket is then refused).
        (prefix / "nginx-ticket.conf").write_text(render_ticket_conf(
            config["DOWNLOAD_TICKET_SECRET"] or secrets.token_urlsafe(32)))
        site = Site.for_settings(config, hub=f"127.0.0.1:{hub_port}", listens=listens,
                                 blob_socket=prefix / "blobs.sock",
                                 cert=tls[0] if tls else None, key=tls[1] if tls else None,
                                 ticket_conf=prefix / "nginx-ticket.conf",
                                 chunk_cache=prefix / "chunks")
        self.conf = prefix / "nginx.conf"
        self.conf.write_text(render_main(render_site(site), prefix,
                                         user="root" if os.geteuid() == 0 else None))
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> NginxFront:
        error_log = self.prefix / "error.log"
        self.process = subprocess.Popen(
            [shutil.which("nginx", path=os.environ.get("PATH", "") + ":/usr/sbin") or "nginx",
             "-p", str(self.prefix), "-c", str(self.conf), "-e", str(error_log)],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"nginx exited: {error_log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise AssertionError(f"nginx did not listen within {timeout}s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Observed:
    """Every timing the store reports (``dropsync.timings``): what it wrote."""

    def __init__(self):
        self.kinds: list[str] = []
        timings.listen(self)

    def __call__(self, kind: str, seconds: float) -> None:
        self.kinds.append(kind)

    def count(self, kind: str) -> int:
        return self.kinds.count(kind)
