"""A real nginx in front of a real hub, with the site deploy/nginx.conf is made from.

The hub authorises every download and nginx sends the bytes (X-Accel-Redirect): the bytes
must be the hub's, byte for byte; another device's paths stay refused; a Range is a 206
(several ranges a 416, never the whole file); and the rate limits still count per device
and per real client address, not per nginx.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import subprocess
import time

import pytest
import requests
from support import ADMIN_TOKEN, BIN, HubProcess, NginxFront, assert_error
from sync_support import wait_until

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
FILES = "/api/v1/files"


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def devices_and_a_file(hub, devices: tuple[str, ...], target: str) -> tuple[dict, bytes]:
    """Register ``devices`` and stage a 10,000-byte ``fw/app.bin`` for ``target``."""
    tokens = {}
    for device in devices:
        response = requests.post(hub.url + "/api/v1/admin/devices/register",
                                 json={"id": device}, headers=ADMIN, timeout=10)
        tokens[device] = response.json()["token"]
    content = os.urandom(10_000)
    response = requests.put(f"{hub.url}/api/v1/admin/staging/{target}/fw/app.bin",
                            data=content, headers=ADMIN, timeout=10)
    assert response.status_code == 200, response.text
    return tokens, content


@pytest.fixture(scope="module")
def fronted(tmp_path_factory):
    """A hub set up for nginx (accel prefix, trusted proxy, tight limits), nginx in
    front with plain HTTP and TLS, two devices and a 10,000-byte file for the first.
    One for the module: each test uses its own device or client address for the limits."""
    workdir = tmp_path_factory.mktemp("fronted")
    hub = HubProcess(workdir, {"DROPSYNC_ADMIN_TOKEN": ADMIN_TOKEN,
                               "DROPSYNC_DOWNLOAD_ACCEL_PREFIX": "/_blobs/",
                               "DROPSYNC_TRUSTED_PROXIES": "127.0.0.1",
                               "DROPSYNC_RATE_LIMIT_FILES": "40/minute",
                               "DROPSYNC_RATE_LIMIT_FAILED_AUTH": "8/minute"}).start()
    nginx = None
    try:
        hub.cli("tls", "init", "--name", "localhost", "--address", "127.0.0.1", "--out",
                str(workdir / "tls"))
        tls = (workdir / "tls" / "hub.crt", workdir / "tls" / "hub.key")
        nginx = NginxFront(workdir / "nginx", hub.port, hub.data_dir, tls=tls).start()
        yield hub, nginx, *devices_and_a_file(hub, ("esp001", "esp002"), "esp001")
    finally:
        if nginx is not None:
            nginx.stop()
        hub.stop()


def entry_of(url: str, token: str) -> dict:
    response = requests.get(f"{url}{FILES}/manifest/esp001", headers=bearer(token), timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["files"][0]


def from_address(address: str, port: int, path: str, headers: dict) -> int:
    """GET from a given loopback source address (127.0.0.2...): another 'client'."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10,
                                            source_address=(address, 0))
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def test_nginx_sends_the_hubs_bytes_once_the_hub_authorised(fronted):
    hub, nginx, tokens, content = fronted
    own = bearer(tokens["esp001"])
    entry = entry_of(nginx.url, tokens["esp001"])
    assert entry == entry_of(hub.url, tokens["esp001"])
    chunks = []
    for index in range(entry["chunks"]):
        response = requests.get(f"{nginx.url}{entry['url']}/{index}", headers=own, timeout=10)
        assert response.status_code == 206, response.text
        assert response.headers["Server"].startswith("nginx")  # nginx sent the bytes
        first = index * entry["chunk_size"]
        last = min(first + entry["chunk_size"], len(content)) - 1
        assert response.headers["Content-Range"] == f"bytes {first}-{last}/{len(content)}"
        assert response.headers["X-Chunk-SHA256"] == \
            hashlib.sha256(response.content).hexdigest()
        assert response.headers["X-Chunk-Index"] == str(index)
        assert response.content == content[first:last + 1]
        chunks.append(response.content)
    assert b"".join(chunks) == content

    whole = requests.get(nginx.url + entry["url"], headers=own, timeout=10)
    assert whole.status_code == 200 and whole.content == content
    assert whole.headers["x-MD5"] == hashlib.md5(content).hexdigest()
    assert whole.headers["X-Content-SHA256"] == entry["sha256"]

    for header, start, end in (("bytes=100-199", 100, 200), ("bytes=9990-", 9990, 10000),
                               ("bytes=-10", 9990, 10000)):
        ranged = requests.get(nginx.url + entry["url"], headers={**own, "Range": header},
                              timeout=10)
        assert ranged.status_code == 206, header
        assert ranged.content == content[start:end], header
        assert ranged.headers["Content-Range"] == f"bytes {start}-{end - 1}/10000"
    for header in ("bytes=0-1,5-6", "bytes=20000-", "bytes=abc"):
        refused = requests.get(nginx.url + entry["url"], headers={**own, "Range": header},
                               timeout=10)
        assert_error(refused, 416, "requested_range_not_satisfiable")

    # Through nginx's TLS, verified against the hub's own certificate.
    secure = requests.get(nginx.tls_url + entry["url"], headers=own, timeout=10,
                          verify=str(nginx.prefix.parent / "tls" / "hub.crt"))
    assert secure.status_code == 200 and secure.content == content


def test_other_devices_and_bad_tokens_get_nothing_through_nginx(fronted):
    hub, nginx, tokens, content = fronted
    entry = entry_of(nginx.url, tokens["esp001"])
    other = bearer(tokens["esp002"])
    for path in (entry["url"], f"{entry['url']}/0"):
        response = requests.get(nginx.url + path, headers=other, timeout=10)
        assert_error(response, 403, "wrong_device")
        assert content[:64] not in response.content
        theirs = path.replace("/esp001/", "/esp002/")
        assert_error(requests.get(nginx.url + theirs, headers=other, timeout=10), 403,
                     "not_in_manifest")
        assert_error(requests.get(nginx.url + path, timeout=10), 401)
    # The internal locations cannot be asked for directly.
    sha = entry["sha256"]
    for path in (f"/_blobs/{sha[:2]}/{sha}", f"/_blobs/range/0-9/{sha[:2]}/{sha}"):
        response = requests.get(nginx.url + path, headers=other, timeout=10)
        assert response.status_code == 404 and content[:64] not in response.content


def test_rate_limits_count_per_device_and_per_real_client_behind_nginx(fronted):
    hub, nginx, tokens, _ = fronted
    # RATE_LIMIT_FILES=40/minute per device: esp002 uses its budget up...
    statuses = [from_address("127.0.0.1", nginx.port, f"{FILES}/manifest/esp002",
                             bearer(tokens["esp002"])) for _ in range(41)]
    assert statuses.count(429) >= 1 and statuses[0] == 200, statuses
    # ...and esp001, through the same nginx and address, still has its own.
    entry = entry_of(nginx.url, tokens["esp001"])
    assert from_address("127.0.0.1", nginx.port, f"{entry['url']}/0",
                        bearer(tokens["esp001"])) == 206

    # RATE_LIMIT_FAILED_AUTH=8/minute per client address and credential: the hub sees each
    # client's own address through nginx (TRUSTED_PROXIES), so one bad node's token is shut
    # out from its address only, and good tokens from that address still work: nginx must
    # not turn one misconfigured node into a lockout for the whole site.
    garbage = bearer("garbage-token-0123456789abcdef0123")
    manifest = f"{FILES}/manifest/esp001"
    refused = [from_address("127.0.0.2", nginx.port, manifest, garbage) for _ in range(10)]
    assert refused[-1] == 429, refused
    assert from_address("127.0.0.3", nginx.port, manifest, garbage) == 401
    assert from_address("127.0.0.2", nginx.port, manifest, bearer(tokens["esp001"])) == 200
    assert from_address("127.0.0.3", nginx.port, manifest, bearer(tokens["esp001"])) == 200
    assert "client=127.0.0.2" in hub.log and "client=127.0.0.3" in hub.log


def test_nginx_takes_uploads_up_to_the_hubs_limits_and_refuses_more_as_json(fronted):
    hub, nginx, tokens, _ = fronted
    own = bearer(tokens["esp001"])
    body = os.urandom(2 * 1024 * 1024)  # above MAX_REQUEST_BYTES, within UPLOAD_MAX_BYTES
    response = requests.post(f"{nginx.url}{FILES}/upload/esp001", params={"filename": "a.bin"},
                             data=body, headers={**own, "Content-Type": "application/octet-stream"},
                             timeout=30)
    assert response.status_code == 201, response.text
    assert response.json()["sha256"] == hashlib.sha256(body).hexdigest()
    too_big = requests.post(f"{nginx.url}{FILES}/sync-status/esp001", data=b"x" * 1_100_000,
                            headers={**own, "Content-Type": "application/json"}, timeout=30)
    error = assert_error(too_big, 413)
    assert json.dumps(error)


# -- download tickets: nginx checks them and serves chunks from a cache of the hub's answers
TICKET_SECRET = "nginx-test-ticket-secret-0123456789abcdef"
CHUNK_HEADERS = ("X-Chunk-SHA256", "X-Chunk-Index", "X-Chunk-Count", "X-Package-Version")


@pytest.fixture(scope="module")
def ticketed(tmp_path_factory):
    """A hub issuing download tickets behind nginx (the site with the same secret and
    RATE_LIMIT_FILES=40/minute), six devices, a 10,000-byte file for all of them."""
    workdir = tmp_path_factory.mktemp("ticketed")
    limits = {"RATE_LIMIT_FILES": "40/minute", "DOWNLOAD_TICKET_SECRET": TICKET_SECRET}
    hub = HubProcess(workdir, {"DROPSYNC_ADMIN_TOKEN": ADMIN_TOKEN,
                               "DROPSYNC_DOWNLOAD_ACCEL_PREFIX": "/_blobs/",
                               "DROPSYNC_TRUSTED_PROXIES": "127.0.0.1",
                               "DROPSYNC_STAGING_WATCH": "false",
                               "DROPSYNC_CHUNK_SIZE": "4096",  # 3 chunks of the file
                               **{f"DROPSYNC_{k}": v for k, v in limits.items()}}).start()
    nginx = None
    try:
        nginx = NginxFront(workdir / "nginx", hub.port, hub.data_dir, settings=limits).start()
        devices = ("tk001", "tk002", "tk003", "tk004", "tk005", "tk006")
        yield hub, nginx, *devices_and_a_file(hub, devices, "all")
    finally:
        if nginx is not None:
            nginx.stop()
        hub.stop()


def manifest_entry_of(url: str, device: str, token: str) -> dict:
    response = requests.get(f"{url}{FILES}/manifest/{device}", headers=bearer(token),
                            timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["files"][0]


def hub_chunk_lines(hub, device: str) -> list[str]:
    """The hub's request-log lines for ticketed chunks of ``device``."""
    return [line for line in hub.log.splitlines()
            if "/files/t/" in line and "<int:index>" in line and f"device={device} " in line]


def sentinel(hub, nginx, device: str, token: str) -> None:
    """A request through nginx that reaches the hub, seen in its log: every request made
    before it has been logged too (one line each, in order)."""
    before = hub.log.count("/sync-history/<device_id> 200")
    response = requests.get(f"{nginx.url}{FILES}/sync-history/{device}", headers=bearer(token),
                            timeout=10)
    assert response.status_code == 200
    wait_until(lambda: hub.log.count("/sync-history/<device_id> 200") > before, 20,
               message="the hub logged the sentinel request")


def test_ticketed_chunks_come_from_nginxs_cache_after_the_first_device(ticketed):
    hub, nginx, tokens, content = ticketed
    first, second = (manifest_entry_of(nginx.url, d, tokens[d]) for d in ("tk001", "tk002"))
    assert first["url"].startswith(f"{FILES}/t/") and "/tk001/" in first["url"]
    assert second["url"] != first["url"] and "/tk002/" in second["url"]
    assert first["chunks"] == 3

    answers = {}
    for device, entry, cache in (("tk001", first, "MISS"), ("tk002", second, "HIT")):
        chunks = []
        for index in range(entry["chunks"]):
            response = requests.get(f"{nginx.url}{entry['url']}/{index}",
                                    headers=bearer(tokens[device]), timeout=10)
            assert response.status_code == 200, response.text
            assert response.headers["X-Cache"] == cache, (device, index)
            assert response.headers["X-Chunk-SHA256"] == \
                hashlib.sha256(response.content).hexdigest()
            assert response.headers["X-Chunk-Index"] == str(index)
            answers.setdefault(index, []).append(
                (response.content, [response.headers[h] for h in CHUNK_HEADERS]))
            chunks.append(response.content)
        assert b"".join(chunks) == content, device
    assert all(a == b for a, b in answers.values())  # byte for byte, header for header

    # The first device's fetches reached the hub once each; the second's never did.
    sentinel(hub, nginx, "tk002", tokens["tk002"])
    assert len(hub_chunk_lines(hub, "tk001")) == first["chunks"]
    assert hub_chunk_lines(hub, "tk002") == []

    # Whole files and ranges at ticket urls still go through the hub (X-Accel).
    whole = requests.get(nginx.url + second["url"], headers=bearer(tokens["tk002"]),
                         timeout=10)
    assert whole.status_code == 200 and whole.content == content
    ranged = requests.get(nginx.url + second["url"], timeout=10,
                          headers={**bearer(tokens["tk002"]), "Range": "bytes=100-199"})
    assert ranged.status_code == 206 and ranged.content == content[100:200]


def test_nginx_refuses_bad_expired_and_borrowed_tickets_as_json(ticketed):
    hub, nginx, tokens, content = ticketed
    own = bearer(tokens["tk005"])
    entry = manifest_entry_of(nginx.url, "tk005", tokens["tk005"])
    parts = entry["url"].split("/")  # ['', api, v1, files, t, expires, sig, dev, pkg, ver]
    expires, sig, package, version = int(parts[5]), parts[6], parts[8], int(parts[9])

    def url(expires=expires, sig=sig, device="tk005", package=package, version=version):
        return f"{nginx.url}{FILES}/t/{expires}/{sig}/{device}/{package}/{version}/0"

    def signed(expires_at: int) -> str:
        text = f"{expires_at}tk005/{package}/{version} {TICKET_SECRET}"
        digest = hashlib.md5(text.encode()).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    tampered = ("A" if sig[0] != "A" else "B") + sig[1:]
    refused = [(url(sig=tampered), own, 403, "ticket_invalid"),
               (url(device="tk006"), bearer(tokens["tk006"]), 403, "ticket_invalid"),
               (url(package="0" * 12), own, 403, "ticket_invalid"),
               (url(version=version + 1), own, 403, "ticket_invalid"),
               (url(expires=expires + 1), own, 403, "ticket_invalid"),
               (url(expires=int(time.time()) - 5, sig=signed(int(time.time()) - 5)), own,
                410, "ticket_expired")]
    for path, headers, status, code in refused:
        response = requests.get(path, headers=headers, timeout=10)
        assert_error(response, status, code)
        assert content[:64] not in response.content, path
    assert signed(expires) == sig  # the test signs as the hub does


def test_nginx_limits_ticketed_chunks_per_device(ticketed):
    hub, nginx, tokens, _ = ticketed
    entries = {d: manifest_entry_of(nginx.url, d, tokens[d]) for d in ("tk003", "tk004")}
    # RATE_LIMIT_FILES=40/minute: tk003 gets 40 at once, then 429 (JSON, Retry-After)...
    statuses = []
    for _ in range(42):
        response = requests.get(f"{nginx.url}{entries['tk003']['url']}/0",
                                headers=bearer(tokens["tk003"]), timeout=10)
        statuses.append(response.status_code)
    assert statuses[:40] == [200] * 40 and statuses[-1] == 429, statuses
    assert_error(response, 429, "rate_limited")
    assert int(response.headers["Retry-After"]) >= 1
    # ...while tk004, through the same nginx and address, is served.
    response = requests.get(f"{nginx.url}{entries['tk004']['url']}/0",
                            headers=bearer(tokens["tk004"]), timeout=10)
    assert response.status_code == 200 and response.headers["X-Cache"] == "HIT"


def test_the_simulator_syncs_through_nginx_with_tickets(ticketed):
    hub, nginx, tokens, content = ticketed
    devices = 4
    simulated = subprocess.run(
        [str(BIN / "dropsync"), "simulate", "--hub", nginx.url, "--admin-token", ADMIN_TOKEN,
         "--devices", str(devices), "--prefix", "simtk-", "--ramp", "1", "--duration", "6",
         "--start", "together", "--seed", "3", "--json", "--quiet"],
        cwd=hub.workdir, capture_output=True, text=True, timeout=120)
    assert simulated.returncode == 0, simulated.stdout + simulated.stderr
    summary = json.loads(simulated.stdout)
    assert summary["errors"]["unexplained"] == 0, summary["errors"]
    # Every simulated device holds the file (the hub's count, from the devices' reports:
    # what the dashboard shows, so it keeps working when nginx serves the chunks).
    packages = requests.get(hub.url + "/api/v1/admin/packages", headers=ADMIN,
                            timeout=10).json()["packages"]
    for package in packages:
        progress = requests.get(f"{hub.url}/api/v1/admin/packages/{package['id']}",
                                headers=ADMIN, timeout=10).json()["progress"]
        assert progress["have"] == devices, progress  # the tk* devices report nothing
    # At most one hub request per chunk for the whole fleet (proxy_cache_lock).
    sentinel(hub, nginx, "tk001", tokens["tk001"])
    fleet_lines = [line for line in hub.log.splitlines() if "/files/t/" in line
                   and "<int:index>" in line and "device=simtk-" in line]
    assert len(fleet_lines) <= sum(p["chunk_count"] for p in packages), fleet_lines


def test_a_ticket_opens_cached_chunks_only_and_a_miss_needs_the_token(ticketed):
    """The trade-off docs/admin/nginx.md states: nginx cannot check tokens, so a cached chunk goes
    to whoever holds a valid ticket url; a chunk not yet cached reaches the hub, which
    wants the device's token too (and nginx never caches its refusal)."""
    hub, nginx, tokens, content = ticketed
    extra = os.urandom(5000)
    response = requests.put(hub.url + "/api/v1/admin/staging/all/fw/extra.bin", data=extra,
                            headers=ADMIN, timeout=10)
    assert response.status_code == 200, response.text
    files = requests.get(f"{nginx.url}{FILES}/manifest/tk006", headers=bearer(tokens["tk006"]),
                         timeout=10).json()["files"]
    url = nginx.url + next(f["url"] for f in files if f["path"] == "fw/extra.bin") + "/0"
    for _ in range(2):
        assert_error(requests.get(url, timeout=10), 401)  # a miss: the hub asks for a token
    fetched = requests.get(url, headers=bearer(tokens["tk006"]), timeout=10)
    assert fetched.status_code == 200 and fetched.headers["X-Cache"] == "MISS"
    without = requests.get(url, timeout=10)  # now cached: the ticket alone opens it
    assert without.status_code == 200 and without.headers["X-Cache"] == "HIT"
    assert without.content == fetched.content == extra[:4096]
