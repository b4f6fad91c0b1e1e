"""Settings: layered as documented, validated clearly, and the settings table
(docs/admin/settings.md) kept honest."""

from __future__ import annotations

import re

import pytest
from support import ROOT

from dropsync import create_app
from dropsync.config import SETTINGS, load_config
from dropsync.errors import ConfigError


def test_defaults_match_the_design():
    config = load_config(environ={})
    assert config["HOST"] == "0.0.0.0"
    assert config["PORT"] == 8000
    assert config["DATA_DIR"] == "./data"
    assert config["STAGING_DIR"] == "./staging"
    assert config["SECRET_KEY"] is None


def test_layers_apply_in_order(tmp_path):
    config_file = tmp_path / "dropsync.toml"
    config_file.write_text('port = 8100\nlog_level = "debug"\nthreads = 4\n')
    environ = {"PORT": "8200", "DROPSYNC_THREADS": "6", "HOST": "10.0.0.5"}
    config = load_config({"THREADS": 2}, environ=environ, config_file=config_file)
    assert config["LOG_LEVEL"] == "DEBUG"  # file over default
    assert config["PORT"] == 8200  # seed's bare env over file
    assert config["HOST"] == "10.0.0.5"
    assert config["THREADS"] == 2  # overrides over DROPSYNC_ env over file


def test_prefixed_environment_beats_the_seeds_bare_names():
    config = load_config(environ={"PORT": "8200", "DROPSYNC_PORT": "8300"})
    assert config["PORT"] == 8300


def test_config_file_named_by_environment(tmp_path):
    config_file = tmp_path / "hub.toml"
    config_file.write_text("history_retention = 500\n")
    config = load_config(environ={"DROPSYNC_CONFIG": str(config_file)})
    assert config["HISTORY_RETENTION"] == 500


@pytest.mark.parametrize("environ, fragment", [
    ({"DROPSYNC_PORT": "eighty"}, "DROPSYNC_PORT='eighty'"),
    ({"DROPSYNC_PORT": "70000"}, "between 0 and 65535"),
    ({"DROPSYNC_THREADS": "0"}, "at least 1"),
    ({"DROPSYNC_LOG_LEVEL": "loud"}, "DEBUG, INFO"),
    ({"DROPSYNC_IMPORT_DEVICE_AUTH": "maybe"}, "true/false"),
    ({"DROPSYNC_FIRMWARE_CHUNK_SIZE": "8193"}, "refuses firmware chunks over 8192 bytes"),
    ({"DROPSYNC_FIRMWARE_CHUNK_SIZE": "1048576"}, "between 512 and 8192"),
])
def test_bad_values_are_refused_with_the_variable_named(environ, fragment):
    with pytest.raises(ConfigError) as caught:
        load_config(environ=environ)
    assert fragment in caught.value.message


def test_unknown_or_broken_config_file_is_refused(tmp_path):
    bad_key = tmp_path / "a.toml"
    bad_key.write_text("prot = 1\n")
    with pytest.raises(ConfigError, match="unknown setting 'prot'"):
        load_config(environ={}, config_file=bad_key)
    broken = tmp_path / "b.toml"
    broken.write_text("port = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(environ={}, config_file=broken)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(environ={}, config_file=tmp_path / "missing.toml")


def test_settings_table_matches_the_code():
    table = (ROOT / "docs" / "admin" / "settings.md").read_text()
    rows = re.findall(r"^\| `([A-Z_]+)` \| (.+?) \| (.+?) \|$", table, re.M)
    documented = {name: default for name, default, _ in rows}
    assert list(documented) == [s.name for s in SETTINGS]
    meanings = {name: meaning for name, _, meaning in rows}
    for setting in SETTINGS:
        if setting.default is None:
            expected = "*(unset)*"
        elif isinstance(setting.default, bool):
            expected = f"`{str(setting.default).lower()}`"
        else:
            expected = f"`{setting.default}`"
        assert documented[setting.name] == expected, setting.name
        assert meanings[setting.name] == setting.help, setting.name


def test_secret_key_is_generated_once_and_kept(tmp_path):
    settings = {"DATA_DIR": str(tmp_path / "a"), "SERVING": False, "LOG_LEVEL": "WARNING"}
    first = create_app(settings)
    key = first.config["SECRET_KEY"]
    first.extensions["dropsync"].close()
    again = create_app(settings)
    assert again.config["SECRET_KEY"] == key
    again.extensions["dropsync"].close()
    other = create_app({**settings, "DATA_DIR": str(tmp_path / "b")})
    assert other.config["SECRET_KEY"] != key and len(key) >= 32
    other.extensions["dropsync"].close()
    assert (tmp_path / "a" / "secret_key").stat().st_mode & 0o077 == 0


def test_configured_secret_key_is_used_and_not_written(tmp_path):
    app = create_app({"DATA_DIR": str(tmp_path), "SECRET_KEY": "from-config", "SERVING": False,
                      "LOG_LEVEL": "WARNING"})
    assert app.config["SECRET_KEY"] == "from-config"
    assert not (tmp_path / "secret_key").exists()
    app.extensions["dropsync"].close()
