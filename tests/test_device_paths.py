"""Every device route answers the same through the lanes as through the plain Flask app.

The lanes (dropsync.api.lanes) answer a fleet's common requests without Flask; they must
never answer differently. Each device route (the device, files and ota blueprints, read
from the URL map) is driven with the same cases through both paths, on twin devices set
up alike, and the answers are compared: status, the JSON or the bytes, and the headers.
"""

from __future__ import annotations

import json
import re

import pytest
from werkzeug.test import Client

from dropsync import create_app
from dropsync.api.lanes import DeviceLanes
from dropsync.api.serving import lane_of

DEVICE_BLUEPRINTS = ("device", "files", "ota")
ADMIN_TOKEN = "admin-token-for-the-device-paths-test-0001"
#: Keys whose values differ between twins or between two moments by design.
VOLATILE = {"server_time", "id", "command_id", "created_at", "queued_at", "leased_at",
            "lease_expires_at", "device_time", "received_at", "at", "last_seen", "url",
            "etag", "version", "manifest_version", "created"}
#: The routes that name a package: a device may fetch only its own manifest's.
PACKAGE_ROUTES = {"files.download", "files.download_chunk", "files.ticket_download",
                  "files.ticket_chunk"}
CASES = ("good", "wrong token", "disabled", "shut out", "over its limit",
         "another device's package")


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    folder = tmp_path_factory.mktemp("paths")
    app = create_app({
        "DATA_DIR": str(folder / "data"), "STAGING_DIR": str(folder / "staging"),
        "ADMIN_TOKEN": ADMIN_TOKEN, "LOG_LEVEL": "WARNING", "SERVING": False,
        "TESTING": True, "CHUNK_SIZE": 4096, "POLL_JITTER": 0.0,
        "STAGING_RELEASE": "file=publish,firmware=publish",  # images offered at once
        "RATE_LIMITS_ENABLED": True, "RATE_LIMIT_FAILED_AUTH": "3/minute",
        "RATE_LIMIT_DEVICE": "40/minute", "RATE_LIMIT_FILES": "40/minute",
        "DOWNLOAD_TICKET_SECRET": "a-ticket-secret-of-at-least-32-characters-xyz"})
    yield app
    app.extensions["dropsync"].close()


class Paths:
    """The two ways into one app: through the lanes, and straight to Flask."""

    def __init__(self, app):
        lanes = app.wsgi_app
        assert isinstance(lanes, DeviceLanes)
        self.fell_through = 0

        def flask_counted(environ, start_response):
            self.fell_through += 1
            return lanes_inner(environ, start_response)

        lanes_inner = lanes.wsgi_app
        lanes.wsgi_app = flask_counted
        self.lanes = Client(lanes)
        self.flask = Client(lanes_inner)
        self.admin = Client(lanes_inner)

    def admin_call(self, method, path, **kw):
        answer = self.admin.open("/api/v1/admin" + path, method=method, headers={
            "Authorization": f"Bearer {ADMIN_TOKEN}"}, **kw)
        assert answer.status_code < 300, answer.text
        return answer.get_json()


@pytest.fixture(scope="module")
def paths(hub):
    return Paths(hub)


def twin(paths: Paths, name: str) -> dict:
    """A device set up the same for each twin: a queued command, a file of its own, and
    one that only its neighbour has."""
    token = paths.admin_call("POST", "/devices/register", json={"id": name})["token"]
    paths.admin_call("POST", f"/devices/{name}/command",
                     json={"command": "echo", "params": {"n": 1}})
    paths.admin_call("PUT", f"/staging/{name}/data/own.bin", data=b"\x01" * 9000)
    paths.admin_call("PUT", f"/staging/{name}/firmware/app.bin",
                     data=b"\xe9\x03\x02\x20" + b"\x02" * 5000)
    return {"id": name, "token": token}


def manifest_entry(paths: Paths, device: dict, path: str) -> dict:
    answer = paths.flask.get(f"/api/v1/files/manifest/{device['id']}",
                             headers=bearer(device["token"]),
                             environ_overrides={"REMOTE_ADDR": "10.9.9.9"})
    return next(f for f in answer.get_json()["files"] if f["path"] == path)


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def route_url(endpoint: str, device: dict, owner_entry: dict, ticket_entry: dict) -> str:
    """A url of ``endpoint`` for ``device`` (the package of ``owner_entry``)."""
    did, pkg, version = device["id"], owner_entry["id"], owner_entry["version"]
    return {
        "device.ping": f"/api/v1/device/ping/{did}",
        "device.poll_commands": f"/api/v1/device/commands/{did}",
        "device.status": f"/api/v1/device/status/{did}",
        "device.heartbeat": f"/api/v1/device/heartbeat/{did}",
        "files.manifest": f"/api/v1/files/manifest/{did}",
        "files.sync_packages": f"/api/v1/files/sync-packages/{did}",
        "files.download": f"/api/v1/files/download/{did}/{pkg}/{version}",
        "files.download_chunk": f"/api/v1/files/download/{did}/{pkg}/{version}/1",
        # the package owner's ticket url: another device's is refused by its signature
        "files.ticket_download": ticket_entry["url"],
        "files.ticket_chunk": ticket_entry["url"] + "/1",
        "files.sync_history": f"/api/v1/files/sync-history/{did}",
        "files.list_uploads": f"/api/v1/files/list/{did}",
        "ota.firmware_image": f"/api/v1/ota/{did}",
    }.get(endpoint, "")


def shape(answer) -> dict:
    """What must be equal on both paths: status, body (JSON without volatile values,
    or the bytes) and the headers that say what was sent."""
    kept = {k: v for k, v in answer.headers.items()
            if k.lower() in ("content-type", "retry-after", "www-authenticate", "etag")
            or k.lower().startswith("x-")}
    for volatile in ("X-Package-Version", "x-version"):  # each twin's own version number
        kept.pop(volatile, None)
    if answer.mimetype == "application/json":  # a manifest's: each twin's list version
        kept.pop("ETag", None)
    if answer.mimetype == "application/json":
        body = strip(answer.get_json())
    else:
        body = answer.data
        kept["Content-Length"] = answer.headers.get("Content-Length")
    return {"status": answer.status_code, "body": body, "headers": kept}


def strip(value):
    if isinstance(value, dict):
        return {k: strip(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [strip(v) for v in value]
    if isinstance(value, str):
        value = re.sub(r"(lane|flask)-[a-z0-9-]+", "<device>", value)
        return re.sub(r"\b[0-9a-f]{12}\b", "<package>", value)  # each twin's own package
    return value


def lane_endpoints(app) -> set[str]:
    return {rule.endpoint for rule in app.url_map.iter_rules()
            if lane_of(app.view_functions[rule.endpoint]) is not None}


def device_get_endpoints(app) -> set[str]:
    return {rule.endpoint for rule in app.url_map.iter_rules()
            if rule.endpoint.partition(".")[0] in DEVICE_BLUEPRINTS
            and ("GET" in rule.methods or lane_of(app.view_functions[rule.endpoint]))}


def prepare(paths: Paths, case: str, endpoint: str, device: dict, address: str) -> dict:
    """Put the device (and the address) in the state the case is about; the headers."""
    headers = bearer(device["token"])
    blueprint = endpoint.partition(".")[0]
    if case == "wrong token":
        headers = bearer("not-a-token-of-anyone-000000000000")
    elif case == "disabled":
        paths.admin_call("PATCH", f"/devices/{device['id']}", json={"enabled": False})
    elif case == "shut out":  # its own token, refused on another device's path, 3 times
        for _ in range(3):
            paths.flask.get("/api/v1/device/ping/someone-else", headers=headers,
                            environ_overrides={"REMOTE_ADDR": address}).close()
    elif case == "over its limit":  # the device's own rate on this blueprint, used up
        warm = {"device": f"/api/v1/device/ping/{device['id']}",
                "files": f"/api/v1/files/list/{device['id']}",
                "ota": f"/api/v1/ota/{device['id']}"}[blueprint]
        for _ in range(40):
            paths.flask.get(warm, headers=headers,
                            environ_overrides={"REMOTE_ADDR": address + "9"}).close()
    return headers


def test_every_device_route_answers_alike_through_the_lanes_and_flask(hub, paths):
    endpoints = sorted(device_get_endpoints(hub))
    assert lane_endpoints(hub) <= set(endpoints)  # every lane has its cases here
    lane_answered = {endpoint: 0 for endpoint in lane_endpoints(hub)}
    compared = 0
    for number, endpoint in enumerate(endpoints):
        for case_number, case in enumerate(CASES):
            if case == "another device's package" and endpoint not in PACKAGE_ROUTES:
                continue
            answers = {}
            for side in ("lane", "flask"):
                name = f"{side}-{number}-{case_number}"
                device = twin(paths, name)
                neighbour = twin(paths, f"{side}-{number}-{case_number}n")
                owner = neighbour if case == "another device's package" else device
                entry = manifest_entry(paths, owner, "data/own.bin")
                url = route_url(endpoint, device, entry, entry)
                assert url, f"no url for {endpoint}: add it to route_url"
                address = f"10.{number}.{case_number}.{'1' if side == 'lane' else '2'}"
                headers = prepare(paths, case, endpoint, device, address)
                client = paths.lanes if side == "lane" else paths.flask
                before = paths.fell_through
                method = "POST" if endpoint == "device.heartbeat" else "GET"
                body = json.dumps({"firmware_version": "1.2.3", "rssi": -60}) \
                    if method == "POST" else None
                answer = client.open(url, method=method, headers=headers, data=body,
                                     content_type="application/json" if body else None,
                                     environ_overrides={"REMOTE_ADDR": address})
                if side == "lane" and endpoint in lane_answered \
                        and paths.fell_through == before:
                    lane_answered[endpoint] += 1
                answers[side] = shape(answer)
                answer.close()
            assert answers["lane"] == answers["flask"], (endpoint, case)
            compared += 1
            if case == "good":
                assert answers["lane"]["status"] in (200, 404), (endpoint, answers)
            elif case != "another device's package":
                expected = {"wrong token": 401, "disabled": 403, "shut out": 429,
                            "over its limit": 429}[case]
                assert answers["lane"]["status"] == expected, (endpoint, case, answers)
            else:
                assert answers["lane"]["status"] == 403, (endpoint, case, answers)
    # the lanes really answered their good cases: the comparison is not of Flask with
    # itself
    assert all(count >= 1 for count in lane_answered.values()), lane_answered
    assert compared >= len(endpoints) * 5


def test_a_hook_the_lanes_would_skip_stops_the_hub_from_starting(app):
    from dropsync.api import lanes
    from dropsync.api.serving import not_on_lane_routes

    lanes.check_hooks(app)  # the app as built passes

    def count_polls():  # a new rule on a blueprint the lanes answer
        pass

    app.before_request_funcs.setdefault("device", []).append(count_polls)
    with pytest.raises(RuntimeError, match="count_polls on device would be skipped"):
        lanes.check_hooks(app)
    app.before_request_funcs["device"].remove(count_polls)

    @not_on_lane_routes("it only acts on the admin API")
    def admin_only(response):
        return response

    app.after_request(admin_only)
    lanes.check_hooks(app)  # said why it never acts on a lane's route
    app.after_request_funcs[None].remove(admin_only)
    app.after_request(lambda response: response)
    with pytest.raises(RuntimeError, match="on the app would be skipped"):
        lanes.check_hooks(app)
