"""The command relay through the API: queueing, leases, expiry, completion, fan-out,
restarts; and the pace the hub sets."""

from __future__ import annotations

import json
import time

import pytest
from support import assert_error

from dropsync import create_app


@pytest.fixture
def settings(settings):
    return {**settings, "COMMAND_LEASE_S": 0.4, "COMMAND_MAX_ATTEMPTS": 2,
            "POLL_INTERVAL_S": 20, "POLL_JITTER": 0.1}


class Device:
    """One device talking to the hub with its own token."""

    def __init__(self, client, device_id, token):
        self.client, self.id = client, device_id
        self.headers = {"Authorization": f"Bearer {token}"}

    def poll(self, **query):
        response = self.client.get(f"/api/v1/device/commands/{self.id}",
                                   query_string=query, headers=self.headers)
        assert response.status_code == 200, response.get_json()
        return response.get_json()

    def poll_ids(self) -> list[int]:
        return [c["id"] for c in self.poll()["commands"]]

    def complete(self, command_id, **body):
        return self.client.post(f"/api/v1/device/commands/{self.id}/complete",
                                json={"command_id": command_id, **body}, headers=self.headers)


@pytest.fixture
def fleet(admin, client):
    """esp001 and esp002 in group "lab", esp003 alone."""
    return {device_id: Device(client, device_id, admin.register_device(device_id, **fields))
            for device_id, fields in [("esp001", {"groups": ["lab"]}),
                                      ("esp002", {"groups": ["lab"]}), ("esp003", {})]}


def send(admin, target, name, **fields):
    response = admin.post("/commands", json={"target": target, "name": name, **fields})
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def command(admin, command_id):
    response = admin.get(f"/commands/{command_id}")
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def states(admin, command_id) -> dict[str, str]:
    return {d["device_id"]: d["state"] for d in command(admin, command_id)["deliveries"]}


def test_poll_hands_out_by_priority_then_age_and_leases(admin, fleet):
    esp = fleet["esp001"]
    low = send(admin, "esp001", "upload-log", priority=10)["id"]
    first = send(admin, "esp001", "sync")["id"]
    urgent = send(admin, "esp001", "reboot", priority=90, args={"delay_s": 5})["id"]
    second = send(admin, "esp001", "sync")["id"]
    answer = esp.poll(limit=3)
    assert [c["id"] for c in answer["commands"]] == [urgent, first, second]
    assert answer["commands"][0]["args"] == {"delay_s": 5}
    assert answer["commands"][0]["attempt"] == 1
    assert esp.poll_ids() == [low]  # the rest are leased, not handed out twice
    assert esp.poll_ids() == []
    assert states(admin, urgent) == {"esp001": "delivered"}


class MovedClock:
    """The command queue's clock, moved by the test instead of waited for."""

    def __init__(self):
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(app):
    moved = MovedClock()
    app.extensions["dropsync"].commands.clock = moved
    return moved


def test_a_lapsed_lease_is_handed_out_again_then_fails_with_timeout(admin, fleet, clock):
    esp = fleet["esp001"]
    command_id = send(admin, "esp001", "reboot")["id"]
    assert esp.poll_ids() == [command_id]
    clock.advance(0.3)  # COMMAND_LEASE_S is 0.4: still leased
    assert esp.poll_ids() == []
    clock.advance(0.2)
    again = esp.poll()["commands"]
    assert [c["id"] for c in again] == [command_id] and again[0]["attempt"] == 2
    clock.advance(0.5)  # the last of COMMAND_MAX_ATTEMPTS=2 lapses
    assert esp.poll_ids() == []
    delivery = command(admin, command_id)["deliveries"][0]
    assert (delivery["state"], delivery["reason"], delivery["attempts"]) == \
        ("failed", "timeout", 2)
    # A late completion changes nothing and says why.
    error = assert_error(esp.complete(command_id, result="done late"), 409, "command_failed")
    assert error["details"] == {"state": "failed", "reason": "timeout"}
    assert command(admin, command_id)["deliveries"][0]["result"] is None


def test_an_expired_command_is_never_delivered(admin, fleet, clock):
    esp = fleet["esp001"]
    stale = send(admin, "esp001", "reboot", expires_in_s=0.2)["id"]
    fresh = send(admin, "esp001", "sync", expires_in_s=60)["id"]
    clock.advance(0.3)
    assert esp.poll_ids() == [fresh]
    assert states(admin, stale) == {"esp001": "expired"}
    assert_error(esp.complete(stale), 409, "command_expired")
    assert_error(admin.post("/commands", json={"target": "esp001", "name": "x",
                                               "expires_at": "2000-01-01T00:00:00Z"}), 400)


def test_completion_is_idempotent_and_bounded(admin, fleet, stores, settings):
    esp = fleet["esp001"]
    command_id = send(admin, "esp001", "upload-log")["id"]
    esp.poll()
    too_big = "x" * (settings.get("COMMAND_JSON_MAX_BYTES", 4096) + 1)
    assert_error(esp.complete(command_id, result=too_big), 400)
    first = esp.complete(command_id, success=True, result={"lines": 12})
    assert first.status_code == 200
    assert first.get_json()["state"] == "completed" and not first.get_json()["duplicate"]
    ended = len(stores.history["commands"])
    again = esp.complete(command_id, success=False, error="changed my mind")
    assert again.status_code == 200 and again.get_json()["duplicate"] is True
    assert again.get_json()["state"] == "completed"
    assert len(stores.history["commands"]) == ended  # nothing written
    delivery = command(admin, command_id)["deliveries"][0]
    assert (delivery["state"], delivery["result"]) == ("completed", {"lines": 12})
    assert_error(esp.complete(999_999), 404, "command_not_found")
    failed = send(admin, "esp001", "sync")["id"]
    response = fleet["esp001"].client.post(
        "/api/v1/device/commands/esp001/complete", headers=esp.headers,
        data={"id": str(failed), "status": "failed", "message": "flash full"})
    assert response.get_json()["state"] == "failed"
    assert command(admin, failed)["deliveries"][0]["reason"] == "flash full"


def test_group_and_fleet_commands_are_one_delivery_per_device(admin, fleet):
    group = send(admin, "group:lab", "sync")
    assert [d["device_id"] for d in group["deliveries"]] == ["esp001", "esp002"]
    everyone = send(admin, "all", "reboot", priority=80)
    assert everyone["counts"]["pending"] == 3
    assert fleet["esp003"].poll_ids() == [everyone["id"]]
    assert fleet["esp001"].poll_ids() == [everyone["id"], group["id"]]
    fleet["esp001"].complete(group["id"], result="ok")
    fleet["esp003"].complete(everyone["id"], success=False, error="busy")
    assert states(admin, group["id"]) == {"esp001": "completed", "esp002": "pending"}
    assert states(admin, everyone["id"]) == \
        {"esp001": "delivered", "esp002": "pending", "esp003": "failed"}
    assert_error(admin.post("/commands", json={"target": "group:nobody", "name": "x"}), 404)
    assert_error(admin.post("/commands", json={"target": "ghost", "name": "x"}), 404)


def test_cancel_ends_open_deliveries_and_answers_late_completions(admin, fleet):
    group = send(admin, "group-lab", "sync")["id"]  # staging's spelling works too
    fleet["esp001"].poll()
    cancelled = admin.post(f"/commands/{group}/cancel", json={"device_id": "esp002"})
    assert cancelled.status_code == 200
    assert states(admin, group) == {"esp001": "delivered", "esp002": "cancelled"}
    assert fleet["esp002"].poll_ids() == []
    admin.post(f"/commands/{group}/cancel", data={})
    assert states(admin, group) == {"esp001": "cancelled", "esp002": "cancelled"}
    assert_error(fleet["esp001"].complete(group), 409, "command_cancelled")
    assert_error(admin.post(f"/commands/{group}/cancel", json={}), 409, "nothing_to_cancel")
    assert_error(admin.post("/commands/424242/cancel", json={}), 404)


def test_device_command_list_pages_open_then_ended(admin, fleet):
    esp = fleet["esp003"]
    ids = [send(admin, "esp003", "sync", priority=50)["id"] for _ in range(5)]
    for command_id in esp.poll(limit=3)["commands"]:
        esp.complete(command_id["id"])
    page = admin.get("/devices/esp003/commands", query_string={"limit": 3}).get_json()
    assert [(c["id"], c["state"]) for c in page["commands"]] == \
        [(ids[3], "pending"), (ids[4], "pending"), (ids[2], "completed")]
    rest = admin.get("/devices/esp003/commands",
                     query_string={"limit": 3, "before": page["next_before"]}).get_json()
    assert [c["id"] for c in rest["commands"]] == [ids[1], ids[0]]
    assert rest["next_before"] is None
    only = admin.get("/devices/esp003/commands", query_string={"state": "pending"}).get_json()
    assert {c["state"] for c in only["commands"]} == {"pending"}
    assert_error(admin.get("/devices/esp003/commands", query_string={"state": "asleep"}), 400)


def test_polls_write_nothing_to_disk(admin, fleet, stores):
    esp = fleet["esp001"]
    command_id = send(admin, "esp001", "sync")["id"]

    def snapshot():
        return {p: (p.stat().st_mtime_ns, p.stat().st_size)
                for p in stores.data_dir.rglob("*") if p.is_file()}

    before = snapshot()
    assert esp.poll_ids() == [command_id]  # handing out is a lease in memory
    for _ in range(20):
        assert esp.poll_ids() == []
    assert snapshot() == before


def test_open_commands_survive_a_restart_and_ids_never_repeat(settings):
    app = create_app(settings)
    client = app.test_client()
    from conftest import AdminClient

    admin = AdminClient(client)
    esp = Device(client, "esp001", admin.register_device("esp001"))
    done, waiting = send(admin, "esp001", "sync")["id"], send(admin, "esp001", "reboot")["id"]
    assert esp.poll_ids() == [done, waiting]
    esp.complete(done, result="ok")
    app.extensions["dropsync"].close()  # the leased "reboot" was not completed

    app = create_app(settings)
    client = app.test_client()
    admin, esp.client = AdminClient(client), client
    # The lease and its attempt count survived the restart: still leased, or (if the
    # short lease lapsed meanwhile) handed out again as the second attempt, never the first.
    handed = [(c["id"], c["attempt"]) for c in esp.poll()["commands"]]
    assert handed in ([], [(waiting, 2)])
    assert command(admin, done)["deliveries"][0]["state"] == "completed"
    newer = send(admin, "esp001", "sync")["id"]
    assert newer > waiting
    esp.complete(waiting)
    stores = app.extensions["dropsync"].stores
    app.extensions["dropsync"].commands.tidy()
    assert [c["id"] for c in stores.commands.all()] == [newer]  # finished work tidied away
    app.extensions["dropsync"].close()


def test_ended_deliveries_recorded_before_a_crash_stay_ended(settings):
    """The history is the truth: a completion that reached it is kept even if the
    process died before commands.json was tidied."""
    app = create_app(settings)
    from conftest import AdminClient

    admin = AdminClient(app.test_client())
    esp = Device(app.test_client(), "esp001", admin.register_device("esp001"))
    group = send(admin, "all", "sync")["id"]
    esp.poll()
    esp.complete(group)
    hub = app.extensions["dropsync"]
    hub.commands.stop()
    hub.stores.close()  # closed without the tidy-up a clean shutdown does
    app = create_app(settings)
    esp.client = app.test_client()
    assert esp.poll_ids() == []
    assert app.extensions["dropsync"].commands.describe(group)["counts"]["completed"] == 1
    app.extensions["dropsync"].close()


@pytest.mark.parametrize("body, field", [
    ({"name": "re boot"}, "name"),
    ({"name": "sync", "priority": 101}, "priority"),
    ({"name": "sync", "args": "[1, 2]"}, "args"),
    ({"name": "sync", "args": "{not json"}, "args"),
    ({"name": "sync", "expires_in_s": -1}, "expires_in_s"),
    ({"name": "sync", "expires_at": "tomorrow"}, "expires_at"),
])
def test_bad_commands_are_refused_with_the_field_named(admin, fleet, body, field):
    error = assert_error(admin.post("/devices/esp001/command", data=body), 400)
    assert field in json.dumps(error["details"])


def test_the_hub_sets_the_pace_by_device_group_and_default(admin, fleet):
    intervals = {fleet["esp003"].poll()["next_poll_s"] for _ in range(30)}
    assert min(intervals) >= 18 and max(intervals) <= 22 and len(intervals) > 1  # jitter
    assert admin.put("/groups/lab", json={"poll_interval_s": 300}).status_code == 200
    assert 270 <= fleet["esp002"].poll()["next_poll_s"] <= 330
    assert admin.patch("/devices/esp002", json={"poll_interval_s": 5}).status_code == 200
    assert 4 <= fleet["esp002"].poll()["next_poll_s"] <= 6
    assert admin.patch("/devices/esp002", json={"poll_interval_s": None}).status_code == 200
    assert 270 <= fleet["esp002"].poll()["next_poll_s"] <= 330
    assert admin.get("/devices/esp001").get_json()["connection"] == "offline"  # never seen
    fleet["esp001"].poll()
    shown = admin.get("/devices/esp001").get_json()
    assert shown["effective_poll_interval_s"] == 300 and shown["connection"] == "online"


def test_connection_state_follows_each_devices_own_interval(app, admin, fleet):
    pacing = app.extensions["dropsync"].pacing
    device = {"id": "x", "groups": [], "poll_interval_s": 60}
    now = 1_000_000.0
    assert pacing.connection(device, now - 100, now) == "online"    # < 2 intervals
    assert pacing.connection(device, now - 200, now) == "overdue"   # < 5 intervals
    assert pacing.connection(device, now - 400, now) == "offline"
    assert pacing.connection(device, None, now) == "offline"
    hourly = {**device, "poll_interval_s": 3600}
    assert pacing.connection(hourly, now - 400, now) == "online"


def test_seed_curl_examples_work_form_encoded(client, fleet):
    from support import ADMIN_TOKEN

    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    registered = client.post("/api/v1/admin/devices/register", headers=headers,
                             data={"device_id": "esp100", "device_type": "esp32",
                                   "name": "Pump house"})
    assert registered.status_code == 201 and registered.get_json()["type"] == "esp32"
    queued = client.post("/api/v1/admin/devices/esp100/command", headers=headers,
                         data={"command": "reboot", "params": '{"delay": 5}'})
    assert queued.status_code == 201, queued.get_json()
    assert queued.get_json()["args"] == {"delay": 5}
    esp = Device(client, "esp100", registered.get_json()["token"])
    assert esp.poll_ids() == [queued.get_json()["id"]]


def test_loading_one_devices_backlog_takes_linear_work(settings, monkeypatch):
    """Start-up files each open delivery once and sorts each device's queue once: the
    sort keys computed grow with the backlog, not with its square (a key per delivery per
    append before: 3,000 open commands took 4.5 million)."""
    from dropsync.relay.commands import ID_FACT, Delivery
    from dropsync.store import Stores

    backlog = 3000
    stores = Stores(settings["DATA_DIR"])
    stores.devices.insert({"id": "esp001", "token_hash": "x", "groups": [], "enabled": True})
    stores.commands.insert_many(
        {"id": n, "name": "sync", "args": {}, "priority": n % 7 * 10, "target": "esp001",
         "devices": ["esp001"], "created_at": "2026-12-05T00:00:00.000Z", "expires_at": None,
         "expires_at_epoch": None, "created_by": None, "created_seq": 0}
        for n in range(1, backlog + 1))
    stores.meta.upsert({"name": ID_FACT, "value": backlog + 1})
    stores.close()
    keys = {"computed": 0}
    order = Delivery.order.fget

    def counted(delivery):
        keys["computed"] += 1
        return order(delivery)

    monkeypatch.setattr(Delivery, "order", property(counted))
    app = create_app(settings)
    try:
        assert keys["computed"] <= 2 * backlog, keys
        queue = app.extensions["dropsync"].commands
        listed = queue.lease_pending_commands("esp001", limit=5)
        assert [(c["priority"], c["id"]) for c in listed] == [(60, 6), (60, 13), (60, 20),
                                                              (60, 27), (60, 34)]
    finally:
        app.extensions["dropsync"].close()
