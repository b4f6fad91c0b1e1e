"""The chunk route's short way (dropsync.api.chunk_lane): a chunk that will succeed is
answered without Flask's per-request work, with the same answer and the same side effects;
anything else is left to the app."""

from __future__ import annotations

import os

import pytest
from support import ADMIN_TOKEN
from sync_support import bearer
from test_files_api import entry_of, fetch, stage
from test_files_tickets import Admin
from werkzeug.test import Client

from dropsync import create_app

ADMIN = bearer(ADMIN_TOKEN)

CHUNK_ROUTE = "/api/v1/files/download/<device_id>/<package_id>/<int:version>/<int:index>"


@pytest.fixture
def fleet(admin):
    return {name: admin.register_device(name) for name in ("esp001", "esp002")}


def test_a_chunk_skips_the_flask_hooks_and_answers_as_the_app_does(app, client, admin, fleet,
                                                                     stores):
    data = os.urandom(4096 * 2 + 100)
    stage(admin, "all/app.bin", data)
    entry = entry_of(client, "esp001", fleet["esp001"], "app.bin")
    hooks_run = []
    app.before_request_funcs.setdefault(None, []).append(lambda: hooks_run.append(1))
    metrics = app.extensions["dropsync.metrics"]
    served_before = metrics.bytes_served.labels(CHUNK_ROUTE)._value.get()

    by_lane = fetch(client, f"{entry['url']}/2", fleet["esp001"])
    assert hooks_run == []  # no request context, no hooks: the lane answered
    assert stores.liveness.get("esp001")["last_seen"] is not None
    assert metrics.bytes_served.labels(CHUNK_ROUTE)._value.get() == served_before + 100

    by_app = Client(app.wsgi_app.wsgi_app).get(
        f"{entry['url']}/2", headers={"Authorization": f"Bearer {fleet['esp001']}"},
        buffered=True)
    assert hooks_run == [1]
    assert (by_lane.status_code, by_lane.data) == (by_app.status_code, by_app.data) \
        == (200, data[8192:])
    assert list(by_lane.headers.items()) == list(by_app.headers.items())

    # refusals are the app's: another device's token, a chunk past the end
    assert fetch(client, f"{entry['url']}/2", fleet["esp002"]).status_code == 403
    assert fetch(client, f"{entry['url']}/3", fleet["esp001"]).status_code == 404
    assert len(hooks_run) == 3


def test_a_download_before_the_manifest_writes_no_manifest_version(client, admin, fleet, stores):
    """Building a manifest stores its version (an fsynced write); authorising a download
    only needs the list, so a device's first chunk never waits for a disk write."""
    stage(admin, "all/app.bin", os.urandom(5000))
    package = stores.packages.all()[0]
    url = f"/api/v1/files/download/esp002/{package['id']}/{package['version']}"
    assert fetch(client, f"{url}/1", fleet["esp002"]).status_code == 200
    assert fetch(client, url, fleet["esp002"]).status_code == 200
    assert [m["device_id"] for m in stores.manifests.all()] == []
    entry_of(client, "esp002", fleet["esp002"], "app.bin")  # the manifest: now stored
    assert [m["device_id"] for m in stores.manifests.all()] == ["esp002"]


@pytest.mark.parametrize("accel", [None, "/_blobs/"])
def test_a_ticketed_chunk_takes_the_lane_with_its_bytes_even_behind_nginx(settings, accel):
    """What nginx asks the hub on a cache miss: the lane checks the ticket and the token,
    and answers the bytes themselves (never X-Accel: nginx caches this answer)."""
    settings.update(DOWNLOAD_TICKET_SECRET="lane-ticket-secret-0123456789abcdefghij",
                    DOWNLOAD_ACCEL_PREFIX=accel)
    app = create_app(settings)
    try:
        client = app.test_client()
        tokens = {d: client.post("/api/v1/admin/devices/register", json={"id": d},
                                 headers=ADMIN).get_json()["token"] for d in ("esp001",
                                                                              "esp002")}
        data = os.urandom(4096 * 2 + 100)
        stage(Admin(client), "all/app.bin", data)
        entry = entry_of(client, "esp001", tokens["esp001"], "app.bin")
        assert "/files/t/" in entry["url"]
        hooks_run = []
        app.before_request_funcs.setdefault(None, []).append(lambda: hooks_run.append(1))
        by_lane = fetch(client, f"{entry['url']}/2", tokens["esp001"])
        assert hooks_run == []  # the lane answered
        by_app = Client(app.wsgi_app.wsgi_app).get(
            f"{entry['url']}/2", headers={"Authorization": f"Bearer {tokens['esp001']}"},
            buffered=True)
        assert hooks_run == [1]
        assert (by_lane.status_code, by_lane.data) == (by_app.status_code, by_app.data) \
            == (200, data[8192:])
        assert list(by_lane.headers.items()) == list(by_app.headers.items())
        # refusals are the app's: a bad ticket, another device's token
        sig = entry["url"].split("/")[6]
        tampered = entry["url"].replace(sig, ("A" if sig[0] != "A" else "B") + sig[1:])
        assert fetch(client, f"{tampered}/0", tokens["esp001"]).get_json()["error"]["code"] \
            == "ticket_invalid"
        assert fetch(client, f"{entry['url']}/0", tokens["esp002"]).status_code == 403
        assert len(hooks_run) == 3
    finally:
        app.extensions["dropsync"].close()
