"""The short ways for polls and chunks (dropsync.api.lanes): a poll, or a chunk that will
succeed, is answered without Flask's per-request work, with the same answer and the same
side effects; anything else is left to the app."""

from __future__ import annotations

import json
import os

import pytest
from support import ADMIN_TOKEN
from sync_support import Admin, bearer, entry_of, fetch, stage
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
    assert stores.manifest_versions.get("esp002") == {}
    entry_of(client, "esp002", fleet["esp002"], "app.bin")  # the manifest: now stored
    assert stores.manifest_versions.get("esp002")["version"] >= 1


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


POLL_ROUTE = "/api/v1/device/commands/<device_id>"


def poll_hooks(app) -> list:
    """Counts the Flask hooks run: a request the lanes answered runs none."""
    hooks_run: list = []
    app.before_request_funcs.setdefault(None, []).append(lambda: hooks_run.append(1))
    return hooks_run


def by_app(app, path: str, token: str):
    return Client(app.wsgi_app.wsgi_app).get(
        path, headers={"Authorization": f"Bearer {token}"}, buffered=True)


def without_clock(response, *also: str) -> dict:
    answer = json.loads(response.data)
    for field in ("server_time", *also):
        answer.pop(field)
    return answer


def test_a_poll_skips_the_flask_hooks_and_answers_as_the_app_does(app, client, admin, fleet,
                                                                    stores):
    for device in ("esp001", "esp002"):
        for name, priority in (("reboot", 1), ("sync", 5)):
            response = admin.post("/commands", json={
                "target": device, "name": name, "args": {"delay_s": 3}, "priority": priority})
            assert response.status_code == 201, response.get_json()
    hooks_run = poll_hooks(app)
    metrics = app.extensions["dropsync.metrics"]
    polls_before = metrics.poll_latency._sum.get(), sum(
        bucket.get() for bucket in metrics.poll_latency._buckets)

    path = "/api/v1/device/commands/{}?limit=1"
    lane = client.get(path.format("esp001"), headers={"Authorization":
                                                       f"Bearer {fleet['esp001']}"})
    assert hooks_run == []
    assert stores.liveness.get("esp001")["last_seen"] is not None
    assert sum(bucket.get() for bucket in metrics.poll_latency._buckets) == polls_before[1] + 1
    flask = by_app(app, path.format("esp002"), fleet["esp002"])
    assert hooks_run == [1]
    assert lane.status_code == flask.status_code == 200
    assert lane.headers["Content-Type"] == flask.headers["Content-Type"] == "application/json"
    # next_poll_s spreads devices apart, so it differs between two devices
    handed_by_lane = without_clock(lane, "next_poll_s")
    handed_by_app = without_clock(flask, "next_poll_s")
    assert [c.pop("id") for c in handed_by_lane["commands"]] != \
        [c.pop("id") for c in handed_by_app["commands"]]
    assert handed_by_lane == handed_by_app  # the same shape: priority 5 first, one of two
    assert handed_by_lane["commands"] == [{"name": "sync", "args": {"delay_s": 3},
                                           "priority": 5, **{
                                               k: v for k, v in handed_by_lane["commands"][0]
                                               .items() if k not in ("name", "args",
                                                                     "priority")}}]

    # the lane leased what it handed out: the next poll gets the other command only
    second = client.get(path.format("esp001").replace("?limit=1", ""),
                        headers={"Authorization": f"Bearer {fleet['esp001']}"})
    assert [c["name"] for c in second.get_json()["commands"]] == ["reboot"]
    assert hooks_run == [1]
    empty_lane = client.get(path.format("esp001"),
                            headers={"X-Device-Token": fleet["esp001"]})
    empty_app = by_app(app, path.format("esp001"), fleet["esp001"])
    assert without_clock(empty_lane, "next_poll_s") == \
        without_clock(empty_app, "next_poll_s") == {"commands": []}
    assert abs(empty_lane.get_json()["next_poll_s"] - empty_app.get_json()["next_poll_s"]) \
        <= 2 * app.config["POLL_INTERVAL_S"] * app.config["POLL_JITTER"] + 1  # random spread
    assert list(empty_lane.headers.keys()) == list(empty_app.headers.keys()) \
        == ["Content-Type", "Content-Length"]
    assert hooks_run == [1, 1]


@pytest.mark.parametrize(("token_of", "query", "status"), [
    ("esp002", "", 403), (None, "", 401), ("esp001", "?limit=0", 400),
    ("esp001", "?limit=5&limit=6", 400), ("esp001", "?verbose=1", 400)])
def test_polls_the_lane_does_not_answer_are_the_apps(app, client, fleet, token_of, query,
                                                     status):
    hooks_run = poll_hooks(app)
    headers = {"Authorization": f"Bearer {fleet[token_of]}"} if token_of else {}
    response = client.get(f"/api/v1/device/commands/esp001{query}", headers=headers)
    assert response.status_code == status, response.get_json()
    assert hooks_run == [1]
