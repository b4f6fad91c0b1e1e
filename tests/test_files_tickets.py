"""Download tickets on the hub alone (no nginx): with DOWNLOAD_TICKET_SECRET the manifest's
urls carry a signed, expiring ticket in nginx's secure_link form, and the hub answers those
urls itself (chunks, whole files, ranges), checking the ticket AND the device's token."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import time

import pytest
from support import ADMIN_TOKEN, ROOT, assert_error
from sync_support import Admin, bearer, entry_of, fetch, stage, wait_until
from werkzeug.test import Client

from dropsync import create_app
from dropsync.api.lanes import DeviceLanes
from dropsync.errors import ConfigError

SECRET = "test-ticket-secret-0123456789abcdefghij"
FILES = "/api/v1/files"


def nginx_signature(expires: int, device: str, package: str, version: int) -> str:
    """secure_link_md5 "$expires$device/$package/$version $secret", as nginx documents it."""
    digest = hashlib.md5(f"{expires}{device}/{package}/{version} {SECRET}".encode()).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def ticket_url(expires: int, device: str, package: str, version: int, sig: str = "") -> str:
    sig = sig or nginx_signature(expires, device, package, version)
    return f"{FILES}/t/{expires}/{sig}/{device}/{package}/{version}"


@pytest.fixture
def ticketed(settings):
    settings.update(DOWNLOAD_TICKET_SECRET=SECRET, DOWNLOAD_TICKET_TTL_S="1",
                    DOWNLOAD_ACCEL_PREFIX="/_blobs/")
    app = create_app(settings)
    yield app
    app.extensions["dropsync"].close()


@pytest.fixture
def fleet(ticketed):
    client = ticketed.test_client()
    tokens = {}
    for device in ("esp001", "esp002"):
        response = client.post("/api/v1/admin/devices/register", json={"id": device},
                               headers=bearer(ADMIN_TOKEN))
        tokens[device] = response.get_json()["token"]
    return client, tokens


def test_without_the_setting_urls_stay_as_today_and_tickets_are_refused(client, admin):
    token = admin.register_device("esp001")
    stage(admin, "all/app.bin", os.urandom(5000))
    entry = entry_of(client, "esp001", token, "app.bin")
    assert entry["url"] == f"{FILES}/download/esp001/{entry['id']}/{entry['version']}"
    expires = int(time.time()) + 3600
    url = ticket_url(expires, "esp001", entry["id"], entry["version"])
    for path in (url, f"{url}/0"):
        assert_error(fetch(client, path, token), 403, "ticket_invalid")


def test_the_manifest_url_carries_a_ticket_the_hub_honours(fleet):
    client, tokens = fleet
    content = os.urandom(2 * 4096 + 123)
    stage(Admin(client), "all/app.bin", content)
    entry = entry_of(client, "esp001", tokens["esp001"], "app.bin")
    prefix = f"{FILES}/t/"
    assert entry["url"].startswith(prefix)
    expires_text, sig, device, package, version = entry["url"][len(prefix):].split("/")
    assert (device, package, version) == ("esp001", entry["id"], str(entry["version"]))
    assert sig == nginx_signature(int(expires_text), device, package, entry["version"])
    assert int(expires_text) > time.time()  # the end of the next whole window (1 s here)

    plain = f"{FILES}/download/esp001/{entry['id']}/{entry['version']}"
    chunks = []
    for index in range(entry["chunks"]):
        by_ticket = fetch(client, f"{entry['url']}/{index}", tokens["esp001"])
        # Bytes in the answer even with DOWNLOAD_ACCEL_PREFIX: nginx caches this answer.
        assert by_ticket.status_code == 200 and "X-Accel-Redirect" not in by_ticket.headers
        by_token = fetch(client, f"{plain}/{index}", tokens["esp001"])
        for header in ("X-Chunk-SHA256", "X-Chunk-Index", "X-Chunk-Count",
                       "X-Package-Version"):
            assert by_ticket.headers[header] == by_token.headers[header], header
        chunks.append(by_ticket.data)
    assert b"".join(chunks) == content
    # The whole file and a Range keep the X-Accel path (one hub check per request).
    whole = fetch(client, entry["url"], tokens["esp001"])
    assert whole.status_code == 200
    assert whole.headers["X-Accel-Redirect"].endswith(entry["sha256"])
    assert_error(fetch(client, entry["url"], tokens["esp001"], Range="bytes=0-1,5-6"), 416)


def test_the_ticket_changes_once_per_window_and_the_etag_with_it(fleet):
    client, tokens = fleet
    stage(Admin(client), "all/app.bin", os.urandom(100))
    first = client.get(f"{FILES}/manifest/esp001", headers=bearer(tokens["esp001"]))
    etag = first.headers["ETag"]
    again = client.get(f"{FILES}/manifest/esp001", headers={
        **bearer(tokens["esp001"]), "If-None-Match": etag})
    if again.status_code == 200:  # the window just turned: the next ask is a 304 again
        etag = again.headers["ETag"]

    def turned():
        reply = client.get(f"{FILES}/manifest/esp001",
                           headers={**bearer(tokens["esp001"]), "If-None-Match": etag})
        return reply if reply.status_code == 200 else None
    later = wait_until(turned, 10, message="a new ticket window")
    assert later.headers["ETag"] != etag
    assert later.get_json()["version"] == first.get_json()["version"]  # same files
    assert later.get_json()["files"][0]["url"] != first.get_json()["files"][0]["url"]


def test_bad_expired_and_borrowed_tickets_get_no_bytes(fleet):
    client, tokens = fleet
    content = os.urandom(5000)
    stage(Admin(client), "all/app.bin", content)
    stage(Admin(client), "all/other.bin", os.urandom(300))
    entry = entry_of(client, "esp001", tokens["esp001"], "app.bin")
    other = entry_of(client, "esp001", tokens["esp001"], "other.bin")
    package, version = entry["id"], entry["version"]
    expires = int(entry["url"].split("/")[5])
    own = tokens["esp001"]
    refused = {
        # a tampered signature
        ticket_url(expires, "esp001", package, version, sig="A" * 22): (own, 403,
                                                                       "ticket_invalid"),
        # esp001's ticket, with another version, package, device or expiry in the path
        ticket_url(expires, "esp001", package, version + 1,
                   nginx_signature(expires, "esp001", package, version)): (own, 403,
                                                                           "ticket_invalid"),
        ticket_url(expires, "esp001", other["id"], other["version"],
                   nginx_signature(expires, "esp001", package, version)): (own, 403,
                                                                           "ticket_invalid"),
        ticket_url(expires, "esp002", package, version,
                   nginx_signature(expires, "esp001", package, version)):
            (tokens["esp002"], 403, "ticket_invalid"),
        ticket_url(expires + 3600, "esp001", package, version,
                   nginx_signature(expires, "esp001", package, version)): (own, 403,
                                                                           "ticket_invalid"),
        # a well-signed ticket whose time is over
        ticket_url(int(time.time()) - 1, "esp001", package, version): (own, 410,
                                                                       "ticket_expired"),
        # esp001's own ticket, presented with another device's token, or none
        entry["url"]: (tokens["esp002"], 403, "wrong_device"),
    }
    for url, (token, status, code) in refused.items():
        for path in (url, f"{url}/0"):
            response = fetch(client, path, token)
            assert_error(response, status, code)
            assert content[:64] not in response.data
    for path in (entry["url"], f"{entry['url']}/0"):
        assert_error(client.get(path), 401)


@pytest.mark.parametrize("secret", ["short", "x" * 31, "has space" + "x" * 30,
                                    'quote"' + "x" * 30])
def test_a_short_or_unquotable_secret_is_a_config_error(settings, secret):
    settings["DOWNLOAD_TICKET_SECRET"] = secret
    with pytest.raises(ConfigError, match="DOWNLOAD_TICKET_SECRET"):
        create_app(settings)


def test_the_longest_ticket_url_fits_the_firmwares_url_field(fleet):
    """firmware sync.h keeps a manifest url in ``char url[N]``: a ticket url for the
    longest device id the hub accepts (64 characters) must fit, with room to spare."""
    header = (ROOT / "firmware" / "dropsync_node" / "src" / "dropsync_core" / "sync.h")
    field = int(re.search(r"char url\[(\d+)\];", header.read_text()).group(1))
    client, _ = fleet
    longest = "L" * 64
    token = client.post("/api/v1/admin/devices/register", json={"id": longest},
                        headers=bearer(ADMIN_TOKEN)).get_json()["token"]
    stage(Admin(client), "all/app.bin", os.urandom(100))
    url = entry_of(client, longest, token, "app.bin")["url"]
    # Widest parts: expires to the year 2286 (10 digits), a 10-digit version.
    widest = len(url) - len(url.split("/")[5]) + 10 - len(url.split("/")[-1]) + 10
    assert widest + 1 <= field, (widest, field)  # + the terminating NUL


def tampered(sig: str) -> dict[str, str]:
    """A signature changed at its end, one character longer and one shorter: a check that
    compares a prefix (either way) lets one of them through."""
    last = "A" if sig[-1] != "A" else "B"
    return {"last changed": sig[:-1] + last, "one added": sig + "A",
            "one removed": sig[:-1], "first changed": ("A" if sig[0] != "A" else "B")
            + sig[1:]}


def flask_only(app) -> Client:
    """A client of the app behind the device lanes: the Flask views answer every request."""
    layer = app.wsgi_app
    while not isinstance(layer, DeviceLanes):
        layer = getattr(layer, "wsgi_app", None) or layer.app
    return Client(layer.wsgi_app)


def test_a_signature_changed_at_its_end_or_in_length_is_refused_on_both_paths(settings):
    settings.update(DOWNLOAD_TICKET_SECRET=SECRET, DOWNLOAD_TICKET_TTL_S="3600")
    app = create_app(settings)
    try:
        client = app.test_client()
        token = client.post("/api/v1/admin/devices/register", json={"id": "esp001"},
                            headers=bearer(ADMIN_TOKEN)).get_json()["token"]
        content = os.urandom(5000)
        stage(Admin(client), "all/app.bin", content)
        entry = entry_of(client, "esp001", token, "app.bin")
        prefix = f"{FILES}/t/"
        expires, sig, rest = entry["url"][len(prefix):].split("/", 2)
        behind_lanes = flask_only(app)
        for answer_of in (lambda path: fetch(client, path, token),
                          lambda path: behind_lanes.get(path, headers=bearer(token),
                                                        buffered=True)):
            for path in (entry["url"], f"{entry['url']}/0"):  # the whole file, a chunk
                issued = answer_of(path)  # the ticket as issued
                assert issued.status_code == 200 and issued.data, path
            for how, bad in tampered(sig).items():
                url = f"{prefix}{expires}/{bad}/{rest}"
                for path in (url, f"{url}/0"):
                    response = answer_of(path)
                    assert_error(response, 403, "ticket_invalid")
                    assert content[:64] not in response.data, how
    finally:
        app.extensions["dropsync"].close()
