"""Alerts to a local webhook, through the real app and a real HTTP server on loopback:
a failed delivery and a device going offline are posted as JSON; a webhook that is down
never holds a request up, is retried, and a full queue drops its oldest (counted); only a
LAN or loopback URL is taken."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sync_support import wait_until

from dropsync import create_app
from dropsync.config import load_config
from dropsync.errors import ConfigError
from dropsync.fleet import devices
from dropsync.ops.alerts import Webhook


class Receiver:
    """A webhook on loopback that keeps what it is sent (and can answer 500)."""

    def __init__(self):
        received, self.failing = [], False
        self.received = received
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if outer.failing:
                    self.send_response(500)
                else:
                    received.append(json.loads(body))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    found = Receiver()
    yield found
    found.close()


def test_failed_deliveries_and_devices_going_offline_reach_the_webhook(settings, receiver):
    app = create_app({**settings, "ALERT_WEBHOOK_URL": receiver.url,
                      "ALERT_OFFLINE_CHECK_S": 0.2, "POLL_INTERVAL_S": 1})
    hub = app.extensions["dropsync"]
    hub.alerts.start()
    hub.offline_watch.start()
    try:
        token = devices.register_device(hub.stores, "pump-1")[1]
        node = app.test_client()
        auth = {"Authorization": f"Bearer {token}"}
        command = hub.commands.send("pump-1", {"name": "open-valve", "args": {},
                                               "priority": 50}, "t")
        node.get("/api/v1/device/commands/pump-1", headers=auth)
        started = time.monotonic()
        node.post("/api/v1/device/commands/pump-1/complete", headers=auth, json={
            "command_id": command["id"], "success": False, "error": "relay stuck"})
        assert time.monotonic() - started < 1.0
        wait_until(lambda: any(a["kind"] == "command.failed" for a in receiver.received),
                   timeout=10, message="the failed delivery posted")
        failed = next(a for a in receiver.received if a["kind"] == "command.failed")
        assert (failed["device_id"], failed["command_id"], failed["reason"]) == \
            ("pump-1", command["id"], "relay stuck")
        # the device was just seen (online); made silent for six intervals, it falls
        time.sleep(0.5)
        hub.stores.liveness.update("pump-1", last_seen=time.time() - 6)
        wait_until(lambda: any(a["kind"] == "device.offline" for a in receiver.received),
                   timeout=10, message="the offline device posted")
        offline = [a for a in receiver.received if a["kind"] == "device.offline"]
        time.sleep(0.6)  # more looks: still offline, said once
        assert len([a for a in receiver.received if a["kind"] == "device.offline"]) == 1
        assert offline[0]["device_id"] == "pump-1" and offline[0]["was"] in ("online",
                                                                             "overdue")
        metrics = app.test_client().get("/metrics", headers={
            "Authorization": f"Bearer {settings['ADMIN_TOKEN']}"}).get_data(as_text=True)
        assert 'dropsync_alert_webhook{outcome="sent"} 2.0' in metrics
    finally:
        hub.close()


def test_a_webhook_that_is_down_is_retried_and_a_full_queue_drops_its_oldest(receiver):
    receiver.failing = True
    hook = Webhook(receiver.url, queue_max=3, tries=3, timeout_s=2, first_wait_s=0.05)
    hook.start()
    try:
        started = time.monotonic()
        for n in range(6):
            hook.send("command.failed", n=n)
        assert time.monotonic() - started < 0.5  # queued, never waited for
        receiver.failing = False  # back: what is still queued arrives
        wait_until(lambda: hook.counts["sent"] >= 2, timeout=10, message="sent after retries")
        time.sleep(0.3)
        sent = [a["n"] for a in receiver.received]
        assert hook.counts["dropped"] >= 2 and 5 in sent and 0 not in sent[1:]
        assert hook.counts["sent"] + hook.counts["failed"] + hook.counts["dropped"] == 6
    finally:
        hook.stop()


@pytest.mark.parametrize("url", ["ftp://10.0.0.5/x", "http://example.com/hook",
                                 "http://8.8.8.8/hook", "hook"])
def test_only_a_lan_or_loopback_url_is_taken(url, tmp_path):
    with pytest.raises(ConfigError):
        load_config({"DATA_DIR": str(tmp_path), "ALERT_WEBHOOK_URL": url})
    for good in ("http://192.168.1.20:9000/hook", "https://nas.local/hook", "http://ha:8123/x"):
        assert load_config({"DATA_DIR": str(tmp_path), "ALERT_WEBHOOK_URL": good})[
            "ALERT_WEBHOOK_URL"] == good
