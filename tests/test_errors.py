"""One JSON error shape for every error the hub can answer with."""

from __future__ import annotations

import json

import pytest
from support import ADMIN_TOKEN, assert_error
from werkzeug.exceptions import TooManyRequests

from dropsync import create_app

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.mark.parametrize("method, path, kwargs, status, code", [
    ("post", "/api/v1/admin/devices/register",
     {"data": "{not json", "content_type": "application/json"}, 400, "invalid_json"),
    ("post", "/api/v1/admin/devices/register",
     {"data": b"\xff\xfe", "content_type": "application/json"}, 400, "invalid_json"),
    ("post", "/api/v1/admin/devices/register", {"json": ["a", "list"]}, 400, "invalid_json"),
    ("post", "/api/v1/admin/devices/register", {"json": {"id": 5}}, 400, "validation_failed"),
    ("get", "/api/v1/admin/devices/ghost", {}, 404, "not_found"),
    ("get", "/no/such/page", {}, 404, "not_found"),
    ("put", "/api/v1/admin/devices", {}, 405, "method_not_allowed"),
    ("post", "/api/v1/admin/devices/register",
     {"data": "id=x", "content_type": "text/plain"}, 415, "unsupported_media_type"),
    ("post", "/api/v1/admin/devices/register",
     {"json": {"id": "big", "name": "x" * 2_000_000}}, 413, "request_entity_too_large"),
])
def test_errors_answer_in_the_one_shape(client, method, path, kwargs, status, code):
    response = getattr(client, method)(path, headers=ADMIN, **kwargs)
    assert_error(response, status, code)


def test_405_keeps_the_allow_header(client):
    response = client.delete("/health")
    assert_error(response, 405)
    assert "GET" in response.headers["Allow"]


def test_401_403_409_shapes(admin, client):
    assert_error(client.get("/api/v1/admin/devices"), 401, "missing_credentials")
    token = admin.register_device("a")
    admin.register_device("b")
    assert_error(client.get("/api/v1/device/ping/b", headers={"X-Device-Token": token}), 403)
    assert_error(admin.post("/devices/register", json={"id": "a"}), 409)


def test_unexpected_failures_and_429_keep_the_shape(settings):
    """Routes added only here: a bug (500) and a rate limit (429) must still answer JSON."""
    app = create_app(settings)

    @app.get("/test-only/bug")
    def bug():
        raise RuntimeError("secret internal detail")

    @app.get("/test-only/limited")
    def limited():
        raise TooManyRequests(retry_after=7)

    client = app.test_client()
    error = assert_error(client.get("/test-only/bug"), 500, "internal_error")
    assert "secret internal detail" not in json.dumps(error)
    response = client.get("/test-only/limited")
    assert_error(response, 429, "too_many_requests")
    assert response.headers["Retry-After"] == "7"
    app.extensions["dropsync"].close()


def test_disk_full_answers_507_and_keeps_every_acknowledged_device(tiny_fs, settings):
    folder = tiny_fs(96)
    app = create_app({**settings, "DATA_DIR": str(folder)})
    client = app.test_client()
    registered = []
    for i in range(2000):
        response = client.post("/api/v1/admin/devices/register", headers=ADMIN,
                               json={"id": f"device-{i:04d}", "name": "n" * 90})
        if response.status_code != 201:
            assert_error(response, 507, "storage_full")
            break
        registered.append(f"device-{i:04d}")
    else:
        pytest.fail("the disk never filled")
    assert len(registered) > 10
    listed = client.get("/api/v1/admin/devices", headers=ADMIN).get_json()["devices"]
    assert [d["id"] for d in listed] == registered
    app.extensions["dropsync"].close()
    reopened = create_app({**settings, "DATA_DIR": str(folder)})
    assert len(reopened.extensions["dropsync"].stores.devices) == len(registered)
    reopened.extensions["dropsync"].close()


def test_health_warns_before_the_disk_is_full(tiny_fs, settings):
    app = create_app({**settings, "DATA_DIR": str(tiny_fs(512))})
    health = app.test_client().get("/health").get_json()
    assert health["status"] == "degraded" and health["store"]["state"] == "low_disk"
    assert health["store"]["disk_free_bytes"] < 512 * 1024
    app.extensions["dropsync"].close()
