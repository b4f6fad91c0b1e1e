"""End to end: real gunicorn hubs on loopback, the real CLI, real files."""

from __future__ import annotations

import json
import subprocess
import time

import pytest
import requests
from support import BIN, ROOT, assert_error, free_port, readme_command

pytestmark = pytest.mark.slow


def test_hub_starts_as_the_readme_says_and_serves_devices(hub_process, tmp_path):
    command = readme_command(0)
    assert command.startswith("python3 -m venv .venv && .venv/bin/pip install -e .")
    assert command.endswith("&& .venv/bin/dropsync serve")  # what HubProcess runs

    hub = hub_process()
    health = requests.get(hub.url + "/health", timeout=5).json()
    assert health["status"] == "ok" and health["store"]["state"] == "ok"
    assert "data_dir" not in health["store"]  # no paths for anonymous callers
    assert "Using worker: gthread" in hub.log
    assert f"listening on http://127.0.0.1:{hub.port}" in hub.log

    # the first admin credential: told once in the log, and in a 0600 file
    first_admin = hub.data_dir / "first-admin.txt"
    assert str(first_admin) in hub.log
    assert first_admin.stat().st_mode & 0o777 == 0o600
    admin_token = first_admin.read_text().split("admin API token:")[1].split()[0]
    admin = {"Authorization": f"Bearer {admin_token}"}
    assert requests.get(hub.url + "/api/v1/admin/devices", headers=admin, timeout=5).json() \
        == {"devices": [], "count": 0}
    stats = requests.get(hub.url + "/api/v1/admin/system/stats", headers=admin, timeout=5)
    assert stats.json()["store"]["data_dir"] == str(hub.data_dir)

    # the CLI registers a device through the running hub
    added = hub.cli("device", "add", "esp001", "--group", "field")
    token = added.stdout.strip().rsplit(" ", 1)[-1]
    listed = requests.get(hub.url + "/api/v1/admin/devices", headers=admin, timeout=5).json()
    assert [d["id"] for d in listed["devices"]] == ["esp001"]

    accepted = requests.get(hub.url + "/api/v1/device/ping/esp001",
                            headers={"Authorization": f"Bearer {token}"}, timeout=5)
    assert accepted.status_code == 200 and accepted.json()["device_id"] == "esp001"
    rejected = requests.get(hub.url + "/api/v1/device/ping/esp001",
                            headers={"Authorization": "Bearer wrong"}, timeout=5)
    assert_error(rejected, 401, "invalid_token")
    assert json.loads(hub.cli("device", "list", "--json").stdout)[0]["last_seen"]


def test_second_hub_on_the_same_data_dir_refuses_at_once(hub_process, tmp_path):
    hub = hub_process()
    holder_pid = json.loads((hub.data_dir / "hub.lock").read_text())["pid"]
    env = {**hub.env, "DROPSYNC_PORT": str(free_port())}

    started = time.monotonic()
    second = subprocess.run([str(BIN / "dropsync"), "serve"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=30)
    assert second.returncode != 0
    assert time.monotonic() - started < 10
    message = second.stdout + second.stderr
    assert str(hub.data_dir) in message and f"process {holder_pid}" in message
    assert "Traceback" not in message

    # plain gunicorn on wsgi:app gets as far as the worker, which refuses the same way
    plain = subprocess.run(
        [str(BIN / "gunicorn"), "-c", "python:dropsync.gunicorn_conf", "wsgi:app"],
        cwd=ROOT, env={**env, "DROPSYNC_DATA_DIR": str(hub.data_dir)},
        capture_output=True, text=True, timeout=60)
    assert plain.returncode == 3  # gunicorn: worker failed to boot, so the master stops
    assert f"in use by process {holder_pid}" in plain.stderr
    assert "Traceback" not in plain.stderr
    # and the first hub is unharmed
    assert requests.get(hub.url + "/health", timeout=5).status_code == 200


def test_cli_never_writes_behind_a_running_hub(hub_process, tmp_path):
    hub = hub_process({"DROPSYNC_LIVENESS_CHECKPOINT_S": "3600"})
    token = hub.cli("device", "add", "esp001").stdout.strip().rsplit(" ", 1)[-1]
    hub.cli("device", "add", "esp002")
    hub.cli("device", "disable", "esp002")
    requests.get(hub.url + "/api/v1/device/ping/esp001",
                 headers={"X-Device-Token": token}, timeout=5).raise_for_status()
    # liveness is held in memory (checkpoint interval: an hour)...
    liveness_file = hub.data_dir / "liveness.json"
    assert "esp001" not in (liveness_file.read_text() if liveness_file.exists() else "")
    assert hub.stop() == 0
    # ...and written at shutdown; every CLI change went through the hub and is on disk
    assert "last_seen" in json.loads(liveness_file.read_text())["esp001"]
    devices = json.loads((hub.data_dir / "devices.json").read_text())["devices"]
    assert {d["id"]: d["enabled"] for d in devices.values()} == \
        {"esp001": True, "esp002": False}
    # with no hub running, the CLI opens the stores itself
    assert "esp002" in hub.cli("device", "list").stdout


def test_unreadable_store_stops_the_hub_with_the_file_named(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "auth.json").write_text("not json at all")
    result = subprocess.run([str(BIN / "dropsync"), "serve", "--port", str(free_port())],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60,
                            env={"PATH": str(BIN), "DROPSYNC_HOST": "127.0.0.1"})
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert str(data_dir / "auth.json") in output and "Traceback" not in output
    assert (data_dir / "auth.json").read_text() == "not json at all"


def test_dev_server_serves_the_same_app_and_stops_cleanly(hub_process):
    hub = hub_process({"DROPSYNC_LIVENESS_CHECKPOINT_S": "3600"}, serve_args=("--dev",))
    assert "gunicorn" not in hub.log
    assert requests.get(hub.url + "/health", timeout=5).json()["status"] == "ok"
    assert_error(requests.get(hub.url + "/api/v1/admin/devices", timeout=5), 401)
    token = hub.cli("device", "add", "esp001").stdout.strip().rsplit(" ", 1)[-1]
    requests.get(hub.url + "/api/v1/device/ping/esp001",
                 headers={"X-Device-Token": token}, timeout=5).raise_for_status()
    assert hub.stop() == 0
    # SIGTERM still checkpoints liveness and gives up the data directory cleanly
    assert "last_seen" in json.loads((hub.data_dir / "liveness.json").read_text())["esp001"]
    assert (hub.data_dir / "hub.lock").read_text() == ""
