"""The dropsync command, with no hub running: it opens the stores itself."""

from __future__ import annotations

import json

from dropsync.store import Stores


def test_device_lifecycle(cli, tmp_path):
    added = cli("device", "add", "esp001", "--type", "esp32", "--group", "field",
                "--group", "north", "--name", "Pump")
    assert "Registered esp001." in added.output
    token = added.output.strip().rsplit(" ", 1)[-1]
    assert len(token) >= 32

    listed = json.loads(cli("device", "list", "--json").output)
    assert [(d["id"], d["type"], d["groups"], d["enabled"]) for d in listed] == \
        [("esp001", "esp32", ["field", "north"], True)]
    table = cli("device", "list").output.splitlines()
    assert table[0].split() == ["ID", "NAME", "TYPE", "GROUPS", "ENABLED", "LAST", "SEEN"]
    assert table[1].split()[:3] == ["esp001", "Pump", "esp32"]

    cli("device", "disable", "esp001")
    assert json.loads(cli("device", "show", "esp001", "--json").output)["enabled"] is False
    cli("device", "enable", "esp001")
    assert ["enabled:", "True"] in \
        [line.split() for line in cli("device", "show", "esp001").output.splitlines()]

    rotated = cli("device", "rotate-token", "esp001").output.strip().rsplit(" ", 1)[-1]
    assert rotated != token

    cli("device", "delete", "esp001", input="n\n", expect=1)  # declined: still there
    assert json.loads(cli("device", "list", "--json").output)
    cli("device", "delete", "esp001", "--yes")
    assert "No devices" in cli("device", "list").output

    stores = Stores(tmp_path / "data")
    kinds = [e["kind"] for e in stores.history["events"].records()]
    stores.close()
    assert kinds == ["device.registered", "device.disabled", "device.enabled",
                     "device.token_rotated", "device.deleted"]


def test_errors_exit_nonzero_with_a_message(cli):
    assert "device 'ghost' not found" in cli("device", "show", "ghost", expect=1).output
    cli("device", "add", "esp001")
    assert "already exists" in cli("device", "add", "esp001", expect=1).output
    assert "validation_failed" in cli("device", "add", "bad id", expect=1).output


def test_import_seed_file(cli, tmp_path):
    seed = tmp_path / "device_auth.json"
    seed.write_text(json.dumps({"esp001": "secure-token-esp001-xxxxxxxx",
                                "esp002": "secure-token-esp002-yyyyyyyy"}))
    assert "2 added, 0 updated, 0 unchanged" in cli("device", "import", str(seed)).output
    assert "0 added, 0 updated, 2 unchanged" in cli("device", "import", str(seed)).output
    seed.write_text(json.dumps({"esp001": "secure-token-esp001-changed"}))
    skipped = cli("device", "import", str(seed)).output
    assert "1 skipped" in skipped and "esp001" in skipped and "--replace" in skipped
    replaced = cli("device", "import", str(seed), "--replace").output
    assert "1 updated" in replaced and "tokens replaced for esp001" in replaced
    seed.write_text(json.dumps({"esp009": "abc"}))
    refused = cli("device", "import", str(seed), expect=1).output
    assert "shorter than 16 characters" in refused and "--force" in refused
    assert "1 added" in cli("device", "import", str(seed), "--force").output
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    assert "not valid JSON" in cli("device", "import", str(broken), expect=1).output


def test_admin_tokens_and_operators(cli):
    created = cli("admin", "token", "create", "--label", "backup").output
    token_id = created.split()[2]
    assert token_id in cli("admin", "token", "list").output
    assert json.loads(cli("admin", "token", "list", "--json").output)[-1]["label"] == "backup"
    cli("admin", "token", "revoke", token_id)
    assert token_id not in cli("admin", "token", "list").output

    cli("operator", "add", "alice", input="long enough\nlong enough\n")
    cli("operator", "passwd", "alice", "--password", "another one")
    names = [o["username"] for o in json.loads(cli("operator", "list", "--json").output)]
    assert names == ["admin", "alice"]
    assert "at least 8" in cli("operator", "add", "bob", "--password", "short", expect=1).output


def test_corrupt_store_is_reported_not_replaced(cli, tmp_path):
    cli("device", "add", "esp001")
    devices_file = tmp_path / "data" / "devices.json"
    devices_file.write_text("{oops")
    result = cli("device", "list", expect=1)
    assert str(devices_file) in result.output and "Refusing to start" in result.output
    assert devices_file.read_text() == "{oops"


def test_bad_setting_is_reported(cli, tmp_path):
    config = tmp_path / "hub.toml"
    config.write_text("threads = 0\n")
    assert "THREADS" in cli("--config", str(config), "device", "list", expect=1).output


def test_send_commands_and_messages_from_the_cli(cli, tmp_path):
    cli("device", "add", "esp001", "--group", "lab")
    cli("device", "add", "esp002", "--group", "lab")
    sent = cli("send", "group:lab", "reboot", "--args", '{"delay": 5}', "--priority", "80",
               "--expires", "600")
    assert "Queued command" in sent.output and "2 devices (esp001, esp002)" in sent.output
    queued = json.loads(cli("send", "esp001", "sync", "--json").output)
    listed = json.loads(cli("commands", "esp001", "--json").output)
    assert [(c["name"], c["state"], c["priority"]) for c in listed] == \
        [("reboot", "pending", 80), ("sync", "pending", 50)]
    assert listed[0]["args"] == {"delay": 5} and listed[0]["expires_at"]
    table = cli("commands", "esp001", "--state", "pending").output
    assert table.splitlines()[0].split()[:3] == ["ID", "NAME", "STATE"]
    assert "Command" in cli("cancel", str(queued["id"])).output
    assert [c["state"] for c in json.loads(cli("commands", "esp001", "--json").output)] == \
        ["pending", "cancelled"]
    bad = cli("send", "esp001", "sync", "--args", "{oops", expect=2)
    assert "not JSON" in bad.output
    missing = cli("send", "ghost", "sync", expect=1)
    assert "not found" in missing.output
