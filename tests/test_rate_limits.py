"""Rate limits: per device on device routes, per address and credential on refused
credentials; every 429 in the one JSON shape with Retry-After."""

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


def test_bad_tokens_are_throttled_without_locking_out_good_ones(limited_app):
    client = limited_app.test_client()
    good = register(client, "esp001")
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    bad = {"Authorization": "Bearer not-a-token-at-all"}
    for path in ("/api/v1/device/ping/esp001", "/api/v1/admin/devices",
                 "/api/v1/device/commands/esp001"):
        assert_error(client.get(path, headers=bad), 401)
    # The same bad token from that address is now refused unchecked, on every route...
    refused = client.get("/api/v1/files/manifest/esp001", headers=bad)
    assert_error(refused, 429, "rate_limited")
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    # ...and so is any other wrong credential from it (no 401/403 to learn from)...
    assert_error(client.get("/api/v1/device/ping/esp001",
                            headers={"X-Device-Token": "another-guess"}), 429)
    assert_error(client.get("/api/v1/admin/devices",
                            headers={"Authorization": "Bearer guess-2"}), 429)
    # ...but good device and admin tokens from the same address (a NAT, a proxy) work.
    assert client.get("/api/v1/device/ping/esp001", headers=good).status_code == 200
    assert client.get("/api/v1/device/commands/esp001", headers=good).status_code == 200
    assert client.get("/api/v1/admin/devices", headers=admin).status_code == 200
    # Another address is unaffected, even with the same bad token.
    other = client.get("/api/v1/admin/devices", headers=bad,
                       environ_base={"REMOTE_ADDR": "10.0.0.7"})
    assert_error(other, 401, "invalid_token")


@pytest.mark.parametrize("trusted, answer", [("127.0.0.1,192.168.0.0/16", 401),
                                             (None, 429)])
def test_forwarded_addresses_count_only_from_trusted_proxies(settings, trusted, answer):
    app = create_app({**settings, "RATE_LIMITS_ENABLED": True,
                      "RATE_LIMIT_FAILED_AUTH": "3/minute",
                      **({"TRUSTED_PROXIES": trusted} if trusted else {})})
    client = app.test_client()

    def guess(token: str, forwarded_for: str, peer: str = "127.0.0.1"):
        return client.get("/api/v1/admin/devices", environ_base={"REMOTE_ADDR": peer},
                          headers={"Authorization": f"Bearer {token}",
                                   "X-Forwarded-For": forwarded_for})

    for n in range(3):  # one client behind the proxy guesses
        assert_error(guess(f"guess-{n}", "10.0.0.5"), 401)
    assert_error(guess("guess-3", "10.0.0.5"), 429)
    # Another client behind the same proxy: its own address when the proxy is trusted,
    # the proxy's (shut out) when not.
    assert_error(guess("typo", "10.0.0.6"), answer)
    # A peer that is not a proxy cannot pick the address it is counted under.
    for n in range(3):
        assert_error(guess(f"spoof-{n}", f"10.0.1.{n}", peer="10.9.9.9"), 401)
    assert_error(guess("spoof-4", "10.0.1.9", peer="10.9.9.9"), 429)
    app.extensions["dropsync"].close()


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
