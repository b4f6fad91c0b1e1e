"""The firmware core over HTTPS: the host client pins the hub's certificate (the one
``dropsync tls init`` made) and runs the protocol through it; any other certificate is
refused before a byte of a request is sent. TLS sessions are resumed, as a node's
``BearSSL::Session`` would, so only the first connection pays for a full handshake."""

from __future__ import annotations

import os
import re

import pytest
import requests
from firmware_support import HostClient
from support import ADMIN_TOKEN, HubProcess
from sync_support import wait_until

from dropsync.ops.tls import make_certificate

pytestmark = pytest.mark.slow


@pytest.fixture
def https_hub(tmp_path, monkeypatch):
    (tmp_path / "hub").mkdir()
    hub = HubProcess(tmp_path / "hub", {"DROPSYNC_ADMIN_TOKEN": ADMIN_TOKEN,
                                        "DROPSYNC_POLL_INTERVAL_S": "1",
                                        "DROPSYNC_STAGING_WATCH": "false"})
    hub.cli("tls", "init", "--name", "localhost", "--address", "127.0.0.1")
    hub.url = f"https://127.0.0.1:{hub.port}"
    hub.cert = hub.data_dir / "tls" / "hub.crt"
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(hub.cert))
    hub.start()
    yield hub
    hub.stop()


def admin(hub, method: str, path: str, **kw) -> requests.Response:
    return requests.request(method, f"{hub.url}/api/v1/admin{path}", timeout=30,
                            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, **kw)


def figures(output: str) -> dict[str, float]:
    return {k: float(v) for k, v in re.findall(r"^(tls_\w+) ([0-9.]+)$", output, re.M)}


def test_the_whole_protocol_runs_over_tls_with_the_pinned_certificate(
        https_hub, firmware_build, tmp_path):
    hub = https_hub
    token = admin(hub, "POST", "/devices/register", json={"id": "esp-tls"}).json()["token"]
    command = admin(hub, "POST", "/devices/esp-tls/command",
                    json={"command": "echo", "params": {"over": "tls"}}).json()["id"]
    admin(hub, "POST", "/devices/esp-tls/command", json={"command": "upload-log"})
    data = os.urandom(100 * 1024 + 7)  # four 32 KiB chunks and a short one
    staged = admin(hub, "PUT", "/staging/esp-tls/data/blob.bin", data=data)
    assert staged.ok, staged.text
    node = HostClient(firmware_build["client"], hub.url, "esp-tls", token,
                      tmp_path / "flash.img",
                      "--hub-cert", str(hub.cert), "--poll-s", "1", "--heartbeat-s", "1",
                      "--manifest-s", "1")
    try:
        node.wait_for(r"^sync done files=1 fetched=1 failed=0", 60)
        wait_until(lambda: {c["name"]: c["state"] for c in admin(
            hub, "GET", "/devices/esp-tls/commands").json()["commands"]}
            == {"echo": "completed", "upload-log": "completed"}, 30,
            message="echo and upload-log completed")
    finally:
        node.stop()
    # a firmware image over TLS too: chunk by chunk into Update, then the node restarts
    image = b"\xe9\x03\x02\x20" + os.urandom(2 * 4096 + 10)
    assert admin(hub, "PUT", "/staging/esp-tls/firmware/app.bin", data=image).ok
    again = HostClient(firmware_build["client"], hub.url, "esp-tls", token,
                       tmp_path / "flash.img", "--hub-cert", str(hub.cert), "--poll-s", "1")
    try:
        assert again.wait(60) == 3, again.output
    finally:
        again.stop()
    assert node.flash.read("/data/blob.bin") == data
    assert (tmp_path / "flash.img.firmware.bin").read_bytes() == image
    done = {c["name"]: c for c in admin(hub, "GET", "/devices/esp-tls/commands").json()
            ["commands"]}
    assert done["echo"]["id"] == command and done["echo"]["result"] == {"echo": {"over": "tls"}}
    uploads = admin(hub, "GET", "/uploads", params={"device": "esp-tls"}).json()["uploads"]
    assert [u["name"] for u in uploads] == ["log.txt"]  # a device upload over TLS too
    inventory = admin(hub, "GET", "/devices/esp-tls").json()["inventory"]
    assert inventory["firmware_version"] == "host-1.0.0"  # heartbeats arrived
    cost = figures(node.output)
    # one connection per request (HTTP/1.0, as the firmware's transport); every one after
    # the first resumes the session instead of a full handshake
    assert cost["tls_handshakes"] >= 8
    assert cost["tls_resumed"] >= cost["tls_handshakes"] - 2, cost
    print(f"tls cost of a sync: {cost}")


def test_a_hub_with_another_certificate_is_refused_before_any_request(
        https_hub, firmware_build, tmp_path):
    hub = https_hub
    token = admin(hub, "POST", "/devices/register", json={"id": "esp-pin"}).json()["token"]
    impostor, _ = make_certificate(["localhost"], ["127.0.0.1"], 30)
    pin = tmp_path / "impostor.crt"
    pin.write_bytes(impostor)
    node = HostClient(firmware_build["client"], hub.url, "esp-pin", token,
                      tmp_path / "flash.img",
                      "--hub-cert", str(pin), "--poll-s", "1", "--backoff-base-ms", "100",
                      "--backoff-cap-ms", "200", "--run-s", "3")
    assert node.wait(30) == 0
    assert "presented a certificate that is not the pinned one" in node.output
    assert "tls_resumed 0" in node.output  # no session is kept with an unpinned peer
    # nothing reached the hub's device API: the node was never seen
    assert admin(hub, "GET", "/devices/esp-pin").json()["last_seen"] is None
    # and an https:// hub without a pin is a usage error, not an unchecked connection
    unpinned = HostClient(firmware_build["client"], hub.url, "esp-pin", token,
                          tmp_path / "flash2.img")
    assert unpinned.wait(10) == 2 and "needs --hub-cert" in unpinned.output
