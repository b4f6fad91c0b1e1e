"""The dashboard in-process: sessions, CSRF, Origin, login limits, error pages, paging,
live regions, and the health series behind the charts. The browser tests
(test_dashboard_browser.py) drive the same pages in Chromium against a real hub."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from dashboard_support import PASSWORD, log_in, page_token
from support import ROOT, assert_error

from dropsync.dashboard import views
from dropsync.fleet import credentials, devices
from dropsync.store.health import HealthSeries

LOGIN_ENDPOINTS = {"dashboard.login", "dashboard.login_submit"}


@pytest.fixture
def dashboard_settings(settings):
    return {**settings, "ADMIN_PASSWORD": PASSWORD}


@pytest.fixture
def dash_app(dashboard_settings):
    from dropsync import create_app

    app = create_app(dashboard_settings)
    yield app
    app.extensions["dropsync"].close()


@pytest.fixture
def dash_hub(dash_app):
    return dash_app.extensions["dropsync"]


@pytest.fixture
def browser(dash_app):
    """A test client logged in as the first operator."""
    client = dash_app.test_client()
    response = log_in(client)
    assert response.status_code == 302, response.get_data(as_text=True)
    return client


def session_cookie(client):
    return client.get_cookie("dropsync_session")


# -- sessions --------------------------------------------------------------------------
def dashboard_routes(app):
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith("dashboard.") and rule.endpoint not in LOGIN_ENDPOINTS:
            path = re.sub(r"<int:\w+>", "1", rule.rule)
            path = re.sub(r"<(?:\w+:)?\w+>", "x", path)
            for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
                yield method, path


def test_every_dashboard_route_sends_a_stranger_to_the_login_page(dash_app):
    client = dash_app.test_client()
    routes = list(dashboard_routes(dash_app))
    assert len(routes) >= 25
    for method, path in routes:
        response = client.open(path, method=method)
        assert response.status_code == 302, (method, path, response.status_code)
        assert response.headers["Location"].startswith("/dashboard/login"), (method, path)
    # The page's own scripts get the JSON error shape instead of a redirect.
    assert_error(client.get("/dashboard/?live=1"), 401, "login_required")


def test_login_renews_the_session_and_logout_ends_it_on_the_hub(dash_app):
    client = dash_app.test_client()
    client.get("/dashboard/login")
    before = session_cookie(client).value
    response = log_in(client)
    assert response.status_code == 302 and response.headers["Location"] == "/dashboard/"
    cookie = session_cookie(client)
    assert cookie.value != before and cookie.http_only and cookie.same_site == "Lax"
    assert not cookie.secure  # plain http; see the TLS test below
    assert client.get("/dashboard/").status_code == 200

    stolen = cookie.value
    token = page_token(client)
    assert client.post("/dashboard/logout", data={"csrf_token": token}).status_code == 302
    assert client.get("/dashboard/").status_code == 302
    # The old cookie, replayed as is, is refused: the hub ended the session.
    replay = dash_app.test_client()
    replay.set_cookie("dropsync_session", stolen)
    assert replay.get("/dashboard/").headers["Location"].startswith("/dashboard/login")


def test_the_cookie_is_secure_over_tls(dash_app):
    client = dash_app.test_client()
    response = client.get("/dashboard/login", base_url="https://hub.local")
    assert "Secure" in response.headers["Set-Cookie"]
    assert "HttpOnly" in response.headers["Set-Cookie"]
    assert "SameSite=Lax" in response.headers["Set-Cookie"]


def test_a_password_change_ends_the_operators_other_sessions(dash_app, dash_hub):
    credentials.add_operator(dash_hub.stores, "bob", "bob-password-1")
    mine, theirs, bobs = (dash_app.test_client() for _ in range(3))
    for client in (mine, theirs):
        assert log_in(client).status_code == 302
    assert log_in(bobs, "bob", "bob-password-1").status_code == 302
    response = mine.post("/dashboard/operators/admin/password",
                         data={"password": "a-new-password-2", "csrf_token": page_token(mine)})
    assert response.status_code == 302
    assert mine.get("/dashboard/").status_code == 200  # the one who changed it stays in
    assert theirs.get("/dashboard/").status_code == 302  # the other session is over
    assert bobs.get("/dashboard/").status_code == 200  # other operators are untouched
    # Through the admin API too (the same rule): every session of bob ends.
    credentials.set_operator_password(dash_hub.stores, "bob", "bob-password-2")
    assert bobs.get("/dashboard/").status_code == 302


def test_wrong_passwords_are_refused_then_throttled_with_retry_after(dashboard_settings):
    from dropsync import create_app

    app = create_app({**dashboard_settings, "RATE_LIMITS_ENABLED": True})
    try:
        client = app.test_client()
        for _ in range(5):
            response = log_in(client, password="wrong-password")
            assert response.status_code == 401
            assert "Wrong username or password" in response.get_data(as_text=True)
        response = log_in(client)  # even the right password now waits
        assert response.status_code == 429
        assert int(response.headers["Retry-After"]) >= 1
        assert "Too many failed logins" in response.get_data(as_text=True)
        # Per username too: another address guessing the same name is held up.
        other = app.test_client()
        response = log_in(other, password="x", address="10.0.0.9")
        assert response.status_code == 429
        # A different name from a fresh address is not.
        assert log_in(app.test_client(), "nobody", "x",
                      address="10.0.0.8").status_code == 401
    finally:
        app.extensions["dropsync"].close()


def test_an_unknown_username_costs_a_password_check_like_a_wrong_password(
        dash_hub, monkeypatch):
    checked = []
    real_check = credentials.check_password_hash

    def counting_check(password_hash, password):
        checked.append(password_hash)
        return real_check(password_hash, password)

    monkeypatch.setattr(credentials, "check_password_hash", counting_check)
    for username in ("admin", "no-such-operator"):
        with pytest.raises(credentials.Unauthorized):
            credentials.verify_operator(dash_hub.stores, username, "wrong-password")
    assert len(checked) == 2
    assert checked[0].split("$")[0] == checked[1].split("$")[0]  # the same hash method


# -- CSRF and Origin -------------------------------------------------------------------
def test_a_post_without_the_csrf_token_is_refused_with_a_readable_page(browser, dash_hub):
    response = browser.post("/dashboard/devices", data={"id": "esp001"})
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert "CSRF" in html and "<h1>" in html and "Traceback" not in html
    assert "esp001" not in dash_hub.stores.devices
    # The page's fetch calls send it as a header; without it they get the JSON shape.
    response = browser.post("/dashboard/devices/esp001/commands", json={"name": "reboot"},
                            headers={"Accept": "application/json"})
    assert_error(response, 400)


def test_a_post_from_another_origin_is_refused_even_with_a_token(browser, dash_hub):
    token = page_token(browser)
    response = browser.post("/dashboard/devices", data={"id": "esp001", "csrf_token": token},
                            headers={"Origin": "http://evil.example"})
    assert response.status_code == 403 and "another site" in response.get_data(as_text=True)
    response = browser.post("/dashboard/devices", data={"id": "esp002", "csrf_token": token},
                            headers={"Sec-Fetch-Site": "cross-site"})
    assert response.status_code == 403
    assert len(dash_hub.stores.devices) == 0
    # Same origin goes through.
    response = browser.post("/dashboard/devices", data={"id": "esp003", "csrf_token": token},
                            headers={"Origin": "http://localhost"})
    assert response.status_code == 302
    assert "esp003" in dash_hub.stores.devices


def test_the_login_post_needs_its_csrf_token_too(dash_app):
    client = dash_app.test_client()
    response = client.post("/dashboard/login", data={"username": "admin",
                                                     "password": PASSWORD})
    assert response.status_code == 400


# -- pages -----------------------------------------------------------------------------
def test_register_shows_the_token_once_with_a_config_snippet(browser, dash_hub):
    token = page_token(browser)
    response = browser.post("/dashboard/devices", data={
        "id": "esp001", "name": "Greenhouse", "groups": "field, north", "csrf_token": token},
        follow_redirects=True)
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    device_token = re.search(r'id="device-token"[^>]*value="([^"]+)"', html)[1]
    assert devices.authenticate_device(dash_hub.stores, "esp001", device_token)
    snippet = re.search(r'<pre id="config-snippet"[^>]*>(.*?)</pre>', html, re.S)[1]
    assert f'#define DEVICE_TOKEN "{device_token}"' in snippet
    assert '#define DEVICE_ID "esp001"' in snippet
    # The names are the firmware's own (its config.example.h).
    example = (ROOT / "firmware" / "dropsync_node" / "config.example.h").read_text()
    for name in re.findall(r"#define (\w+)", snippet):
        assert f"#define {name} " in example, name
    assert device_token not in browser.get("/dashboard/devices/esp001").get_data(as_text=True)
    assert dash_hub.stores.devices.get("esp001")["groups"] == ["field", "north"]
    # Bad input comes back as a message on the form, not a stack trace.
    response = browser.post("/dashboard/devices", data={"id": "bad id!", "csrf_token": token},
                            follow_redirects=True)
    assert "use 1-64 letters" in response.get_data(as_text=True)


def test_destructive_posts_ask_first(browser, dash_hub):
    devices.register_device(dash_hub.stores, "esp001")
    token = page_token(browser)
    response = browser.post("/dashboard/devices/esp001/delete", data={"csrf_token": token})
    assert response.status_code == 200 and "Are you sure?" in response.get_data(as_text=True)
    assert "esp001" in dash_hub.stores.devices
    response = browser.post("/dashboard/devices/esp001/delete",
                            data={"csrf_token": token, "confirm": "yes"})
    assert response.status_code == 302
    assert "esp001" not in dash_hub.stores.devices


def test_rotate_disable_and_enable_from_the_device_page(browser, dash_hub, dash_app):
    old_token = devices.register_device(dash_hub.stores, "esp001")[1]
    token = page_token(browser)
    response = browser.post("/dashboard/devices/esp001/rotate-token",
                            data={"csrf_token": token, "confirm": "yes"}, follow_redirects=True)
    new_token = re.search(r'id="device-token"[^>]*value="([^"]+)"',
                          response.get_data(as_text=True))[1]
    node = dash_app.test_client()
    ping = "/api/v1/device/ping/esp001"
    assert node.get(ping, headers={"Authorization": f"Bearer {old_token}"}).status_code == 401
    assert node.get(ping, headers={"Authorization": f"Bearer {new_token}"}).status_code == 200
    browser.post("/dashboard/devices/esp001/disable", data={"csrf_token": token,
                                                             "confirm": "yes"})
    assert node.get(ping, headers={"Authorization": f"Bearer {new_token}"}).status_code == 403
    browser.post("/dashboard/devices/esp001/enable", data={"csrf_token": token})
    assert node.get(ping, headers={"Authorization": f"Bearer {new_token}"}).status_code == 200


def test_operators_and_admin_tokens_are_managed_from_the_page(browser, dash_hub, dash_app):
    token = page_token(browser)
    assert browser.post("/dashboard/operators", data={
        "username": "carol", "password": "carol-password-1", "csrf_token": token}
    ).status_code == 302
    carol = dash_app.test_client()
    assert log_in(carol, "carol", "carol-password-1").status_code == 302
    browser.post("/dashboard/operators/carol/revoke", data={"csrf_token": token,
                                                            "confirm": "yes"})
    assert "carol" not in dash_hub.stores.operators
    assert carol.get("/dashboard/").status_code == 302  # revoked: logged out at once
    # The last operator cannot be revoked, or nobody could log in again.
    response = browser.post("/dashboard/operators/admin/revoke",
                            data={"csrf_token": token, "confirm": "yes"}, follow_redirects=True)
    assert "last operator" in response.get_data(as_text=True)

    response = browser.post("/dashboard/tokens", data={"label": "backup", "csrf_token": token})
    assert response.status_code == 302  # post/redirect/get: a reload makes no second token
    shown = response.headers["Location"]
    secret = re.search(r'id="admin-token"[^>]*value="([^"]+)"',
                       browser.get(shown).get_data(as_text=True))[1]
    again = browser.get(shown)
    assert again.status_code == 410 and secret not in again.get_data(as_text=True)
    assert len(credentials.list_admin_tokens(dash_hub.stores)) == 1
    api = dash_app.test_client()
    headers = {"Authorization": f"Bearer {secret}"}
    assert api.get("/api/v1/admin/devices", headers=headers).status_code == 200
    token_id = credentials.list_admin_tokens(dash_hub.stores)[0]["id"]
    browser.post(f"/dashboard/tokens/{token_id}/revoke", data={"csrf_token": token,
                                                              "confirm": "yes"})
    assert api.get("/api/v1/admin/devices", headers=headers).status_code == 401


def test_staging_folders_naming_no_target_are_warnings(browser, dashboard_settings):
    (Path(dashboard_settings["STAGING_DIR"]) / "esp-unknown").mkdir(parents=True)
    html = browser.get("/dashboard/packages").get_data(as_text=True)
    assert "Staging warnings" in html and "esp-unknown" in html
    assert "esp-unknown" in browser.get("/dashboard/").get_data(as_text=True)


def test_group_commands_from_the_commands_page_can_be_cancelled(browser, dash_hub):
    for device_id in ("esp001", "esp002"):
        devices.register_device(dash_hub.stores, device_id, groups=["field"])
    token = page_token(browser)
    response = browser.post("/dashboard/commands", data={
        "target": "group:field", "name": "sync", "args": "{}", "csrf_token": token},
        headers={"Accept": "application/json"})
    assert response.status_code == 201
    command = response.get_json()
    assert [d["device_id"] for d in command["deliveries"]] == ["esp001", "esp002"]
    html = browser.get("/dashboard/commands").get_data(as_text=True)
    assert f'data-command="{command["id"]}"' in html and "2 pending" in html
    browser.post(f"/dashboard/commands/{command['id']}/cancel", data={"csrf_token": token})
    states = {d["state"] for d in dash_hub.commands.describe(command["id"])["deliveries"]}
    assert states == {"cancelled"}


def test_a_devices_upload_downloads_from_its_page(browser, dash_hub, dash_app):
    token = devices.register_device(dash_hub.stores, "esp001")[1]
    node = dash_app.test_client()
    response = node.post("/api/v1/files/upload/esp001?filename=boot.log", data=b"booted\n",
                         headers={"Authorization": f"Bearer {token}",
                                  "Content-Type": "application/octet-stream"})
    assert response.status_code == 201, response.get_json()
    html = browser.get("/dashboard/devices/esp001").get_data(as_text=True)
    assert 'href="/dashboard/uploads/esp001/boot.log"' in html
    download = browser.get("/dashboard/uploads/esp001/boot.log")
    assert download.status_code == 200 and download.data == b"booted\n"
    download.close()


def test_the_devices_page_pages_and_filters_on_the_hub(browser, dash_hub):
    for n in range(120):
        devices.register_device(dash_hub.stores, f"node-{n:03d}",
                                groups=["north"] if n % 3 == 0 else [])
    html = browser.get("/dashboard/devices").get_data(as_text=True)
    assert html.count('href="/dashboard/devices/node-') == 50
    assert "120 devices, page 1 of 3" in html
    html = browser.get("/dashboard/devices?page=3").get_data(as_text=True)
    assert html.count('href="/dashboard/devices/node-') == 20
    html = browser.get("/dashboard/devices?q=north").get_data(as_text=True)
    assert "40 devices" in html
    html = browser.get("/dashboard/devices?q=node-11&state=offline").get_data(as_text=True)
    assert "10 devices" in html  # node-110 .. node-119, never seen
    assert "0 devices" in browser.get("/dashboard/devices?state=online").get_data(as_text=True)


def test_live_regions_come_back_as_json(browser, dash_hub):
    devices.register_device(dash_hub.stores, "esp001")
    for path, regions in (("/dashboard/", {"overview-live"}),
                          ("/dashboard/devices", {"device-rows"}),
                          ("/dashboard/devices/esp001", {"device-state", "device-commands",
                                                         "device-files", "device-charts",
                                                         "device-messages"}),
                          ("/dashboard/commands", {"command-rows"}),
                          ("/dashboard/packages", {"package-rows", "staging-state"})):
        page = browser.get(path).get_data(as_text=True)
        for region in regions:
            assert f'id="{region}"' in page, (path, region)
        answer = browser.get(path + "?live=1")
        assert answer.status_code == 200 and answer.mimetype == "application/json"
        assert set(answer.get_json()["regions"]) == regions


def test_open_pages_grow_nothing_on_the_hub(browser, dash_hub):
    """Refreshes with ever-new searches keep the shared figures to a bounded few."""
    for n in range(100):
        assert browser.get(f"/dashboard/devices?q=x{n}&live=1").status_code == 200
        assert browser.get("/dashboard/?live=1").status_code == 200
    cache = views.recent(dash_hub)
    assert len(cache._values) <= cache.max_entries


def test_an_unchanged_live_answer_is_a_304(browser):
    first = browser.get("/dashboard/?live=1")
    again = browser.get("/dashboard/?live=1", headers={"If-None-Match": first.headers["ETag"]})
    assert again.status_code == 304 and not again.data


def test_the_activity_page_lists_events_and_filters_them(browser, dash_hub):
    devices.register_device(dash_hub.stores, "esp001", actor="test")
    token = page_token(browser)
    browser.post("/dashboard/devices/esp001/commands", data={"name": "reboot",
                                                             "csrf_token": token})
    html = browser.get("/dashboard/activity").get_data(as_text=True)
    for kind in ("device.registered", "command.queued", "operator.login"):
        assert kind in html
    html = browser.get("/dashboard/activity?kind=command").get_data(as_text=True)
    assert "command.queued" in html and "operator.login" not in html


def test_dashboard_errors_are_pages_and_api_errors_stay_json(browser, dash_app):
    response = browser.get("/dashboard/devices/ghost")
    assert response.status_code == 404 and response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    assert "404" in html and "ghost" in html and "Traceback" not in html
    assert browser.get("/dashboard/no/such/page").status_code == 404
    assert_error(browser.get("/dashboard/devices/ghost", headers={"Accept": "application/json"}),
                 404)
    assert_error(dash_app.test_client().get("/api/v1/admin/devices/ghost"), 401)


def test_pages_send_a_strict_content_security_policy(browser):
    response = browser.get("/dashboard/")
    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy
    assert response.headers["X-Frame-Options"] == "DENY"


# -- offline ---------------------------------------------------------------------------
FOREIGN = re.compile(r"""(?:src|href|action|poster|data)\s*=\s*["']?\s*(?:https?:)?//"""
                     r"""|url\(\s*["']?\s*(?:https?:)?//|@import\s+["']?(?:https?:)?//"""
                     r"""|(?:fetch|open|importScripts)\(\s*["'](?:https?:)?//""", re.I)


def test_nothing_in_templates_or_static_loads_from_another_host():
    files = [p for folder in ("templates", "static") for p in (ROOT / folder).rglob("*")
             if p.is_file() and p.suffix in (".html", ".css", ".js", ".svg")]
    assert len(files) >= 10
    offenders = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p in files
                 for m in FOREIGN.finditer(p.read_text())]
    assert not offenders, offenders
    # The check itself catches what it is for.
    for sample in ('<script src="https://cdn.example/x.js">', "url(//fonts.example/a.woff)",
                   "@import 'http://x/y.css'", "<link href='//cdn/x.css'>"):
        assert FOREIGN.search(sample), sample


# -- the health series -----------------------------------------------------------------
def test_the_health_series_is_downsampled_bounded_and_checkpointed_per_bucket(tmp_path):
    path = tmp_path / "health.json"
    series = HealthSeries(path, bucket_s=60)
    start = (int(time.time()) - 2 * 86_400) // 60 * 60  # two days ago, to end about now
    for second in range(0, 180, 5):  # 36 heartbeats over three minutes
        series.record("esp001", rssi=-60 - second // 60, free_heap=30_000, now=start + second)
    points = series.points("esp001", now=start + 180)
    assert [p["t"] for p in points] == [start, start + 60, start + 120]
    assert [p["rssi"] for p in points] == [-60, -61, -62]
    assert series.checkpoint() is True  # two buckets closed: written once
    assert series.checkpoint() is False  # nothing closed since: no write
    series.record("esp001", rssi=-70, now=start + 125)  # same open bucket: still no write
    assert series.checkpoint() is False
    series.record("esp001", free_heap=1, now=start + 185)
    assert series.checkpoint() is True

    # A day of heartbeats every 5 s keeps at most a day of buckets.
    for second in range(0, 2 * 86_400, 30):
        series.record("esp002", rssi=-50, free_heap=20_000, now=start + second)
    kept = series.points("esp002", now=start + 2 * 86_400)
    assert 1_400 <= len(kept) <= 1_441

    series.stop()  # closes the open buckets into the checkpoint
    reopened = HealthSeries(path, bucket_s=60)
    assert json.loads(path.read_text())["bucket_s"] == 60
    assert abs(len(reopened.points("esp002", now=start + 2 * 86_400)) - len(kept)) <= 2


def test_heartbeats_feed_the_device_chart(browser, dash_hub, dash_app):
    token = devices.register_device(dash_hub.stores, "esp001")[1]
    client = dash_app.test_client()
    for rssi in (-70, -65, -60):
        response = client.post("/api/v1/device/heartbeat/esp001", json={
            "rssi": rssi, "free_heap": 30_000}, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200, response.get_json()
    html = browser.get("/dashboard/devices/esp001").get_data(as_text=True)
    counts = [int(n) for n in re.findall(r'data-points="(\d+)"', html)]
    assert counts and all(n >= 1 for n in counts), counts
    assert "<polyline" in html


@pytest.mark.parametrize("path", ["templates", "static"])
def test_assets_named_by_the_packaging_exist(path):
    setup = (ROOT / "setup.cfg").read_text()
    for pattern in re.findall(rf"= ({path}/[^\n]+)", setup):
        for glob in pattern.split(","):
            assert list(Path(ROOT).glob(glob.strip())), glob
