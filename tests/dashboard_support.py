"""Helpers for the dashboard's tests: the first operator's password, logging in, the
CSRF token a page carries, and for the browser tests a real hub with a known operator
password and Chromium logged in to it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from support import ADMIN_TOKEN, HubProcess

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu"]

PASSWORD = "operator-password-1"


def csrf_token(client, path="/dashboard/login") -> str:
    page = client.get(path).get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', page)[1]


def log_in(client, username="admin", password=PASSWORD, address="127.0.0.1"):
    token = csrf_token(client)
    return client.post("/dashboard/login", data={"username": username, "password": password,
                                                 "csrf_token": token},
                       environ_base={"REMOTE_ADDR": address})


def page_token(client) -> str:
    html = client.get("/dashboard/").get_data(as_text=True)
    return re.search(r'<meta name="csrf-token" content="([^"]+)"', html)[1]


def dashboard_hub(workdir: Path, password: str, **env: str) -> HubProcess:
    """A real hub (started) whose ``admin`` operator has ``password``; ``env`` adds
    ``DROPSYNC_*`` settings. Skips the test where Debian's Chromium is missing."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is missing: run tests/system-deps.sh")
    return HubProcess(workdir, {"DROPSYNC_ADMIN_TOKEN": ADMIN_TOKEN,
                                "DROPSYNC_ADMIN_PASSWORD": password,
                                "DROPSYNC_LOG_LEVEL": "WARNING",
                                **{f"DROPSYNC_{k}": v for k, v in env.items()}}).start()


def log_in_page(page, url: str, password: str, username: str = "admin") -> None:
    """Log a Playwright page in to the dashboard at ``url``; it lands on the overview."""
    from playwright.sync_api import expect

    page.goto(url + "/dashboard/login")
    page.fill("#username", username)
    page.fill("#password", password)
    page.click("button[type=submit]")
    expect(page).to_have_url(url + "/dashboard/")
