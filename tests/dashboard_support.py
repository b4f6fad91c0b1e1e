"""Helpers for the dashboard's tests: the first operator's password, logging in, and the
CSRF token a page carries."""

from __future__ import annotations

import re

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
