"""What devices report: messages (queried by device, level and time, paged, aged out),
heartbeats (inventory merged, kept in memory), and their own status."""

from __future__ import annotations

import time

import pytest
from support import assert_error


@pytest.fixture
def settings(settings):
    # Small segments so retention is visible with a few hundred messages.
    return {**settings, "HISTORY_SEGMENT_RECORDS": 50, "HISTORY_RETENTION": 100}


@pytest.fixture
def devices(admin):
    return {d: {"Authorization": f"Bearer {admin.register_device(d)}"}
            for d in ("esp001", "esp002")}


def post_message(client, headers, device_id, **body):
    response = client.post(f"/api/v1/device/messages/{device_id}", json=body, headers=headers)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def test_messages_are_queried_by_device_level_and_time_newest_first(client, admin, devices):
    for i in range(12):
        for device_id in devices:
            post_message(client, devices[device_id], device_id,
                         level="error" if i % 4 == 0 else "info", text=f"{device_id} #{i}",
                         data={"i": i}, timestamp=1000 + i)
    page = admin.get("/devices/esp001/messages", query_string={"limit": 5}).get_json()
    assert [m["text"] for m in page["messages"]] == [f"esp001 #{i}" for i in (11, 10, 9, 8, 7)]
    assert page["messages"][0]["device_time"] == 1011 and page["messages"][0]["data"] == {"i": 11}
    rest = admin.get("/devices/esp001/messages",
                     query_string={"limit": 50, "before": page["next_before"]}).get_json()
    assert [m["text"] for m in rest["messages"]] == [f"esp001 #{i}" for i in range(6, -1, -1)]
    assert rest["next_before"] is None
    errors = admin.get("/devices/esp002/messages", query_string={"level": "error"}).get_json()
    assert [m["text"] for m in errors["messages"]] == ["esp002 #8", "esp002 #4", "esp002 #0"]
    everyone = admin.get("/messages", query_string={"level": "error", "limit": 2}).get_json()
    assert [m["text"] for m in everyone["messages"]] == ["esp002 #8", "esp001 #8"]


def test_messages_by_hub_time_window(client, admin, devices):
    post_message(client, devices["esp001"], "esp001", text="before")
    time.sleep(0.05)
    start = time.time()
    post_message(client, devices["esp001"], "esp001", text="inside")
    end = time.time()
    time.sleep(0.05)
    post_message(client, devices["esp001"], "esp001", text="after")
    window = admin.get("/devices/esp001/messages",
                       query_string={"since": start, "until": end}).get_json()
    assert [m["text"] for m in window["messages"]] == ["inside"]
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(start - 3600)) + "Z"
    assert admin.get("/devices/esp001/messages",
                     query_string={"since": iso}).get_json()["count"] == 3
    assert_error(admin.get("/devices/esp001/messages", query_string={"since": "soon"}), 400)


def test_old_messages_age_out_by_retention(client, admin, devices, stores):
    for i in range(300):
        post_message(client, devices["esp001"], "esp001", text=f"#{i}")
    kept = admin.get("/devices/esp001/messages", query_string={"limit": 500}).get_json()
    texts = [m["text"] for m in kept["messages"]]
    assert 100 <= len(texts) <= 150 and texts[0] == "#299"
    assert texts == [f"#{i}" for i in range(299, 299 - len(texts), -1)]  # no gaps
    assert len(list((stores.data_dir / "history" / "messages").glob("*.jsonl"))) <= 3


def test_messages_take_seed_names_and_forms_and_refuse_bad_input(client, devices, admin):
    headers = devices["esp001"]
    stored = client.post("/api/v1/device/messages/esp001", headers=headers,
                         data={"level": "WARN", "message": "low heap"})
    assert stored.status_code == 201
    shown = admin.get("/devices/esp001/messages").get_json()["messages"][0]
    assert (shown["level"], shown["text"]) == ("warning", "low heap")
    for body in ({"level": "loud", "text": "x"}, {"text": ""}, {"text": "x" * 2001},
                 {"level": "info"}, {"text": "x", "timestamp": {"nested": 1}}):
        assert_error(client.post("/api/v1/device/messages/esp001", json=body,
                                 headers=headers), 400)
    assert_error(client.post("/api/v1/device/messages/esp001", data=b"\x00\x01",
                             headers={**headers, "Content-Type": "application/octet-stream"}),
                 415)
    assert admin.get("/devices/esp001/messages").get_json()["count"] == 1


def test_heartbeat_merges_inventory_in_memory(client, admin, devices, stores):
    headers = devices["esp001"]
    devices_file = stores.data_dir / "devices.json"
    before = devices_file.stat().st_mtime_ns
    first = client.post("/api/v1/device/heartbeat/esp001", headers=headers, json={
        "firmware_version": "1.4.2", "uptime_s": 3600, "free_heap": 31000, "rssi": -67,
        "ip": "192.168.4.23", "board": "d1_mini", "sensor_count": 3})
    assert first.status_code == 200 and first.get_json()["next_poll_s"] >= 1
    client.post("/api/v1/device/heartbeat/esp001", headers=headers,
                data={"free_heap": "29000", "battery_v": "3.7"})
    inventory = admin.get("/devices/esp001").get_json()["inventory"]
    assert inventory == {"board": "d1_mini", "sensor_count": 3, "battery_v": "3.7",
                         "firmware_version": "1.4.2", "uptime_s": 3600, "free_heap": 29000,
                         "rssi": -67, "reported_ip": "192.168.4.23"}
    assert devices_file.stat().st_mtime_ns == before  # no store write per heartbeat
    assert stores.liveness.checkpoint()  # ...it is checkpointed instead
    for body in ({"rssi": 20}, {"free_heap": -1}, {"uptime_s": "long"},
                 {f"k{i}": i for i in range(40)}, {"blob": "x" * 300}, {"nested": {"a": 1}}):
        assert_error(client.post("/api/v1/device/heartbeat/esp001", json=body,
                                 headers=headers), 400)


def test_queued_is_a_flag_of_one_heartbeat_not_kept_in_the_inventory(client, admin, devices):
    """A node sends heartbeats it made while the hub was away with ``queued: true``; the
    live ones after it do not say ``queued`` at all."""
    headers = devices["esp001"]
    for body in ({"uptime_s": 10, "queued": True}, {"uptime_s": 20, "queued": True}):
        client.post("/api/v1/device/heartbeat/esp001", headers=headers, json=body)
    assert admin.get("/devices/esp001").get_json()["inventory"]["queued"] is True
    client.post("/api/v1/device/heartbeat/esp001", headers=headers, json={"uptime_s": 30})
    inventory = admin.get("/devices/esp001").get_json()["inventory"]
    assert "queued" not in inventory and inventory["uptime_s"] == 30, inventory


def test_status_tells_a_device_what_the_hub_knows(client, admin, devices):
    admin.post("/devices/esp001/command", json={"name": "sync"})
    status = client.get("/api/v1/device/status/esp001", headers=devices["esp001"]).get_json()
    assert status["device_id"] == "esp001" and status["pending_commands"] == 1
    assert status["connection"] == "online" and status["next_poll_s"] >= 1
    assert abs(status["server_time"] - time.time()) < 5


def test_groups_are_managed_through_the_admin_api(admin, devices):
    assert admin.post("/groups/pumps/members", json={"devices": ["esp001", "esp002"]}) \
        .get_json()["devices"] == ["esp001", "esp002"]
    assert admin.put("/groups/pumps", data={"poll_interval_s": "120",
                                            "description": "pump house"}).status_code == 200
    listed = admin.get("/groups").get_json()["groups"]
    assert listed == [{"name": "pumps", "description": "pump house", "poll_interval_s": 120,
                       "devices": ["esp001", "esp002"], "count": 2}]
    assert admin.delete("/groups/pumps/members/esp002").get_json()["devices"] == ["esp001"]
    assert_error(admin.delete("/groups/pumps/members/esp002"), 404)
    assert_error(admin.post("/groups/pumps/members", json={"devices": ["ghost"]}), 404)
    assert admin.get("/devices/esp002").get_json()["groups"] == []
    assert admin.delete("/groups/pumps").status_code == 200
    assert admin.get("/devices/esp001").get_json()["groups"] == []
    assert_error(admin.get("/groups/pumps"), 404)
    assert_error(admin.put("/groups/bad name", json={}), 400)


def test_system_stats_add_up(client, admin, devices):
    client.get("/api/v1/device/commands/esp001", headers=devices["esp001"])
    admin.post("/commands", json={"target": "all", "name": "sync"})
    stats = admin.get("/system/stats").get_json()
    assert stats["devices"] == {"total": 2, "disabled": 0, "online": 1, "overdue": 0,
                                "offline": 1}
    assert stats["commands"]["pending"] == 2 and stats["commands"]["open_commands"] == 1
    assert stats["store"]["state"] == "ok"
