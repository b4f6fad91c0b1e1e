"""A device's plaintext token is never written to the data directory or the logs."""

from __future__ import annotations

import json

import pytest
import requests

pytestmark = pytest.mark.slow


def every_byte_under(folder) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


def test_tokens_appear_nowhere_after_registration_and_import(hub_process, tmp_path):
    seed_in_data = {"seed-data-1": "seed-token-in-data-dir-0001",
                    "seed-data-2": "seed-token-in-data-dir-0002"}
    seed_in_app = {"seed-app-1": "seed-token-in-app-dir-00001"}
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "device_auth.json").write_text(json.dumps(seed_in_data))
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "device_auth.json").write_text(json.dumps(seed_in_app))
    cli_seed = tmp_path / "more_devices.json"
    cli_seed.write_text(json.dumps({"cli-import-1": "cli-imported-token-000001"}))

    hub = hub_process({"DROPSYNC_LOG_LEVEL": "DEBUG"})
    tokens = {**seed_in_data, **seed_in_app, "cli-import-1": "cli-imported-token-000001"}
    hub.cli("device", "import", str(cli_seed))
    for device_id in ("reg-1", "reg-2"):
        tokens[device_id] = hub.cli("device", "add", device_id).stdout.strip().rsplit(" ", 1)[-1]
    old = tokens["reg-2"]
    tokens["reg-2"] = hub.cli("device", "rotate-token", "reg-2").stdout.strip() \
        .rsplit(" ", 1)[-1]
    for device_id, token in tokens.items():  # every token is real and was used
        response = requests.get(f"{hub.url}/api/v1/device/ping/{device_id}",
                                headers={"Authorization": f"Bearer {token}"}, timeout=5)
        assert response.status_code == 200, (device_id, response.text)
    requests.get(f"{hub.url}/api/v1/device/ping/reg-2",
                 headers={"X-Device-Token": old}, timeout=5)  # a rejected one too
    hub.stop()

    assert not (tmp_path / "data" / "device_auth.json").exists()  # imported, then deleted
    assert "seed-token-in-data-dir-0001" not in hub.log
    stored = every_byte_under(hub.data_dir)
    log = hub.log.encode()
    assert b"seed-data-1" in stored and b"reg-2" in stored  # we did look in the right place
    for device_id, token in {**tokens, "reg-2-old": old}.items():
        assert token.encode() not in stored, f"{device_id}'s token is in the data directory"
        assert token.encode() not in log, f"{device_id}'s token is in the log"
    assert "Imported device tokens" in hub.log
