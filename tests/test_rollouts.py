"""Rollouts through the real app: drafts hold staged images back, waves open the package
to their devices only (manifest, download, stock updater route), thresholds pause by
themselves, and everything survives reopening the data directory."""

from __future__ import annotations

import json
import os
import time

import pytest
from support import ADMIN_TOKEN, assert_error
from sync_support import bearer

from dropsync import create_app
from dropsync.sync.rollouts import wave_order


@pytest.fixture
def settings(settings):
    return {**settings, "STAGING_RELEASE": "file=publish,firmware=draft"}


def image(size=5000):
    return b"\xe9\x03\x02\x20" + os.urandom(size - 4)


def register_fleet(admin, count, **fields):
    return {f"dev-{i:02d}": admin.register_device(f"dev-{i:02d}", **fields)
            for i in range(count)}


def stage(admin, target, path, data):
    response = admin.put(f"/staging/{target}/{path}", data=data,
                         content_type="application/octet-stream")
    assert response.status_code in (200, 201), response.get_json()
    return response.get_json()


def listed(client, device_id, token):
    response = client.get(f"/api/v1/files/manifest/{device_id}", headers=bearer(token))
    assert response.status_code == 200
    return {f["id"] for f in response.get_json()["files"]}


def seeing(client, tokens, package_id):
    return {d for d, t in tokens.items() if package_id in listed(client, d, t)}


def report(client, device_id, token, package, state, **extra):
    response = client.post(f"/api/v1/files/sync-status/{device_id}", headers=bearer(token),
                           json={"package": package["id"], "version": package["version"],
                                 "state": state, **extra})
    return response


def create(admin, **body):
    response = admin.post("/rollouts", json=body)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def test_a_staged_image_waits_in_a_draft_and_a_file_goes_out_at_once(admin, client):
    tokens = register_fleet(admin, 3)
    firmware = stage(admin, "all", "firmware/app.bin", image())
    config = stage(admin, "all", "config.json", b"{}")
    assert seeing(client, tokens, firmware["id"]) == set()
    assert seeing(client, tokens, config["id"]) == set(tokens)
    drafts = admin.get("/rollouts?state=draft").get_json()["rollouts"]
    assert [(r["package_id"], r["state"]) for r in drafts] == [(firmware["id"], "draft")]
    # the stock updater's route: "no update", not the image
    response = client.get("/api/v1/ota/dev-00", headers=bearer(tokens["dev-00"]))
    assert response.status_code == 304 and response.data == b""
    # a device may not fetch what it is not offered
    response = client.get(f"/api/v1/files/download/dev-00/{firmware['id']}/"
                          f"{firmware['version']}/0", headers=bearer(tokens["dev-00"]))
    assert_error(response, 403, "not_in_manifest")


def test_waves_open_the_package_to_their_devices_only_and_move_on_success(admin, client,
                                                                           hub):
    tokens = register_fleet(admin, 10)
    package = stage(admin, "all", "firmware/app.bin", image())
    rollout = create(admin, package=package["id"], canary=1, percents=[50, 100],
                     soak_s=0, deadline_s=600)
    order = wave_order(tokens, package["sha256"])
    assert [w["devices"] for w in rollout["waves"]] == [order[:1], order[1:5], order[5:]]
    assert [w["state"] for w in rollout["waves"]] == ["running", "waiting", "waiting"]
    assert rollout["state"] == "running" and rollout["id"] == \
        admin.get("/rollouts").get_json()["rollouts"][0]["id"]  # the draft became it
    assert seeing(client, tokens, package["id"]) == {order[0]}
    outside = order[1]
    assert client.get(f"/api/v1/ota/{outside}",
                      headers=bearer(tokens[outside])).status_code == 304
    canary = client.get(f"/api/v1/ota/{order[0]}", headers=bearer(tokens[order[0]]))
    assert canary.status_code == 200 and canary.headers["x-MD5"] == package["md5"]
    canary.close()

    # verified is not enough for an image: it must be applied
    assert report(client, order[0], tokens[order[0]], package, "verified").status_code \
        in (200, 201)
    assert admin.get(f"/rollouts/{rollout['id']}").get_json()["waves"][0]["state"] == \
        "running"
    report(client, order[0], tokens[order[0]], package, "applied")
    shown = admin.get(f"/rollouts/{rollout['id']}").get_json()
    assert [w["state"] for w in shown["waves"]] == ["succeeded", "running", "waiting"]
    assert seeing(client, tokens, package["id"]) == set(order[:5])
    for device in order[1:5]:
        report(client, device, tokens[device], package, "applied")
    for device in order[5:]:
        report(client, device, tokens[device], package, "applied")
    shown = admin.get(f"/rollouts/{rollout['id']}").get_json()
    assert shown["state"] == "finished", shown
    assert shown["totals"] == {"devices": 10, "pending": 0, "succeeded": 10, "failed": 0}
    assert seeing(client, tokens, package["id"]) == set(tokens)
    events = [e["kind"] for e in hub.stores.history["events"].find(None, limit=100)]
    assert {"rollout.created", "rollout.wave_started", "rollout.finished"} <= set(events)


def test_failures_over_the_error_threshold_pause_then_retry_and_resume(admin, client, hub):
    tokens = register_fleet(admin, 20)
    package = stage(admin, "all", "firmware/app.bin", image())
    rollout = create(admin, package=package["id"], canary=0, percents=[50, 100],
                     soak_s=0, deadline_s=600, error_threshold=0.1)
    first = rollout["waves"][0]["devices"]
    assert len(first) == 10
    report(client, first[0], tokens[first[0]], package, "failed", reason="boot loop")
    assert admin.get(f"/rollouts/{rollout['id']}").get_json()["state"] == "running"
    report(client, first[1], tokens[first[1]], package, "failed", reason="rolled back")
    shown = admin.get(f"/rollouts/{rollout['id']}").get_json()
    assert shown["state"] == "paused" and "error threshold" in shown["reason"]
    assert [w["state"] for w in shown["waves"]] == ["failed", "waiting"]
    for device in first[2:]:
        report(client, device, tokens[device], package, "applied")
    # paused: the second wave never opens, whatever the first does meanwhile
    assert seeing(client, tokens, package["id"]) == set(first)
    assert_error(admin.post(f"/rollouts/{rollout['id']}/pause"), 409, "wrong_state")
    # resuming with the failures still counted pauses again at once
    assert admin.post(f"/rollouts/{rollout['id']}/resume").get_json()["state"] == "paused"
    retried = admin.post(f"/rollouts/{rollout['id']}/retry-failed").get_json()
    assert retried["totals"]["failed"] == 0 and retried["waves"][0]["pending"] == 2
    resumed = admin.post(f"/rollouts/{rollout['id']}/resume").get_json()
    assert resumed["state"] == "running"
    for device in first[:2]:
        report(client, device, tokens[device], package, "applied")
    assert seeing(client, tokens, package["id"]) == set(tokens)


def test_deadline_fails_silent_devices_and_abort_keeps_the_rest_out(admin, client, hub):
    tokens = register_fleet(admin, 4)
    package = stage(admin, "all", "firmware/app.bin", image())
    rollout = create(admin, package=package["id"], canary=2, percents=[100], soak_s=0,
                     deadline_s=0.2, error_threshold=0.5, success_threshold=0.5)
    canary = rollout["waves"][0]["devices"]
    report(client, canary[0], tokens[canary[0]], package, "applied")
    time.sleep(0.3)
    hub.rollouts.tick()
    shown = admin.get(f"/rollouts/{rollout['id']}").get_json()
    assert shown["devices"][canary[1]] == {"wave": 0, "state": "failed",
                                           "reason": "no success before the deadline"}
    # the canary met its 50% and the second wave started: its two devices went quiet too
    assert [w["state"] for w in shown["waves"]] == ["succeeded", "failed"]
    assert shown["state"] == "paused"
    aborted = admin.post(f"/rollouts/{rollout['id']}/abort").get_json()
    assert aborted["state"] == "aborted"
    # an aborted rollout leaves the started waves as they are
    assert seeing(client, tokens, package["id"]) == set(tokens)
    assert_error(admin.post(f"/rollouts/{rollout['id']}/resume"), 409, "wrong_state")
    metrics = client.get("/metrics", headers=admin.headers).data.decode()
    assert 'dropsync_rollouts{state="aborted"} 1.0' in metrics
    assert 'dropsync_rollouts{state="running"} 0.0' in metrics


def test_a_rollout_survives_reopening_the_data_directory(settings, admin, client, app):
    tokens = register_fleet(admin, 10)
    package = stage(admin, "all", "firmware/app.bin", image())
    rollout = create(admin, package=package["id"], canary=2, percents=[50, 100], soak_s=0,
                     deadline_s=600)
    canary = rollout["waves"][0]["devices"]
    for device in canary:
        report(client, device, tokens[device], package, "applied")
    before = admin.get(f"/rollouts/{rollout['id']}").get_json()
    app.extensions["dropsync"].close()
    again = create_app(settings)
    try:
        client = again.test_client()
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        after = client.get(f"/api/v1/admin/rollouts/{rollout['id']}", headers=headers)
        assert after.get_json()["waves"] == before["waves"]
        assert after.get_json()["devices"] == before["devices"]
        # a device registered now is in no wave and never reshuffles them
        client.post("/api/v1/admin/devices/register", headers=headers, json={"id": "late"})
        assert seeing(client, tokens, package["id"]) == \
            set(before["waves"][0]["devices"] + before["waves"][1]["devices"])
    finally:
        again.extensions["dropsync"].close()
        app.extensions["dropsync"] = again.extensions["dropsync"]  # closed twice: harmless


def test_targets_by_group_device_and_filter(admin, client):
    tokens = register_fleet(admin, 4, type="esp32")
    tokens |= {"pump-1": admin.register_device("pump-1", groups=["pump"], type="esp8266")}
    package = stage(admin, "all", "config.json", b"{}")  # a file: published at once ...
    rollout = create(admin, package=package["id"], target={"kind": "group", "group": "pump"})
    # ... until a rollout takes it: then its waves decide
    assert rollout["totals"]["devices"] == 1
    assert seeing(client, tokens, package["id"]) == {"pump-1"}
    other = stage(admin, "all", "other.json", b"[]")
    rollout = create(admin, package=other["id"],
                     target={"kind": "filter", "filter": {"type": "ESP32"}})
    assert sorted(rollout["devices"]) == [f"dev-{i:02d}" for i in range(4)]
    third = stage(admin, "all", "third.json", b"[1]")
    assert create(admin, package=third["id"], target={"kind": "device", "device": "dev-01"}
                  )["totals"]["devices"] == 1


@pytest.mark.parametrize("body, field", [
    ({}, "package"),
    ({"package": "p", "percents": [50, 10]}, None),
    ({"package": "p", "percents": [10, 50]}, None),
    ({"package": "p", "error_threshold": 2}, "error_threshold"),
    ({"package": "p", "target": {"kind": "group"}}, "target"),
    ({"package": "p", "target": {"kind": "filter", "filter": {"colour": "red"}}}, "target"),
    ({"package": "p", "canary": "many"}, "canary"),
])
def test_bad_rollout_requests_are_400(admin, body, field):
    admin.register_device("dev-00")
    package = stage(admin, "all", "firmware/app.bin", image())
    if body.get("package") == "p":
        body = {**body, "package": package["id"]}
    error = assert_error(admin.post("/rollouts", json=body), 400)
    if field:
        assert field in str(error["details"]), error


def local_window(start: float, hours: int) -> str:
    """``HH:MM-HH:MM`` from ``start`` (Unix seconds) for ``hours``, in the hub's local time."""
    return "-".join(time.strftime("%H:%M", time.localtime(start + h * 3600))
                    for h in (0, hours))


def test_a_daily_window_holds_each_wave_until_it_opens(admin, client, hub):
    tokens = register_fleet(admin, 4)
    package = stage(admin, "all", "firmware/app.bin", image())
    now = time.time()
    opens = now + 2 * 3600  # a window that opens in two hours and lasts one
    rollout = create(admin, package=package["id"], canary=1, percents=[100], soak_s=3600,
                     window=local_window(opens, 1))
    assert rollout["state"] == "running" and rollout["window"] == local_window(opens, 1)
    assert [w["state"] for w in rollout["waves"]] == ["waiting", "waiting"]
    assert seeing(client, tokens, package["id"]) == set()
    hub.rollouts.clock = lambda: opens + 60  # the hub's clock reaches the window
    hub.rollouts.tick()
    shown = admin.get(f"/rollouts/{rollout['id']}").get_json()
    assert [w["state"] for w in shown["waves"]] == ["running", "waiting"]
    canary = shown["waves"][0]["devices"][0]
    report(client, canary, tokens[canary], package, "applied")
    # soaked an hour later, when the window has closed again: the next wave waits
    hub.rollouts.clock = lambda: opens + 3 * 3600
    hub.rollouts.tick()
    shown = admin.get(f"/rollouts/{rollout['id']}").get_json()
    assert [w["state"] for w in shown["waves"]] == ["succeeded", "waiting"]
    assert seeing(client, tokens, package["id"]) == {canary}
    for bad in ("22:00", "25:00-05:00", "22:00-5:00", "ab:cd-ef:gh"):
        assert_error(admin.post("/rollouts", json={"package": package["id"], "window": bad}),
                     400)


def test_a_window_may_span_midnight():
    from dropsync.sync.rollouts import in_window

    def at(hour, minute):
        return time.mktime((2026, 12, 5, hour, minute, 0, 0, 0, -1))
    assert in_window("22:00-05:00", at(23, 30)) and in_window("22:00-05:00", at(4, 59))
    assert not in_window("22:00-05:00", at(5, 0)) and not in_window("22:00-05:00", at(12, 0))
    assert in_window("09:00-17:00", at(9, 0)) and not in_window("09:00-17:00", at(17, 0))
    assert in_window(None, at(3, 0))


def test_a_stage_can_hold_any_file_in_a_draft(admin, client):
    tokens = register_fleet(admin, 2)
    response = admin.put("/staging/all/config.json?release=draft", data=b"{}",
                         content_type="application/octet-stream")
    assert response.status_code == 200, response.get_json()
    held = response.get_json()
    assert seeing(client, tokens, held["id"]) == set()
    assert [r["package_id"] for r in admin.get("/rollouts?state=draft").get_json()
            ["rollouts"]] == [held["id"]]
    create(admin, package=held["id"], canary=0, percents=[100], soak_s=0)
    assert seeing(client, tokens, held["id"]) == set(tokens)
    response = admin.put("/staging/all/other.json?release=later", data=b"{}",
                         content_type="application/octet-stream")
    assert_error(response, 400)
    assert "other.json" not in {p["path"] for p in admin.get("/packages").get_json()
                                ["packages"]}


def test_unknown_rollouts_and_packages_are_404_and_a_second_rollout_is_409(admin):
    admin.register_device("dev-00")
    assert_error(admin.get("/rollouts/nope"), 404, "no_such_rollout")
    assert_error(admin.post("/rollouts/nope/pause"), 404)
    assert_error(admin.post("/rollouts", json={"package": "nope"}), 404)
    package = stage(admin, "all", "firmware/app.bin", image())
    create(admin, package=package["id"])
    assert_error(admin.post("/rollouts", json={"package": package["id"]}), 409,
                 "rollout_exists")


def test_cli_creates_lists_shows_pauses_resumes_and_aborts(staging_cli, tmp_path):
    for device in ("a1", "a2", "a3"):
        staging_cli("device", "add", device)
    (tmp_path / "app.bin").write_bytes(image())
    staged = json.loads(staging_cli("stage", str(tmp_path / "app.bin"), "--to", "all",
                                    "--as", "firmware/app.bin", "--json").output)
    listed = staging_cli("rollout", "list").output
    assert "draft" in listed and staged["id"] in listed
    created = staging_cli("rollout", "create", staged["id"], "--canary", "1",
                          "--waves", "50,100", "--soak", "0", "--json").output
    rollout = json.loads(created)
    assert rollout["state"] == "running" and len(rollout["waves"]) == 3
    shown = staging_cli("rollout", "show", rollout["id"]).output
    assert f"Rollout {rollout['id']}: running" in shown and "canary" in shown
    assert "paused" in staging_cli("rollout", "pause", rollout["id"]).output
    assert "running" in staging_cli("rollout", "resume", rollout["id"]).output
    assert "aborted" in staging_cli("rollout", "abort", rollout["id"]).output
    refused = staging_cli("rollout", "resume", rollout["id"], expect=1).output
    assert "aborted" in refused and "wrong_state" in refused
    bad = staging_cli("rollout", "create", staged["id"], "--waves", "50,x", expect=2).output
    assert "--waves" in bad
    # stage --rollout: the file is held back, then offered in the waves asked for
    (tmp_path / "settings.json").write_bytes(b'{"a": 1}')
    staged = json.loads(staging_cli("stage", str(tmp_path / "settings.json"), "--to", "all",
                                    "--rollout", "--canary", "1", "--waves", "100",
                                    "--soak", "0", "--json").output)
    assert staged["rollout"]["package_id"] == staged["id"]
    assert staged["rollout"]["state"] == "running"
    assert [w["size"] for w in staged["rollout"]["waves"]] == [1, 2]
    said = staging_cli("stage", str(tmp_path / "settings.json"), "--to", "all",
                       "--rollout").output
    assert "unchanged" in said and "No rollout started" in said
