"""What happens the first time a data directory is opened, and at every start after.

A fresh hub has no built-in password: it creates the first admin credential and tells the
operator once, on the console and in a 0600 file in the data directory. A seed
``device_auth.json`` is imported (hashed) when found, and only again when it changes.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from pathlib import Path
from typing import Any

from ..clock import now_iso
from ..errors import ConfigError, DropSyncError, NotFound, ValidationFailed
from ..jsonbounds import loads_bounded
from ..store import Stores, write_atomically
from .credentials import add_operator, check_password_policy, create_admin_token
from .devices import import_device_tokens

log = logging.getLogger("dropsync")

FIRST_ADMIN_FILE = "first-admin.txt"
SECRET_KEY_FILE = "secret_key"
FIRST_OPERATOR = "admin"
DEVICE_AUTH_FILE = "device_auth.json"
FIRST_START_MARKER = "first-start"


def load_or_create_secret_key(data_dir: Path) -> str:
    path = data_dir / SECRET_KEY_FILE
    try:
        key = path.read_text().strip()
    except FileNotFoundError:
        key = ""
    if not key:
        key = secrets.token_hex(32)
        write_atomically(path, key.encode())
    return key


def ensure_first_admin(stores: Stores, settings: dict[str, Any]) -> None:
    """Create the first admin token and operator when there are none, and say so once."""
    path = stores.data_dir / FIRST_ADMIN_FILE
    if FIRST_START_MARKER in stores.meta:
        if path.exists():
            log.info("The first admin credentials are in %s; delete it once stored safely.",
                     path)
        return
    chosen_password = settings.get("ADMIN_PASSWORD")
    if chosen_password:  # refuse before creating anything, or a retry would hide the token
        try:
            check_password_policy(chosen_password)
        except ValidationFailed as exc:
            raise ConfigError(f"DROPSYNC_ADMIN_PASSWORD: {exc.message}") from None
    lines = []
    if not len(stores.admin_tokens) and not settings.get("ADMIN_TOKEN"):
        _, token = create_admin_token(stores, "first admin token")
        lines.append(f"admin API token:  {token}")
    if not len(stores.operators):
        password = chosen_password
        if not password:
            password = secrets.token_urlsafe(12)
            lines.append(f"dashboard login:  {FIRST_OPERATOR} / {password}")
        add_operator(stores, FIRST_OPERATOR, password)
    if lines:
        body = "DropSync first admin credentials (shown once; store them, then delete this " \
               "file)\n" + "\n".join(lines) + "\n"
        write_atomically(path, body.encode(), mode=0o600)
        # The hub's own lines go into the message text: the log filter escapes control
        # characters in arguments (names from outside), which would show "\n" here.
        told = "".join(f"\n    {line}" for line in lines).replace("%", "%%")
        log.warning("First start: created the first admin credentials." + told +
                    "\n    Also saved to %s (mode 0600): store them safely, then delete it.",
                    path)
    stores.meta.insert({"name": FIRST_START_MARKER, "at": now_iso()})


def import_seed_device_auth(stores: Stores, candidates: list[Path]) -> None:
    """Import each seed ``device_auth.json`` that is new or changed since its last import.

    One inside the data directory is deleted once imported, so no plaintext token stays
    there; one elsewhere (the seed's ``app/``) is left alone, with a reminder.
    """
    for path in candidates:
        if not path.is_file():
            continue
        path = path.resolve()  # logs and the import marker name it unambiguously
        raw = path.read_bytes()
        fingerprint = hashlib.sha256(raw).hexdigest()
        marker = f"seed-import:{path}"
        try:
            if stores.meta.get(marker)["sha256"] == fingerprint:
                continue
        except NotFound:
            pass
        try:
            tokens = loads_bounded(raw)
            if not isinstance(tokens, dict):
                raise ValueError("expected an object of device id to token")
            # the file changed since its last import: the operator's edit is meant
            result = import_device_tokens(stores, tokens, replace=True,
                                          actor=f"seed:{path.name}")
        except (ValueError, DropSyncError) as exc:
            log.error("Not importing %s: %s", path, getattr(exc, "message", exc))
            continue
        record = {"name": marker, "sha256": fingerprint}
        if marker in stores.meta:
            stores.meta.update(marker, record)
        else:
            stores.meta.insert(record)
        log.info("Imported device tokens from %s: %s", path, result.summary())
        if path.parent == stores.data_dir:
            path.unlink()
            log.info("Deleted %s: its tokens are now stored only as hashes.", path)
        else:
            log.warning("%s still holds plaintext tokens; delete it once the devices work.",
                        path)
