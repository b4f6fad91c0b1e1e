"""Enrollment through the real app: boards with no token enroll with a key, wait pending,
are accepted (one, many, or preauthorised by MAC) or rejected, and the token reaches only
the board that proves its secret, once. Bounded, rate limited, and every bad input a
clear JSON error that stores nothing."""

from __future__ import annotations

import hashlib
import os
import time

import pytest
from support import assert_error
from sync_support import bearer

from dropsync.fleet.enrollment import read_preauthorized_csv


class Board:
    """A board as the firmware is: a MAC, a secret made once, and what it sends."""

    def __init__(self, client, key: str, mac: str, name_hint: str | None = None):
        self.client, self.key, self.mac, self.name_hint = client, key, mac, name_hint
        self.secret = os.urandom(32).hex()

    def digest(self) -> str:
        return hashlib.sha256(self.secret.encode()).hexdigest()

    def enroll(self, **override):
        return self.client.post("/api/v1/enroll", json={
            "enroll_key": self.key, "hardware_id": self.mac, "board": "esp32",
            "firmware_version": "1.4.0", "sketch_md5": "0" * 32,
            "name_hint": self.name_hint, "secret_sha256": self.digest(), **override})

    def claim(self, secret: str | None = None):
        return self.client.post("/api/v1/enroll/claim", json={
            "hardware_id": self.mac, "secret": secret or self.secret})


def new_key(admin, group="greenhouse") -> str:
    response = admin.post("/enroll-keys", json={"group": group, "label": "test"})
    assert response.status_code == 201, response.get_json()
    return response.get_json()["key"]


def pending(admin) -> list[str]:
    answer = admin.get("/enrollments?state=pending").get_json()
    return [e["hardware_id"] for e in answer["enrollments"]]


def test_no_key_means_enrollment_is_off_and_a_wrong_key_is_401(admin, client):
    board = Board(client, "nope", "a4:cf:12:00:00:01")
    assert_error(board.enroll(), 404, "enrollment_off")
    key = new_key(admin)
    assert_error(board.enroll(), 401, "bad_enroll_key")
    assert pending(admin) == []
    key_id = admin.get("/enroll-keys").get_json()["keys"][0]["id"]
    assert "key" not in admin.get("/enroll-keys").get_json()["keys"][0]  # only its hash
    assert Board(client, key, "a4:cf:12:00:00:02").enroll().status_code == 202
    assert admin.delete(f"/enroll-keys/{key_id}").status_code == 200
    assert_error(Board(client, key, "a4:cf:12:00:00:03").enroll(), 404, "enrollment_off")
    assert_error(admin.delete(f"/enroll-keys/{key_id}"), 404, "no_such_enroll_key")


def test_pending_then_accepted_then_the_token_once_to_the_secret(admin, client, hub):
    key = new_key(admin)
    board = Board(client, key, "A4-CF-12-00-00-01", name_hint="pump-1")
    answer = board.enroll()
    assert answer.status_code == 202
    assert answer.get_json() == {"state": "pending", "retry_after_s": 30}
    assert board.claim().status_code == 202  # not accepted yet: nothing handed out
    assert pending(admin) == ["a4:cf:12:00:00:01"]
    shown = admin.get("/enrollments").get_json()["enrollments"][0]
    assert shown["secret_fingerprint"] == board.digest()[:12] and "secret_sha256" not in shown

    accepted = admin.post("/enrollments/accept", json={"hardware_ids": [board.mac]})
    assert accepted.status_code == 200, accepted.get_json()
    assert accepted.get_json()["enrollments"][0]["device_id"] == "pump-1"
    device = admin.get("/devices/pump-1").get_json()
    assert device["groups"] == ["greenhouse"] and device["type"] == "esp32"
    assert board.enroll().get_json() == {"state": "accepted", "device_id": "pump-1"}

    other = Board(client, key, board.mac)  # another board claiming this MAC
    assert_error(other.claim(), 403, "bad_secret")
    assert_error(other.enroll(), 409, "secret_mismatch")
    claimed = board.claim()
    assert claimed.status_code == 200
    token = claimed.get_json()["token"]
    assert client.get("/api/v1/device/ping/pump-1", headers=bearer(token)).status_code == 200
    assert_error(board.claim(), 410, "already_claimed")  # a replay gets nothing
    assert_error(board.enroll(), 410, "already_claimed")
    entry = admin.get("/enrollments").get_json()["enrollments"][0]
    assert entry["state"] == "claimed"
    assert [r["why"] for r in entry["refusals"]] == [
        "a claim with the wrong secret", "another secret enrolled with this MAC",
        "a second claim of a token handed out before"]
    events = [e["kind"] for e in hub.stores.history["events"].find(None, limit=50)]
    for kind in ("device.enrolled", "device.accepted", "device.claimed",
                 "device.claim_refused"):
        assert kind in events, kind
    # the token still works: nothing the refused requests did changed it
    assert client.get("/api/v1/device/ping/pump-1", headers=bearer(token)).status_code == 200


def test_a_factory_reset_re_enrolls_and_only_an_operator_gives_a_new_token(admin, client):
    key = new_key(admin)
    board = Board(client, key, "a4:cf:12:00:00:07", name_hint="gate-7")
    admin.post("/preauthorized", json={"boards": [{"hardware_id": board.mac}]})
    assert board.enroll().get_json() == {"state": "accepted", "device_id": "gate-7"}
    old_token = board.claim().get_json()["token"]
    board.secret = os.urandom(32).hex()  # the reset forgot the token and the secret
    assert board.enroll().status_code == 202  # preauthorised, yet it waits: it exists
    entry = admin.get("/enrollments?state=pending").get_json()["enrollments"][0]
    assert entry["re_enrollment_of"] == "gate-7"
    assert board.claim().status_code == 202
    admin.post("/enrollments/accept", json={"hardware_ids": [board.mac]})
    new_token = board.claim().get_json()["token"]
    assert client.get("/api/v1/device/ping/gate-7", headers=bearer(old_token)).status_code \
        == 401
    assert client.get("/api/v1/device/ping/gate-7", headers=bearer(new_token)).status_code \
        == 200


def test_rejected_boards_get_nothing_and_bulk_actions_are_all_or_none(admin, client):
    key = new_key(admin)
    boards = [Board(client, key, f"a4:cf:12:00:01:{i:02x}") for i in range(4)]
    for board in boards:
        assert board.enroll().status_code == 202
    refused = admin.post("/enrollments/accept",
                         json={"hardware_ids": [boards[0].mac, "a4:cf:12:99:99:99"]})
    assert_error(refused, 404, "unknown_hardware")
    assert len(pending(admin)) == 4  # nothing accepted
    assert_error(admin.post("/enrollments/accept", json={
        "hardware_ids": [boards[0].mac, boards[1].mac], "device_id": "one"}), 400)
    rejected = admin.post("/enrollments/reject", json={"hardware_ids": [boards[3].mac]})
    assert rejected.status_code == 200
    assert_error(boards[3].enroll(), 403, "rejected")
    assert_error(boards[3].claim(), 403, "rejected")
    accepted = admin.post("/enrollments/accept", json={
        "hardware_ids": [b.mac for b in boards[:3]], "groups": ["barn", "north"]})
    ids = [e["device_id"] for e in accepted.get_json()["enrollments"]]
    assert ids == ["esp-a4cf12000100", "esp-a4cf12000101", "esp-a4cf12000102"]
    assert all(admin.get(f"/devices/{d}").get_json()["groups"] == ["barn", "north"]
               for d in ids)
    assert_error(admin.post("/enrollments/accept", json={"hardware_ids": [boards[0].mac]}),
                 409, "not_pending")


def test_the_pending_list_is_bounded_and_expires(admin, client, app, hub):
    hub.enrollment.pending_max = 3
    key = new_key(admin)
    for i in range(3):
        assert Board(client, key, f"a4:cf:12:00:02:{i:02x}").enroll().status_code == 202
    assert_error(Board(client, key, "a4:cf:12:00:02:ff").enroll(), 503, "pending_full")
    assert len(pending(admin)) == 3
    hub.enrollment.pending_ttl_s = 0.5
    time.sleep(1.1)
    assert pending(admin) == []
    assert Board(client, key, "a4:cf:12:00:02:ff").enroll().status_code == 202


@pytest.mark.parametrize("field,value", [
    ("hardware_id", "not-a-mac"), ("hardware_id", ""), ("secret_sha256", "abc"),
    ("secret_sha256", None), ("enroll_key", 7), ("sketch_md5", "xyz"),
    ("name_hint", "x" * 65), ("board", ""), ("extra", 1),
])
def test_bad_enrollments_are_400_and_store_nothing(admin, client, field, value):
    key = new_key(admin)
    response = Board(client, key, "a4:cf:12:00:03:01").enroll(**{field: value})
    assert_error(response, 400)
    assert admin.get("/enrollments").get_json()["count"] == 0


def test_bad_claims_and_operator_requests_are_clear_errors(admin, client):
    key = new_key(admin)
    assert_error(Board(client, key, "a4:cf:12:00:04:02").enroll(name_hint="x" * 5000), 413)
    Board(client, key, "a4:cf:12:00:04:01").enroll()
    assert_error(client.post("/api/v1/enroll/claim", json={"hardware_id": "a4:cf:12:00:04:01",
                                                           "secret": "short"}), 400)
    assert_error(client.post("/api/v1/enroll/claim", json={"hardware_id": "a4:cf:12:00:04:99",
                                                           "secret": "0" * 64}), 404,
                 "unknown_hardware")
    assert_error(client.post("/api/v1/enroll/claim", data="not json",
                             content_type="application/json"), 400)
    assert_error(admin.post("/enrollments/accept", json={"hardware_ids": []}), 400)
    assert_error(admin.post("/enrollments/accept", json={"hardware_ids": ["a4:cf:12:00:04:01"],
                                                         "device_id": "all"}), 400)
    assert_error(admin.post("/preauthorized", json={"boards": [{"hardware_id": "zz"}]}), 400)
    assert admin.get("/preauthorized").get_json()["count"] == 0


def test_enrollment_is_rate_limited_per_address(settings, tmp_path):
    from dropsync import create_app

    app = create_app({**settings, "RATE_LIMITS_ENABLED": True,
                      "RATE_LIMIT_ENROLL": "5/minute"})
    try:
        client = app.test_client()
        board = Board(client, "any-key", "a4:cf:12:00:05:01")
        answers = [board.enroll().status_code for _ in range(5)]
        assert answers == [404] * 5  # counted before anything else is done
        limited = board.enroll()
        assert_error(limited, 429, "rate_limited")
        assert int(limited.headers["Retry-After"]) > 0
        assert_error(board.claim(), 429, "rate_limited")
        other = client.post("/api/v1/enroll", json={}, environ_base={"REMOTE_ADDR": "10.0.0.9"})
        assert other.status_code == 400  # another address has its own count
    finally:
        app.extensions["dropsync"].close()


def test_a_preauthorised_csv_and_the_cli(cli, tmp_path):
    cli("device", "add", "existing")
    created = cli("enroll-key", "new", "--group", "pumps").output
    assert "shown once" in created and "#define ENROLL_KEY" in created
    assert "pumps" in cli("enroll-key", "list").output
    (tmp_path / "batch.csv").write_text(
        "mac,groups,name,id\nA4:CF:12:00:06:01,pumps north,Pump 1,pump-01\n"
        "a4cf12000602,,,\n")
    said = cli("device", "preauthorize", str(tmp_path / "batch.csv")).output
    assert "Preauthorised 2 board(s)" in said
    (tmp_path / "bad.csv").write_text("mac\nnot-a-mac\n")
    bad = cli("device", "preauthorize", str(tmp_path / "bad.csv"), expect=1).output
    assert "MAC" in bad
    assert "No boards waiting" in cli("device", "pending").output
    refused = cli("device", "accept", "a4:cf:12:00:06:09", expect=1).output
    assert "unknown_hardware" in refused


def test_the_csv_reader():
    assert read_preauthorized_csv("a4:cf:12:00:00:01, barn;north ,Barn,barn-1\n\n") == [
        {"hardware_id": "a4:cf:12:00:00:01", "groups": ["barn", "north"], "name": "Barn",
         "device_id": "barn-1"}]
    assert read_preauthorized_csv("MAC,groups\na4cf12000001\n")[0]["groups"] == []
