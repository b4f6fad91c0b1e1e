"""dropsync stage, packages and withdraw, with no hub running (in-process admin API)."""

from __future__ import annotations

import hashlib
import json
import os

from dropsync.store import Stores


def test_stage_list_and_withdraw(staging_cli, tmp_path):
    firmware = tmp_path / "app.bin"
    firmware.write_bytes(b"firmware v1")
    staged = staging_cli("stage", str(firmware), "--to", "esp001", "--as", "fw/app.bin").output
    assert "Staged esp001/fw/app.bin: package" in staged and "version 1" in staged
    assert (tmp_path / "staging" / "esp001" / "fw" / "app.bin").read_bytes() == b"firmware v1"
    assert "is unchanged" in staging_cli("stage", str(firmware), "--to", "esp001", "--as",
                                 "fw/app.bin").output

    listed = json.loads(staging_cli("packages", "--json").output)
    assert [(p["target"], p["path"], p["version"], p["source"]) for p in listed] == \
        [("esp001", "fw/app.bin", 1, "api")]
    assert listed[0]["sha256"] == hashlib.sha256(b"firmware v1").hexdigest()
    table = staging_cli("packages").output.splitlines()
    assert table[0].split()[:4] == ["ID", "TARGET", "PATH", "VERSION"]
    assert table[1].split()[:5] == [listed[0]["id"], "esp001", "fw/app.bin", "1", "11"]
    assert staging_cli("packages", "--target", "all", "--json").output.strip() == "[]"

    staging_cli("withdraw", listed[0]["id"], input="n\n", expect=1)  # declined: still there
    assert json.loads(staging_cli("packages", "--json").output)
    gone = staging_cli("withdraw", listed[0]["id"], "--yes").output
    assert "Withdrew esp001/fw/app.bin" in gone
    assert "No packages" in staging_cli("packages").output
    assert not (tmp_path / "staging" / "esp001" / "fw" / "app.bin").exists()
    assert "not found" in staging_cli("withdraw", listed[0]["id"], "--yes", expect=1).output

    stores = Stores(tmp_path / "data")
    assert len(stores.packages) == 0
    stores.close()


def test_stage_refuses_bad_targets_and_names(staging_cli, tmp_path):
    source = tmp_path / "a.txt"
    source.write_text("a")
    assert "device id, group-<name> or all" in staging_cli("stage", str(source), "--to", "no such",
                                                    expect=1).output
    assert "validation_failed" in staging_cli("stage", str(source), "--to", "esp001", "--as",
                                      "../escape.txt", expect=1).output
    assert not (tmp_path / "escape.txt").exists()


def test_stage_shows_progress_for_large_files(staging_cli, tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(2 * 1024 * 1024))
    output = staging_cli("stage", str(big), "--to", "all").output
    assert "Uploading big.bin" in output and "Staged all/big.bin" in output
    listed = json.loads(staging_cli("packages", "--json").output)
    assert listed[0]["size"] == 2 * 1024 * 1024
    assert listed[0]["sha256"] == hashlib.sha256(big.read_bytes()).hexdigest()
