"""Fixtures: a real app on temp folders, its client, the CLI, and real hub processes."""

from __future__ import annotations

import subprocess

import pytest
from click.testing import CliRunner
from support import ADMIN_TOKEN, HubProcess

from dropsync import create_app
from dropsync.cli import main


@pytest.fixture
def settings(tmp_path):
    return {
        "DATA_DIR": str(tmp_path / "data"),
        "STAGING_DIR": str(tmp_path / "staging"),
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "LOG_LEVEL": "WARNING",
        "SERVING": False,
        "TESTING": True,
        # Tests send many refused requests from one address on purpose; the limits have
        # tests of their own (test_rate_limits.py) that switch them on.
        "RATE_LIMITS_ENABLED": False,
        # Small chunks, so small test files have several (the default is 32 KiB).
        "CHUNK_SIZE": 4096,
        # Staged images go out at once; tests of rollouts ask for drafts.
        "STAGING_RELEASE": "file=publish,firmware=publish",
    }


@pytest.fixture
def app(settings):
    app = create_app(settings)
    yield app
    app.extensions["dropsync"].close()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def stores(app):
    return app.extensions["dropsync"].stores


class AdminClient:
    """The admin API through the test client, with admin credentials."""

    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    def __init__(self, client):
        self.client = client

    def get(self, path, **kw):
        return self.client.get("/api/v1/admin" + path, headers=self.headers, **kw)

    def post(self, path, **kw):
        return self.client.post("/api/v1/admin" + path, headers=self.headers, **kw)

    def patch(self, path, **kw):
        return self.client.patch("/api/v1/admin" + path, headers=self.headers, **kw)

    def put(self, path, **kw):
        return self.client.put("/api/v1/admin" + path, headers=self.headers, **kw)

    def delete(self, path, **kw):
        return self.client.delete("/api/v1/admin" + path, headers=self.headers, **kw)

    def register_device(self, device_id: str, **fields) -> str:
        response = self.post("/devices/register", json={"id": device_id, **fields})
        assert response.status_code == 201, response.get_json()
        return response.get_json()["token"]


@pytest.fixture
def admin(client):
    return AdminClient(client)


@pytest.fixture
def cli(tmp_path):
    """Run ``dropsync`` in-process against the test data directory."""
    runner = CliRunner()
    data_dir = str(tmp_path / "data")

    def run(*args: str, input: str | None = None, expect: int = 0):
        result = runner.invoke(main, ["--data-dir", data_dir, *args], input=input,
                               env={"DROPSYNC_LOG_LEVEL": "WARNING"})
        assert result.exit_code == expect, result.output + repr(result.exception)
        return result

    return run


@pytest.fixture
def hub_process(tmp_path):
    """Start real hubs (``dropsync serve``) in tmp_path; all are stopped after the test."""
    started: list[HubProcess] = []

    def start(env: dict[str, str] | None = None, workdir=None, serve_args=()) -> HubProcess:
        hub = HubProcess(workdir or tmp_path, env, serve_args).start()
        started.append(hub)
        return hub

    yield start
    for hub in started:
        hub.stop()


@pytest.fixture
def tiny_fs(tmp_path):
    """A real, small tmpfs (bytes, optionally inodes), to fill the disk for real.

    Skipped where mounting is not allowed.
    """
    mounts = []

    def mount(size_kib: int, inodes: int | None = None):
        point = tmp_path / f"tinyfs{len(mounts)}"
        point.mkdir()
        options = f"size={size_kib}k" + (f",nr_inodes={inodes}" if inodes else "")
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        mounts.append(point)
        return point

    yield mount
    for point in mounts:
        subprocess.run(["umount", "-l", str(point)], check=False)


# -- file sync -------------------------------------------------------------------------
@pytest.fixture
def hub(app):
    """The app's Hub (stores, packages, staging), for calling the rules directly."""
    return app.extensions["dropsync"]


@pytest.fixture
def watched_hub(settings):
    """Start hubs on the test folders with their staging watcher running, as a serving hub
    would (settle 0.1 s, no periodic rescan unless overridden); all closed afterwards."""
    hubs = []

    def start(start_watcher: bool = True, **overrides):
        app = create_app({**settings, "STAGING_SETTLE_S": 0.1, "STAGING_RESCAN_S": 3600,
                          **overrides})
        hubs.append(app.extensions["dropsync"])
        if start_watcher:
            hubs[-1].watcher.start()
        return hubs[-1]

    yield start
    for hub in hubs:
        hub.close()


@pytest.fixture
def staging_cli(cli, tmp_path, monkeypatch):
    """``cli`` with the staging folder in tmp_path as well (the CLI default is ./staging)."""
    monkeypatch.setenv("DROPSYNC_STAGING_DIR", str(tmp_path / "staging"))
    return cli


# -- firmware ----------------------------------------------------------------------------
@pytest.fixture(scope="session")
def firmware_build(tmp_path_factory):
    """The host client and the JSON fuzz driver, compiled once per test session."""
    from firmware_support import build_host

    return build_host(tmp_path_factory.mktemp("firmware-build"))
