"""First start (credentials told once) and seed device_auth.json import at start."""

from __future__ import annotations

import json
import logging
import time

import pytest

from dropsync import create_app
from dropsync.errors import ConfigError
from dropsync.fleet.credentials import tokens_match, verify_operator


@pytest.fixture
def start(tmp_path, monkeypatch):
    """Open (and close) a hub on tmp_path/data with the working directory at tmp_path."""
    monkeypatch.chdir(tmp_path)
    opened = []

    def open_hub(**settings):
        for app in opened:
            app.extensions["dropsync"].close()
        app = create_app({"DATA_DIR": str(tmp_path / "data"), "SERVING": False,
                          "LOG_LEVEL": "INFO", **settings})
        opened.append(app)
        return app.extensions["dropsync"]

    yield open_hub
    for app in opened:
        app.extensions["dropsync"].close()


def test_first_start_creates_credentials_once(start, tmp_path, caplog):
    hub = start()
    credentials = (tmp_path / "data" / "first-admin.txt").read_text()
    token = credentials.split("admin API token:")[1].split()[0]
    password = credentials.split("dashboard login:  admin / ")[1].split()[0]
    assert hub.admin.identify(token).startswith("token:")
    assert verify_operator(hub.stores, "admin", password)
    # revoking every admin token does not make a later start mint a new one
    for record in hub.stores.admin_tokens.all():
        hub.stores.admin_tokens.delete(record["id"])
    (tmp_path / "data" / "first-admin.txt").unlink()
    again = start()
    assert len(again.stores.admin_tokens) == 0
    assert not (tmp_path / "data" / "first-admin.txt").exists()


def test_later_starts_point_at_the_credentials_file(start, tmp_path, caplog):
    start()
    with caplog.at_level(logging.INFO, logger="dropsync"):
        start()
    assert f"first admin credentials are in {tmp_path / 'data' / 'first-admin.txt'}" \
        in caplog.text


def test_credentials_from_the_environment_are_used_and_not_written(start, tmp_path):
    hub = start(ADMIN_TOKEN="env-admin-token-0123456789", ADMIN_PASSWORD="chosen-password")
    assert not (tmp_path / "data" / "first-admin.txt").exists()
    assert hub.admin.identify("env-admin-token-0123456789") == "env"
    assert verify_operator(hub.stores, "admin", "chosen-password")
    assert len(hub.stores.admin_tokens) == 0
    stored = b"".join(p.read_bytes() for p in (tmp_path / "data").rglob("*") if p.is_file())
    assert b"env-admin-token-0123456789" not in stored and b"chosen-password" not in stored


def test_a_too_short_first_password_stops_startup_before_creating_anything(start, tmp_path):
    with pytest.raises(ConfigError, match="DROPSYNC_ADMIN_PASSWORD"):
        start(ADMIN_PASSWORD="short")
    # fixed and started again: the admin token is created now, and told
    hub = start(ADMIN_PASSWORD="long enough now")
    token = (tmp_path / "data" / "first-admin.txt").read_text() \
        .split("admin API token:")[1].split()[0]
    assert hub.admin.identify(token).startswith("token:")


def test_seed_file_in_app_is_imported_once_and_again_only_when_changed(start, tmp_path):
    seed = tmp_path / "app" / "device_auth.json"
    seed.parent.mkdir()
    seed.write_text(json.dumps({"esp001": "secure-token-esp001-original"}))
    hub = start()
    assert tokens_match(hub.stores.devices.get("esp001")["token_hash"],
                        "secure-token-esp001-original")
    # the operator rotates the token; an unchanged seed file must not undo that at restart
    hub.stores.devices.update("esp001", {"token_hash": "rotated"})
    hub = start()
    assert hub.stores.devices.get("esp001")["token_hash"] == "rotated"
    assert seed.exists()  # outside the data directory: the operator's file is left alone
    # a changed seed file is imported again
    seed.write_text(json.dumps({"esp001": "secure-token-esp001-replaced"}))
    hub = start()
    assert tokens_match(hub.stores.devices.get("esp001")["token_hash"],
                        "secure-token-esp001-replaced")


def test_seed_file_in_the_data_dir_is_imported_then_deleted(start, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "device_auth.json").write_text(json.dumps({"esp9": "secure-token-esp9-xxxxx"}))
    hub = start()
    assert "esp9" in hub.stores.devices
    assert not (data_dir / "device_auth.json").exists()


def test_a_broken_seed_file_is_reported_and_nothing_is_imported(start, tmp_path, caplog):
    seed = tmp_path / "app" / "device_auth.json"
    seed.parent.mkdir()
    seed.write_text(json.dumps({"ok-device": "secure-token-ok-device", "bad id": "x" * 20}))
    with caplog.at_level(logging.ERROR, logger="dropsync"):
        hub = start()
    assert f"Not importing {seed}" in caplog.text
    assert len(hub.stores.devices) == 0


def test_seed_import_can_be_switched_off(start, tmp_path):
    seed = tmp_path / "app" / "device_auth.json"
    seed.parent.mkdir()
    seed.write_text(json.dumps({"esp001": "secure-token-esp001-original"}))
    assert len(start(IMPORT_DEVICE_AUTH=False).stores.devices) == 0


def test_first_start_log_reads_as_lines_and_outside_names_stay_escaped(hub_process, tmp_path):
    """A real ``dropsync serve``'s stderr as a person reads it: the credentials on lines of
    their own, while a staged file named with a newline still cannot forge a line."""
    evil = tmp_path / "staging" / "esp001" / "a\nFAKE line.txt"
    evil.parent.mkdir(parents=True)
    evil.write_text("x")
    hub = hub_process({"DROPSYNC_STAGING_DIR": str(tmp_path / "staging")})
    saved = hub.data_dir / "first-admin.txt"
    token = saved.read_text().split("admin API token:  ")[1].split()[0]
    password = saved.read_text().split("dashboard login:  admin / ")[1].split()[0]
    lines = hub.log.splitlines()
    first = next(i for i, line in enumerate(lines)
                 if line.endswith("dropsync: First start: created the first admin credentials."))
    assert lines[first + 1:first + 4] == [
        f"    admin API token:  {token}",
        f"    dashboard login:  admin / {password}",
        f"    Also saved to {saved} (mode 0600): store them safely, then delete it.",
    ], "\n".join(lines[first:first + 4])
    deadline = time.monotonic() + 10  # the start-up reconcile logs the bad name just after
    while "a\\nFAKE line.txt" not in hub.log and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "a\\nFAKE line.txt" in hub.log
    assert not any(line.startswith("FAKE") for line in hub.log.splitlines())
