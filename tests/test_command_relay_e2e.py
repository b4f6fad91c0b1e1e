"""End to end through a real gunicorn hub: three devices, commands to one, a group and
all; polls, completions, a lapsed lease, an expired command, and devices kept apart."""

from __future__ import annotations

import queue
import threading
import time

import pytest
import requests
from support import ADMIN_TOKEN, assert_error

pytestmark = pytest.mark.slow

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def hub(hub_process):
    return hub_process({"DROPSYNC_ADMIN_TOKEN": ADMIN_TOKEN, "DROPSYNC_COMMAND_LEASE_S": "1",
                        "DROPSYNC_COMMAND_SWEEP_S": "0.2", "DROPSYNC_COMMAND_MAX_ATTEMPTS": "3"})


class Node:
    def __init__(self, url, device_id, token):
        self.url, self.id = url, device_id
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"

    def poll(self):
        response = self.session.get(f"{self.url}/api/v1/device/commands/{self.id}",
                                    params={"limit": 10}, timeout=5)
        assert response.status_code == 200, response.text
        return response.json()

    def complete(self, command_id, **body):
        return self.session.post(f"{self.url}/api/v1/device/commands/{self.id}/complete",
                                 json={"command_id": command_id, **body}, timeout=5)


def admin_post(hub, path, **kwargs):
    response = requests.post(f"{hub.url}/api/v1/admin{path}", headers=ADMIN, timeout=5,
                             **kwargs)
    assert response.status_code in (200, 201), response.text
    return response.json()


def admin_get(hub, path, **params):
    response = requests.get(f"{hub.url}/api/v1/admin{path}", headers=ADMIN, params=params,
                            timeout=5)
    assert response.status_code == 200, response.text
    return response.json()


def test_command_relay_end_to_end(hub):
    nodes = {}
    for device_id, groups in (("esp-a", "field"), ("esp-b", "field"), ("esp-c", "")):
        # Form-encoded, as in the seed's curl examples.
        token = admin_post(hub, "/devices/register",
                           data={"device_id": device_id, "groups": groups})["token"]
        nodes[device_id] = Node(hub.url, device_id, token)
    a, b, c = nodes["esp-a"], nodes["esp-b"], nodes["esp-c"]

    only_a = admin_post(hub, "/devices/esp-a/command",
                        data={"command": "reboot", "priority": "90"})["id"]
    to_group = admin_post(hub, "/commands", json={"target": "group:field", "name": "sync",
                                                  "args": {"folder": "/cfg"}})["id"]
    to_all = admin_post(hub, "/commands", json={"target": "all", "name": "upload-log",
                                                "priority": 10})["id"]
    stale = admin_post(hub, "/commands", json={"target": "esp-c", "name": "blink",
                                               "expires_in_s": 0.3})["id"]
    time.sleep(0.5)

    # Every device sees exactly its own commands, in priority order; nothing expired.
    assert [x["id"] for x in a.poll()["commands"]] == [only_a, to_group, to_all]
    assert [x["id"] for x in b.poll()["commands"]] == [to_group, to_all]
    polled_c = c.poll()
    assert [x["id"] for x in polled_c["commands"]] == [to_all]
    assert polled_c["next_poll_s"] >= 1 and polled_c["server_time"] > 0

    # a completes everything; b completes only the group command; c fails its one.
    for command_id in (only_a, to_group, to_all):
        assert a.complete(command_id, result={"ok": True}).json()["state"] == "completed"
    assert b.complete(to_group).status_code == 200
    assert c.complete(to_all, success=False, error="no log").json()["state"] == "failed"
    assert a.complete(only_a).json()["duplicate"] is True

    # b never acknowledged "upload-log": after its 1 s lease it is handed out again.
    assert b.poll()["commands"] == []
    time.sleep(1.3)
    again = b.poll()["commands"]
    assert [(x["id"], x["attempt"]) for x in again] == [(to_all, 2)]
    b.complete(to_all)

    fleet = admin_get(hub, f"/commands/{to_all}")
    assert {d["device_id"]: d["state"] for d in fleet["deliveries"]} == \
        {"esp-a": "completed", "esp-b": "completed", "esp-c": "failed"}
    assert admin_get(hub, f"/commands/{stale}")["deliveries"][0]["state"] == "expired"
    history = admin_get(hub, "/devices/esp-a/commands")["commands"]
    assert {x["id"] for x in history} == {only_a, to_group, to_all}

    # Devices are kept apart: a's token opens nothing of b's.
    a.session.post(f"{hub.url}/api/v1/device/messages/esp-a", json={"text": "a's secret"})
    for method, path in (("GET", "/api/v1/device/commands/esp-b"),
                         ("POST", "/api/v1/device/commands/esp-b/complete"),
                         ("POST", "/api/v1/device/messages/esp-b"),
                         ("GET", "/api/v1/device/status/esp-b")):
        assert_error(a.session.request(method, hub.url + path, json={"command_id": to_group,
                                                                     "text": "x"}), 403)
    for path in ("/api/v1/admin/devices/esp-b/commands", "/api/v1/admin/devices/esp-b/messages",
                 "/api/v1/admin/devices/esp-a/messages"):
        assert_error(a.session.get(hub.url + path), 401)
    assert admin_get(hub, "/devices/esp-b/messages")["count"] == 0
    assert [m["text"] for m in admin_get(hub, "/devices/esp-a/messages")["messages"]] \
        == ["a's secret"]


def test_the_sweeper_ends_what_no_poll_would(hub):
    """A device that stops polling still has its commands expire and time out."""
    token = admin_post(hub, "/devices/register", json={"id": "esp-quiet"})["token"]
    node = Node(hub.url, "esp-quiet", token)
    leased = admin_post(hub, "/devices/esp-quiet/command",
                        json={"name": "reboot", "expires_in_s": 0.5})["id"]
    node.poll()  # leased once, then the device goes quiet
    deadline = time.monotonic() + 10
    state = None
    while time.monotonic() < deadline:
        state = admin_get(hub, f"/commands/{leased}")["deliveries"][0]["state"]
        if state != "delivered":
            break
        time.sleep(0.2)
    assert state == "expired"
    assert admin_get(hub, "/system/stats")["commands"]["open_commands"] == 0


def test_cli_prints_and_follows_a_devices_messages(hub, tmp_path):
    import subprocess

    from support import BIN

    token = admin_post(hub, "/devices/register", json={"id": "esp-log"})["token"]
    node = Node(hub.url, "esp-log", token)
    for i in range(3):
        node.session.post(f"{hub.url}/api/v1/device/messages/esp-log",
                          json={"level": "warning" if i == 1 else "info", "text": f"line {i}"})
    printed = hub.cli("messages", "esp-log").stdout.splitlines()
    assert [line.split(maxsplit=2)[1:] for line in printed] == \
        [["INFO", "line 0"], ["WARNING", "line 1"], ["INFO", "line 2"]]
    assert hub.cli("messages", "esp-log", "--level", "warning").stdout.count("line") == 1

    follower = subprocess.Popen([str(BIN / "dropsync"), "messages", "esp-log", "--follow",
                                 "--interval", "0.2", "--limit", "1"], cwd=hub.workdir,
                                env=hub.env, stdout=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in follower.stdout],
                     daemon=True).start()
    printed: list[str] = []

    def read_until(text: str) -> None:
        deadline = time.monotonic() + 30
        while not printed or text not in printed[-1]:
            printed.append(lines.get(timeout=max(0.1, deadline - time.monotonic())))

    try:
        read_until("line 2")  # the follower is up (a loaded machine can take seconds)
        for i in range(3, 6):
            node.session.post(f"{hub.url}/api/v1/device/messages/esp-log",
                              json={"text": f"line {i}"})
        read_until("line 5")
    finally:
        follower.terminate()
        follower.communicate(timeout=10)
    texts = [line.split(maxsplit=2)[2].rstrip() for line in printed]
    assert texts == ["line 2", "line 3", "line 4", "line 5"]
