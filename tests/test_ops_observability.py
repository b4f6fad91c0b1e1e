"""What an operator watches: one log line per request (never a credential) and the
Prometheus metrics at /metrics, from a real hub after a full run."""

from __future__ import annotations

import re

import requests
from prometheus_client.parser import text_string_to_metric_families
from support import ADMIN_TOKEN, assert_error

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
ADMIN_PASSWORD = "first-operator-password-4321"
OPERATOR_PASSWORD = "second-operator-pw-8765"
REQUEST_LINE = re.compile(r"dropsync\.requests: (?P<method>[A-Z]+) (?P<route>\S+) "
                          r"(?P<status>\d{3}) (?P<ms>[0-9.]+)ms device=(?P<device>\S+) "
                          r"client=(?P<client>\S+)")


def metric_samples(text: str) -> dict[str, list]:
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def value(samples: list, name: str, **labels) -> float:
    return sum(s.value for s in samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_a_full_run_logs_every_request_and_no_credential_and_counts_it(hub_process):
    hub = hub_process({"DROPSYNC_ADMIN_TOKEN": ADMIN_TOKEN,
                       "DROPSYNC_ADMIN_PASSWORD": ADMIN_PASSWORD})
    url = hub.url
    session = requests.Session()
    token = session.post(f"{url}/api/v1/admin/devices/register", json={"id": "esp001"},
                         headers=ADMIN, timeout=10).json()["token"]
    device = {"Authorization": f"Bearer {token}"}
    secrets_seen = [token, ADMIN_TOKEN, ADMIN_PASSWORD, OPERATOR_PASSWORD]
    created = session.post(f"{url}/api/v1/admin/tokens", json={"label": "script"},
                           headers=ADMIN, timeout=10).json()
    secrets_seen.append(created["token"])
    assert session.post(f"{url}/api/v1/admin/operators", headers=ADMIN, timeout=10, json={
        "username": "alice", "password": OPERATOR_PASSWORD}).status_code == 201
    session.post(f"{url}/api/v1/admin/devices/esp001/command", headers=ADMIN, timeout=10,
                 json={"command": "reboot"})
    for _ in range(3):
        assert session.get(f"{url}/api/v1/device/commands/esp001", headers=device,
                           timeout=10).status_code == 200
    session.post(f"{url}/api/v1/device/heartbeat/esp001", headers=device, timeout=10,
                 json={"rssi": -60, "free_heap": 20000})
    session.post(f"{url}/api/v1/device/messages/esp001", headers=device, timeout=10,
                 json={"text": "hello"})
    assert session.post(f"{url}/api/v1/files/upload/esp001", headers=device, timeout=10,
                        files={"file": ("boot.log", b"booted\n")}).status_code == 201
    session.put(f"{url}/api/v1/admin/staging/esp001/app.bin", data=b"x" * 5000,
                headers=ADMIN, timeout=10)
    entry = session.get(f"{url}/api/v1/files/manifest/esp001", headers=device,
                        timeout=10).json()["files"][0]
    assert session.get(url + entry["url"], headers=device, timeout=10).content == b"x" * 5000
    # Credentials in the wrong places: a query string, a refused token.
    session.get(f"{url}/api/v1/device/ping/esp001", params={"token": token}, timeout=10)
    refused = session.get(f"{url}/api/v1/device/ping/esp001", timeout=10,
                          headers={"Authorization": f"Bearer {token}x"})
    assert refused.status_code == 401
    login = session.post(f"{url}/dashboard/login", timeout=10,
                         data={"username": "alice", "password": OPERATOR_PASSWORD})
    assert login.status_code in (200, 302, 303, 400, 404)  # whatever the dashboard says

    assert_error(session.get(f"{url}/metrics", timeout=10), 401)
    assert_error(session.get(f"{url}/metrics", headers=device, timeout=10), 401)
    scraped = session.get(f"{url}/metrics", headers=ADMIN, timeout=10)
    assert scraped.status_code == 200
    assert scraped.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = metric_samples(scraped.text)
    requests_total = samples["dropsync_http_requests"]
    poll_route = "/api/v1/device/commands/<device_id>"
    assert value(requests_total, "dropsync_http_requests_total", route=poll_route,
                 status="200", method="GET") == 3
    assert value(requests_total, "dropsync_http_requests_total",
                 route="/api/v1/device/ping/<device_id>", status="401") == 2
    assert value(samples["dropsync_poll_latency_seconds"],
                 "dropsync_poll_latency_seconds_count") == 3
    devices = samples["dropsync_devices"]
    assert value(devices, "dropsync_devices", state="online") == 1
    commands = samples["dropsync_command_deliveries"]
    assert value(commands, "dropsync_command_deliveries", state="delivered") == 1
    assert value(samples["dropsync_bytes_served"], "dropsync_bytes_served_total") == 5000
    assert value(samples["dropsync_ingest_seconds"], "dropsync_ingest_seconds_count") == 1
    store_writes = samples["dropsync_store_write_seconds"]
    assert value(store_writes, "dropsync_store_write_seconds_count", kind="table") > 0
    assert value(store_writes, "dropsync_store_write_seconds_count", kind="history") > 0
    assert value(samples["dropsync_disk_free_bytes"], "dropsync_disk_free_bytes") > 0

    hub.stop()
    log = hub.log
    for secret in secrets_seen:
        assert secret not in log, "a credential reached the log"
    lines = [m.groupdict() for m in REQUEST_LINE.finditer(log)]
    polls = [line for line in lines if line["route"] == poll_route]
    assert len(polls) == 3 and {p["device"] for p in polls} == {"esp001"}
    assert all(p["status"] == "200" and float(p["ms"]) >= 0 for p in polls)
    assert any(line["status"] == "401" and line["device"] == "esp001" for line in lines)
    assert any(line["route"] == "/metrics" and line["status"] == "200" for line in lines)
    assert all(line["client"] == "127.0.0.1" for line in lines)
    # One line per request: those the scrape counted, and the scrape itself.
    counted = int(value(requests_total, "dropsync_http_requests_total"))
    assert len(lines) == counted + 1


def test_each_app_has_its_own_metrics(app, admin, settings, tmp_path):
    from dropsync import create_app

    admin.get("/devices")
    other = create_app({**settings, "DATA_DIR": str(tmp_path / "other")})
    try:
        scraped = other.test_client().get("/metrics", headers=admin.headers).text
        samples = metric_samples(scraped)["dropsync_http_requests"]
        assert value(samples, "dropsync_http_requests_total",
                     route="/api/v1/admin/devices") == 0
    finally:
        other.extensions["dropsync"].close()
