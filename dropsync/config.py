"""Settings, declared once, layered: defaults, a config file, the environment, overrides.

Each setting is read from ``DROPSYNC_<NAME>``; the seed's bare ``HOST``, ``PORT``,
``SECRET_KEY`` and ``LOG_LEVEL`` are honoured too, below their ``DROPSYNC_`` forms. The
config file (TOML, named by ``DROPSYNC_CONFIG`` or ``dropsync --config``) uses the setting
names as keys, in any case. The settings table in ``docs/admin/settings.md`` is checked
against ``SETTINGS``, help text included.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .sync.tickets import parse_secret

ENV_PREFIX = "DROPSYNC_"
#: Names the seed read from the environment without a prefix.
SEED_ENV_NAMES = ("HOST", "PORT", "SECRET_KEY", "LOG_LEVEL")


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true/false")


def parse_log_level(text: str) -> str:
    level = text.strip().upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError("expected DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return level


def parse_positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def parse_positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise ValueError("must be greater than 0")
    return value


def parse_fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise ValueError("must be at least 0 and below 1")
    return value


def parse_rate_limit(text: str) -> str:
    """A flask-limiter rate string such as ``120/minute`` or ``10 per second``."""
    from limits import parse_many

    text = text.strip()
    try:
        parse_many(text)
    except ValueError:
        raise ValueError("expected a rate such as '120/minute' or '5/second'") from None
    return text


def parse_port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be between 0 and 65535")
    return value


def parse_observer(text: str) -> str:
    kind = text.strip().lower()
    if kind not in ("inotify", "polling"):
        raise ValueError("expected inotify or polling")
    return kind


def parse_chunk_size(text: str) -> int:
    value = int(text)
    if not 512 <= value <= 1_048_576:
        raise ValueError("must be between 512 and 1048576")
    return value


#: The firmware core holds one firmware chunk in RAM until its SHA-256 is checked, and
#: refuses a manifest whose firmware chunks are larger than this.
FIRMWARE_CHUNK_MAX = 8192


def parse_firmware_chunk_size(text: str) -> int:
    value = int(text)
    if not 512 <= value <= FIRMWARE_CHUNK_MAX:
        raise ValueError(f"must be between 512 and {FIRMWARE_CHUNK_MAX}: the node firmware "
                         f"refuses firmware chunks over {FIRMWARE_CHUNK_MAX} bytes")
    return value


def parse_extension_list(text: str) -> str:
    items = [part.strip().lower().lstrip(".") for part in text.split(",") if part.strip()]
    if not items or not all(item == "*" or item.isalnum() for item in items):
        raise ValueError("expected comma-separated file extensions, or *")
    return ",".join(items)


def parse_server(text: str) -> str:
    name = text.strip().lower()
    if name not in ("granian", "gunicorn"):
        raise ValueError("expected granian or gunicorn")
    return name


def parse_header_timeout(text: str) -> float:
    seconds = parse_positive_float(text)
    if seconds > 60:
        raise ValueError("expected at most 60 seconds (granian's limit)")
    return seconds


def parse_accel_prefix(text: str) -> str:
    prefix = text.strip()
    if not prefix.startswith("/") or not prefix.endswith("/"):
        raise ValueError("expected a location path that starts and ends with /")
    return prefix


def flash_limits_from(text: str) -> dict[str, int]:
    """``esp8266=1044464,esp32=1310720``: the largest image each device type can take."""
    limits = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        device_type, sep, size = item.partition("=")
        if not sep or not device_type.strip() or not size.strip().isdigit() \
                or int(size) <= 0:
            raise ValueError("use <device type>=<bytes>, comma-separated "
                             "(e.g. esp8266=1044464,esp32=1310720)")
        limits[device_type.strip().lower()] = int(size)
    if not limits:
        raise ValueError("name at least one device type")
    return limits


def parse_flash_limits(text: str) -> str:
    return ",".join(f"{kind}={size}" for kind, size in flash_limits_from(text).items())


def parse_path_list(text: str) -> str:
    """Comma-separated file paths (empty items dropped); each must name a file."""
    paths = [item.strip() for item in text.split(",") if item.strip()]
    if not paths:
        raise ValueError("expected one or more file paths, comma-separated")
    missing = [path for path in paths if not Path(path).is_file()]
    if missing:
        raise ValueError(f"no such file: {', '.join(missing)}")
    return ",".join(paths)


#: What a staged package does by default, per kind (``STAGING_RELEASE``): offered at once,
#: or held in a rollout draft.
RELEASE_ACTIONS = ("publish", "draft")
RELEASE_KINDS = ("file", "firmware")


def release_actions_from(text: str) -> dict[str, str]:
    """``file=publish,firmware=draft`` -> {"file": "publish", "firmware": "draft"}."""
    actions = dict.fromkeys(RELEASE_KINDS, "publish")
    for part in filter(None, (p.strip() for p in text.split(","))):
        kind, _, action = part.partition("=")
        kind, action = kind.strip(), action.strip()
        if kind not in RELEASE_KINDS or action not in RELEASE_ACTIONS:
            raise ValueError(f"expected kind=action pairs, kinds {', '.join(RELEASE_KINDS)}, "
                             f"actions {', '.join(RELEASE_ACTIONS)}; got {part!r}")
        actions[kind] = action
    return actions


def parse_release(text: str) -> str:
    release_actions_from(text)
    return text


def parse_lan_url(text: str) -> str:
    from .ops.alerts import lan_url_problem

    problem = lan_url_problem(text.strip())
    if problem:
        raise ValueError(problem)
    return text.strip()


def parse_address_list(text: str) -> str:
    """Comma-separated IP addresses or networks (``127.0.0.1,10.0.0.0/8``)."""
    import ipaddress

    items = [part.strip() for part in text.split(",") if part.strip()]
    for item in items:
        ipaddress.ip_network(item, strict=False)  # ValueError names the bad one
    return ",".join(items)


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    parse: Callable[[str], Any]
    help: str


SETTINGS: tuple[Setting, ...] = (
    Setting("HOST", "0.0.0.0", str,
            "Address to listen on. `0.0.0.0` lets ESP nodes on the LAN reach the hub."),
    Setting("PORT", 8000, parse_port, "TCP port to listen on."),
    Setting("DATA_DIR", "./data", str,
            "Folder for the stores; one hub process holds it exclusively."),
    Setting("STAGING_DIR", "./staging", str,
            "Folder operators drop files into for devices."),
    Setting("SECRET_KEY", None, str,
            "Signs dashboard sessions. When unset, one is generated once and kept in "
            "`DATA_DIR/secret_key`."),
    Setting("LOG_LEVEL", "INFO", parse_log_level,
            "DEBUG, INFO, WARNING, ERROR or CRITICAL."),
    Setting("THREADS", 8, parse_positive_int,
            "Threads for requests that carry a body or may wait on the disk (granian); "
            "threads of the single worker under gunicorn (gthread)."),
    Setting("ADMIN_TOKEN", None, str,
            "An admin API token accepted besides stored ones; when set, none is generated "
            "at first start."),
    Setting("ADMIN_PASSWORD", None, str,
            "Password for the first operator `admin`, created at first start; generated "
            "when unset."),
    Setting("MAX_REQUEST_BYTES", 1_048_576, parse_positive_int,
            "Largest request body accepted on API routes; larger ones get 413."),
    Setting("REQUEST_SPOOL_MAX_BYTES", 1_073_741_824, parse_positive_int,
            "Request bodies held on disk at once (over 1 MiB each, while they arrive), "
            "hub-wide; past it, or past leaving 50 MiB free for the stores, 507."),
    Setting("HISTORY_RETENTION", 100_000, parse_positive_int,
            "History records kept per stream (messages, commands, events); older whole "
            "segments are deleted beyond it."),
    Setting("HISTORY_SEGMENT_RECORDS", 10_000, parse_positive_int,
            "Records per history segment file."),
    Setting("LIVENESS_CHECKPOINT_S", 5.0, parse_positive_float,
            "Seconds between checkpoints of in-memory liveness (last seen, signal, heap)."),
    Setting("IMPORT_DEVICE_AUTH", True, parse_bool,
            "At start, import a seed `device_auth.json` from `DATA_DIR` or `./app`."),
    # -- commands and pacing (device API) ------------------------------------------------
    Setting("COMMAND_LEASE_S", 60.0, parse_positive_float,
            "Seconds a device has to complete a command it polled before it is handed "
            "out again."),
    Setting("COMMAND_MAX_ATTEMPTS", 3, parse_positive_int,
            "Hand-outs of one command to one device; when the last lease lapses it "
            "fails with reason `timeout`."),
    Setting("COMMAND_JSON_MAX_BYTES", 4096, parse_positive_int,
            "Largest command `args` and completion `result`, as JSON."),
    Setting("MESSAGE_DATA_MAX_BYTES", 4096, parse_positive_int,
            "Largest device message `data`, as JSON; larger get 400."),
    Setting("COMMAND_SWEEP_S", 2.0, parse_positive_float,
            "Seconds between sweeps that expire, time out and tidy away finished commands."),
    Setting("POLL_INTERVAL_S", 30, parse_positive_int,
            "Seconds between polls the hub asks of a device (`next_poll_s`), unless the "
            "device or one of its groups has its own."),
    Setting("POLL_JITTER", 0.1, parse_fraction,
            "Spread of `next_poll_s` (0.1 = plus or minus 10%) so a fleet does not poll "
            "in step."),
    Setting("OVERDUE_AFTER_INTERVALS", 2.0, parse_positive_float,
            "A device not seen for this many of its poll intervals is `overdue`."),
    Setting("OFFLINE_AFTER_INTERVALS", 5.0, parse_positive_float,
            "A device not seen for this many of its poll intervals is `offline`."),
    # -- rate limits ---------------------------------------------------------------------
    Setting("RATE_LIMITS_ENABLED", True, parse_bool,
            "Answer 429 with `Retry-After` beyond the limits below."),
    Setting("RATE_LIMIT_DEVICE", "600/minute", parse_rate_limit,
            "Requests per device on the device API."),
    Setting("RATE_LIMIT_FILES", "6000/minute", parse_rate_limit,
            "Requests per device on the files API (a 1 MiB file is 32 chunks of 32 KiB; a "
            "1 MiB firmware image 256 of 4 KiB)."),
    Setting("RATE_LIMIT_FAILED_AUTH", "30/minute", parse_rate_limit,
            "Refused (401/403) requests per client address and credential; past it that "
            "credential gets 429 from that address, and so does every credential the "
            "address gets wrong, while good ones still work."),
    # -- staging and file sync ---------------------------------------------------------
    Setting("STAGING_WATCH", True, parse_bool,
            "Watch `STAGING_DIR` while serving (off: files are taken in only through the "
            "admin API and `dropsync stage`)."),
    Setting("STAGING_OBSERVER", "inotify", parse_observer,
            "`inotify`, or `polling` for filesystems without inotify (network shares)."),
    Setting("STAGING_SETTLE_S", 2.0, parse_positive_float,
            "Seconds a staged file's size and mtime must hold, after it is closed, before "
            "it becomes a package."),
    Setting("STAGING_RESCAN_S", 60.0, parse_positive_float,
            "Seconds between full rescans of the staging folder (catches dropped events)."),
    Setting("STAGING_UPLOAD_MAX_BYTES", 268_435_456, parse_positive_int,
            "Largest file the admin API (`dropsync stage`) puts into staging; larger get "
            "413."),
    Setting("CHUNK_SIZE", 32768, parse_chunk_size,
            "Bytes per download chunk of a file (512 to 1048576). A node streams a chunk "
            "to flash as it arrives, so its size costs no RAM; fewer chunks mean fewer "
            "requests (and TLS handshakes) per file."),
    Setting("FIRMWARE_CHUNK_SIZE", 4096, parse_firmware_chunk_size,
            "Bytes per download chunk of a firmware image (`firmware/*.bin`; 512 to 8192): "
            "the firmware core holds one chunk in RAM until its SHA-256 is checked, and "
            "refuses larger ones."),
    Setting("UPLOAD_MAX_BYTES", 10_485_760, parse_positive_int,
            "Largest file a device may upload; larger get 413."),
    Setting("UPLOAD_ALLOWED_TYPES", "bin,csv,jpg,json,log,png,txt", parse_extension_list,
            "File extensions devices may upload, comma-separated (`*`: any); others get "
            "415."),
    Setting("DOWNLOAD_ACCEL_PREFIX", None, parse_accel_prefix,
            "When set (e.g. `/_blobs/`), whole-file downloads are handed to nginx with "
            "`X-Accel-Redirect: <prefix><blob path>`; nginx maps the prefix to "
            "`DATA_DIR/blobs/`."),
    # -- firmware images for stock updaters --------------------------------------------
    Setting("FIRMWARE_MAX_BYTES", "esp8266=1044464,esp32=1310720", parse_flash_limits,
            "Largest firmware image per device type (`firmware/*.bin` in staging); larger "
            "ones are refused at staging. A group or `all` takes its smallest device's."),
    Setting("FIRMWARE_SIGNING_KEYS", None, parse_path_list,
            "Public keys (PEM files, comma-separated) that firmware images must be signed "
            "with (`dropsync keys new`, `dropsync sign`); an unsigned image, or one no key "
            "verifies, is refused at staging. Unset: images are not checked for a signature."),
    Setting("STAGING_RELEASE", "file=publish,firmware=draft", parse_release,
            "What a staged package does by default, per kind: `publish` offers it to "
            "every device of its target at once; `draft` holds it in a rollout draft until "
            "an operator starts a rollout (`dropsync rollout create`). Kinds: `file`, "
            "`firmware` (`firmware/*.bin`)."),
    Setting("ROLLOUT_TICK_S", 5.0, parse_positive_float,
            "Seconds between checks of running rollouts: deadlines, soak times, start "
            "times, daily windows, and the next wave."),
    # -- operations: request log, proxies, TLS, discovery --------------------------------
    Setting("REQUEST_LOG", True, parse_bool,
            "Log one line per request (device id, route, status, latency; never a "
            "credential) at INFO, for journald."),
    Setting("TRUSTED_PROXIES", None, parse_address_list,
            "Addresses (or networks) of reverse proxies whose `X-Forwarded-For` and "
            "`X-Forwarded-Proto` are believed, e.g. `127.0.0.1` behind a local nginx."),
    Setting("TLS_CERT", None, str,
            "PEM certificate the hub serves HTTPS with (with `TLS_KEY`); when unset, "
            "`DATA_DIR/tls/hub.crt` is used if `dropsync tls init` made it."),
    Setting("TLS_KEY", None, str,
            "PEM private key for `TLS_CERT`; when unset, `DATA_DIR/tls/hub.key`."),
    Setting("MDNS", True, parse_bool,
            "While serving, advertise the hub as `_dropsync._tcp` over mDNS (port, API "
            "path) so nodes find it without a fixed address."),
    # -- serving: which server, its connections and deadlines --------------------------
    Setting("SERVER", "granian", parse_server,
            "`granian` (Rust HTTP, the hub on one asyncio loop plus `THREADS` threads) or "
            "`gunicorn` (one gthread worker): what `dropsync serve` runs."),
    Setting("MAX_CONNECTIONS", 16384, parse_positive_int,
            "Connections the hub holds open at once (granian). Every node keeps one open "
            "between polls; past this, new ones wait for one to close. The hub raises "
            "its open-files limit to fit, as far as the system allows."),
    Setting("REQUEST_HEADER_TIMEOUT_S", 45.0, parse_header_timeout,
            "Seconds a client has to send a request's headers before it is cut (granian; "
            "at most 60). It is also how long an idle keep-alive connection waits for its "
            "next request: keep it above the poll interval with its jitter, or every node "
            "reconnects (a TLS handshake) for every poll."),
    Setting("REQUEST_BODY_TIMEOUT_S", 10.0, parse_positive_float,
            "Seconds a request body may stall before the request gets 408 and its "
            "connection is cut (also cut below 1 KiB/s on average); a partial body is "
            "never stored."),
    # -- dashboard ----------------------------------------------------------------------
    Setting("DASHBOARD_SESSION_S", 43_200, parse_positive_int,
            "Seconds a dashboard login lasts; logging out or a password change ends it "
            "sooner."),
    Setting("RATE_LIMIT_LOGIN", "5/minute", parse_rate_limit,
            "Failed dashboard logins per username (from any address); then 429 with "
            "`Retry-After`. A client address may fail ten times as often across "
            "usernames, so one operator's typos never lock out the others behind it."),
    Setting("ALERT_WEBHOOK_URL", None, parse_lan_url,
            "An http(s) URL on the LAN or loopback that gets a JSON POST for each device "
            "going offline and each failed delivery, from a thread of its own (retried, "
            "never holding a request up; the oldest dropped past 1,000 waiting). Unset: "
            "no webhook."),
    Setting("ALERT_OFFLINE_CHECK_S", 30.0, parse_positive_float,
            "Seconds between looks for devices that went offline (with ALERT_WEBHOOK_URL)."),
    Setting("BULK_MAX_DEVICES", 1000, parse_positive_int,
            "Devices one bulk action on the dashboard's devices list may name (a command, "
            "a group, disable or enable); more is refused with a clear error."),
    Setting("RATE_LIMIT_ENROLL", "600/minute", parse_rate_limit,
            "Enrollment requests (`/api/v1/enroll`, its claims) per client address; then "
            "429 with `Retry-After`. A site's boards booting together behind one router "
            "share it."),
    Setting("ENROLL_PENDING_MAX", 200, parse_positive_int,
            "Boards that may wait for an operator at a time; past it an enrollment answers "
            "503 `pending_full`, so a flood cannot fill the disk."),
    Setting("ENROLL_PENDING_TTL_S", 604800, parse_positive_int,
            "Seconds a pending board is kept after it was last seen (7 days)."),
    Setting("ENROLL_RETRY_S", 30, parse_positive_int,
            "Seconds a pending board is told to wait before it asks again."),
    Setting("HEALTH_SERIES_BUCKET_S", 300, parse_positive_int,
            "Seconds per point of each device's RSSI and free-heap series (24 hours kept, "
            "at most 1,440 points; checkpointed with liveness)."),
    # -- download tickets behind nginx ------------------------------------------------
    Setting("DOWNLOAD_TICKET_SECRET", None, parse_secret,
            "When set, manifest urls carry a signed, expiring download ticket that nginx "
            "checks (`secure_link`) to serve chunks from its cache; 32+ characters of "
            "`A-Z a-z 0-9 _ -`, written by `dropsync nginx-ticket`. Never commit it."),
    Setting("DOWNLOAD_TICKET_TTL_S", 3600, parse_positive_int,
            "Seconds per ticket window: a ticket expires at the end of the window after "
            "the current one (good for one to two windows); manifests change once per "
            "window."),
    # -- many sites through Syncthing ----------------------------------------------------
    Setting("SYNCTHING_URL", None, str,
            "The local Syncthing's GUI/REST address (e.g. `http://127.0.0.1:8384`), used by "
            "`dropsync site init` and `dropsync central add-site`; unset, the hub is one "
            "site on its own."),
    Setting("SYNCTHING_HOME", "~/.config/syncthing", str,
            "Syncthing's home folder, whose `config.xml` holds the REST API key (read, "
            "never written)."),
    Setting("SYNCTHING_API_KEY", None, str,
            "Syncthing's REST API key, when not read from `SYNCTHING_HOME`."),
    Setting("SITES_DIR", "sites", str,
            "Folder of the many-sites link: a site's `export/` and `commands/`, the "
            "centre's `outbox/`, `commands/` and `exports/` (made by the set-up commands)."),
    Setting("SITES_CHECK_S", 5.0, parse_positive_float,
            "Seconds between looks at the link folders: commands from the centre, the "
            "site's export when changed, the sites' exports at the centre."),
    Setting("SITES_EXPORT_S", 60.0, parse_positive_float,
            "Seconds after which a site writes an export segment even when nothing "
            "changed, so the centre tells a quiet site from a silent one."),
    Setting("SITES_EXPORT_KEEP", 200, parse_positive_int,
            "Export segments a site keeps; older ones are deleted (the centre counts any "
            "it never saw as missed)."),
    Setting("SITES_SILENT_AFTER_S", 600.0, parse_positive_float,
            "A site whose newest export is older than this stands out on the Sites page."),
    Setting("SITES_FS_WATCHER_DELAY_S", 10, parse_positive_int,
            "Syncthing's `fsWatcherDelayS` on the link's folders (set by the set-up "
            "commands): seconds it gathers changes before scanning."),
    Setting("SITES_RESCAN_S", 3600, parse_positive_int,
            "Syncthing's `rescanIntervalS` on the link's folders (set by the set-up "
            "commands): full rescans, behind its file watcher."),
)

SETTINGS_BY_NAME = {s.name: s for s in SETTINGS}


def load_config(overrides: Mapping[str, Any] | None = None,
                environ: Mapping[str, str] | None = None,
                config_file: str | Path | None = None) -> dict[str, Any]:
    """Resolve every setting; later layers win. Unknown override keys pass through."""
    environ = os.environ if environ is None else environ
    config = {s.name: s.default for s in SETTINGS}

    path = config_file or environ.get(ENV_PREFIX + "CONFIG")
    if path:
        config.update(_read_config_file(Path(path)))

    for name in SEED_ENV_NAMES:
        if name in environ:
            config[name] = _parse(name, environ[name], f"environment variable {name}")
    for setting in SETTINGS:
        key = ENV_PREFIX + setting.name
        if key in environ:
            config[setting.name] = _parse(setting.name, environ[key],
                                          f"environment variable {key}")

    for key, value in (overrides or {}).items():
        if key in SETTINGS_BY_NAME and isinstance(value, str):
            value = _parse(key, value, f"setting {key}")
        config[key] = value
    return config


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except RecursionError:  # tomllib recurses into nested arrays and tables
        raise ConfigError(f"config file {path} nests too deeply") from None
    values = {}
    for key, value in raw.items():
        name = key.upper()
        if name not in SETTINGS_BY_NAME:
            known = ", ".join(s.name.lower() for s in SETTINGS)
            raise ConfigError(f"config file {path}: unknown setting {key!r} (known: {known})")
        values[name] = _parse(name, str(value), f"{key} in {path}") \
            if not isinstance(value, bool) else value
    return values


def _parse(name: str, text: str, where: str) -> Any:
    try:
        return SETTINGS_BY_NAME[name].parse(text)
    except ValueError as exc:
        raise ConfigError(f"{where}={text!r} is not valid for {name}: {exc}") from None
