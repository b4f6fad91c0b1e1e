"""An operator's day on the dashboard, in-process: what misled or stopped operators before
(the login throttle of a shared address, a reload that rotated a token again, a device
named "new", an upload to a target that reaches nobody, failed commands nowhere to be
found, a live refresh that never answered 304). The browser tests drive the same pages in
Chromium (test_dashboard_day_browser.py)."""

from __future__ import annotations

import re
import time

import pytest
from dashboard_support import PASSWORD, log_in, page_token

from dropsync.fleet import credentials, devices


@pytest.fixture
def day_settings(settings):
    return {**settings, "ADMIN_PASSWORD": PASSWORD}


@pytest.fixture
def day_app(day_settings):
    from dropsync import create_app

    app = create_app(day_settings)
    yield app
    app.extensions["dropsync"].close()


@pytest.fixture
def hub(day_app):
    return day_app.extensions["dropsync"]


@pytest.fixture
def browser(day_app):
    client = day_app.test_client()
    assert log_in(client).status_code == 302
    return client


def test_one_operators_typos_do_not_lock_out_another_at_the_same_address(day_settings):
    from dropsync import create_app

    app = create_app({**day_settings, "RATE_LIMITS_ENABLED": True})
    try:
        credentials.add_operator(app.extensions["dropsync"].stores, "bob", "bobs-password-1")
        for _ in range(5):
            assert log_in(app.test_client(), password="typo-typo").status_code == 401
        assert log_in(app.test_client()).status_code == 429  # admin's name is spent...
        # ...not the address: bob, behind the same NAT, logs in
        assert log_in(app.test_client(), "bob", "bobs-password-1").status_code == 302
        # an address spraying usernames is still stopped, at ten times the rate
        spray = [log_in(app.test_client(), f"user{i}", "x").status_code for i in range(60)]
        assert spray.count(401) == 45 and spray[45:] == [429] * 15, spray  # 5 + 45 = 50
    finally:
        app.extensions["dropsync"].close()


def token_on(html: str) -> str | None:
    found = re.search(r'id="device-token"[^>]*value="([^"]+)"', html)
    return found[1] if found else None


def events(hub, kind: str) -> int:
    return sum(1 for e in hub.stores.history["events"].find(None, limit=500)
               if e["kind"] == kind)


def test_a_reload_of_the_new_token_page_neither_posts_again_nor_shows_it_again(browser, hub):
    csrf = page_token(browser)
    posted = browser.post("/dashboard/devices", data={"id": "esp001", "csrf_token": csrf})
    assert posted.status_code == 302  # post/redirect/get
    page = browser.get(posted.headers["Location"])
    token = token_on(page.get_data(as_text=True))
    assert page.status_code == 200 and devices.authenticate_device(hub.stores, "esp001", token)
    reloaded = browser.get(posted.headers["Location"])  # the browser's reload: a GET
    assert reloaded.status_code == 410 and token_on(reloaded.get_data(as_text=True)) is None
    assert "shown once" in reloaded.get_data(as_text=True)
    assert devices.authenticate_device(hub.stores, "esp001", token)  # still the same
    assert events(hub, "device.registered") == 1

    rotated = browser.post("/dashboard/devices/esp001/rotate-token",
                           data={"csrf_token": csrf, "confirm": "yes"})
    assert rotated.status_code == 302
    new_token = token_on(browser.get(rotated.headers["Location"]).get_data(as_text=True))
    assert browser.get(rotated.headers["Location"]).status_code == 410
    assert events(hub, "device.token_rotated") == 1
    assert devices.authenticate_device(hub.stores, "esp001", new_token)
    # the page is the operator's who made it: another session gets nothing from the key
    other = hub_client_logged_in(browser)
    again = browser.post("/dashboard/devices/esp001/rotate-token",
                         data={"csrf_token": csrf, "confirm": "yes"})
    assert other.get(again.headers["Location"]).status_code == 410


def hub_client_logged_in(browser):
    client = browser.application.test_client()
    credentials.add_operator(browser.application.extensions["dropsync"].stores, "carol",
                             "carols-password-1")
    assert log_in(client, "carol", "carols-password-1").status_code == 302
    return client


def test_a_device_named_new_opens_and_deletes_like_any_other(browser, hub):
    devices.register_device(hub.stores, "new")
    page = browser.get("/dashboard/devices/new").get_data(as_text=True)
    assert 'id="id"' not in page and "new" in page  # its page, not the Register form
    assert "Register a device" in browser.get("/dashboard/register").get_data(as_text=True)
    deleted = browser.post("/dashboard/devices/new/delete",
                           data={"csrf_token": page_token(browser), "confirm": "yes"})
    assert deleted.status_code == 302 and "new" not in hub.stores.devices


def test_failed_commands_are_found_from_the_overview_with_their_reason(browser, hub, day_app):
    token = devices.register_device(hub.stores, "pump-1")[1]
    node = day_app.test_client()
    auth = {"Authorization": f"Bearer {token}"}
    command = hub.commands.send("pump-1", {"name": "open-valve", "args": {}, "priority": 50},
                                "test")
    polled = node.get("/api/v1/device/commands/pump-1", headers=auth).get_json()
    assert [c["id"] for c in polled["commands"]] == [command["id"]]
    done = node.post("/api/v1/device/commands/pump-1/complete", headers=auth, json={
        "command_id": command["id"], "success": False, "error": "relay stuck",
        "result": {"valve": "closed", "current_ma": 0}})
    assert done.status_code == 200, done.get_json()
    overview = browser.get("/dashboard/").get_data(as_text=True)
    tile = re.search(r'<a class="tile warn" href="([^"]+)"><span class="num" id="count-failed">'
                     r'(\d+)', overview)
    assert tile and tile[2] == "1"
    failed = browser.get(tile[1]).get_data(as_text=True)
    row = re.search(rf'<tr data-command="{command["id"]}">(.*?)</tr>', failed, re.S)[1]
    assert "pump-1" in row and "open-valve" in row and "relay stuck" in row
    assert "current_ma" in row and "closed" in row
    commands = browser.get("/dashboard/commands").get_data(as_text=True)
    assert "relay stuck" in commands and "failed failed" not in commands


def test_a_live_refresh_answers_304_when_only_the_clock_moved(browser, hub, day_app):
    token = devices.register_device(hub.stores, "pump-1")[1]
    node = day_app.test_client()
    assert node.post("/api/v1/device/heartbeat/pump-1", json={"rssi": -60},
                     headers={"Authorization": f"Bearer {token}"}).status_code == 200
    command = hub.commands.send("pump-1", {"name": "blink", "args": {}, "priority": 50}, "t")
    pages = ["/dashboard/", "/dashboard/devices", "/dashboard/devices/pump-1",
             "/dashboard/commands", "/dashboard/activity", "/dashboard/failed"]
    bucket_s = hub.stores.health.bucket_s  # the charts move on when a bucket closes
    if time.time() % bucket_s > bucket_s - 4:
        time.sleep(bucket_s - time.time() % bucket_s + 0.1)
    tags = {}
    for page in pages:
        first = browser.get(page + "?live=1")
        assert first.status_code == 200 and first.headers.get("ETag"), page
        tags[page] = first.headers["ETag"]
    time.sleep(2.2)  # past the shared figures' reuse, and a whole second on every clock
    for page in pages:
        again = browser.get(page + "?live=1", headers={"If-None-Match": tags[page]})
        assert again.status_code == 304, (page, again.get_data(as_text=True)[:300])
    # what the page draws carries the moment, not its age
    html = browser.get("/dashboard/devices").get_data(as_text=True)
    assert re.search(r'<time datetime="\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ" title="[^"]+" '
                     r'class="ago">\d{4}-\d\d-\d\d \d\d:\d\d:\d\d</time>', html)
    assert " s ago" not in html
    # and a change in the data is a new page
    hub.commands.cancel(command["id"], actor="t")
    assert browser.get("/dashboard/commands?live=1",
                       headers={"If-None-Match": tags["/dashboard/commands"]}).status_code == 200


def test_the_charts_read_as_the_inventory_does(browser, hub, day_app):
    token = devices.register_device(hub.stores, "pump-1")[1]
    node = day_app.test_client()
    for rssi in (-50, -51):
        assert node.post("/api/v1/device/heartbeat/pump-1", json={"rssi": rssi,
                                                                 "free_heap": 30000},
                         headers={"Authorization": f"Bearer {token}"}).status_code == 200
    page = browser.get("/dashboard/devices/pump-1").get_data(as_text=True)
    charts = re.findall(r'aria-label="([^"]+) over the last [^:]+: \d+ points, from '
                        r'([-\d.]+) to ([-\d.]+) (\w+)"', page)
    found = {title: (float(low), float(high), unit) for title, low, high, unit in charts}
    low, high, unit = found["Signal (RSSI)"]
    assert unit == "dBm" and high - low >= 10 and low <= -51 and high >= -50
    low, high, unit = found["Free heap"]
    assert unit == "KiB" and low <= 29.3 <= high, found  # 30,000 bytes, as the inventory
    assert "29.3 KiB" in page


def test_an_upload_to_a_target_that_reaches_nobody_is_refused_and_stores_nothing(browser,
                                                                                  hub):
    devices.register_device(hub.stores, "pump-1", groups=["field"])
    headers = {"X-CSRFToken": page_token(browser), "Accept": "application/json",
               "Content-Type": "application/octet-stream"}
    for target in ("orchard", "group:orchard", "group-orchard"):
        refused = browser.put(f"/dashboard/staging/{target}/a.json", data=b"{}",
                              headers=headers)
        assert refused.status_code == 400, (target, refused.get_json())
        assert refused.get_json()["error"]["code"] == "unknown_target"
    assert hub.packages.list_packages() == []
    assert not any((hub.staging.root).rglob("a.json"))
    # the Commands page's spelling of a group is understood, and the answer says who gets it
    staged = browser.put("/dashboard/staging/group:field/a.json", data=b"{}", headers=headers)
    assert staged.status_code == 201, staged.get_json()
    assert staged.get_json()["target"] == "group-field"
    assert staged.get_json()["progress"]["targets"] == 1
    page = browser.get("/dashboard/packages").get_data(as_text=True)
    assert '<option value="group-field">' in page


def test_bulk_actions_refuse_bad_input_whole_and_csv_cells_never_run(browser, hub, day_app):
    for i in range(3):
        devices.register_device(hub.stores, f"pump-{i}", name="=HYPERLINK(\"http://x\")")
    csrf = page_token(browser)

    def bulk(**form):
        return browser.post("/dashboard/devices/bulk", data={"csrf_token": csrf, **form},
                            follow_redirects=True).get_data(as_text=True)
    assert "tick at least one device" in bulk(group_action="add", group="g")
    assert "choose something to do" in bulk(device="pump-0")
    assert "the command has errors" in bulk(device="pump-0", group="g", command="x",
                                            args="not json")
    assert "not found" in bulk(device=["pump-0", "ghost"], group="g", group_action="add")
    assert all(hub.stores.devices.get(f"pump-{i}")["groups"] == [] for i in range(3))
    day_app.config["BULK_MAX_DEVICES"] = 2
    assert "more than one action may name" in bulk(all_matching="yes", q="pump",
                                                    enabled="disable")
    assert all(hub.stores.devices.get(f"pump-{i}")["enabled"] for i in range(3))
    said = bulk(device=["pump-0", "pump-1"], enabled="disable", group="g", group_action="add")
    assert "2 device(s): added to group g; disabled." in said
    assert not hub.stores.devices.get("pump-1")["enabled"]
    table = browser.get("/dashboard/devices.csv?sort=id").get_data(as_text=True)
    assert table.splitlines()[1].startswith('pump-0,"\'=HYPERLINK(')  # text, not a formula


def test_command_numbers_carry_on_after_a_clean_restart(day_settings):
    from dropsync import create_app

    numbers = []
    for _ in range(3):
        app = create_app(day_settings)
        hub = app.extensions["dropsync"]
        if "pump-1" not in hub.stores.devices:
            devices.register_device(hub.stores, "pump-1")
        numbers.append(hub.commands.send("pump-1", {"name": "blink", "args": {},
                                                    "priority": 50}, "t")["id"])
        hub.close()
    assert numbers == [1, 2, 3]


def test_small_things_an_operator_tripped_over(browser, hub):
    devices.register_device(hub.stores, "Pump-North-1")
    command = hub.commands.send("Pump-North-1", {"name": "blink", "args": {},
                                                 "priority": 50}, "t")
    hub.commands.cancel(command["id"], actor="operator:admin")
    # the activity filter finds a device by part of its id, in any case
    page = browser.get("/dashboard/activity?device=north").get_data(as_text=True)
    assert "Pump-North-1" in page and "device.registered" in page
    # and a cancellation says which command
    cancelled = [e for e in hub.stores.history["events"].find(None, limit=50)
                 if e["kind"] == "command.cancelled"]
    assert cancelled[0]["command_id"] == command["id"]
    assert f"#{command['id']}" in browser.get("/dashboard/activity?kind=command").get_data(
        as_text=True)
    # revoking your own account asks a question of its own
    asked = browser.post("/dashboard/operators/admin/revoke",
                         data={"csrf_token": page_token(browser)}).get_data(as_text=True)
    assert "your own account" in asked


def test_alerts_offline_in_the_last_hour_overdue_highlighted_refused_tokens_shown(
        browser, hub, day_app):
    old = devices.register_device(hub.stores, "gate-1")[1]
    devices.register_device(hub.stores, "pump-2")
    now = time.time()
    hub.stores.liveness.update("gate-1", last_seen=now - 1800)  # half an hour ago: offline
    hub.stores.liveness.update("pump-2", last_seen=now - 5 * 86400)  # long gone: not an alert
    devices.register_device(hub.stores, "pump-3")
    hub.stores.liveness.update("pump-3", last_seen=now - 90)  # three 30 s polls: overdue
    devices.rotate_token(hub.stores, "gate-1")
    node = day_app.test_client()
    for _ in range(3):  # the node still holds the token rotated out
        assert node.get("/api/v1/device/ping/gate-1",
                        headers={"Authorization": f"Bearer {old}"}).status_code == 401
    overview = browser.get("/dashboard/").get_data(as_text=True)
    alert = re.search(r'<section class="card warn"[^>]*id="went-offline">(.*?)</section>',
                      overview, re.S)[1]
    assert "gate-1" in alert and "pump-2" not in alert
    assert re.search(r'class="tile warn" href="/dashboard/devices\?state=offline"', overview)
    assert re.search(r'class="tile warn" href="/dashboard/devices\?state=overdue"', overview)
    page = browser.get("/dashboard/devices/gate-1").get_data(as_text=True)
    refused = re.search(r'id="device-refused">(.*?)</dd>', page, re.S)[1]
    assert refused.startswith("3 requests") and "127.0.0.1" in refused


def test_a_device_is_edited_on_its_page_and_bad_input_changes_nothing(browser, hub):
    devices.register_device(hub.stores, "pump-1", groups=["old"])
    csrf = page_token(browser)
    saved = browser.post("/dashboard/devices/pump-1/edit", follow_redirects=True, data={
        "csrf_token": csrf, "name": "North pump", "groups": "field, north",
        "poll_interval_s": "45"}).get_data(as_text=True)
    assert "pump-1 saved." in saved
    device = hub.stores.devices.get("pump-1")
    assert (device["name"], device["groups"], device["poll_interval_s"]) == \
        ("North pump", ["field", "north"], 45)
    refused = browser.post("/dashboard/devices/pump-1/edit", follow_redirects=True, data={
        "csrf_token": csrf, "name": "x", "groups": "bad group!", "poll_interval_s": "0"})
    assert "the form has errors" in refused.get_data(as_text=True)
    assert hub.stores.devices.get("pump-1")["groups"] == ["field", "north"]
    browser.post("/dashboard/devices/pump-1/edit", data={
        "csrf_token": csrf, "name": "North pump", "groups": "", "poll_interval_s": ""})
    device = hub.stores.devices.get("pump-1")
    assert device["groups"] == [] and device.get("poll_interval_s") is None


def test_a_refused_form_comes_back_with_what_was_typed(browser, hub):
    csrf = page_token(browser)
    back = browser.post("/dashboard/devices", follow_redirects=True, data={
        "csrf_token": csrf, "id": "bad id!", "name": "Greenhouse <1>", "type": "esp32",
        "groups": "field"}).get_data(as_text=True)
    assert "use 1-64 letters" in back
    assert 'value="bad id!"' in back and 'value="Greenhouse &lt;1&gt;"' in back
    assert "<option selected>esp32</option>" in back and 'value="field"' in back
    # once: the next visit is a clean form
    assert 'value="bad id!"' not in browser.get("/dashboard/register").get_data(as_text=True)
    devices.register_device(hub.stores, "pump-1")
    sent = browser.post("/dashboard/devices/pump-1/commands", follow_redirects=True, data={
        "csrf_token": csrf, "name": "open-valve", "args": '{"seconds": 30', "priority": "70"})
    page = sent.get_data(as_text=True)
    assert "open-valve" in page and '{&#34;seconds&#34;: 30</textarea>' in page
    assert 'value="70"' in page
