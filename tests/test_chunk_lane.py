"""The chunk route's short way (dropsync.api.chunk_lane): a chunk that will succeed is
answered without Flask's per-request work, with the same answer and the same side effects;
anything else is left to the app."""

from __future__ import annotations

import os

import pytest
from test_files_api import entry_of, fetch, stage
from werkzeug.test import Client

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
