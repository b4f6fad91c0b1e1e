"""Helpers shared by the tests: the one error-shape assertion and a real hub process."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def readme_command(index: int) -> str:
    """The README's n-th ``sh`` code block (0: run the hub, 1: run the tests)."""
    blocks = re.findall(r"```sh\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S)
    return blocks[index].strip()


class HubProcess:
    """A real hub, started as ``dropsync serve`` (gunicorn) on a free loopback port."""

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
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()
        return self.process.returncode
