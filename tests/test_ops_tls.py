"""HTTPS without nginx: ``dropsync tls init`` makes a certificate, the hub serves with it,
and a client that pins the printed fingerprint gets through (and one that pins another
does not)."""

from __future__ import annotations

import hashlib
import re
import socket
import ssl

import requests
from support import ADMIN_TOKEN, HubProcess

from dropsync.ops.tls import pinning_forms


def peer_certificate(port: int) -> bytes:
    """The DER certificate the server presents (no verification: we pin it ourselves)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        return tls.getpeercert(binary_form=True)


def test_the_hub_serves_https_with_a_certificate_nodes_can_pin(tmp_path, monkeypatch):
    hub = HubProcess(tmp_path, {"DROPSYNC_ADMIN_TOKEN": ADMIN_TOKEN})
    printed = hub.cli("tls", "init", "--name", "hub.local", "--name", "localhost",
                      "--address", "127.0.0.1").stdout
    sha256 = re.search(r"SHA-256 fingerprint: ([0-9A-F:]{95})", printed)[1]
    sha1 = re.search(r"SHA-1 fingerprint .*setFingerprint\): ([0-9A-F:]{59})", printed)[1]
    assert "const uint8_t HUB_FINGERPRINT[20] = {0x" + sha1[:2] in printed
    assert '"-----BEGIN CERTIFICATE-----\\n"' in printed
    cert = hub.data_dir / "tls" / "hub.crt"
    assert (hub.data_dir / "tls" / "hub.key").stat().st_mode & 0o777 == 0o600
    # The C string the firmware embeds is the certificate, line for line.
    embedded = "".join(re.findall(r'^"(.*)\\n"$', printed, re.M))
    assert embedded.replace("-----BEGIN CERTIFICATE-----", "").replace(
        "-----END CERTIFICATE-----", "") in cert.read_text().replace("\n", "")

    hub.url = f"https://127.0.0.1:{hub.port}"
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))  # the start-up poll trusts it too
    hub.start()
    try:
        der = peer_certificate(hub.port)
        assert ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest()) == sha256
        assert ":".join(f"{b:02X}" for b in hashlib.sha1(der).digest()) == sha1
        # A client verifying against the certificate (its names include 127.0.0.1).
        response = requests.get(hub.url + "/api/v1/admin/devices", timeout=10, verify=str(cert),
                                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert response.status_code == 200
        # The CLI reaches its hub over HTTPS too, trusting exactly that certificate.
        assert "Registered esp001" in hub.cli("device", "add", "esp001").stdout
    finally:
        hub.stop()
    assert "listening on https://" in hub.log


def test_tls_init_keeps_an_existing_certificate_unless_forced(cli, tmp_path):
    cli("tls", "init", "--name", "localhost")
    cert = tmp_path / "data" / "tls" / "hub.crt"
    first = cert.read_bytes()
    result = cli("tls", "init", expect=1)
    assert "--force" in result.output and cert.read_bytes() == first
    shown = cli("tls", "show").output
    assert pinning_forms(first)["sha1"] in shown
    cli("tls", "init", "--force", "--name", "localhost")
    assert cert.read_bytes() != first
