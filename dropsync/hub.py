"""The hub's state outside any web framework: open stores, who counts as admin, uptime.

``create_app`` wraps a ``Hub`` in Flask; the CLI opens one directly when no hub is running.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import __version__
from .config import release_actions_from
from .errors import ConfigError
from .fleet.bootstrap import (
    DEVICE_AUTH_FILE,
    ensure_first_admin,
    import_seed_device_auth,
    load_or_create_secret_key,
)
from .fleet.credentials import AdminAuthority, new_token
from .fleet.devices import RefusedTokens
from .fleet.enrollment import Enrollment
from .fleet.pacing import Pacing
from .relay.commands import CommandQueue
from .relay.commands import Settings as CommandSettings
from .store import Stores
from .store.periodic import Periodic
from .sync.blobs import BlobStore
from .sync.firmware_images import FirmwareImages, is_firmware_path
from .sync.keyfiles import private_key_files
from .sync.packages import PackageCatalog
from .sync.rollouts import Rollouts
from .sync.staging import Staging
from .sync.tickets import Tickets
from .sync.uploads import DeviceUploads
from .sync.watcher import StagingWatcher

log = logging.getLogger("dropsync")

#: Where the seed kept its token map, relative to the working directory.
SEED_APP_DIR = Path("app")


def signing_keys(settings: dict[str, Any]) -> list:
    """The public keys of ``FIRMWARE_SIGNING_KEYS`` (a private key there is a config
    error); a private key lying in the data folder is one too, keys or not."""
    found = private_key_files(Path(settings["DATA_DIR"]))
    if found:
        raise ConfigError(f"{found[0]} is a private key in the hub's data folder: move it "
                          "to the machine that signs (the hub needs only public keys, and "
                          "a backup would carry it)")
    paths = settings["FIRMWARE_SIGNING_KEYS"]
    if not paths:
        return []
    from .sync.signing import SigningError, load_public_keys  # cryptography: only if set

    try:
        return load_public_keys(paths.split(","))
    except SigningError as exc:
        raise ConfigError(f"FIRMWARE_SIGNING_KEYS: {exc}") from None


def local_url(settings: dict[str, Any]) -> str:
    """The URL a process on this machine uses to reach the hub."""
    host = settings["HOST"]
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "[::1]"
    elif ":" in host:
        host = f"[{host}]"
    from .ops.tls import tls_files

    scheme = "https" if tls_files(settings) else "http"
    return f"{scheme}://{host}:{settings['PORT']}"


class Hub:
    def __init__(self, settings: dict[str, Any], *, serving: bool = True):
        """Open the data directory (exclusively) and get it ready.

        ``serving`` says that this process answers HTTP at ``local_url(settings)``; the lock
        file then tells local CLI commands to go through it instead of the files.
        """
        self.settings = settings
        self.serving = serving
        #: Called at close, before the stores shut (e.g. stop advertising over mDNS).
        self.on_close: list[Callable[[], None]] = []
        self.stores = Stores(
            settings["DATA_DIR"],
            history_segment_records=settings["HISTORY_SEGMENT_RECORDS"],
            history_retention=settings["HISTORY_RETENTION"],
            liveness_checkpoint_s=settings["LIVENESS_CHECKPOINT_S"],
            health_bucket_s=settings["HEALTH_SERIES_BUCKET_S"],
        )
        try:
            self.secret_key = settings["SECRET_KEY"] or \
                load_or_create_secret_key(self.stores.data_dir)
            ensure_first_admin(self.stores, settings)
            if settings["IMPORT_DEVICE_AUTH"]:
                import_seed_device_auth(self.stores, [self.stores.data_dir / DEVICE_AUTH_FILE,
                                                      SEED_APP_DIR / DEVICE_AUTH_FILE])
            self.cli_token = new_token()
            extra = {"local-cli": self.cli_token}
            if settings["ADMIN_TOKEN"]:
                extra["env"] = settings["ADMIN_TOKEN"]
            self.admin = AdminAuthority(self.stores, extra)
            self.commands = CommandQueue(self.stores, CommandSettings.from_config(settings))
            self.pacing = Pacing(self.stores, settings)
            #: Wrong tokens naming a registered device (in memory: the device page's).
            self.refused_tokens = RefusedTokens()
            self.enrollment = Enrollment(self.stores,
                                         pending_max=settings["ENROLL_PENDING_MAX"],
                                         pending_ttl_s=settings["ENROLL_PENDING_TTL_S"],
                                         retry_s=settings["ENROLL_RETRY_S"])
            self._open_file_sync(settings)
            self._open_alerts(settings)
            from .sites.link import SitesLink  # its export reads the dashboard's views
            self.sites = SitesLink(self, settings)
            self.stores.lock.publish({"url": local_url(settings) if serving else None,
                                      "cli_token": self.cli_token, "version": __version__,
                                      "tls_cert": self._tls_cert(settings)})
        except BaseException:
            self.stores.close()
            raise
        self.started_at = time.time()
        if serving:
            self.stores.start_checkpoints()
            if settings["STAGING_WATCH"]:
                self.watcher.start()
            self.commands.start()
            self.sites.start()
            self.rollout_ticks.start()
            if self.alerts is not None:
                self.alerts.start()
                self.offline_watch.start()
        log.info("DropSync %s: data in %s, staging folder %s", __version__,
                 self.stores.data_dir, Path(settings["STAGING_DIR"]).resolve())

    def _open_alerts(self, settings: dict[str, Any]) -> None:
        """``ALERT_WEBHOOK_URL``: devices going offline and failed deliveries, posted to
        a local webhook from threads of their own (``ops/alerts.py``)."""
        from .ops.alerts import OfflineWatch, Webhook, fleet_states

        self.alerts: Webhook | None = None
        if not settings["ALERT_WEBHOOK_URL"]:
            return
        alerts = self.alerts = Webhook(settings["ALERT_WEBHOOK_URL"])
        watch = OfflineWatch(lambda: fleet_states(self), alerts.send)
        self.offline_watch = Periodic("offline-watch", settings["ALERT_OFFLINE_CHECK_S"],
                                      watch.look)
        self.commands.on_failed = lambda record: alerts.send(
            "command.failed", device_id=record["device_id"], command_id=record["command_id"],
            name=record["name"], reason=record.get("reason"), result=record.get("result"))

    @staticmethod
    def _tls_cert(settings: dict[str, Any]) -> str | None:
        """The certificate local CLI calls trust (the hub's own, pinned), when HTTPS."""
        from .ops.tls import tls_files

        found = tls_files(settings)
        return str(found[0].resolve()) if found else None

    def uptime_s(self) -> float:
        return time.time() - self.started_at

    def close(self) -> None:
        if self.stores.closed:
            return
        for stop in self.on_close:
            stop()
        self.sites.stop()
        self.commands.stop()
        self.rollout_ticks.stop()
        if self.alerts is not None:
            self.offline_watch.stop()
            self.alerts.stop()
        try:
            self.commands.tidy()
        except Exception:  # the history already holds every ending; tidying can wait
            log.exception("could not tidy finished commands at shutdown")
        self.watcher.stop()
        self.stores.close()

    # -- file sync ---------------------------------------------------------------------
    def _open_file_sync(self, settings: dict[str, Any]) -> None:
        """Blob store, packages, staging folder, device uploads; the watcher is made here
        but only started when serving (tests that want it call ``watcher.start()``)."""
        data_dir = self.stores.data_dir
        self.blobs = BlobStore(data_dir / "blobs", settings["CHUNK_SIZE"])
        self.packages = PackageCatalog(self.stores, self.blobs)
        if settings.get("DOWNLOAD_TICKET_SECRET"):
            self.packages.tickets = Tickets(settings["DOWNLOAD_TICKET_SECRET"],
                                            settings["DOWNLOAD_TICKET_TTL_S"])
        self.rollouts = Rollouts(self.stores, lambda: self.packages.catalog,
                                 release_actions_from(settings["STAGING_RELEASE"]))
        self.packages.gate = self.rollouts
        self.rollout_ticks = Periodic("rollouts", settings["ROLLOUT_TICK_S"],
                                      self.rollouts.tick)
        self.staging = Staging(Path(settings["STAGING_DIR"]), self.packages)
        self.staging.folder.is_hub_file = self.stores.hub_files.was_hub_file
        #: The images' flash limits and signing keys: checked at staging, and the flash
        #: again when one is offered (a smaller board may have joined the target since).
        self.firmware_images = FirmwareImages(settings["FIRMWARE_MAX_BYTES"],
                                              self.stores.devices, signing_keys(settings))
        self.staging.content_problem = self.firmware_images.problem
        firmware_chunk = settings["FIRMWARE_CHUNK_SIZE"]
        self.staging.chunk_size_for = \
            lambda rel: firmware_chunk if is_firmware_path(rel) else None
        self.uploads = DeviceUploads(self.stores, data_dir / "uploads",
                                     max_bytes=settings["UPLOAD_MAX_BYTES"],
                                     allowed_types=settings["UPLOAD_ALLOWED_TYPES"])
        self.watcher = StagingWatcher(self.staging, settle_s=settings["STAGING_SETTLE_S"],
                                      rescan_s=settings["STAGING_RESCAN_S"],
                                      observer=settings["STAGING_OBSERVER"])
        if self.firmware_images.keys:
            # images taken in before the keys were set (or with other keys) stop here
            for package in self.staging.recheck(is_firmware_path):
                log.warning("firmware image %s/%s withdrawn: %s", package["target"],
                            package["path"], "its signature does not verify")
        self.packages.remove_unreferenced_blobs()
        self.uploads.forget_missing_files()

    def staging_report(self) -> dict[str, Any]:
        """Staging problems and the watcher's state, for health and the admin API."""
        return {**self.staging.report(self.stores.devices.all()),
                "watcher": self.watcher.state()}
