"""Hostile input: nothing a client sends may answer 500, make the store
unloadable, get past a size limit, or leave a refused write behind."""

from __future__ import annotations

import io
import json
import logging
import os
import time

import pytest
import requests
from support import ADMIN_TOKEN, assert_error, json_routes
from werkzeug.test import EnvironBuilder, run_wsgi_app

from dropsync import create_app
from dropsync.fleet.enrollment import ENROLL_BODY_MAX_BYTES
from dropsync.jsonbounds import MAX_JSON_DEPTH

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.fixture
def device_headers(admin):
    token = admin.register_device("esp001", groups=["field"])
    return {"Authorization": f"Bearer {token}"}


# -- nesting depth -------------------------------------------------------------------------
@pytest.mark.parametrize("body", [
    nested(1000), nested(10_000),
    '{"target": "esp001", "name": "x", "args": {"a": ' + nested(499) + "}}",
    '{"id": "esp001", "level": "info", "text": "t", "data": ' + nested(490) + "}",
], ids=["1000-levels", "10000-levels", "args-499-levels", "data-490-levels"])
def test_deep_json_answers_400_on_every_json_route(app, client, device_headers, body):
    routes = json_routes(app)
    assert len(routes) >= 10
    for method, path, blueprint, _ in routes:
        headers = ADMIN if blueprint == "admin" else device_headers
        response = client.open(path, method=method, data=body, headers=headers,
                               content_type="application/json")
        if blueprint == "enroll" and len(body) > ENROLL_BODY_MAX_BYTES:
            assert_error(response, 413)  # refused before it is read, let alone parsed
            continue
        error = assert_error(response, 400, "json_too_deep")
        assert error["details"] == {"max_depth": MAX_JSON_DEPTH}, (method, path)


def test_json_in_form_fields_is_bounded_too(admin, device_headers):
    response = admin.post("/commands", data={"target": "esp001", "name": "x",
                                              "args": nested(600)})
    error = assert_error(response, 400, "validation_failed")
    assert "nested deeper" in error["details"]["args"][0]
    within = admin.post("/commands", data={"target": "esp001", "name": "x",
                                            "args": json.dumps({"a": [[[1]]]})})
    assert within.status_code == 201, within.get_json()


def deep_command(depth: int) -> dict:
    args: dict = {"leaf": True}
    for _ in range(depth):
        args = {"a": args}
    return args


def test_a_deeply_nested_stored_command_loads_and_the_hub_and_cli_work(hub_process):
    """A data directory an older hub left with a 490-level ``args`` (it answered 201):
    the hub boots, serves it, and the CLI works; a new such request is refused."""
    hub = hub_process({"DROPSYNC_ADMIN_TOKEN": ADMIN_TOKEN})
    token = requests.post(hub.url + "/api/v1/admin/devices/register", headers=ADMIN,
                          json={"id": "esp001"}, timeout=10).json()["token"]
    created = requests.post(hub.url + "/api/v1/admin/commands", headers=ADMIN, timeout=10,
                            json={"target": "esp001", "name": "deep", "args": {}})
    assert created.status_code == 201
    hub.stop()
    store = hub.data_dir / "commands.json"
    data = json.loads(store.read_text())
    (doc,) = data["commands"].values()
    doc["args"] = deep_command(490)
    store.write_text(json.dumps(data))

    hub.start()
    device = {"Authorization": f"Bearer {token}"}
    polled = requests.get(hub.url + "/api/v1/device/commands/esp001", headers=device,
                          timeout=10)
    assert polled.status_code == 200
    assert polled.json()["commands"][0]["args"] == deep_command(490)
    listed = hub.cli("commands", "esp001")
    assert "deep" in listed.stdout
    assert "esp001" in hub.cli("device", "list").stdout

    again = requests.post(hub.url + "/api/v1/admin/commands", headers=ADMIN, timeout=10,
                          json={"target": "esp001", "name": "deep", "args": deep_command(490)})
    assert_error(again, 400, "json_too_deep")
    # through the real server, a chunked body past the limit is a 413, not cut short
    padded = requests.post(hub.url + "/api/v1/admin/commands", timeout=30,
                           headers={**ADMIN, "Content-Type": "application/json"},
                           data=iter([b'{"target": "esp001", "name": "padded"}',
                                      *[b" " * 65536] * 48]))
    assert_error(padded, 413)
    commands = requests.get(hub.url + "/api/v1/admin/commands", headers=ADMIN, timeout=10)
    assert [c["name"] for c in commands.json()["commands"]] == ["deep"]
    hub.stop()
    assert "deep" in hub.cli("commands", "esp001").stdout  # no hub: the CLI opens the store


def test_stored_documents_copy_however_deep(stores):
    from dropsync.store.tables import detached

    stores.meta.insert({"name": "deep", "value": deep_command(490)})
    assert stores.meta.get("deep")["value"] == deep_command(490)
    original = deep_command(50_000)  # deeper than anything json could ever have stored
    copy = detached({"x": original})["x"]
    for _ in range(50_000):
        assert copy is not original and copy.keys() == original.keys()
        copy, original = copy["a"], original["a"]
    assert copy == original == {"leaf": True}


def test_a_config_file_nested_too_deeply_is_a_config_error(tmp_path, settings):
    from dropsync.errors import ConfigError

    config = tmp_path / "hub.toml"
    config.write_text("port = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match="nests too deeply"):
        create_app({**settings, "CONFIG_FILE": str(config)})


# -- multipart -------------------------------------------------------------------------
def test_a_truncated_multipart_upload_answers_400_and_stores_nothing(client, device_headers,
                                                                     hub):
    body = (b'--BB\r\nContent-Disposition: form-data; name="file"; filename="boot.log"\r\n'
            b"Content-Type: application/octet-stream\r\n\r\n" + b"x" * 5000)
    response = client.post("/api/v1/files/upload/esp001", data=body, headers=device_headers,
                           content_type="multipart/form-data; boundary=BB")
    assert_error(response, 400, "invalid_multipart")
    assert client.get("/api/v1/files/list/esp001", headers=device_headers) \
        .get_json()["count"] == 0
    assert [p for p in hub.uploads.root.rglob("*") if p.is_file()] == []


# -- chunked bodies --------------------------------------------------------------------
class Endless(io.RawIOBase):
    """A request body of ``size`` bytes (JSON ``head``, then spaces), made as it is read."""

    def __init__(self, head: bytes, size: int):
        self.data, self.left = head, size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = min(len(buffer), self.left)
        chunk = (self.data[:count]).ljust(count, b" ")
        self.data = self.data[count:]
        buffer[:count] = chunk
        self.left -= count
        return count


def chunked(client, method, path, head: bytes, size: int, **kwargs):
    """A body with no Content-Length, as a server passes a chunked one to the app."""
    environ = EnvironBuilder(path, method=method, **kwargs).get_environ()
    environ.pop("CONTENT_LENGTH", None)
    environ["wsgi.input"] = io.BufferedReader(Endless(head, size))
    environ["wsgi.input_terminated"] = True  # what gunicorn and granian set
    body, status, headers = run_wsgi_app(client.application, environ, buffered=True)
    return client.application.response_class(b"".join(body), status=status, headers=headers)


@pytest.mark.parametrize("size", [3 * 1024 * 1024, 50_000_000])
def test_chunked_json_bodies_obey_the_size_limit(client, admin, device_headers, size):
    response = chunked(client, "POST", "/api/v1/admin/commands",
                       b'{"target": "esp001", "name": "padded"}', size, headers=ADMIN,
                       content_type="application/json")
    assert_error(response, 413)
    assert admin.get("/commands").get_json()["count"] == 0
    small = chunked(client, "POST", "/api/v1/admin/commands",
                    b'{"target": "esp001", "name": "small"}', 1000, headers=ADMIN,
                    content_type="application/json")
    assert small.status_code == 201


def test_chunked_uploads_and_staging_obey_their_limits(settings, tmp_path):
    app = create_app({**settings, "UPLOAD_MAX_BYTES": 100_000,
                      "STAGING_UPLOAD_MAX_BYTES": 100_000})
    client = app.test_client()
    token = client.post("/api/v1/admin/devices/register", json={"id": "esp001"},
                        headers=ADMIN).get_json()["token"]
    device = {"Authorization": f"Bearer {token}"}
    upload = chunked(client, "POST", "/api/v1/files/upload/esp001?filename=big.log", b"",
                     100_001, headers=device, content_type="application/octet-stream")
    assert_error(upload, 413)
    assert client.get("/api/v1/files/list/esp001", headers=device).get_json()["count"] == 0
    staged = chunked(client, "PUT", "/api/v1/admin/staging/esp001/big.bin", b"", 150_000,
                     headers=ADMIN, content_type="application/octet-stream")
    assert_error(staged, 413)
    assert [p for p in (tmp_path / "staging").rglob("*") if p.is_file()] == []
    exact = chunked(client, "POST", "/api/v1/files/upload/esp001?filename=ok.log", b"",
                    100_000, headers=device, content_type="application/octet-stream")
    assert exact.status_code == 201 and exact.get_json()["size"] == 100_000
    app.extensions["dropsync"].close()


# -- a full disk -----------------------------------------------------------------------
def test_a_staging_put_refused_for_a_full_disk_leaves_nothing(tiny_fs, settings):
    folder = tiny_fs(1024)
    where = {"DATA_DIR": str(folder / "data"), "STAGING_DIR": str(folder / "staging")}
    app = create_app({**settings, **where})
    client = app.test_client()
    assert client.post("/api/v1/admin/devices/register", json={"id": "esp001"},
                       headers=ADMIN).status_code == 201
    free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
    # fits once (the staged file), not twice (its copy in the blob store)
    response = client.put("/api/v1/admin/staging/esp001/firmware/app.bin",
                          data=b"\xe9" * int(free * 0.6), headers=ADMIN)
    assert_error(response, 507, "storage_full")
    assert list((folder / "staging").rglob("*")) == []
    assert client.get("/api/v1/admin/packages", headers=ADMIN).get_json()["count"] == 0
    app.extensions["dropsync"].close()
    reopened = create_app({**settings, **where})
    assert reopened.test_client().get("/api/v1/admin/packages", headers=ADMIN) \
        .get_json()["count"] == 0
    reopened.extensions["dropsync"].close()


def test_a_bodyless_staging_put_is_refused(admin, hub):
    assert_error(admin.put("/staging/esp001/empty.bin"), 400, "empty_body")
    assert hub.packages.list_packages() == []
    assert [p for p in hub.staging.root.rglob("*") if p.is_file()] == []


# -- hardlinks -------------------------------------------------------------------------
def test_a_hardlink_in_staging_is_refused_and_reported(client, admin, device_headers, hub):
    folder = hub.staging.root / "esp001"
    folder.mkdir(parents=True)
    leak = folder / "leak.json"
    os.link(hub.stores.data_dir / "devices.json", leak)
    (folder / "fine.txt").write_text("ok")

    waiting = hub.staging.reconcile()
    assert [s.slot for s in waiting] == ["esp001/fine.txt"]
    assert hub.staging.ingest_staged_file(leak) == (None, False)
    for staged in waiting:
        hub.staging.ingest_staged_file(staged.path)
    manifest = client.get("/api/v1/files/manifest/esp001", headers=device_headers).get_json()
    assert [f["path"] for f in manifest["files"]] == ["fine.txt"]
    problems = admin.get("/staging").get_json()["problems"]
    assert {(p["kind"], p["path"]) for p in problems} == {("hardlink", "esp001/leak.json")}
    assert client.get("/health").get_json()["status"] == "degraded"


# -- logs and /health ------------------------------------------------------------------
def test_log_lines_escape_control_characters_in_names(hub):
    handler = logging.getLogger("dropsync").handlers[0]
    captured = io.StringIO()
    previous = handler.setStream(captured)
    try:
        target = hub.staging.root / "esp001"
        target.mkdir(parents=True)
        (target / "evil\nFORGED hub line.txt").write_text("x")
        hub.staging.reconcile()
    finally:
        handler.setStream(previous)
    text = captured.getvalue()
    assert "evil\\nFORGED hub line.txt" in text
    assert not any(line.startswith("FORGED") for line in text.splitlines())


def test_health_without_credentials_shows_no_paths(client, admin, tmp_path):
    health = client.get("/health")
    assert health.status_code == 200
    assert str(tmp_path) not in health.get_data(as_text=True)
    stats = admin.get("/system/stats").get_json()
    assert stats["store"]["data_dir"] == str((tmp_path / "data").resolve())
    assert admin.get("/staging").get_json()["staging_dir"] == str(tmp_path / "staging")


# -- what schemathesis found -----------------------------------------------------------
def test_null_args_mean_no_args_in_json_and_forms(admin, device_headers):
    for sent in ({"json": {"target": "esp001", "name": "a", "args": None}},
                 {"data": {"target": "esp001", "name": "b", "args": "null"}}):
        created = admin.post("/commands", **sent)
        assert created.status_code == 201, created.get_json()
        assert created.get_json()["args"] == {}


def test_the_document_says_what_is_refused(client, admin, device_headers):
    document = client.get("/api/v1/openapi.json").get_json()
    expiry = document["components"]["schemas"]["CommandCreate"]["properties"]["expires_in_s"]
    assert expiry["minimum"] == 0 and expiry["exclusiveMinimum"] is True
    assert_error(admin.post("/commands", json={"target": "esp001", "name": "x",
                                               "expires_in_s": 0.0}), 400)
    (state,) = [p for p in document["paths"]["/api/v1/admin/devices/{device_id}/commands"]
                ["get"]["parameters"] if p["name"] == "state"]
    assert state["schema"] == {"type": "array", "items": {"type": "string", "enum": [
        "pending", "delivered", "completed", "failed", "expired", "cancelled"]}}
    for path, headers in (("/api/v1/device/commands/esp001", device_headers),
                          ("/api/v1/files/sync-history/esp001", device_headers),
                          ("/api/v1/admin/devices/esp001/commands", ADMIN),
                          ("/api/v1/admin/messages", ADMIN)):
        assert_error(client.get(path + "?limit=1&limit=2", headers=headers), 400)


def test_options_lists_only_the_methods_of_the_named_route(app, client):
    assert set(client.options("/api/v1/admin/devices/register", headers=ADMIN)
               .headers["Allow"].split(", ")) == {"POST", "OPTIONS"}
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith(("device.", "files.", "ota.", "static")):
            continue  # device routes answer 401 before OPTIONS; static is Flask's
        path = rule.rule
        for name in rule.arguments:
            path = path.replace(f"<{name}>", "x").replace(f"<int:{name}>", "1") \
                .replace(f"<path:{name}>", "x")
        allowed = set(client.options(path, headers=ADMIN).headers["Allow"].split(", "))
        expected = set().union(*(r.methods for r in app.url_map.iter_rules()
                                 if r.rule == rule.rule))
        assert allowed == expected, path


def test_tokens_match_compares_the_whole_hash():
    """The mutant that compared only a prefix of the two hashes passed every test."""
    from dropsync.fleet.credentials import hash_token, tokens_match

    token = "secure-token-esp001-0123456789"
    stored = hash_token(token)
    assert tokens_match(stored, token)
    assert not tokens_match(stored[:8] + "0" * 56, token)  # same prefix only
    last = "0" if stored[-1] != "0" else "1"
    assert not tokens_match(stored[:-1] + last, token)  # all but the last character


def test_a_device_whose_stored_hash_differs_in_the_last_character_is_refused(client, admin,
                                                                             stores):
    from dropsync.fleet.credentials import hash_token

    admin.register_device("esp001")
    token = "secure-token-esp001-0123456789"
    stored = hash_token(token)
    near = stored[:-1] + ("0" if stored[-1] != "0" else "1")
    stores.devices.update("esp001", {"token_hash": near})
    assert_error(client.get("/api/v1/device/ping/esp001",
                            headers={"Authorization": f"Bearer {token}"}), 401)
    stores.devices.update("esp001", {"token_hash": stored[:8] + near[8:]})
    assert_error(client.get("/api/v1/device/ping/esp001",
                            headers={"Authorization": f"Bearer {token}"}), 401)


# -- found when tried as a new user would ----------------------------------------------
def is_unix_seconds(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) \
        and abs(value - time.time()) < 7 * 86_400


def test_every_device_facing_time_is_unix_seconds(client, admin, device_headers):
    def device(method, path, **kwargs):
        response = client.open(path, method=method, headers=device_headers, **kwargs)
        assert response.status_code < 300, response.get_json()
        return response.get_json()

    admin.post("/commands", json={"target": "esp001", "name": "x", "expires_in_s": 3600})
    assert admin.put("/staging/esp001/a.txt", data=b"hello").status_code == 200
    times = [device("GET", "/api/v1/device/ping/esp001")["server_time"]]
    polled = device("GET", "/api/v1/device/commands/esp001")
    times += [polled["server_time"], polled["commands"][0]["expires_at"]]
    times.append(device("POST", "/api/v1/device/commands/esp001/complete",
                        json={"command_id": polled["commands"][0]["id"]})["ended_at"])
    times.append(device("POST", "/api/v1/device/messages/esp001",
                        json={"text": "hi"})["received_at"])
    times.append(device("POST", "/api/v1/device/heartbeat/esp001", json={})["server_time"])
    status = device("GET", "/api/v1/device/status/esp001")
    times += [status["server_time"], status["last_seen"]]
    package = device("GET", "/api/v1/files/sync-packages/esp001")["packages"][0]
    times.append(package["created"])
    times.append(device("POST", "/api/v1/files/sync-status/esp001", json={
        "package": package["id"], "version": package["version"], "state": "applied"})["at"])
    times.append(device("GET", "/api/v1/files/sync-history/esp001")["history"][0]["at"])
    times.append(device("POST", "/api/v1/files/upload/esp001?filename=a.log",
                        data=b"log")["uploaded_at"])
    times.append(device("GET", "/api/v1/files/list/esp001")["uploads"][0]["uploaded_at"])
    assert len(times) == 13 and all(is_unix_seconds(t) for t in times), times


def test_device_status_counts_pending_and_leased_commands(client, admin, device_headers):
    for name in ("a", "b", "c"):
        admin.post("/commands", json={"target": "esp001", "name": name})
    client.get("/api/v1/device/commands/esp001?limit=2", headers=device_headers)
    status = client.get("/api/v1/device/status/esp001", headers=device_headers).get_json()
    assert (status["pending_commands"], status["leased_commands"]) == (1, 2)


def test_next_poll_s_varies_for_one_device_at_short_intervals(settings):
    app = create_app({**settings, "POLL_INTERVAL_S": 5})
    client = app.test_client()
    token = client.post("/api/v1/admin/devices/register", json={"id": "esp001"},
                        headers=ADMIN).get_json()["token"]
    device = {"Authorization": f"Bearer {token}"}
    answers = [client.get("/api/v1/device/commands/esp001", headers=device)
               .get_json()["next_poll_s"] for _ in range(150)]
    answers += [client.post("/api/v1/device/heartbeat/esp001", json={}, headers=device)
                .get_json()["next_poll_s"] for _ in range(50)]
    assert all(isinstance(answer, int) and 4 <= answer <= 6 for answer in answers), answers
    assert set(answers) == {4, 5, 6}, answers  # the spread survives the whole seconds
    assert 4.7 <= sum(answers) / len(answers) <= 5.3  # and averages the interval
    app.extensions["dropsync"].close()


def poll_until_handed_out(client, headers, timeout_s: float = 20.0) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        handed = client.get("/api/v1/device/commands/esp001", headers=headers) \
            .get_json()["commands"]
        if handed:
            return handed
        time.sleep(0.05)
    raise AssertionError("the lease never lapsed")


def data_files(folder) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_attempts_of_a_leased_command_survive_restarts(settings, tmp_path):
    config = {**settings, "COMMAND_LEASE_S": 0.5, "COMMAND_MAX_ATTEMPTS": 2}
    app = create_app(config)
    client = app.test_client()
    token = client.post("/api/v1/admin/devices/register", json={"id": "esp001"},
                        headers=ADMIN).get_json()["token"]
    device = {"Authorization": f"Bearer {token}"}
    command_id = client.post("/api/v1/admin/commands", json={"target": "esp001",
                             "name": "reboot"}, headers=ADMIN).get_json()["id"]
    before = data_files(tmp_path / "data")
    (first,) = client.get("/api/v1/device/commands/esp001", headers=device) \
        .get_json()["commands"]
    assert first["attempt"] == 1
    assert data_files(tmp_path / "data") == before  # a hand-out writes nothing
    app.extensions["dropsync"].close()

    app = create_app(config)
    client = app.test_client()
    (second,) = poll_until_handed_out(client, device)  # only once the lease lapsed
    assert second["attempt"] == 2
    app.extensions["dropsync"].close()

    app = create_app(config)
    client = app.test_client()
    deadline = time.monotonic() + 20
    while True:  # out of attempts: once the last lease lapses it fails, never a third
        assert client.get("/api/v1/device/commands/esp001", headers=device) \
            .get_json()["commands"] == []
        (delivery,) = client.get(f"/api/v1/admin/commands/{command_id}",
                                 headers=ADMIN).get_json()["deliveries"]
        if delivery["state"] == "failed" or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert (delivery["state"], delivery["reason"], delivery["attempts"]) == \
        ("failed", "timeout", 2)
    app.extensions["dropsync"].close()


def test_cli_says_when_there_is_nothing_and_how_to_confirm(cli):
    cli("device", "add", "esp001")
    assert cli("messages", "esp001", "--level", "error").output.strip() == \
        "No messages from esp001 at level error."
    assert "--yes" in cli("withdraw", "0123456789ab", expect=2).output
    assert "--yes" in cli("device", "delete", "esp001", expect=2).output


def test_device_show_prints_inventory_readably(cli, app, client, admin):
    token = admin.register_device("esp009")
    client.post("/api/v1/device/heartbeat/esp009", json={"rssi": -61, "sensor": "bme280"},
                headers={"Authorization": f"Bearer {token}"})
    app.extensions["dropsync"].close()  # the CLI opens the stores itself
    shown = cli("device", "show", "esp009").output.splitlines()
    assert "inventory:" in shown
    assert any(line.split() == ["rssi:", "-61"] for line in shown), shown
    assert any(line.split() == ["sensor:", "bme280"] for line in shown), shown
    assert any(line.split() == ["effective_poll_interval_s:", "30"] for line in shown)
    assert not any("{" in line for line in shown), shown


def test_docs_say_how_to_withdraw_without_a_prompt():
    from support import ROOT

    assert "dropsync withdraw 1cff6733c9e4 --yes" in \
        (ROOT / "docs" / "operators" / "staging.md").read_text()


def test_a_message_data_is_bounded_like_command_args(settings, tmp_path):
    app = create_app({**settings, "MESSAGE_DATA_MAX_BYTES": 1000})
    try:
        client = app.test_client()
        token = client.post("/api/v1/admin/devices/register", json={"id": "esp001"},
                            headers=ADMIN).get_json()["token"]
        device = {"Authorization": f"Bearer {token}"}
        url = "/api/v1/device/messages/esp001"
        fits = {"blob": "x" * (1000 - len('{"blob":""}'))}  # exactly 1000 bytes as JSON
        assert client.post(url, json={"text": "ok", "data": fits},
                           headers=device).status_code == 201
        history = tmp_path / "data" / "history" / "messages"
        size = sum(p.stat().st_size for p in history.iterdir())
        for data in ({"blob": "x" * 1000}, ["x" * 400] * 3, "x" * 1000):
            error = assert_error(client.post(url, json={"text": "big", "data": data},
                                             headers=device), 400)
            assert "data" in error["details"], error
        assert sum(p.stat().st_size for p in history.iterdir()) == size  # nothing stored
        messages = client.get("/api/v1/admin/devices/esp001/messages",
                              headers=ADMIN).get_json()["messages"]
        assert [m["text"] for m in messages] == ["ok"]
        # the default holds too, and the OpenAPI document states it
        assert "MESSAGE_DATA_MAX_BYTES" in json.dumps(client.get("/api/v1/openapi.json")
                                                      .get_json())
    finally:
        app.extensions["dropsync"].close()


def test_a_heap_too_large_for_the_health_series_is_refused(settings):
    """Found by the contract test's generated bodies: 2**31 bytes of free heap was taken
    in, and closing the hub then failed in the health series' checkpoint."""
    app = create_app(settings)
    client = app.test_client()
    token = client.post("/api/v1/admin/devices/register", json={"id": "esp001"},
                        headers=ADMIN).get_json()["token"]
    device = {"Authorization": f"Bearer {token}"}
    url = "/api/v1/device/heartbeat/esp001"
    assert_error(client.post(url, json={"free_heap": 2**31}, headers=device), 400)
    assert client.post(url, json={"free_heap": 2**31 - 1, "rssi": -60},
                       headers=device).status_code == 200
    app.extensions["dropsync"].close()  # the series checkpoints at close
