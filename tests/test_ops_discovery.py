"""mDNS: a serving hub advertises ``_dropsync._tcp`` so nodes find it without an address.

A hub on 127.0.0.1 advertises on the loopback interface only; the tests browse there with
python-zeroconf, as a node's mDNS query would on the LAN. A hub on its default host
(``0.0.0.0``) runs in a private network namespace with a stand-in LAN, so multicast stays
on the machine either way.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time

import pytest
import requests
from support import ADMIN_TOKEN, ROOT, browse_mdns

zeroconf = pytest.importorskip("zeroconf")

def test_a_serving_hub_is_found_over_mdns_with_its_port_and_api_path(hub_process):
    hub = hub_process({"DROPSYNC_ADMIN_TOKEN": ADMIN_TOKEN, "DROPSYNC_MDNS": "true"})
    info = browse_mdns(port=hub.port)
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
    assert browse_mdns(timeout=2, port=hub.port) is None
    requests.get(f"{hub.url}/api/v1/admin/devices", timeout=10,
                 headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    hub.stop()
    assert "mDNS" not in hub.log and "dropsync.requests" not in hub.log


def test_a_hub_on_its_default_host_and_port_is_found_over_mdns(tmp_path):
    """What a newcomer runs: ``dropsync serve`` with no HOST, so it listens on 0.0.0.0 and
    advertises its LAN address (here a veth address inside the namespace)."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs unshare (util-linux) and ip (iproute2)")
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"no network namespaces here: {probe.stderr.decode().strip()}")
    helper = subprocess.run(
        ["unshare", "--net", "--fork", sys.executable,
         str(ROOT / "tests" / "mdns_lan.py"), str(tmp_path)],
        capture_output=True, text=True, timeout=90)
    log = (tmp_path / "hub.log").read_text(errors="replace") \
        if (tmp_path / "hub.log").exists() else ""
    assert helper.returncode == 0, helper.stdout + helper.stderr + log
    found = json.loads(helper.stdout.strip().splitlines()[-1])
    assert found is not None, f"not advertised; hub log:\n{log}"
    assert found["port"] == 8000
    assert found["addresses"] == ["198.51.100.7"]
    assert found["properties"]["path"] == "/api/v1"
    assert "could not advertise" not in log
