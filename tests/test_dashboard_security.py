"""The dashboard's security rules, each on every route or page it guards: CSRF on every
state change, escaping of everything a device controls on every page and live region,
session expiry, and control characters in ``next=``."""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path

import pytest
from dashboard_support import PASSWORD, log_in, page_token
from support import ROOT

from dropsync import create_app
from dropsync.fleet import devices

#: What a hostile device writes wherever it can: it must reach every page as text.
MARKUP = '<img src=x onerror="alert(1)">'
#: Dashboard routes that need no session (the login form and its post).
PUBLIC = {"dashboard.login", "dashboard.login_submit"}
UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}


@pytest.fixture
def dash(settings):
    app = create_app({**settings, "ADMIN_PASSWORD": PASSWORD})
    yield app
    app.extensions["dropsync"].close()


def stored_state(data_dir: Path) -> dict[str, str]:
    """Every store file's digest, but the ones that change on reads (liveness, sessions'
    last use) and the hub's own lock."""
    skip = ("liveness", "lock", "health", "sessions")
    return {str(p.relative_to(data_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(data_dir.rglob("*"))
            if p.is_file() and not any(word in p.name for word in skip)}


def sample_path(rule) -> str:
    path = re.sub(r"<int:\w+>", "1", rule.rule)
    path = re.sub(r"<path:\w+>", "data/x.bin", path)
    return re.sub(r"<(?:\w+:)?\w+>", "esp001", path)


def test_every_dashboard_change_needs_its_csrf_token(dash, settings):
    client = dash.test_client()
    assert log_in(client).status_code == 302
    hub = dash.extensions["dropsync"]
    devices.register_device(hub.stores, "esp001", actor="test")
    routes = [(method, rule) for rule in dash.url_map.iter_rules()
              if rule.endpoint.startswith("dashboard.") and rule.endpoint not in PUBLIC
              for method in sorted(rule.methods & UNSAFE)]
    assert len(routes) >= 10
    data_dir = Path(settings["DATA_DIR"])
    before = stored_state(data_dir)
    for method, rule in routes:
        path = sample_path(rule)
        fields = {"id": "esp002", "name": "reboot", "target": "all", "username": "mallory",
                  "password": "a-password-of-mallory", "label": "x", "confirm": "yes"}
        answer = client.open(path, method=method, data=fields)
        assert answer.status_code == 400, (method, path, answer.status_code)
        # and a JSON post (the pages' fetch) with no X-CSRFToken header
        answer = client.open(path, method=method, json=fields,
                             headers={"Accept": "application/json"})
        assert answer.status_code == 400, (method, path, answer.status_code)
    assert stored_state(data_dir) == before, "a refused post changed stored data"
    # the same posts with the page's token do get through (the check is what refused them)
    token = page_token(client)
    answer = client.post("/dashboard/devices", data={"id": "esp002", "csrf_token": token},
                         follow_redirects=True)
    assert answer.status_code == 200 and b"esp002" in answer.data


def hostile_device(client, hub, tmp_path) -> str:
    """A device that puts markup in everything it controls: its message text and data,
    its inventory, an uploaded file's name, a command's result."""
    device, token = devices.register_device(hub.stores, "esp666", actor="test")
    auth = {"Authorization": f"Bearer {token}"}
    assert client.post("/api/v1/device/messages/esp666", headers=auth, json={
        "level": "error", "text": MARKUP, "data": {"why": MARKUP}}).status_code == 201
    assert client.post("/api/v1/device/heartbeat/esp666", headers=auth, json={
        "firmware_version": MARKUP[:60], "rssi": -60, "free_heap": 1000,
        "board": MARKUP, MARKUP[:60]: MARKUP}).status_code == 200
    name = "report-" + "x" * 4 + ".txt"  # upload names are checked: the markup goes inside
    assert client.post(f"/api/v1/files/upload/esp666?filename={name}", headers=auth,
                       data=MARKUP.encode(),
                       content_type="application/octet-stream").status_code == 201
    command = hub.commands.send("esp666", {"name": "echo", "args": {"m": MARKUP},
                                           "priority": 50}, "test")
    polled = client.get("/api/v1/device/commands/esp666", headers=auth).get_json()
    assert polled["commands"][0]["id"] == command["id"]
    assert client.post("/api/v1/device/commands/esp666/complete", headers=auth, json={
        "command_id": command["id"], "success": False, "result": {"error": MARKUP},
        "error": MARKUP}).status_code == 200
    return token


def test_what_a_device_controls_is_escaped_on_every_page_and_live_region(dash, tmp_path):
    client = dash.test_client()
    assert log_in(client).status_code == 302
    hostile_device(client, dash.extensions["dropsync"], tmp_path)
    pages = [sample_path(rule).replace("esp001", "esp666")
             for rule in dash.url_map.iter_rules()
             if rule.endpoint.startswith("dashboard.") and "GET" in rule.methods
             and rule.endpoint not in PUBLIC and "<path:" not in rule.rule
             and "uploads" not in rule.rule and "/new" not in rule.rule]
    assert "/dashboard/devices/esp666" in pages
    shown = 0
    for path in pages:
        for live in ("", "?live=1"):
            answer = client.get(path + live)
            if answer.status_code != 200:
                continue
            text = answer.get_data(as_text=True)
            if answer.mimetype == "text/csv":  # data, not a page: checked below
                assert answer.headers["Content-Disposition"].startswith("attachment")
                assert answer.headers["X-Content-Type-Options"] == "nosniff"
                continue
            if live:
                text = "".join(json.loads(text).get("regions", {}).values())
            assert MARKUP not in text, (path + live)
            assert "<img src=x" not in text, (path + live)
            shown += "&lt;img src=x" in text
    assert shown >= 3  # the markup was on the pages, as text


def test_no_template_or_dashboard_code_marks_data_safe():
    """``|safe`` or ``Markup`` over device data would pass it through unescaped; the
    pages build their markup from templates only."""
    found = []
    for path in sorted((ROOT / "templates").rglob("*.html")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\|\s*safe\b", line):
                found.append(f"{path.name}:{number}")
    for path in sorted((ROOT / "dropsync" / "dashboard").glob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\bMarkup\(|markupsafe", line):
                found.append(f"{path.name}:{number}")
    assert found == [], found


def test_an_expired_session_is_refused(settings):
    app = create_app({**settings, "ADMIN_PASSWORD": PASSWORD, "DASHBOARD_SESSION_S": 1})
    try:
        client = app.test_client()
        assert log_in(client).status_code == 302
        assert client.get("/dashboard/").status_code == 200
        time.sleep(2.2)
        answer = client.get("/dashboard/devices")
        assert answer.status_code == 302 and "/dashboard/login" in answer.headers["Location"]
        live = client.get("/dashboard/?live=1", headers={"Accept": "application/json"})
        assert live.status_code == 401
        assert live.get_json()["error"]["code"] == "login_required"
    finally:
        app.extensions["dropsync"].close()


@pytest.mark.parametrize("hostile", ["/dashboard/\r\nSet-Cookie: x=1", "/dashboard/\nX",
                                     "/dashboard/\rX", "/dashboard/\x00"])
def test_a_control_character_in_next_is_never_a_500(dash, hostile):
    client = dash.test_client()
    token = re.search(r'name="csrf_token" value="([^"]+)"',
                      client.get("/dashboard/login").get_data(as_text=True))[1]
    answer = client.post("/dashboard/login", data={
        "username": "admin", "password": PASSWORD, "csrf_token": token, "next": hostile})
    assert answer.status_code == 302 and answer.headers["Location"].endswith("/dashboard/")
    # logged in: the login page sends you on, never to the hostile target
    answer = client.get("/dashboard/login", query_string={"next": hostile})
    assert answer.status_code == 302 and "\n" not in answer.headers["Location"]
    # the cancel form's next= as well
    devices.register_device(dash.extensions["dropsync"].stores, "esp001", actor="test")
    command = dash.extensions["dropsync"].commands.send(
        "esp001", {"name": "reboot", "args": {}, "priority": 50}, "test")
    answer = client.post(f"/dashboard/commands/{command['id']}/cancel",
                         data={"csrf_token": page_token(client), "next": hostile})
    assert answer.status_code == 302 and answer.headers["Location"].endswith(
        "/dashboard/commands")
