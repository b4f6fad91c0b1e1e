"""Helpers for the file-sync tests: waiting for the watcher, devices, manifests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from support import ADMIN_TOKEN

FILES = "/api/v1/files"


def wait_until(condition: Callable[[], Any], timeout: float = 10.0, every: float = 0.05,
               message: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``.

    The timeout is a bound on a hang, not a measurement: nothing is asserted about how
    quickly the condition became true.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not reached within {timeout}s")
        time.sleep(every)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def stage(admin, target_path: str, data: bytes, **query):
    headers = {**bearer(ADMIN_TOKEN), "Content-Type": "application/octet-stream"}
    response = admin.client.put(f"/api/v1/admin/staging/{target_path}", data=data,
                                headers=headers, query_string=query)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def fetch(client, path, token, **headers):
    """GET a download, read whole and closed (``buffered``), as a device would."""
    return client.get(path, headers={**bearer(token), **headers}, buffered=True)


def entry_of(client, device_id, token, path):
    files = client.get(f"{FILES}/manifest/{device_id}", headers=bearer(token)).get_json()
    return next(f for f in files["files"] if f["path"] == path)


class Admin:
    """Enough of conftest's admin client for ``stage`` when a test has only a Flask client."""

    def __init__(self, client):
        self.client = client


def tree(folder) -> dict[str, bytes]:
    """Every file below ``folder`` and its bytes (to prove nothing else was written)."""
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}
