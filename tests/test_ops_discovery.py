"""mDNS: a serving hub advertises ``_dropsync._tcp`` so nodes find it without an address.

The hub listens on 127.0.0.1 and so advertises on the loopback interface only; the test
browses there with python-zeroconf, as a node's mDNS query would on the LAN. Multicast
stays on the machine.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
import requests
from support import ADMIN_TOKEN

zeroconf = pytest.importorskip("zeroconf")

SERVICE_TYPE = "_dropsync._tcp.local."


def browse(timeout: float = 20.0, port: int | None = None):
    """The first advertised _dropsync._tcp service (on the given port), or None."""
    found: list = []
    seen = threading.Event()
    browser_zc = zeroconf.Zeroconf(interfaces=["127.0.0.1"],
                                   ip_version=zeroconf.IPVersion.V4Only)

    class Listener(zeroconf.ServiceListener):
        def add_service(self, zc, type_, name):
            info = zc.get_service_info(type_, name, timeout=3000)
            if info is not None and (port is None or info.port == port):
                found.append(info)
                seen.set()

        def update_service(self, zc, type_, name):
            self.add_service(zc, type_, name)

        def remove_service(self, zc, type_, name):
            pass

    browser = zeroconf.ServiceBrowser(browser_zc, SERVICE_TYPE, Listener())
    try:
        seen.wait(timeout)
        return found[0] if found else None
    finally:
        browser.cancel()
        browser_zc.close()


def test_a_serving_hub_is_found_over_mdns_with_its_port_and_api_path(hub_process):
    hub = hub_process({"DROPSYNC_ADMIN_TOKEN": ADMIN_TOKEN, "DROPSYNC_MDNS": "true"})
    info = browse(port=hub.port)
    assert info is not None, f"not advertised; hub log:\n{hub.log}"
    assert info.port == hub.port
    assert [socket.inet_ntoa(a) for a in info.addresses] == ["127.0.0.1"]
    assert info.properties[b"path"] == b"/api/v1"
    assert info.properties[b"scheme"] == b"http"
    deadline = time.monotonic() + 10  # logged once registration returns, just after
    while "mDNS: advertising" not in hub.log and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "mDNS: advertising" in hub.log


def test_mdns_and_the_request_log_are_off_when_the_settings_say_so(hub_process):
    hub = hub_process({"DROPSYNC_ADMIN_TOKEN": ADMIN_TOKEN, "DROPSYNC_MDNS": "false",
                       "DROPSYNC_REQUEST_LOG": "false"})
    assert browse(timeout=2, port=hub.port) is None
    requests.get(f"{hub.url}/api/v1/admin/devices", timeout=10,
                 headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    hub.stop()
    assert "mDNS" not in hub.log and "dropsync.requests" not in hub.log
