"""Signed firmware images: keys and signatures made off the hub in the cores' own formats,
checked by the hub before it offers an image, and private keys kept off the hub."""

from __future__ import annotations

import hashlib
import os
import stat
import struct
import subprocess
import tarfile
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from firmware_support import ADMIN, HostClient, admin_get, register
from support import ADMIN_TOKEN, BIN
from sync_support import wait_until
from updater_support import basic, esp32_request, esp8266_request

from dropsync.sync import signing

pytestmark = pytest.mark.slow


def image(size: int = 6000) -> bytes:
    return b"\xe9\x03\x02\x20" + os.urandom(size - 4)


def dropsync(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "dropsync"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})})


@pytest.fixture
def workstation(tmp_path):
    """An operator's machine: a key pair made by ``dropsync keys new``."""
    folder = tmp_path / "workstation"
    folder.mkdir()
    made = dropsync("keys", "new", "--out", "keys", cwd=folder)
    assert made.returncode == 0, made.stderr
    return folder


def sign(folder: Path, name: str, data: bytes, fmt: str = "esp8266",
         key: str = "keys/private.key") -> bytes:
    (folder / name).write_bytes(data)
    signed = dropsync("sign", name, "--key", key, "--format", fmt, cwd=folder)
    assert signed.returncode == 0, signed.stderr
    return (folder / f"{name}.signed").read_bytes()


# -- the cores' formats ----------------------------------------------------------------
def signing_py(data: bytes, private_key: Path) -> bytes:
    """esp8266/Arduino's tools/signing.py, ``sign_and_write``: ``openssl dgst -sha256
    -sign`` over the image, then the signature, then its length as ``struct.pack("<L")``."""
    signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(private_key)],
                               input=data, capture_output=True, check=True).stdout
    return data + signature + struct.pack("<L", len(signature))


def bin_signing_py_sign(data: bytes, key) -> bytes:
    """arduino-esp32's tools/bin_signing.py, ``sign_binary`` with its default SHA-256."""
    if isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(data, padding.PSS(mgf=padding.MGF1(hashes.SHA256()),
                                               salt_length=padding.PSS.MAX_LENGTH),
                             hashes.SHA256())
    else:
        signature = key.sign(data, ec.ECDSA(hashes.SHA256()))
    return data + signature + b"\x00" * (512 - len(signature))


def bin_signing_py_verify(signed: bytes, public_key) -> bool:
    """bin_signing.py's ``verify_signature``: the last 512 bytes, unpadded. (The script
    strips trailing zero bytes, which cuts an RSA signature that happens to end in one;
    this takes the key's length instead, as the core's verifier does.)"""
    data, block = signed[:-512], signed[-512:]
    try:
        if isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(block[:public_key.key_size // 8], data,
                              padding.PSS(mgf=padding.MGF1(hashes.SHA256()),
                                          salt_length=padding.PSS.MAX_LENGTH),
                              hashes.SHA256())
        else:
            public_key.verify(block.rstrip(b"\x00"), data, ec.ECDSA(hashes.SHA256()))
    except Exception:  # noqa: BLE001 (any refusal is a failed verification)
        return False
    return True


def test_esp8266_images_are_the_cores_signing_py_output_byte_for_byte(workstation):
    private = workstation / "keys" / "private.key"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    public = serialization.load_pem_public_key((workstation / "keys" / "public.key").read_bytes())
    assert isinstance(public, rsa.RSAPublicKey) and public.key_size == 2048
    for size in (1, 4096, 100_003):
        data = image(max(size, 5))
        assert sign(workstation, "app.bin", data) == signing_py(data, private)
    # and what signing.py signs, the hub verifies
    theirs = signing_py(data, private)
    assert signing.verify_bytes(theirs, [public]).format == "esp8266"


@pytest.mark.parametrize("kind", ["rsa-2048", "rsa-3072", "ecdsa-p256", "ecdsa-p384"])
def test_esp32_images_verify_as_bin_signing_py_verifies(tmp_path, kind):
    made = dropsync("keys", "new", "--kind", kind, "--out", "keys", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert "const uint8_t PUBLIC_KEY[] PROGMEM" in made.stdout  # the ESP32 verifier's form
    private = serialization.load_pem_private_key(
        (tmp_path / "keys" / "private.key").read_bytes(), password=None)
    data = image(20_000)
    ours = sign(tmp_path, "app.bin", data, fmt="esp32")
    assert len(ours) == len(data) + 512 and ours.startswith(data)
    assert bin_signing_py_verify(ours, private.public_key())
    theirs = bin_signing_py_sign(data, private)
    assert signing.verify_bytes(theirs, [private.public_key()]).format == "esp32"
    tampered = bytearray(theirs)
    tampered[100] ^= 0x01
    assert signing.verify_bytes(bytes(tampered), [private.public_key()]) is None
    # the padding is part of the format (bin_signing.py's verify strips zeros only, so
    # anything else there fails it): the hub refuses it too
    padded = theirs[:-1] + b"\x01"
    assert signing.verify_bytes(padded, [private.public_key()]) is None


def test_the_esp8266_core_takes_rsa_only_and_nothing_is_signed_twice(tmp_path, workstation):
    assert dropsync("keys", "new", "--kind", "ecdsa-p256", "--out", "ec", cwd=tmp_path) \
        .returncode == 0
    (tmp_path / "app.bin").write_bytes(image())
    refused = dropsync("sign", "app.bin", "--key", "ec/private.key", cwd=tmp_path)
    assert refused.returncode != 0 and "RSA" in refused.stderr
    signed = sign(workstation, "app.bin", image())
    (workstation / "again.bin").write_bytes(signed)
    again = dropsync("sign", "again.bin", "--key", "keys/private.key", cwd=workstation)
    assert again.returncode != 0 and "already signed" in again.stderr
    (workstation / "app.elf").write_bytes(b"\x7fELF" + os.urandom(100))
    elf = dropsync("sign", "app.elf", "--key", "keys/private.key", cwd=workstation)
    assert elf.returncode != 0 and "0xE9" in elf.stderr


def test_keys_are_never_written_into_the_hubs_folders(tmp_path):
    for folder in ("data", "staging", "staging/all"):
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        made = dropsync("keys", "new", "--out", folder, cwd=tmp_path,
                        env={"DROPSYNC_DATA_DIR": str(tmp_path / "data"),
                             "DROPSYNC_STAGING_DIR": str(tmp_path / "staging")})
        assert made.returncode != 0 and "off the hub" in made.stderr, folder
        assert not (tmp_path / folder / "private.key").exists()


# -- the hub checks before it offers -----------------------------------------------------
@pytest.fixture
def signed_hub(hub_process, workstation, tmp_path):
    return hub_process({"DROPSYNC_ADMIN_TOKEN": ADMIN_TOKEN,
                        "DROPSYNC_STAGING_SETTLE_S": "0.2",
                        "DROPSYNC_POLL_INTERVAL_S": "1",
                        "DROPSYNC_FIRMWARE_SIGNING_KEYS":
                            str(workstation / "keys" / "public.key")})


def stage_status(hub, target: str, path: str, data: bytes) -> requests.Response:
    return requests.put(f"{hub.url}/api/v1/admin/staging/{target}/{path}", headers=ADMIN,
                        data=data, timeout=30)


def manifest_paths(hub, device_id: str, token: str) -> list[str]:
    answer = requests.get(f"{hub.url}/api/v1/files/manifest/{device_id}",
                          headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert answer.status_code == 200, answer.text
    return [f["path"] for f in answer.json()["files"]]


def test_a_signed_image_reaches_the_stock_updater_and_the_firmware_byte_for_byte(
        signed_hub, workstation, firmware_build, tmp_path):
    hub = signed_hub
    token = register(hub, "esp-signed")
    signed = sign(workstation, "app.bin", image(9000))
    answer = stage_status(hub, "esp-signed", "firmware/app.bin", signed)
    assert answer.status_code in (200, 201), answer.text
    package = answer.json()
    key = signing.key_id(serialization.load_pem_public_key(
        (workstation / "keys" / "public.key").read_bytes()))
    assert admin_get(hub, f"/packages/{package['id']}")["signature"] == \
        {"format": "esp8266", "key_id": key, "signed_size": 9000}

    # ESP8266httpUpdate's request: the whole signed image, its Update verifies it
    got = esp8266_request(hub.port, "/api/v1/ota/esp-signed", basic("esp-signed", token),
                          sketch_md5="0" * 32)
    assert got.status_code == 200 and got.body == signed
    assert got.headers["x-MD5"] == hashlib.md5(signed).hexdigest()

    # the project's firmware: chunk by chunk into its Update, signature included
    run = HostClient(firmware_build["client"], hub.url, "esp-signed", token,
                     tmp_path / "flash.img")
    try:
        assert run.wait(60) == 3, run.output  # the host board's restart() after the image
    finally:
        run.stop()
    assert (tmp_path / "flash.img.firmware.bin").read_bytes() == signed


def test_unsigned_tampered_and_foreign_images_are_refused_and_reach_no_device(
        signed_hub, workstation, tmp_path):
    hub = signed_hub
    token = register(hub, "esp-guard")
    good = sign(workstation, "app.bin", image(7000))
    tampered = bytearray(good)
    tampered[4000] ^= 0x40
    other = tmp_path / "other"
    other.mkdir()
    assert dropsync("keys", "new", "--out", "keys", cwd=other).returncode == 0
    foreign = sign(other, "app.bin", image(7000))
    esp32_foreign = sign(other, "app32.bin", image(7000), fmt="esp32")
    cases = {"unsigned": image(7000), "tampered": bytes(tampered), "another key": foreign,
             "another key, esp32 format": esp32_foreign}
    reason = "no signature that verifies"
    for label, data in cases.items():
        answer = stage_status(hub, "esp-guard", "firmware/app.bin", data)
        assert answer.status_code == 400, label
        assert answer.json()["error"]["code"] == "refused_content", label
        assert reason in answer.json()["error"]["message"], label
    # dropped into the folder instead: refused with a problem the operator sees
    drop = hub.workdir / "staging" / "esp-guard" / "firmware" / "drop.bin"
    drop.parent.mkdir(parents=True, exist_ok=True)
    drop.write_bytes(bytes(tampered))
    report = wait_until(lambda: [p for p in admin_get(hub, "/staging")["problems"]
                                 if p["path"] == "esp-guard/firmware/drop.bin"] or None, 10)
    assert report[0]["kind"] == "refused_content" and reason in report[0]["message"]
    assert requests.get(f"{hub.url}/health", timeout=10).json()["status"] == "degraded"
    assert manifest_paths(hub, "esp-guard", token) == []
    got = esp8266_request(hub.port, "/api/v1/ota/esp-guard", basic("esp-guard", token),
                          sketch_md5="0" * 32)
    assert got.status_code == 404  # nothing was ever offered
    got = esp32_request(hub.port, "/api/v1/ota/esp-guard", basic("esp-guard", token),
                        sketch_sha256="AB" * 32)
    assert got.status_code == 404


def test_images_taken_in_before_the_keys_are_withdrawn_when_the_keys_arrive(
        hub_process, workstation):
    hub = hub_process({"DROPSYNC_ADMIN_TOKEN": ADMIN_TOKEN, "DROPSYNC_STAGING_SETTLE_S": "0.2"})
    token = register(hub, "esp-late")
    unsigned, signed = image(5000), sign(workstation, "app.bin", image(5000))
    assert stage_status(hub, "esp-late", "firmware/old.bin", unsigned).ok
    assert stage_status(hub, "all", "firmware/new.bin", signed).ok
    hub.stop()
    hub = hub_process({"DROPSYNC_ADMIN_TOKEN": ADMIN_TOKEN, "DROPSYNC_STAGING_SETTLE_S": "0.2",
                       "DROPSYNC_FIRMWARE_SIGNING_KEYS": str(workstation / "keys" / "public.key")},
                      workdir=hub.workdir)
    assert [p["path"] for p in admin_get(hub, "/packages")["packages"]] == ["firmware/new.bin"]
    assert manifest_paths(hub, "esp-late", token) == ["firmware/new.bin"]  # the signed one
    assert (hub.workdir / "staging" / "esp-late" / "firmware" / "old.bin").read_bytes() \
        == unsigned  # the operator's file stays, with its problem shown
    wait_until(lambda: [p["path"] for p in admin_get(hub, "/staging")["problems"]]
               == ["esp-late/firmware/old.bin"], 10)


def test_without_keys_images_are_taken_as_before(hub_process):
    hub = hub_process({"DROPSYNC_ADMIN_TOKEN": ADMIN_TOKEN})
    answer = stage_status(hub, "all", "firmware/app.bin", image(3000))
    assert answer.ok and answer.json()["path"] == "firmware/app.bin"
    assert admin_get(hub, "/packages")["packages"][0]["signature"] is None


# -- private keys stay off the hub -------------------------------------------------------
PRIVATE_FORMATS = {
    "pkcs1": serialization.PrivateFormat.TraditionalOpenSSL,
    "pkcs8": serialization.PrivateFormat.PKCS8,
    "openssh": serialization.PrivateFormat.OpenSSH,
}


@pytest.mark.parametrize("form", sorted(PRIVATE_FORMATS))
def test_a_private_key_is_never_staged(hub_process, form):
    hub = hub_process({"DROPSYNC_ADMIN_TOKEN": ADMIN_TOKEN, "DROPSYNC_STAGING_SETTLE_S": "0.2"})
    key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, PRIVATE_FORMATS[form], serialization.NoEncryption())
    answer = stage_status(hub, "all", "config/signing.pem", key)
    assert answer.status_code == 400 and "private key" in answer.json()["error"]["message"]
    dropped = hub.workdir / "staging" / "all" / "keys" / "id.key"
    dropped.parent.mkdir(parents=True)
    dropped.write_bytes(b"\n" + key)
    wait_until(lambda: any(p["path"] == "all/keys/id.key"
                           for p in admin_get(hub, "/staging")["problems"]), 10)
    assert admin_get(hub, "/packages")["packages"] == []


def test_the_hub_refuses_a_private_key_in_its_data_folder_or_as_its_signing_key(
        hub_process, workstation, tmp_path):
    data = tmp_path / "hubdata"
    data.mkdir()
    (data / "private.key").write_bytes((workstation / "keys" / "private.key").read_bytes())
    cli = dropsync("device", "list", cwd=tmp_path, env={"DROPSYNC_DATA_DIR": str(data)})
    assert cli.returncode != 0 and "private key in the hub's data folder" in cli.stderr
    (data / "private.key").unlink()
    cli = dropsync("device", "list", cwd=tmp_path,
                   env={"DROPSYNC_DATA_DIR": str(data),
                        "DROPSYNC_FIRMWARE_SIGNING_KEYS":
                            str(workstation / "keys" / "private.key")})
    assert cli.returncode != 0 and "PRIVATE key" in cli.stderr


def test_a_backup_leaves_a_private_key_out(hub_process, workstation, tmp_path):
    hub = hub_process({"DROPSYNC_ADMIN_TOKEN": ADMIN_TOKEN})
    stray = hub.workdir / "data" / "signing.pem"
    stray.write_bytes((workstation / "keys" / "private.key").read_bytes())
    archive = tmp_path / "backup.tar.gz"
    made = hub.cli("backup", str(archive))
    assert made.returncode == 0, made.stderr
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert "data/signing.pem" not in names and "data/auth.json" in names
    assert "signing.pem left out" in hub.log


def test_the_node_refuses_an_image_its_key_does_not_verify_and_says_signature(
        hub_process, workstation, firmware_build, tmp_path):
    """A hub without keys offers whatever is staged; the node's own Update (here the host
    client's sink, with the key as a node built with it holds) still refuses an image that
    does not verify, reports it as a failed sync with reason "signature", never boots it,
    and takes the properly signed image after."""
    hub = hub_process({"DROPSYNC_ADMIN_TOKEN": ADMIN_TOKEN, "DROPSYNC_POLL_INTERVAL_S": "1",
                       "DROPSYNC_STAGING_WATCH": "false"})
    token = register(hub, "esp-verify")
    signed = sign(workstation, "app.bin", image(9000))
    tampered = bytearray(signed)
    tampered[2000] ^= 0x01
    answer = stage_status(hub, "esp-verify", "firmware/app.bin", bytes(tampered))
    assert answer.ok, answer.text
    package = answer.json()["id"]
    key = str(workstation / "keys" / "public.key")
    sink = tmp_path / "flash.img.firmware.bin"
    run = HostClient(firmware_build["client"], hub.url, "esp-verify", token,
                     tmp_path / "flash.img", "--signing-key", key, "--manifest-s", "1")
    try:
        wait_until(lambda: [d for d in admin_get(hub, f"/packages/{package}")["devices"]
                            if d["state"] == "failed"] or None, 30,
                   message="the tampered image reported failed")
        history = requests.get(f"{hub.url}/api/v1/files/sync-history/esp-verify",
                               headers={"Authorization": f"Bearer {token}"}, timeout=10)
        failed = [h for h in history.json()["history"] if h["state"] == "failed"]
        assert failed and failed[0]["reason"] == "signature", failed
        assert run.process.poll() is None  # not restarted into the refused image
        assert not sink.exists()
        stage_status(hub, "esp-verify", "firmware/app.bin", signed)
        assert run.wait(60) == 3, run.output  # the good image: Update took it, restart
    finally:
        run.stop()
    assert sink.read_bytes() == signed
