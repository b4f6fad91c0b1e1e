"""Operations commands: ``install-service``, ``nginx-ticket``, ``tls``, ``backup`` and
``restore``.

Registered on the main ``dropsync`` group by ``register``; kept apart from device and
package management so either can change without the other.
"""

from __future__ import annotations

import gzip
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..config import load_config
from ..store.files import fsync_dir
from ..sync.tickets import parse_secret
from . import service
from .backup import RestoreError, restore_archive
from .nginx import render_ticket_conf

#: Archives at least this large get a progress bar.
PROGRESS_BAR_BYTES = 16 * 1024 * 1024
#: gzip level for backups: 1 costs a third of the CPU of 6 for a few percent more bytes
#: (blobs are mostly firmware images and data that compress little anyway).
GZIP_LEVEL = 1
BACKUP_PATTERN = "dropsync-*.tar.gz"


def settings_of(ctx: click.Context) -> dict[str, Any]:
    try:
        return load_config(ctx.obj, config_file=ctx.obj.get("CONFIG_FILE"))
    except Exception as exc:  # ConfigError: a clear message, not a traceback
        raise click.ClickException(str(exc)) from None


# -- install-service -------------------------------------------------------------------
def dropsync_executable() -> Path:
    beside = Path(sys.executable).parent / "dropsync"
    if beside.exists():
        return beside.absolute()
    found = shutil.which("dropsync")
    return Path(found).absolute() if found else beside.absolute()


@click.command("install-service")
@click.option("--user", default="dropsync", show_default=True,
              help="System user the hub runs as (created when missing).")
@click.option("--backup-dir", type=click.Path(file_okay=False),
              default="/var/backups/dropsync", show_default=True,
              help="Where the nightly backup timer keeps its archives.")
@click.option("--keep", type=click.IntRange(1), default=7, show_default=True,
              help="Nightly backups to keep.")
@click.option("--env-file", type=click.Path(dir_okay=False),
              default="/etc/dropsync/dropsync.env", show_default=True,
              help="Settings file the units read (created when missing).")
@click.option("--unit-dir", type=click.Path(file_okay=False),
              default="/etc/systemd/system", show_default=True)
@click.option("--output", type=click.Path(file_okay=False),
              help="Only write the unit files into this folder; change nothing else.")
@click.option("--dry-run", is_flag=True, help="Print what would be done; do nothing.")
@click.pass_context
def install_service(ctx, user, backup_dir, keep, env_file, unit_dir, output, dry_run):
    """Install the hub as a systemd service, with a nightly backup timer."""
    settings = settings_of(ctx)
    data_dir = Path(settings["DATA_DIR"]).absolute()
    layout = service.Layout(
        executable=dropsync_executable(), home=data_dir.parent, data_dir=data_dir,
        staging_dir=Path(settings["STAGING_DIR"]).absolute(),
        backup_dir=Path(backup_dir).absolute(), env_file=Path(env_file).absolute(),
        user=user, keep_backups=keep)
    units = service.render_units(layout)
    steps: list[tuple[str, Callable[[], Any]]] = []
    target = Path(output or unit_dir)

    def write(path: Path, text: str, mode: int = 0o644) -> Callable[[], None]:
        def run() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            path.chmod(mode)
        return run

    if not output:
        if not user_exists(user):
            steps.append((f"create system user {user}", lambda: subprocess.run(
                ["useradd", "--system", "--user-group", "--home-dir", str(layout.home),
                 "--shell", "/usr/sbin/nologin", user], check=True)))
        folders = [(layout.data_dir, 0o750), (layout.staging_dir, 0o2775),
                   (layout.backup_dir, 0o700)]
        if not layout.home.exists():  # restore unpacks beside the data folder
            folders.insert(0, (layout.home, 0o750))
        for folder, mode in folders:
            steps.append((f"create {folder} (owner {user}, mode {mode:o})",
                          make_folder(folder, user, mode)))
        if not layout.env_file.exists():
            steps.append((f"write settings file {layout.env_file}",
                          write(layout.env_file, service.env_file_template(), 0o640)))
    for name, text in units.items():
        steps.append((f"write {target / name}", write(target / name, text)))
    if not output:
        steps.append(("systemctl daemon-reload", lambda: subprocess.run(
            ["systemctl", "daemon-reload"], check=True)))
    if not dry_run and not output and os.geteuid() != 0:
        raise click.ClickException("installing a service needs root: run it with sudo "
                                   "(or --dry-run to see the steps, --output DIR to only "
                                   "write the unit files)")
    for text, run in steps:
        click.echo(("would " if dry_run else "") + text)
        if not dry_run:
            run()
    if not output:
        click.echo(f"{'Then' if dry_run else 'Now'} start it and the nightly backup:\n"
                   f"  sudo systemctl enable --now {service.SERVICE} {service.BACKUP_TIMER}\n"
                   f"  journalctl -u {service.SERVICE} -f      # one line per request")


def user_exists(user: str) -> bool:
    try:
        pwd.getpwnam(user)
        return True
    except KeyError:
        return False


def make_folder(folder: Path, user: str, mode: int) -> Callable[[], None]:
    def run() -> None:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.chown(folder, user, user)
        folder.chmod(mode)
    return run


# -- nginx-ticket ----------------------------------------------------------------------
SECRET_LINE = "DROPSYNC_DOWNLOAD_TICKET_SECRET="


@click.command("nginx-ticket")
@click.option("--env-file", type=click.Path(dir_okay=False),
              default="/etc/dropsync/dropsync.env", show_default=True,
              help="The hub's settings file: DROPSYNC_DOWNLOAD_TICKET_SECRET is set there.")
@click.option("--nginx-conf", type=click.Path(dir_okay=False),
              default="/etc/dropsync/nginx-ticket.conf", show_default=True,
              help="The file the nginx site includes for the same secret.")
@click.option("--nginx-group", default="www-data", show_default=True,
              help="Group that may read the nginx file (set when it exists and we may).")
@click.option("--rotate", is_flag=True,
              help="Make a new secret even if the settings file has one (tickets already "
                   "handed out stop working: devices fetch their manifest again).")
def nginx_ticket(env_file, nginx_conf, nginx_group, rotate):
    """Make the download-ticket secret, for the hub and for nginx (files mode 0640)."""
    env_path, conf_path = Path(env_file), Path(nginx_conf)
    lines = env_path.read_text().splitlines() if env_path.exists() else []
    current = [line[len(SECRET_LINE):].strip() for line in lines
               if line.startswith(SECRET_LINE)]
    secret = current[-1] if current and not rotate else secrets.token_urlsafe(32)
    try:
        parse_secret(secret)
    except ValueError as exc:
        raise click.ClickException(f"{env_path}: {SECRET_LINE}... {exc}") from None
    kept = [line for line in lines if not line.startswith(SECRET_LINE)]
    write_private(env_path, "\n".join([*kept, SECRET_LINE + secret]) + "\n", None)
    click.echo(f"{'kept' if current and not rotate else 'set'} "
               f"DROPSYNC_DOWNLOAD_TICKET_SECRET in {env_path} (mode 640)")
    group = write_private(conf_path, render_ticket_conf(secret), nginx_group)
    click.echo(f"wrote {conf_path} (mode 640{f', group {group}' if group else ''}): the "
               "same secret for the nginx site's secure_link")
    click.echo("Then restart the hub and reload nginx:\n"
               "  sudo systemctl restart dropsync.service\n"
               "  sudo nginx -t && sudo systemctl reload nginx")


def write_private(path: Path, text: str, group: str | None) -> str | None:
    """Write ``text`` to ``path`` mode 0640 (never readable by others, not even briefly);
    answers the group it was given, when it exists and may be set."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    with os.fdopen(descriptor, "w") as out:
        out.write(text)
    os.chmod(partial, 0o640)
    given = None
    if group and os.geteuid() == 0:
        try:
            shutil.chown(partial, group=group)
            given = group
        except (LookupError, PermissionError):
            pass
    os.replace(partial, path)
    return given


# -- tls -------------------------------------------------------------------------------
def check_tls_files(settings: dict[str, Any]) -> None:
    """Raise ConfigError when TLS_CERT/TLS_KEY name files that are not there."""
    from .tls import tls_files

    tls_files(settings)


@click.group("tls")
def tls_group() -> None:
    """A self-signed certificate for HTTPS, and the forms nodes pin it in."""


@tls_group.command("init")
@click.option("--name", "names", multiple=True,
              help="Host name in the certificate (repeat; default: this host, .local, "
                   "localhost).")
@click.option("--address", "addresses", multiple=True,
              help="IP address in the certificate (repeat; default: this host's).")
@click.option("--days", type=click.IntRange(1), default=3650, show_default=True)
@click.option("--force", is_flag=True, help="Replace an existing certificate.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Write hub.crt and hub.key into this folder instead (for nginx: the "
                   "hub then keeps serving plain HTTP behind it).")
@click.pass_context
def tls_init(ctx, names, addresses, days, force, out_dir):
    """Make a self-signed certificate and key; the hub serves HTTPS with them."""
    from . import tls  # cryptography: loaded only when needed

    settings = settings_of(ctx)
    if out_dir:
        cert_path, key_path = Path(out_dir) / tls.CERT_FILE, Path(out_dir) / tls.KEY_FILE
    else:
        cert_path = Path(settings["TLS_CERT"]) if settings["TLS_CERT"] else \
            tls.default_paths(settings)[0]
        key_path = Path(settings["TLS_KEY"]) if settings["TLS_KEY"] else \
            tls.default_paths(settings)[1]
    if cert_path.exists() and not force:
        raise click.ClickException(f"{cert_path} exists; nodes may pin it. Use --force to "
                                   "replace it (then update every node's pin).")
    default_names, default_addresses = tls.local_names()
    try:
        cert_pem, key_pem = tls.make_certificate(names or default_names,
                                                 addresses or default_addresses, days)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--address") from None
    tls.write_pair(cert_path, key_path, cert_pem, key_pem)
    click.echo(f"Wrote {cert_path} and {key_path} (mode 0600).")
    echo_pins(cert_pem)
    click.echo("Point nginx's ssl_certificate at it." if out_dir else
               "Restart the hub to serve HTTPS with it.")


@tls_group.command("show")
@click.pass_context
def tls_show(ctx):
    """Print the fingerprints and embeddable forms of the hub's certificate."""
    from . import tls  # cryptography: loaded only when needed

    found = tls.tls_files(settings_of(ctx))
    if found is None:
        raise click.ClickException("no certificate: make one with `dropsync tls init`")
    click.echo(f"Certificate: {found[0]}")
    echo_pins(found[0].read_bytes())


def echo_pins(cert_pem: bytes) -> None:
    from . import tls  # cryptography: loaded only when needed

    forms = tls.pinning_forms(cert_pem)
    click.echo(f"Names:   {forms['names']}")
    click.echo(f"Expires: {forms['not_after']}")
    click.echo(f"SHA-256 fingerprint: {forms['sha256']}")
    click.echo(f"SHA-1 fingerprint (ESP8266 BearSSL setFingerprint): {forms['sha1']}")
    click.echo(f"  as bytes: const uint8_t HUB_FINGERPRINT[20] = {forms['sha1_bytes']};")
    click.echo("Certificate for the firmware config (BearSSL::X509List, ESP32 setCACert):")
    click.echo("const char HUB_CERT_PEM[] PROGMEM =")
    click.echo(forms["pem_c_string"] + ";")


# -- backup and restore ----------------------------------------------------------------
@click.command("backup")
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@click.option("--dir", "folder", type=click.Path(file_okay=False),
              help="Write dropsync-<date>.tar.gz into this folder instead of FILE.")
@click.option("--keep", type=click.IntRange(1),
              help="With --dir: delete all but the newest KEEP backups there.")
@click.pass_context
def backup(ctx, file, folder, keep):
    """Back up the hub's data (a consistent snapshot) into FILE.tar.gz.

    Through the running hub when one holds the data directory, so it goes on serving;
    otherwise the data directory is opened (and held) for the time of the backup.
    """
    from ..hubclient import call_hub

    if bool(file) == bool(folder):
        raise click.UsageError("give either FILE or --dir")
    if keep and not folder:
        raise click.UsageError("--keep goes with --dir")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        file = str(Path(folder) / time.strftime("dropsync-%Y%m%d-%H%M%S.tar.gz"))
    destination = Path(file)
    partial = destination.with_name(f".{destination.name}.part")
    started = time.monotonic()

    def fetch(hub) -> tuple[int, int]:
        with hub.stream("POST", "/api/v1/admin/backup") as (headers, body):
            expected = int(headers.get("X-Backup-Size") or 0)
            return write_gzipped(body, partial, expected)

    try:
        size, written = call_hub(ctx, fetch)
        os.replace(partial, destination)
        fsync_dir(destination.parent.absolute())
    finally:
        partial.unlink(missing_ok=True)
    seconds = max(time.monotonic() - started, 1e-6)
    click.echo(f"Backed up {size / 1e6:.1f} MB of hub data into {destination} "
               f"({written / 1e6:.1f} MB) in {seconds:.1f} s: {size / 1e6 / seconds:.1f} MB/s.")
    if keep:
        for old in sorted(Path(folder).glob(BACKUP_PATTERN))[:-keep]:
            old.unlink()
            click.echo(f"Removed old backup {old}.")


def write_gzipped(body, partial: Path, expected: int) -> tuple[int, int]:
    """Gzip the stream into ``partial`` (0600, fsynced); (bytes in, bytes written)."""
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    size = 0
    with open(fd, "wb") as out:
        with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=GZIP_LEVEL) as packed:
            if expected >= PROGRESS_BAR_BYTES:
                with click.progressbar(length=expected, label="Backing up",
                                       file=sys.stderr) as bar:
                    for data in body:
                        packed.write(data)
                        size += len(data)
                        bar.update(len(data))
            else:
                for data in body:
                    packed.write(data)
                    size += len(data)
        out.flush()
        os.fsync(out.fileno())
        written = out.tell()
    return size, written


@click.command("restore")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--data-dir", "data_dir", help="Folder to restore into: must be empty or "
              "missing (default: the configured DATA_DIR).")
@click.option("--staging-dir", "staging_dir", help="Staging folder to restore the packages' "
              "files into: must be empty or missing (default: the configured STAGING_DIR).")
@click.option("--keep-staging", is_flag=True, help="Leave the staging folder as it is "
              "(packages whose files are not there are withdrawn when the hub starts).")
@click.pass_context
def restore(ctx, file, data_dir, staging_dir, keep_staging):
    """Restore a backup FILE into an empty data directory (never over existing data).

    The staging folder is restored too: a hub started on an empty one would withdraw
    every package.
    """
    settings = settings_of(ctx)
    target = Path(data_dir or settings["DATA_DIR"])
    staging = None if keep_staging else Path(staging_dir or settings["STAGING_DIR"])
    size = Path(file).stat().st_size
    try:
        if size >= PROGRESS_BAR_BYTES:
            with click.progressbar(length=size, label="Restoring", file=sys.stderr) as bar:
                result = restore_archive(Path(file), target, staging, bar.update)
        else:
            result = restore_archive(Path(file), target, staging)
    except RestoreError as exc:
        raise click.ClickException(exc.message) from None
    counts = result["restored"]
    taken = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(result["taken_at"]))
    click.echo(f"Restored the backup taken {taken} into {target.absolute()}: "
               f"{counts['files']} files, {counts['bytes'] / 1e6:.1f} MB, "
               f"{counts['blobs_verified']} blobs verified by SHA-256.")
    if staging is not None:
        click.echo(f"Restored {counts['staged_files']} staged files into {staging.absolute()}.")
    if counts["config"]:
        click.echo(f"Its settings file is in {counts['config']}: point DROPSYNC_CONFIG "
                   "at it (or copy it where the service's settings live).")
    click.echo(f"Start a hub on it: DROPSYNC_DATA_DIR={target.absolute()} dropsync serve")


def register(main: click.Group) -> None:
    for command in (install_service, nginx_ticket, tls_group, backup, restore):
        main.add_command(command)
