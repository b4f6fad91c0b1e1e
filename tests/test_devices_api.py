"""Device registry through the admin API, and device authentication."""

from __future__ import annotations

import re

import pytest
from support import ADMIN_TOKEN, Observed, assert_error


def ping(client, device_id: str, headers: dict | None = None):
    return client.get(f"/api/v1/device/ping/{device_id}", headers=headers or {})


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


# -- registration ----------------------------------------------------------------------
def test_register_returns_the_token_once_and_stores_only_its_hash(admin, stores):
    response = admin.post("/devices/register", json={
        "id": "AA:BB:CC:DD:EE:FF", "name": "Pump", "type": "esp32", "groups": ["field"]})
    assert response.status_code == 201
    body = response.get_json()
    assert body["id"] == "AA:BB:CC:DD:EE:FF" and body["groups"] == ["field"]
    assert len(body["token"]) >= 32  # 192 random bits, URL-safe
    shown = admin.get("/devices/AA:BB:CC:DD:EE:FF").get_json()
    assert "token" not in shown and "token_hash" not in shown
    assert "token_hash" not in str(admin.get("/devices").get_json())
    assert stores.devices.get("AA:BB:CC:DD:EE:FF")["token_hash"] != body["token"]


def test_seed_style_form_post_registers(admin):
    response = admin.post("/devices/register", data={
        "device_id": "esp001", "device_type": "esp8266", "name": "Greenhouse 1",
        "groups": "greenhouse, north"})
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert (body["id"], body["type"], body["groups"]) == \
        ("esp001", "esp8266", ["greenhouse", "north"])


def test_register_twice_conflicts(admin):
    admin.register_device("esp001")
    assert_error(admin.post("/devices/register", json={"id": "esp001"}), 409, "already_exists")


@pytest.mark.parametrize("device_id", ["", "has space", "x" * 65, "../etc", "a/b", "é", "a\x00"])
def test_bad_device_ids_are_refused(admin, device_id):
    error = assert_error(admin.post("/devices/register", json={"id": device_id}), 400,
                         "validation_failed")
    assert "id" in error["details"]


@pytest.mark.parametrize("body, field", [
    ({"id": "ok", "groups": ["bad group"]}, "groups"),
    ({"id": "ok", "groups": "a,b c"}, "groups"),
    ({"id": "ok", "name": ""}, "name"),
    ({"id": "ok", "colour": "red"}, "colour"),
    ({"name": "no id"}, "id"),
])
def test_bad_fields_are_named_in_the_error(admin, body, field):
    error = assert_error(admin.post("/devices/register", json=body), 400, "validation_failed")
    assert field in error["details"]


def test_list_show_update_delete(admin, client):
    token = admin.register_device("esp001", name="one")
    admin.register_device("esp002")
    listed = admin.get("/devices").get_json()
    assert [d["id"] for d in listed["devices"]] == ["esp001", "esp002"]
    assert listed["count"] == 2

    updated = admin.patch("/devices/esp001", json={"name": "renamed", "groups": ["g1"]})
    assert updated.status_code == 200
    assert admin.get("/devices/esp001").get_json()["name"] == "renamed"

    assert admin.delete("/devices/esp001").get_json() == {"deleted": "esp001"}
    assert_error(admin.get("/devices/esp001"), 404, "not_found")
    assert_error(ping(client, "esp001", bearer(token)), 401, "invalid_token")


def test_last_seen_is_recorded_from_device_requests(admin, client):
    token = admin.register_device("esp001")
    assert admin.get("/devices/esp001").get_json()["last_seen"] is None
    assert ping(client, "esp001", bearer(token)).status_code == 200
    shown = admin.get("/devices/esp001").get_json()
    assert shown["last_seen"].endswith("Z") and shown["address"] == "127.0.0.1"


# -- device authentication -------------------------------------------------------------
def test_device_token_accepted_as_bearer_or_header(admin, client):
    token = admin.register_device("esp001")
    assert ping(client, "esp001", bearer(token)).get_json()["device_id"] == "esp001"
    assert ping(client, "esp001", {"X-Device-Token": token}).status_code == 200


def test_device_auth_rules(admin, client):
    token_a = admin.register_device("esp-a")
    admin.register_device("esp-b")
    assert_error(ping(client, "esp-a"), 401, "missing_credentials")
    assert_error(ping(client, "esp-a", bearer("not-a-token")), 401, "invalid_token")
    assert_error(ping(client, "esp-b", bearer(token_a)), 403, "wrong_device")
    assert_error(ping(client, "no-such-device", bearer(token_a)), 403, "wrong_device")
    assert_error(ping(client, "no-such-device", bearer("nope")), 401, "invalid_token")
    assert_error(ping(client, "esp-a", {"Authorization": f"Basic {token_a}"}), 401)


def test_disabled_device_is_refused_until_enabled(admin, client):
    token = admin.register_device("esp001")
    admin.patch("/devices/esp001", json={"enabled": False})
    assert_error(ping(client, "esp001", bearer(token)), 403, "device_disabled")
    admin.patch("/devices/esp001", data={"enabled": "true"})
    assert ping(client, "esp001", bearer(token)).status_code == 200


def test_rotating_a_token_retires_the_old_one_at_once(admin, client):
    old = admin.register_device("esp001")
    new = admin.post("/devices/esp001/rotate-token").get_json()["token"]
    assert new != old
    assert_error(ping(client, "esp001", bearer(old)), 401, "invalid_token")
    assert ping(client, "esp001", bearer(new)).status_code == 200


def test_device_tokens_are_not_admin_credentials(admin, client):
    token = admin.register_device("esp001")
    assert_error(client.get("/api/v1/admin/devices", headers=bearer(token)), 401,
                 "invalid_token")


# -- import ----------------------------------------------------------------------------
def test_import_adds_skips_existing_and_replaces_only_when_asked(admin, client):
    kept = admin.register_device("esp001")
    tokens = {"esp001": "secure-token-esp001-aaaaaaaa", "esp002": "secure-token-esp002-bbbb"}
    result = admin.post("/devices/import", json={"tokens": tokens}).get_json()
    assert (result["added"], result["updated"], result["skipped"]) == \
        (["esp002"], [], ["esp001"])
    assert "skipped" in result["summary"] and "esp001" in result["summary"]
    assert ping(client, "esp001", bearer(kept)).status_code == 200  # still works
    replaced = admin.post("/devices/import", json={"tokens": tokens, "replace": True})
    assert replaced.get_json()["updated"] == ["esp001"]
    assert ping(client, "esp001", bearer("secure-token-esp001-aaaaaaaa")).status_code == 200
    again = admin.post("/devices/import", json={"tokens": {
        "esp001": "secure-token-esp001-aaaaaaaa"}}).get_json()
    assert again["unchanged"] == ["esp001"] and not again["added"]


def test_import_refuses_short_tokens_unless_forced(admin, client, stores):
    tokens = {"esp003": "short", "esp004": "secure-token-esp004-cccc"}
    error = assert_error(admin.post("/devices/import", json={"tokens": tokens}), 400,
                         "weak_tokens")
    assert "16 characters" in error["message"] and error["details"] == {"weak": ["esp003"]}
    assert len(stores.devices) == 0
    forced = admin.post("/devices/import", json={"tokens": tokens, "force": True}).get_json()
    assert forced["weak"] == ["esp003"] and sorted(forced["added"]) == ["esp003", "esp004"]
    assert "rotate them" in forced["summary"]


def test_import_refuses_shared_tokens_before_writing_anything(admin, stores):
    admin.register_device("esp001")
    assert_error(admin.post("/devices/import", json={"tokens": {
        "x1": "same-token-same-token", "x2": "same-token-same-token"}}), 400)
    assert_error(admin.post("/devices/import", json={"tokens": {"bad id": "t" * 20}}), 400)
    assert [d["id"] for d in stores.devices.all()] == ["esp001"]


# -- admin tokens and operators --------------------------------------------------------
def test_admin_tokens_can_be_created_used_and_revoked(admin, client):
    created = admin.post("/tokens", json={"label": "backup"})
    assert created.status_code == 201
    token, token_id = created.get_json()["token"], created.get_json()["id"]
    assert client.get("/api/v1/admin/devices", headers=bearer(token)).status_code == 200
    listed = admin.get("/tokens").get_json()["tokens"]
    assert token_id in [t["id"] for t in listed] and "token" not in str(listed)
    admin.delete(f"/tokens/{token_id}")
    assert_error(client.get("/api/v1/admin/devices", headers=bearer(token)), 401)
    assert_error(admin.delete(f"/tokens/{token_id}"), 404)


def test_the_configured_admin_token_works_and_is_not_stored(client, stores):
    assert client.get("/api/v1/admin/devices", headers=bearer(ADMIN_TOKEN)).status_code == 200
    assert ADMIN_TOKEN not in str(stores.admin_tokens.all())


def test_operators(admin, stores):
    assert admin.post("/operators", json={"username": "alice", "password": "correct horse"}) \
        .status_code == 201
    assert_error(admin.post("/operators", json={"username": "alice", "password": "x" * 9}), 409)
    assert_error(admin.post("/operators", json={"username": "bob", "password": "short"}), 400)
    assert_error(admin.put("/operators/nobody/password", json={"password": "x" * 9}), 404)
    admin.put("/operators/alice/password", json={"password": "battery staple"})
    names = [o["username"] for o in admin.get("/operators").get_json()["operators"]]
    assert names == ["admin", "alice"]
    from dropsync.fleet.credentials import verify_operator
    assert verify_operator(stores, "alice", "battery staple")["username"] == "alice"
    assert "password_hash" not in str(admin.get("/operators").get_json())


def test_every_admin_route_refuses_missing_and_device_credentials(app, admin, client):
    device_token = admin.register_device("esp001")
    routes = [r for r in app.url_map.iter_rules() if r.endpoint.startswith("admin.")]
    assert len(routes) >= 12
    for rule in routes:
        path = re.sub(r"<int:\w+>", "1", rule.rule.replace("<device_id>", "esp001"))
        path = re.sub(r"<(?:\w+:)?\w+>", "x", path)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            for headers in ({}, bearer(device_token), {"X-Device-Token": device_token}):
                response = client.open(path, method=method, headers=headers, json={})
                assert_error(response, 401)


def test_health_needs_no_credentials_and_reports_the_stores(admin, client):
    admin.register_device("esp001")
    health = client.get("/health").get_json()
    assert health["status"] == "ok" and health["store"]["state"] == "ok"
    assert health["store"]["devices"] == 1
    assert health["store"]["history"]["events"] == 1  # the registration
    assert health["version"] and health["uptime_s"] >= 0


def test_importing_a_fleet_writes_the_device_store_and_the_history_once(admin, client,
                                                                         stores):
    observed = Observed()
    tokens = {f"node{i:03d}": f"node-token-{i:03d}-abcdefghijklmnop" for i in range(300)}
    result = admin.post("/devices/import", json={"tokens": tokens}).get_json()
    assert len(result["added"]) == 300
    assert observed.count("store_write") == 1 and observed.count("history_append") == 1
    imported = [e["device_id"] for e in stores.history["events"].records()
                if e["kind"] == "device.imported"]
    assert imported == list(tokens)  # one audit line per device, as before
    poll = client.get("/api/v1/device/commands/node299",
                      headers={"Authorization": f"Bearer {tokens['node299']}"})
    assert poll.status_code == 200
