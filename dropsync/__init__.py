"""DropSync: an offline hub for field IoT nodes."""

from __future__ import annotations

import atexit
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__version__ = "0.1.0"

#: The checkout (or install) root holding ``static/`` and ``templates/``.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
#: Where a wheel puts ``templates/`` and ``static/`` (setup.cfg's data files), below the
#: install's data root (the venv, /usr/local, ~/.local).
SHARED_ASSETS = Path("share") / "dropsync"
ASSET_MARKER = Path("templates") / "dashboard" / "base.html"


def asset_root() -> Path:
    """The folder holding ``templates/`` and ``static/``: the checkout (editable installs,
    tests), else where a non-editable install put them."""
    if (PROJECT_ROOT / ASSET_MARKER).is_file():
        return PROJECT_ROOT
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        for file in distribution("dropsync").files or ():
            if file.as_posix().endswith((SHARED_ASSETS / ASSET_MARKER).as_posix()):
                return Path(file.locate()).resolve().parents[2]
    except PackageNotFoundError:
        pass
    return Path(sys.prefix) / SHARED_ASSETS


def create_app(config: Mapping[str, Any] | None = None):
    """Build the hub: settings, stores (held exclusively), blueprints.

    ``config`` overrides every other layer. Besides the settings in ``dropsync.config``, it
    may hold ``CONFIG_FILE`` (a TOML file to read), ``SERVING`` (False when the app will not
    answer HTTP, as in the CLI) and any Flask setting.
    """
    from flask import Flask

    from . import api, dashboard
    from .api import lanes
    from .config import load_config
    from .hub import Hub

    overrides = dict(config or {})
    config_file = overrides.pop("CONFIG_FILE", None)
    settings = load_config(overrides, config_file=config_file)
    configure_logging(settings["LOG_LEVEL"])
    hub = Hub(settings, serving=settings.pop("SERVING", True))

    assets = asset_root()
    app = Flask(__name__, static_folder=str(assets / "static"),
                template_folder=str(assets / "templates"))
    app.config.update(settings)
    # Which settings file was read, so a backup can carry it.
    app.config["CONFIG_FILE"] = config_file or os.environ.get("DROPSYNC_CONFIG")
    app.config.update(
        SECRET_KEY=hub.secret_key,
        MAX_CONTENT_LENGTH=settings["MAX_REQUEST_BYTES"],
        PROPAGATE_EXCEPTIONS=False,  # even under TESTING, errors answer in the JSON shape
    )
    app.json.sort_keys = False
    app.extensions["dropsync"] = hub
    api.init_app(app)  # the device, files, admin, docs and updater audiences; ops
    dashboard.init_app(app)  # the operators' browser
    lanes.check_hooks(app)  # last: no hook may hide from the device lanes
    atexit.register(hub.close)
    return app


def configure_logging(level: str) -> None:
    logger = logging.getLogger("dropsync")
    logger.setLevel(level)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(
            "%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s"))
        handler.addFilter(escape_control_characters)
        logger.addHandler(handler)
        logger.propagate = False


#: Control characters (C0, DEL, C1, line and paragraph separators) and how a log shows them.
_ESCAPES = {code: repr(chr(code))[1:-1] for code in
            [*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029]}


def escape_control_characters(record: logging.LogRecord) -> bool:
    """A log filter: names from outside (staged files, device ids) are logged with their
    control characters escaped, so a file named ``a\nFAKE LINE`` cannot forge a log line.
    Only the arguments are escaped; the hub's own message text keeps its newlines."""
    if isinstance(record.args, tuple):
        record.args = tuple(
            str(arg).translate(_ESCAPES) if isinstance(arg, str | os.PathLike) else arg
            for arg in record.args)
    return True
