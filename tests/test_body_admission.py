"""Request bodies on a served hub (granian and the RSGI bridge): each upload route takes
exactly its own limit, a body is admitted only by a route that exists from a caller it
authenticated, spooled bytes stay within a hub-wide budget, and a full disk answers 507."""

from __future__ import annotations

import json
import os
import re
import socket
import time

import pytest
import requests
from support import ADMIN_TOKEN, assert_error

from dropsync import create_app
from dropsync.bridge import BodyNoRoom, SpooledBody

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
OCTET = {"Content-Type": "application/octet-stream"}
PASSWORD = "operator-password-1"
UPLOAD_MAX = 1_500_000  # over the bridge's 1 MiB in memory: spooled to a file
STAGING_MAX = 1_700_000


def register(url: str, device_id: str) -> dict[str, str]:
    response = requests.post(f"{url}/api/v1/admin/devices/register", json={"id": device_id},
                             headers=ADMIN, timeout=30)
    assert response.status_code == 201, response.text
    return {"Authorization": f"Bearer {response.json()['token']}"}


def dashboard_session(url: str) -> requests.Session:
    session = requests.Session()
    page = session.get(f"{url}/dashboard/login", timeout=30).text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)[1]
    response = session.post(f"{url}/dashboard/login", allow_redirects=False, timeout=30,
                            data={"username": "admin", "password": PASSWORD,
                                  "csrf_token": token})
    assert response.status_code == 302, response.text
    page = session.get(f"{url}/dashboard/", timeout=30).text
    session.headers["X-CSRFToken"] = re.search(
        r'<meta name="csrf-token" content="([^"]+)"', page)[1]
    return session


def chunks(data: bytes, size: int = 65536):
    for start in range(0, len(data), size):
        yield data[start:start + size]


def test_every_upload_form_takes_exactly_its_limit_and_refuses_one_byte_more(hub_process):
    hub = hub_process({"DROPSYNC_ADMIN_TOKEN": ADMIN_TOKEN,
                       "DROPSYNC_UPLOAD_MAX_BYTES": str(UPLOAD_MAX),
                       "DROPSYNC_STAGING_UPLOAD_MAX_BYTES": str(STAGING_MAX),
                       "DROPSYNC_ADMIN_PASSWORD": PASSWORD,
                       "DROPSYNC_RATE_LIMITS_ENABLED": "false"})
    url = hub.url
    device = register(url, "esp001")
    dashboard = dashboard_session(url)
    upload = f"{url}/api/v1/files/upload/esp001"

    def forms(size: int, name: str):
        data = os.urandom(size)
        yield "raw upload", requests.post(f"{upload}?filename={name}-raw.bin", data=data,
                                          headers={**device, **OCTET}, timeout=60)
        yield "chunked upload", requests.post(f"{upload}?filename={name}-chunked.bin",
                                              data=chunks(data), headers={**device, **OCTET},
                                              timeout=60)
        yield "multipart upload", requests.post(upload, files={"file": (f"{name}-mp.bin", data)},
                                                headers=device, timeout=60)

    def staging_forms(size: int, name: str):
        data = os.urandom(size)
        path = f"/staging/esp001/{name}.bin"
        yield "staging PUT", requests.put(f"{url}/api/v1/admin{path}", data=data,
                                          headers={**ADMIN, **OCTET}, timeout=60)
        yield "chunked staging PUT", requests.put(f"{url}/api/v1/admin{path}.c",
                                                  data=chunks(data),
                                                  headers={**ADMIN, **OCTET}, timeout=60)
        yield "dashboard staging PUT", dashboard.put(f"{url}/dashboard{path}.d", data=data,
                                                     headers=OCTET, timeout=60)

    for how, response in [*forms(UPLOAD_MAX, "exact"), *staging_forms(STAGING_MAX, "exact")]:
        assert response.status_code in (200, 201), (how, response.text)
        assert response.json()["size"] in (UPLOAD_MAX, STAGING_MAX), how
    for _how, response in [*forms(UPLOAD_MAX + 1, "over"),
                          *staging_forms(STAGING_MAX + 1, "over")]:
        assert_error(response, 413)
    listed = requests.get(f"{url}/api/v1/files/list/esp001", headers=device, timeout=30).json()
    assert sorted(u["name"] for u in listed["uploads"]) == ["exact-chunked.bin", "exact-mp.bin",
                                                            "exact-raw.bin"]


# -- admission: the route, the caller and the limit before the body --------------------
def send_head(url: str, method: str, path: str, headers: dict[str, str],
              body_start: bytes = b"") -> socket.socket:
    """A request whose head (and the start of its body) is sent; the rest never is."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: hub\r\n{head}\r\n".encode() + body_start)
    return sock


def answer_of(sock: socket.socket, wait_s: float = 5.0) -> tuple[int, dict]:
    """The status and JSON body answered within ``wait_s`` (the body was not all sent)."""
    sock.settimeout(wait_s)
    data = b""
    try:
        while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < length(data):
            piece = sock.recv(65536)
            if not piece:
                break
            data += piece
    except TimeoutError:
        raise AssertionError(f"no answer within {wait_s}s: the hub waits for the body") \
            from None
    finally:
        sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def length(data: bytes) -> int:
    found = re.search(rb"(?i)content-length: *([0-9]+)", data.partition(b"\r\n\r\n")[0])
    return int(found[1]) if found else 0


def routes_with_bodies(settings) -> list[tuple[str, str, str]]:
    """(method, path, endpoint) of every route that takes a body, from the URL map."""
    app = create_app(settings)
    try:
        found = []
        for rule in app.url_map.iter_rules():
            path = re.sub(r"<int:\w+>", "1", rule.rule)
            path = re.sub(r"<(?:\w+:)?\w+>", "esp001", path)
            for method in sorted(rule.methods - {"GET", "HEAD", "OPTIONS"}):
                found.append((method, path, rule.endpoint))
        return found
    finally:
        app.extensions["dropsync"].close()


def test_no_body_is_read_before_its_route_and_caller_pass(hub_process, settings):
    routes = routes_with_bodies(settings)
    assert len(routes) > 30
    hub = hub_process({"DROPSYNC_ADMIN_TOKEN": ADMIN_TOKEN,
                       "DROPSYNC_REQUEST_BODY_TIMEOUT_S": "60",
                       "DROPSYNC_RATE_LIMITS_ENABLED": "false"})
    register(hub.url, "esp001")
    big = {"Content-Type": "application/octet-stream", "Content-Length": str(20 << 20)}
    for method, path, endpoint in [*routes, ("POST", "/no/such/route", None),
                                   ("PUT", "/api/v1/admin/no/such", None)]:
        # no credentials, or a wrong device's token: refused before the 20 MiB arrive
        status, body = answer_of(send_head(hub.url, method, path, big, os.urandom(65536)))
        if endpoint is None:
            assert status == 404, (method, path, body)
        elif endpoint in ("dashboard.login_submit", "enroll.enroll", "enroll.claim"):
            # public (a login, a board with no token yet): the route's own limit holds
            assert status == 413, (method, path, body)
        else:
            assert status == 401, (method, path, body)
        assert set(body["error"]) == {"code", "message", "details"}
    # an authenticated device, over its route's own limit: refused before reading too
    device = register(hub.url, "esp002")
    status, _ = answer_of(send_head(hub.url, "POST", "/api/v1/device/messages/esp002",
                                    {**device, **big}))
    assert status == 413
    status, _ = answer_of(send_head(hub.url, "POST", "/api/v1/device/messages/esp001",
                                    {**device, **big}))
    assert status == 403  # another device's path


def test_spooled_bodies_are_held_within_a_budget_that_keeps_the_stores_room(hub_process,
                                                                         tiny_fs):
    workdir = tiny_fs(96 * 1024)  # 96 MiB; the stores keep 50 MiB of it
    hub = hub_process({"DROPSYNC_ADMIN_TOKEN": ADMIN_TOKEN,
                       "DROPSYNC_UPLOAD_MAX_BYTES": str(30 << 20),
                       "DROPSYNC_REQUEST_BODY_TIMEOUT_S": "60",
                       "DROPSYNC_RATE_LIMITS_ENABLED": "false"}, workdir=workdir)
    device = register(hub.url, "esp001")
    upload = "/api/v1/files/upload/esp001?filename={}"
    declared = {**device, **OCTET, "Content-Length": str(30 << 20)}
    first = send_head(hub.url, "POST", upload.format("a.bin"), declared, bytes(2 << 20))
    time.sleep(0.5)  # the first is being received
    # a second as large would leave the stores less than their room: 507 before reading
    status, body = answer_of(send_head(hub.url, "POST", upload.format("b.bin"), declared))
    assert status == 507 and body["error"]["code"] == "storage_full", body
    message = requests.post(f"{hub.url}/api/v1/device/messages/esp001", json={"text": "ok"},
                            headers=device, timeout=30)
    assert message.status_code == 201  # the stores still write
    first.close()  # gone mid-body: its spooled bytes are given back
    time.sleep(0.5)
    data = os.urandom(30 << 20)
    assert requests.post(hub.url + upload.format("c.bin"), data=data,
                         headers={**device, **OCTET}, timeout=60).status_code == 201


def test_a_body_over_1_mib_on_a_full_disk_answers_507(hub_process, tiny_fs):
    """The disk filled by another writer: 507 in the JSON shape, never a 500."""
    workdir = tiny_fs(64 * 1024)
    hub = hub_process({"DROPSYNC_ADMIN_TOKEN": ADMIN_TOKEN,
                       "DROPSYNC_RATE_LIMITS_ENABLED": "false"}, workdir=workdir)
    device = register(hub.url, "esp001")
    upload = "/api/v1/files/upload/esp001?filename={}"
    filler = workdir / "filler"
    with open(filler, "wb") as out:
        try:
            while True:
                out.write(bytes(1 << 20))
                out.flush()
        except OSError:
            pass
    for body in (os.urandom(3 << 20), chunks(os.urandom(3 << 20))):
        assert_error(requests.post(hub.url + upload.format("d.bin"), data=body,
                                   headers={**device, **OCTET}, timeout=60), 507)
    filler.unlink()
    assert requests.post(hub.url + upload.format("d.bin"), data=os.urandom(3 << 20),
                         headers={**device, **OCTET}, timeout=60).status_code == 201


def test_spooling_onto_a_disk_another_writer_filled_is_no_room_not_an_oserror(tiny_fs):
    """The budget looked at the free space a moment before; another writer took it since:
    the spool's own ENOSPC must still become 507 (``BodyNoRoom``), never a 500."""
    folder = tiny_fs(1024)
    (folder / "filler").write_bytes(bytes(1024 * 1024 - 64 * 1024))
    body = SpooledBody(folder)
    try:
        with pytest.raises(BodyNoRoom):
            for _ in range(40):  # 2.5 MiB: past memory, onto the disk, past its end
                body.write(bytes(64 * 1024))
    finally:
        body.close()
    assert sorted(p.name for p in folder.iterdir()) == ["filler"]
