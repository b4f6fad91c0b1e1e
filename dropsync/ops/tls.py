"""A self-signed certificate the hub serves HTTPS with, and the forms nodes pin it in.

There is no certificate authority on an offline LAN, so nodes pin the hub's certificate:
an ESP8266 with BearSSL by its SHA-1 fingerprint (``client.setFingerprint(...)``) or by
the certificate itself (``BearSSL::X509List``), an ESP32 with the PEM
(``WiFiClientSecure::setCACert``). ``dropsync tls init`` writes the certificate and key to
``DATA_DIR/tls/`` and prints all of those forms; the server uses them when present.
RSA-2048: every ESP TLS stack (BearSSL, mbedTLS, the old axTLS) speaks it.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from ..store.files import write_atomically

TLS_DIR = "tls"
CERT_FILE = "hub.crt"
KEY_FILE = "hub.key"


def default_paths(settings: Mapping[str, Any]) -> tuple[Path, Path]:
    folder = Path(settings["DATA_DIR"]) / TLS_DIR
    return folder / CERT_FILE, folder / KEY_FILE


def tls_files(settings: Mapping[str, Any]) -> tuple[Path, Path] | None:
    """The (certificate, key) the server should use, or None to serve plain HTTP.

    ``TLS_CERT``/``TLS_KEY`` when set (both must exist), else the pair ``dropsync tls
    init`` wrote into the data directory, if it is there.
    """
    if settings.get("TLS_CERT") or settings.get("TLS_KEY"):
        cert, key = Path(settings.get("TLS_CERT") or ""), Path(settings.get("TLS_KEY") or "")
        for what, path in (("TLS_CERT", cert), ("TLS_KEY", key)):
            if not path.is_file():
                from ..errors import ConfigError
                raise ConfigError(f"{what}={str(path)!r}: no such file (set both TLS_CERT "
                                  "and TLS_KEY, or neither)")
        return cert, key
    cert, key = default_paths(settings)
    return (cert, key) if cert.is_file() and key.is_file() else None


def local_names() -> tuple[list[str], list[str]]:
    """This machine's names and IPv4 addresses, for the certificate's SANs."""
    host = socket.gethostname()
    names = [host, f"{host}.local", "localhost"]
    addresses = ["127.0.0.1"]
    try:
        import ifaddr

        for adapter in ifaddr.get_adapters():
            for ip in adapter.ips:
                if isinstance(ip.ip, str) and ip.ip not in addresses:
                    addresses.append(ip.ip)
    except Exception:  # names alone still make a usable certificate
        pass
    return list(dict.fromkeys(names)), addresses


def make_certificate(names: Iterable[str], addresses: Iterable[str],
                     days: int = 3650) -> tuple[bytes, bytes]:
    """A self-signed certificate (PEM) and its RSA-2048 key (PEM, unencrypted)."""
    names, addresses = list(names), list(addresses)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, (names or ["dropsync"])[0]),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "DropSync hub")])
    now = datetime.datetime.now(datetime.UTC)
    sans = [x509.DNSName(n) for n in names] + \
        [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def write_pair(cert_path: Path, key_path: Path, cert_pem: bytes, key_pem: bytes) -> None:
    write_atomically(key_path, key_pem, mode=0o600)
    write_atomically(cert_path, cert_pem, mode=0o644)


def colon_hex(digest: bytes) -> str:
    return ":".join(f"{b:02X}" for b in digest)


def pinning_forms(cert_pem: bytes) -> dict[str, str]:
    """What a node needs to pin the certificate, as text to paste into its config."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    sha1 = cert.fingerprint(hashes.SHA1())  # noqa: S303 (BearSSL's setFingerprint pins SHA-1)
    sha256 = cert.fingerprint(hashes.SHA256())
    pem_lines = cert_pem.decode().strip().splitlines()
    c_string = "\n".join(f'"{line}\\n"' for line in pem_lines)
    return {
        "sha256": colon_hex(sha256),
        "sha1": colon_hex(sha1),
        "sha1_bytes": "{" + ", ".join(f"0x{b:02X}" for b in sha1) + "}",
        "pem_c_string": c_string,
        "not_after": cert.not_valid_after_utc.isoformat(),
        "names": ", ".join(str(n.value) for n in cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value),
    }
