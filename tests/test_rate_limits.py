"""Rate limits: per device on device routes, per address on refused credentials; every
429 in the one JSON shape with Retry-After."""

from __future__ import annotations

import pytest
from support import ADMIN_TOKEN, assert_error

from dropsync import create_app


@pytest.fixture
def limited_app(settings):
    app = create_app({**settings, "RATE_LIMITS_ENABLED": True,
                      "RATE_LIMIT_DEVICE": "5/minute", "RATE_LIMIT_FAILED_AUTH": "3/minute"})
    yield app
    app.extensions["dropsync"].close()


def register(client, device_id):
    response = client.post("/api/v1/admin/devices/register", json={"id": device_id},
                           headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert response.status_code == 201
    return {"Authorization": f"Bearer {response.get_json()['token']}"}


def test_each_device_has_its_own_budget(limited_app):
    client = limited_app.test_client()
    first, second = register(client, "esp001"), register(client, "esp002")
    answers = [client.get("/api/v1/device/commands/esp001", headers=first).status_code
               for _ in range(6)]
    assert answers == [200] * 5 + [429]
    refused = client.get("/api/v1/device/ping/esp001", headers=first)
    error = assert_error(refused, 429, "rate_limited")
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert error["details"]["retry_after_s"] == int(refused.headers["Retry-After"])
    # The other device is not held back by its neighbour.
    assert client.get("/api/v1/device/commands/esp002", headers=second).status_code == 200


def test_an_address_presenting_bad_tokens_is_shut_out_everywhere(limited_app):
    client = limited_app.test_client()
    good = register(client, "esp001")
    bad = {"Authorization": "Bearer not-a-token-at-all"}
    for path in ("/api/v1/device/ping/esp001", "/api/v1/admin/devices",
                 "/api/v1/device/commands/esp001"):
        assert_error(client.get(path, headers=bad), 401)
    # Three refusals used the address's budget: even good credentials wait now.
    assert_error(client.get("/api/v1/device/ping/esp001", headers=good), 429, "rate_limited")
    assert_error(client.get("/api/v1/admin/devices",
                            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}), 429)
    # Another address is unaffected.
    other = client.get("/api/v1/device/ping/esp001", headers=good,
                       environ_base={"REMOTE_ADDR": "10.0.0.7"})
    assert other.status_code == 200


def test_accepted_requests_do_not_count_as_failures(limited_app):
    client = limited_app.test_client()
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    for _ in range(10):
        assert client.get("/api/v1/admin/devices", headers=admin).status_code == 200


def test_limits_can_be_switched_off(app, client, admin):
    headers = {"Authorization": f"Bearer {admin.register_device('esp001')}"}
    for _ in range(20):
        assert client.get("/api/v1/device/ping/esp001", headers=headers).status_code == 200
    for _ in range(40):
        assert_error(client.get("/api/v1/admin/devices"), 401)
