"""Errors the rules raise, each carrying the HTTP status and code the API answers with.

Plain exceptions: the store, the rules and the CLI raise them without knowing about Flask;
``dropsync.api.errors`` turns any of them into the one JSON error shape.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class DropSyncError(Exception):
    """Base for every error the hub reports deliberately."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, details: Any = None, *, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.details = details
        if code:
            self.code = code


class BadRequest(DropSyncError):
    status, code = 400, "bad_request"


class ValidationFailed(BadRequest):
    code = "validation_failed"


class Unauthorized(DropSyncError):
    status, code = 401, "unauthorized"


class Forbidden(DropSyncError):
    status, code = 403, "forbidden"


class NotFound(DropSyncError):
    status, code = 404, "not_found"


class Conflict(DropSyncError):
    status, code = 409, "conflict"


class Gone(DropSyncError):
    status, code = 410, "gone"


class ServiceUnavailable(DropSyncError):
    status, code = 503, "unavailable"


class UnsupportedMediaType(DropSyncError):
    status, code = 415, "unsupported_media_type"


class StorageFull(DropSyncError):
    status, code = 507, "storage_full"


class StartupError(DropSyncError):
    """The hub cannot start; the message says what to do. Never shown as a traceback."""

    code = "startup_error"


class DataDirBusy(StartupError):
    code = "data_dir_busy"

    def __init__(self, data_dir: Path, pid: int | None):
        holder = f"process {pid}" if pid else "another process"
        super().__init__(
            f"data directory {data_dir} is in use by {holder} (another DropSync hub or CLI). "
            "Stop it, or point DROPSYNC_DATA_DIR at another directory."
        )
        self.data_dir = data_dir
        self.pid = pid


class StoreCorrupt(StartupError):
    code = "store_corrupt"

    def __init__(self, path: Path, reason: str):
        super().__init__(
            f"store file {path} cannot be read ({reason}). Refusing to start rather than "
            "replace it with an empty store: restore it from a backup, or move it aside "
            "to start that store afresh."
        )
        self.path = path


class ConfigError(StartupError):
    code = "config_error"


class PayloadTooLarge(DropSyncError):
    status, code = 413, "payload_too_large"
