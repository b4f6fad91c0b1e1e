"""The nginx site in front of the hub: TLS, buffering, and blob bytes sent by nginx.

``deploy/nginx.conf`` is ``render_site()`` for the default layout (a test keeps them the
same); the nginx test and benchmark render it with their own ports and folders.

How a download goes: nginx buffers the request and passes it to the hub, which checks
the device's token and manifest and answers with headers only, ``X-Accel-Redirect``
naming the blob (``/_blobs/ab/<sha256>``). nginx then sends the bytes itself:

- a whole file, or a ``Range`` of it: the internal ``/_blobs/`` location maps the blob
  file, and nginx applies the original request's ``Range`` (the hub has already refused
  a range nginx would get wrong: several ranges, or none satisfiable);
- one chunk (``/download/.../<index>``): the device sent no ``Range``, so the hub names
  the chunk's bytes in the redirect (``/_blobs/range/<first>-<last>/ab/<sha256>``) and
  nginx fetches exactly those from a blob server of its own on a unix socket, as a
  ``206 Partial Content`` with ``Content-Range``.

The hub's headers (``X-Chunk-SHA256``, ``x-MD5``...) are copied onto nginx's answer.

With download tickets (the hub's ``DOWNLOAD_TICKET_SECRET``, ``dropsync.sync.tickets``) a
manifest's urls are ``/api/v1/files/t/<expires>/<sig>/<device>/<package>/<version>``, and
a chunk at such a url never reaches the hub twice: nginx checks the ticket itself
(``secure_link``, with the secret from the small file ``dropsync nginx-ticket`` writes),
limits each device to the hub's ``RATE_LIMIT_FILES``, and answers from a cache of the
hub's answers keyed by package, version and chunk (versions are never reused), so a fleet
fetching the same file makes one hub request per chunk. Whole files and ranges at ticket
urls take the X-Accel path above: the hub checks every one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from limits import parse_many

#: The hub's headers a device reads, copied from its X-Accel answer onto nginx's.
PASSED_HEADERS = ("X-Chunk-SHA256", "X-Chunk-Index", "X-Chunk-Count", "X-Package-Version",
                  "x-MD5", "X-Content-SHA256")
#: TLS 1.2 suites BearSSL (ESP8266) and mbedTLS (ESP32) speak, browsers too.
ESP_CIPHERS = ":".join(("ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384",
                        "ECDHE-RSA-CHACHA20-POLY1305", "ECDHE-RSA-AES128-SHA256",
                        "AES128-SHA256", "AES128-SHA"))
#: The chunk redirect: /_blobs/range/<first>-<last>/ab/<sha256>.
CHUNK_PATTERN = ("(?<chunk_first>[0-9]+)-(?<chunk_last>[0-9]+)/"
                 "(?<chunk_blob>[0-9a-f]{2}/[0-9a-f]{64})")
#: A chunk by download ticket: /api/v1/files/t/<expires>/<sig>/<device>/<package>/<version>/<index>.
TICKET_CHUNK_PATTERN = ("^/api/v1/files/t/(?<ticket_expires>[0-9]{1,12})/"
                        "(?<ticket_sig>[A-Za-z0-9_-]{22})/(?<ticket_device>[A-Za-z0-9_:-]{1,64})/"
                        "(?<ticket_package>[A-Za-z0-9_-]{1,64})/(?<ticket_version>[0-9]{1,12})/"
                        "(?<ticket_index>[0-9]{1,12})$")
TICKET_INVALID = ("this download ticket is not valid for this device, package and version; "
                  "fetch the manifest for a url")
TICKET_EXPIRED = "this download ticket has expired; fetch the manifest again for a fresh url"
#: The variable the included ticket file sets (``dropsync nginx-ticket`` writes it).
TICKET_SECRET_VARIABLE = "$dropsync_ticket_secret"
#: Room for multipart framing on top of UPLOAD_MAX_BYTES (as the hub allows).
MULTIPART_ROOM = 64 * 1024


@dataclass
class Listen:
    port: int
    tls: bool = False
    address: str = ""  # "" = every address

    def directive(self) -> str:
        where = f"{self.address}:{self.port}" if self.address else str(self.port)
        return f"listen {where}{' ssl' if self.tls else ''};"


@dataclass
class Site:
    hub: str = "127.0.0.1:8000"
    blobs_dir: Path = Path("/var/lib/dropsync/data/blobs")
    blob_socket: Path = Path("/run/dropsync-nginx/blobs.sock")
    listens: list[Listen] = field(default_factory=lambda: [Listen(80), Listen(443, True)])
    server_name: str = "_"
    # `dropsync tls init --out /etc/dropsync/tls`: outside the data directory, so the hub
    # behind nginx keeps speaking plain HTTP on loopback.
    cert: Path | None = Path("/etc/dropsync/tls/hub.crt")
    key: Path | None = Path("/etc/dropsync/tls/hub.key")
    accel_prefix: str = "/_blobs/"
    max_request_bytes: int = 1_048_576
    upload_max_bytes: int = 10_485_760
    staging_upload_max_bytes: int = 268_435_456
    # Download tickets: the file setting the secret (`dropsync nginx-ticket` writes it;
    # never committed), the chunk cache, and the per-device chunk rate (RATE_LIMIT_FILES).
    ticket_conf: Path = Path("/etc/dropsync/nginx-ticket.conf")
    chunk_cache: Path = Path("/var/cache/dropsync-nginx")
    chunk_cache_max_size: str = "512m"
    files_rate: str | None = "6000/minute"

    @classmethod
    def for_settings(cls, settings: dict, **overrides) -> Site:
        """The site for a hub with these settings (limits, accel prefix, blob folder)."""
        data_dir = Path(settings["DATA_DIR"]).absolute()
        return cls(**{
            "blobs_dir": data_dir / "blobs",
            "accel_prefix": settings["DOWNLOAD_ACCEL_PREFIX"] or "/_blobs/",
            "max_request_bytes": settings["MAX_REQUEST_BYTES"],
            "upload_max_bytes": settings["UPLOAD_MAX_BYTES"],
            "staging_upload_max_bytes": settings["STAGING_UPLOAD_MAX_BYTES"],
            "files_rate": settings["RATE_LIMIT_FILES"] if settings["RATE_LIMITS_ENABLED"]
            else None,
            **overrides})


def var(header: str) -> str:
    return header.lower().replace("-", "_")


def _error_body(code: str, message: str) -> str:
    return f'{{"error":{{"code":"{code}","message":"{message}","details":null}}}}'


def _json_error(status: int, code: str, message: str) -> str:
    body = _error_body(code, message)
    return f"default_type application/json;\n        return {status} '{body}';"


def nginx_rate(rate: str) -> tuple[str, int, int]:
    """The hub's per-device rate (``6000/minute``) as nginx's ``limit_req``: a rate, a
    burst that lets the hub's whole window through at once, and the seconds to wait after.

    Of several limits the slowest counts. nginx takes whole requests per second or per
    minute, so slower rates round to at least 1r/m."""
    item = min(parse_many(rate), key=lambda i: i.amount / i.get_expiry())
    per_second = item.amount / item.get_expiry()
    if per_second >= 1 and per_second.is_integer():
        text = f"{int(per_second)}r/s"
    else:
        per_second = max(1, round(item.amount * 60 / item.get_expiry())) / 60
        text = f"{round(per_second * 60)}r/m"
    return text, max(0, item.amount - 1), max(1, math.ceil(1 / per_second))


def render_tickets(site: Site) -> tuple[str, str]:
    """The http-level zones and the server-level part for chunks by download ticket."""
    zones = (f"proxy_cache_path {site.chunk_cache} levels=1:2 keys_zone=dropsync_chunks:10m\n"
             f"                 max_size={site.chunk_cache_max_size} inactive=30d "
             "use_temp_path=off;\n")
    limit = ""
    if site.files_rate:
        rate, burst, retry_after = nginx_rate(site.files_rate)
        zones += (f"# RATE_LIMIT_FILES={site.files_rate} per device, for the chunks served "
                  "here\n"
                  f"limit_req_zone $ticket_device zone=dropsync_ticket_devices:2m "
                  f"rate={rate};\n")
        limit = f"""
        limit_req zone=dropsync_ticket_devices burst={burst} nodelay;
        limit_req_status 429;
        error_page 429 = @ticket_rate_limited;"""
        limited = f"""
    location @ticket_rate_limited {{
        add_header Retry-After {retry_after} always;
        {_json_error(429, "rate_limited", f"too many requests: the limit is "
                     f"{site.files_rate} per device")}
    }}
"""
    else:
        limited = ""
    secret = TICKET_SECRET_VARIABLE
    server = f"""
    # Chunks by download ticket: the ticket checked here (no hub request), each device
    # limited, the bytes and the hub's X-Chunk-* headers from a cache of its answers, one
    # hub request per chunk of a version (a version's content never changes).
    include {site.ticket_conf};
    location ~ "{TICKET_CHUNK_PATTERN}" {{
        default_type application/json;
        secure_link $ticket_sig,$ticket_expires;
        secure_link_md5 "$ticket_expires$ticket_device/$ticket_package/$ticket_version {secret}";
        if ($secure_link = "") {{
            return 403 '{_error_body("ticket_invalid", TICKET_INVALID)}';
        }}
        if ($secure_link = "0") {{
            return 410 '{_error_body("ticket_expired", TICKET_EXPIRED)}';
        }}{limit}
        # Cache hits of 64 KiB with TCP_CORK on (tcp_nopush, Debian's default) stalled
        # ~40 ms each here (800/s against 10,000/s without): chunks go out uncorked.
        tcp_nopush off;
        # Cached chunks' files kept open (their content never changes): ~20% more hits/s.
        open_file_cache max=4096 inactive=60s;
        proxy_cache dropsync_chunks;
        proxy_cache_key "$ticket_package/$ticket_version/$ticket_index";
        proxy_cache_valid 200 30d;
        proxy_cache_lock on;
        proxy_cache_lock_timeout 10s;
        add_header X-Cache $upstream_cache_status;
        proxy_pass http://dropsync_hub;
    }}
{limited}"""
    return zones, server


def render_ticket_conf(secret: str) -> str:
    """The file the site includes for download tickets (never committed: it holds the
    hub's DOWNLOAD_TICKET_SECRET)."""
    return ("# Written by `dropsync nginx-ticket`: the hub's DOWNLOAD_TICKET_SECRET, for\n"
            "# secure_link in the DropSync site. Keep it 0640, readable by nginx only.\n"
            f'set {TICKET_SECRET_VARIABLE} "{secret}";\n')


def render_site(site: Site) -> str:
    """An nginx ``server`` configuration (for ``sites-available``), with its upstreams."""
    prefix = site.accel_prefix
    # Captured by `set` (rewrite phase) while $upstream_http_* still are the hub's: the
    # chunk location then proxies to the blob server, whose headers replace them.
    passed = "\n".join(
        f"        set $hub_{var(h)} $upstream_http_{var(h)};\n"
        f"        add_header {h} $hub_{var(h)};" for h in PASSED_HEADERS)
    tls = ""
    if any(listen.tls for listen in site.listens):
        tls = f"""
    ssl_certificate {site.cert};
    ssl_certificate_key {site.key};
    ssl_protocols TLSv1.2 TLSv1.3;
    # BearSSL on an ESP8266 speaks TLS 1.2 with these (and the defaults stay for browsers).
    ssl_ciphers {ESP_CIPHERS};
    ssl_session_cache shared:dropsync_tls:1m;
"""
    listens = "\n".join(f"    {listen.directive()}" for listen in site.listens)
    ticket_zones, ticket_server = render_tickets(site)
    return f"""\
# DropSync hub behind nginx: TLS termination, request buffering, blob bytes sent by nginx.
# Generated by dropsync.ops.nginx.render_site; the hub runs with
#   DROPSYNC_HOST=127.0.0.1 DROPSYNC_TRUSTED_PROXIES=127.0.0.1
#   DROPSYNC_DOWNLOAD_ACCEL_PREFIX={prefix}
#   DROPSYNC_DOWNLOAD_TICKET_SECRET=<the secret in {site.ticket_conf}>
# (`dropsync nginx-ticket` writes both). nginx reads blobs from {site.blobs_dir}: its
# user must be in the hub's group.

{ticket_zones}
upstream dropsync_hub {{
    server {site.hub};
    keepalive 32;
}}

upstream dropsync_blob_ranges {{
    server unix:{site.blob_socket};
    keepalive 32;
}}

server {{
{listens}
    server_name {site.server_name};
{tls}
    # Whole requests are read here first: a node on a slow link never holds a hub thread.
    proxy_request_buffering on;
    proxy_buffering on;
    client_body_buffer_size 128k;
    client_body_timeout 30s;
    client_header_timeout 15s;
    # The hub's own limit (MAX_REQUEST_BYTES); its routes that take files allow more below.
    client_max_body_size {site.max_request_bytes};
    error_page 413 = @too_large;

    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host $host;
    proxy_set_header X-Forwarded-For $remote_addr;
    proxy_set_header X-Forwarded-Proto $scheme;

    location / {{
        proxy_pass http://dropsync_hub;
    }}

    # Device uploads: UPLOAD_MAX_BYTES plus multipart framing.
    location /api/v1/files/upload/ {{
        client_max_body_size {site.upload_max_bytes + MULTIPART_ROOM};
        proxy_pass http://dropsync_hub;
    }}

    # Files an operator stages through the admin API: STAGING_UPLOAD_MAX_BYTES.
    location /api/v1/admin/staging/ {{
        client_max_body_size {site.staging_upload_max_bytes};
        proxy_pass http://dropsync_hub;
    }}

    # A whole blob, or the Range the device asked for (checked by the hub first).
    location {prefix} {{
        internal;
        alias {site.blobs_dir}/;
        default_type application/octet-stream;
{passed}
    }}

    # One chunk: exactly bytes <first>-<last> of a blob, from nginx's blob server below.
    location ~ "^{prefix}range/{CHUNK_PATTERN}$" {{
        internal;
        proxy_pass_request_headers off;
        proxy_pass_request_body off;
        proxy_set_header Connection "";
        proxy_set_header Range "bytes=$chunk_first-$chunk_last";
        proxy_pass http://dropsync_blob_ranges/$chunk_blob;
{passed}
    }}

{ticket_server}
    location @too_large {{
        {_json_error(413, "payload_too_large", "request body too large")}
    }}
}}

# Serves blob files to the chunk location above; reachable only through its socket.
server {{
    listen unix:{site.blob_socket};
    access_log off;
    location / {{
        root {site.blobs_dir};
        default_type application/octet-stream;
    }}
}}
"""


def render_main(site_text: str, prefix: Path, *, user: str | None = None) -> str:
    """A complete nginx.conf around a site, run in the foreground with everything under
    ``prefix`` (the test and the benchmark start nginx this way)."""
    user_line = f"user {user};\n" if user else ""
    return f"""\
{user_line}daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
{site_text}
}}
"""
