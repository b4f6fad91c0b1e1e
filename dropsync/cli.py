"""The ``dropsync`` command: serve the hub, manage devices, admin tokens and operators.

Management commands speak the admin API (see ``hubclient``): through the running hub when
one holds the data directory, in-process otherwise. They never write store files behind a
running hub's back.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import click

from . import __version__
from .config import load_config
from .console import admin_api, echo_json, echo_rows
from .errors import DataDirBusy, StartupError
from .fleet import enrollment_cli
from .hubclient import call_hub
from .jsonbounds import loads_bounded
from .ops import cli as ops_cli
from .simulator.cli import demo, simulate
from .sites import cli as sites_cli
from .store import current_holder
from .sync import rollout_cli, signing_cli

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def confirm(question: str) -> None:
    """Ask before a destructive command. With no answer to read (a script, cron), say to
    pass --yes: click alone would print a bare "Aborted!"."""
    try:
        agreed = click.confirm(question)
    except click.Abort:  # end of input (or Ctrl-C) before any answer
        raise click.UsageError("no answer to confirm with: pass --yes to go ahead") \
            from None
    if not agreed:
        raise click.Abort()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              envvar="DROPSYNC_CONFIG", help="TOML settings file (also DROPSYNC_CONFIG).")
@click.option("--data-dir", help="Data directory (overrides DROPSYNC_DATA_DIR).")
@click.version_option(__version__, prog_name="dropsync")
@click.pass_context
def main(ctx: click.Context, config_file: str | None, data_dir: str | None) -> None:
    """DropSync: offline hub for field IoT nodes."""
    overrides: dict[str, Any] = {}
    if config_file:
        overrides["CONFIG_FILE"] = config_file
    if data_dir:
        overrides["DATA_DIR"] = data_dir
    ctx.obj = overrides


# -- serve -----------------------------------------------------------------------------
@main.command()
@click.option("--host", help="Address to listen on (overrides DROPSYNC_HOST).")
@click.option("--port", type=int, help="Port to listen on (overrides DROPSYNC_PORT).")
@click.option("--dev", is_flag=True, help="Use Flask's development server instead.")
@click.pass_context
def serve(ctx: click.Context, host: str | None, port: int | None, dev: bool) -> None:
    """Run the hub (granian, or gunicorn with SERVER=gunicorn: one worker process)."""
    overrides = dict(ctx.obj)
    if host:
        overrides["HOST"] = host
    if port is not None:
        overrides["PORT"] = port
    try:
        settings = load_config(overrides, config_file=overrides.get("CONFIG_FILE"))
        data_dir = Path(settings["DATA_DIR"]).resolve()
        holder = current_holder(data_dir)
        if holder is not None:
            raise DataDirBusy(data_dir, holder.get("pid"))
        ops_cli.check_tls_files(settings)  # a TLS_CERT that is not there: say so, here
        if dev:
            run_dev_server(overrides, settings)
            return
    except StartupError as exc:
        raise click.ClickException(exc.message) from None
    from .server import serve as run_server

    run_server(overrides, settings)


def run_dev_server(overrides: dict[str, Any], settings: dict[str, Any]) -> None:
    from . import create_app

    app = create_app(overrides)
    # SIGTERM would otherwise end the process without a final liveness checkpoint.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        app.run(host=settings["HOST"], port=settings["PORT"], threaded=True,
                use_reloader=False)
    finally:
        app.extensions["dropsync"].close()


# -- devices ---------------------------------------------------------------------------
DEVICE_COLUMNS = [("ID", "id"), ("NAME", "name"), ("TYPE", "type"), ("GROUPS", "groups"),
                  ("ENABLED", "enabled"), ("LAST SEEN", "last_seen")]


@main.group()
def device() -> None:
    """Register and manage devices."""


@device.command("add")
@click.argument("device_id")
@click.option("--name", help="Human-friendly name (default: the id).")
@click.option("--type", "device_type", default="esp8266", show_default=True)
@click.option("--group", "groups", multiple=True, help="Group to join; repeat for more.")
@json_option
@click.pass_context
def device_add(ctx, device_id, name, device_type, groups, as_json) -> None:
    """Register a device and print its token (shown this once)."""
    body = {"id": device_id, "type": device_type, "groups": list(groups)}
    if name:
        body["name"] = name
    created = admin_api(ctx, "POST", "/devices/register", body)
    if as_json:
        echo_json(created)
        return
    click.echo(f"Registered {created['id']}.")
    click.echo(f"Token (shown once, store it in the device's config): {created['token']}")


@device.command("list")
@json_option
@click.pass_context
def device_list(ctx, as_json) -> None:
    """List devices."""
    echo_rows(admin_api(ctx, "GET", "/devices")["devices"], DEVICE_COLUMNS, as_json,
              empty="No devices. Add one with: dropsync device add <id>")


@device.command("show")
@click.argument("device_id")
@json_option
@click.pass_context
def device_show(ctx, device_id, as_json) -> None:
    """Show one device."""
    found = admin_api(ctx, "GET", f"/devices/{device_id}")
    if as_json:
        echo_json(found)
        return
    width = max(len(key) for key in found) + 2
    for key, value in found.items():
        if isinstance(value, dict):  # the inventory: one indented line per attribute
            click.echo(f"{key}:" if value else f"{key + ':':{width}}(none reported)")
            for name, item in value.items():
                click.echo(f"  {name + ':':{width - 2}}{item}")
            continue
        shown = ",".join(value) if isinstance(value, list) else value
        click.echo(f"{key + ':':{width}}{'' if shown is None else shown}".rstrip())


def set_enabled(ctx: click.Context, device_id: str, enabled: bool) -> None:
    admin_api(ctx, "PATCH", f"/devices/{device_id}", {"enabled": enabled})
    click.echo(f"{device_id} {'enabled' if enabled else 'disabled'}.")


@device.command("disable")
@click.argument("device_id")
@click.pass_context
def device_disable(ctx, device_id) -> None:
    """Refuse a device's requests (403) until enabled again."""
    set_enabled(ctx, device_id, False)


@device.command("enable")
@click.argument("device_id")
@click.pass_context
def device_enable(ctx, device_id) -> None:
    """Accept a disabled device's requests again."""
    set_enabled(ctx, device_id, True)


@device.command("rotate-token")
@click.argument("device_id")
@click.pass_context
def device_rotate_token(ctx, device_id) -> None:
    """Give a device a new token; the old one stops working at once."""
    rotated = admin_api(ctx, "POST", f"/devices/{device_id}/rotate-token")
    click.echo(f"New token for {device_id} (shown once): {rotated['token']}")


@device.command("delete")
@click.argument("device_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def device_delete(ctx, device_id, yes) -> None:
    """Remove a device and its token."""
    if not yes:
        confirm(f"Delete device {device_id}?")
    admin_api(ctx, "DELETE", f"/devices/{device_id}")
    click.echo(f"Deleted {device_id}.")


@device.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--replace", is_flag=True,
              help="Replace the tokens of devices that already exist (default: skip them).")
@click.option("--force", is_flag=True,
              help="Accept tokens shorter than 16 characters (they can be guessed).")
@click.pass_context
def device_import(ctx, path, replace, force) -> None:
    """Import a seed device_auth.json ({"device id": "token", ...}); tokens are hashed.

    Devices that already exist keep their token unless --replace is given."""
    try:
        tokens = loads_bounded(Path(path).read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(tokens, dict):
        raise click.ClickException(f"{path} must hold an object of device id to token")
    result = admin_api(ctx, "POST", "/devices/import",
                       {"tokens": tokens, "replace": replace, "force": force})
    click.echo(f"Imported {path}: {result['summary']}.")
    click.echo(f"The hub stores only hashes; {path} still holds plaintext tokens.")


# -- admin tokens ----------------------------------------------------------------------
# -- commands and messages ---------------------------------------------------------------
COMMAND_COLUMNS = [("ID", "id"), ("NAME", "name"), ("STATE", "state"),
                   ("ATTEMPTS", "attempts"), ("PRIORITY", "priority"), ("TARGET", "target"),
                   ("CREATED", "created_at"), ("ENDED", "ended_at"), ("REASON", "reason")]


@main.command()
@click.argument("target")
@click.argument("command")
@click.option("--args", "args_json", default="{}", show_default=True,
              help="Arguments as a JSON object.")
@click.option("--priority", type=click.IntRange(0, 100), default=50, show_default=True,
              help="Higher is handed out first.")
@click.option("--expires", type=click.FloatRange(min=0, min_open=True),
              help="Seconds after which an undelivered command expires.")
@json_option
@click.pass_context
def send(ctx, target, command, args_json, priority, expires, as_json) -> None:
    """Queue COMMAND for TARGET: a device id, group:<name>, or all."""
    try:
        args = loads_bounded(args_json)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--args") from None
    body = {"target": target, "name": command, "args": args, "priority": priority}
    if expires is not None:
        body["expires_in_s"] = expires
    queued = admin_api(ctx, "POST", "/commands", body)
    if as_json:
        echo_json(queued)
        return
    devices = [d["device_id"] for d in queued["deliveries"]]
    click.echo(f"Queued command {queued['id']} {command!r} for {queued['target']}: "
               f"{len(devices)} device{'s' if len(devices) != 1 else ''} "
               f"({', '.join(devices[:10])}{', ...' if len(devices) > 10 else ''}).")


@main.command()
@click.argument("command_id", type=int)
@click.option("--device", "device_id", help="Cancel only this device's copy.")
@click.pass_context
def cancel(ctx, command_id, device_id) -> None:
    """Cancel a queued command's open deliveries."""
    body = {"device_id": device_id} if device_id else {}
    result = admin_api(ctx, "POST", f"/commands/{command_id}/cancel", body)
    click.echo(f"Command {command_id}: {result['counts']['cancelled']} cancelled.")


@main.command()
@click.argument("device_id")
@click.option("--state", help="Only these states (comma-separated).")
@click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True)
@json_option
@click.pass_context
def commands(ctx, device_id, state, limit, as_json) -> None:
    """A device's commands: open ones first, then ended ones, newest first."""
    query = urlencode({"limit": limit, **({"state": state} if state else {})})
    found = admin_api(ctx, "GET", f"/devices/{device_id}/commands?{query}")["commands"]
    echo_rows(found, COMMAND_COLUMNS, as_json, empty=f"No commands for {device_id}.")


def format_message(message: dict) -> str:
    data = f"  {json.dumps(message['data'])}" if message.get("data") is not None else ""
    return f"{message['received_at']}  {message['level'].upper():8} {message['text']}{data}"


@main.command()
@click.argument("device_id")
@click.option("--level", type=click.Choice(["debug", "info", "warning", "error", "critical"]))
@click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True)
@click.option("--follow", "-f", is_flag=True, help="Keep printing new messages (Ctrl-C ends).")
@click.option("--interval", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
              help="Seconds between checks with --follow.")
@json_option
@click.pass_context
def messages(ctx, device_id, level, limit, follow, interval, as_json) -> None:
    """A device's messages, oldest of the newest LIMIT first; --follow for new ones."""
    base = {"limit": limit, **({"level": level} if level else {})}
    path = f"/devices/{device_id}/messages"

    def show(found: list[dict]) -> None:
        for message in found:
            click.echo(json.dumps(message) if as_json else format_message(message))

    def print_and_follow(hub) -> None:
        def page(**query) -> dict:
            return hub.request("GET", f"/api/v1/admin{path}?{urlencode(query)}")

        newest = page(**base)["messages"]
        if not newest and not as_json:
            level_text = f" at level {level}" if level else ""
            click.echo(f"No messages from {device_id}{level_text}"
                       + (" yet; waiting for new ones (Ctrl-C ends)." if follow else "."))
        show(list(reversed(newest)))
        last = newest[0]["seq"] if newest else 0
        while follow:
            time.sleep(interval)
            fresh, before = [], None
            while True:  # page back to what was shown, however much arrived
                got = page(**{**base, "limit": 500, "after": last,
                              **({"before": before} if before else {})})
                fresh += got["messages"]
                before = got["next_before"]
                if before is None:
                    break
            if fresh:
                show(list(reversed(fresh)))
                last = fresh[0]["seq"]

    try:
        call_hub(ctx, print_and_follow)
    except KeyboardInterrupt:
        pass


@main.group()
def admin() -> None:
    """Admin API credentials."""


@admin.group("token")
def admin_token() -> None:
    """Create, list and revoke admin API tokens."""


@admin_token.command("create")
@click.option("--label", default="admin token", show_default=True, help="What it is for.")
@json_option
@click.pass_context
def admin_token_create(ctx, label, as_json) -> None:
    """Create an admin token and print it (shown this once)."""
    created = admin_api(ctx, "POST", "/tokens", {"label": label})
    if as_json:
        echo_json(created)
        return
    click.echo(f"Admin token {created['id']} ({label}), shown once: {created['token']}")


@admin_token.command("list")
@json_option
@click.pass_context
def admin_token_list(ctx, as_json) -> None:
    """List admin tokens (never their secrets)."""
    echo_rows(admin_api(ctx, "GET", "/tokens")["tokens"],
              [("ID", "id"), ("LABEL", "label"), ("CREATED", "created_at")], as_json)


@admin_token.command("revoke")
@click.argument("token_id")
@click.pass_context
def admin_token_revoke(ctx, token_id) -> None:
    """Revoke an admin token by id."""
    admin_api(ctx, "DELETE", f"/tokens/{token_id}")
    click.echo(f"Revoked admin token {token_id}.")


# -- operators -------------------------------------------------------------------------
@main.group()
def operator() -> None:
    """Dashboard operators."""


password_option = click.option("--password", prompt=True, hide_input=True,
                               confirmation_prompt=True, help="Prompted for when omitted.")


@operator.command("add")
@click.argument("username")
@password_option
@click.pass_context
def operator_add(ctx, username, password) -> None:
    """Add an operator who can log in to the dashboard."""
    admin_api(ctx, "POST", "/operators", {"username": username, "password": password})
    click.echo(f"Added operator {username}.")


@operator.command("passwd")
@click.argument("username")
@password_option
@click.pass_context
def operator_passwd(ctx, username, password) -> None:
    """Set an operator's password."""
    admin_api(ctx, "PUT", f"/operators/{username}/password", {"password": password})
    click.echo(f"Password changed for {username}.")


@operator.command("list")
@json_option
@click.pass_context
def operator_list(ctx, as_json) -> None:
    """List operators."""
    echo_rows(admin_api(ctx, "GET", "/operators")["operators"],
              [("USERNAME", "username"), ("CREATED", "created_at"),
               ("PASSWORD CHANGED", "password_changed_at")], as_json)


# -- staging and packages --------------------------------------------------------------
#: Files at least this large get a progress bar while they upload.
PROGRESS_BAR_BYTES = 1024 * 1024
PACKAGE_COLUMNS = [("ID", "id"), ("TARGET", "target"), ("PATH", "path"),
                   ("VERSION", "version"), ("SIZE", "size"), ("HAVE", "have"),
                   ("SOURCE", "source"), ("CREATED", "created")]


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--to", "target", required=True,
              help="Device id, group-<name> or all: the folder below staging/.")
@click.option("--as", "path", help="Path below the target folder (default: FILE's name).")
@click.option("--rollout", is_flag=True,
              help="Offer it in waves (the options below) instead of to every device at "
                   "once: it is held in a draft until the rollout starts.")
@rollout_cli.wave_options
@json_option
@click.pass_context
def stage(ctx, file, target, path, rollout, as_json, **waves) -> None:
    """Put FILE into staging/<target>/ and take it in as a package at once."""
    rel = path or Path(file).name
    url = f"/api/v1/admin/staging/{quote(target, safe='')}/{quote(rel, safe='/')}"
    if rollout:
        url += "?release=draft"
    size = Path(file).stat().st_size

    def upload(hub, on_progress=None):
        with open(file, "rb") as source:
            return hub.upload("PUT", url, source, size, on_progress)

    if size >= PROGRESS_BAR_BYTES and not as_json:
        with click.progressbar(length=size, label=f"Uploading {rel}") as bar:
            package = call_hub(ctx, lambda hub: upload(hub, bar.update))
    else:
        package = call_hub(ctx, upload)
    started = None
    if rollout and package["changed"]:
        started = admin_api(ctx, "POST", "/rollouts",
                            rollout_cli.rollout_body(package["id"], "all", **waves))
    if as_json:
        echo_json({**package, "rollout": started} if rollout else package)
    elif package["changed"]:
        click.echo(f"Staged {target}/{package['path']}: package {package['id']} version "
                   f"{package['version']} ({package['size']} bytes, sha256 "
                   f"{package['sha256'][:12]}...), for {package['progress']['targets']} "
                   "device(s).")
    else:
        click.echo(f"{target}/{package['path']} is unchanged: package {package['id']} "
                   f"stays at version {package['version']}.")
    if started is not None and not as_json:
        rollout_cli.show(started, as_json=False)
    elif rollout and not package["changed"]:
        click.echo("No rollout started: the content did not change.", err=True)


@main.command()
@click.option("--target", help="Only packages for this target folder.")
@json_option
@click.pass_context
def packages(ctx, target, as_json) -> None:
    """List packages and how many of their target devices hold them."""
    found = admin_api(ctx, "GET", "/packages" + (f"?target={quote(target)}" if target
                                                 else ""))["packages"]
    if not as_json:
        found = [{**p, "have": f"{p['progress']['have']}/{p['progress']['targets']}"}
                 for p in found]
    echo_rows(found, PACKAGE_COLUMNS, as_json,
              empty="No packages. Drop files into staging/<target>/ or use: "
                    "dropsync stage <file> --to <target>")


@main.command()
@click.argument("package_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def withdraw(ctx, package_id, yes) -> None:
    """Withdraw a package: its staged file is deleted and devices stop getting it."""
    if not yes:
        confirm(f"Withdraw package {package_id} and delete its staged file?")
    gone = admin_api(ctx, "DELETE", f"/packages/{quote(package_id, safe='')}")
    click.echo(f"Withdrew {gone['target']}/{gone['path']} (package {gone['withdrawn']}).")


# -- operations: install-service, tls, backup, restore (dropsync/ops/cli.py) -------------
ops_cli.register(main)
signing_cli.register(main)
rollout_cli.register(main)
enrollment_cli.register(main)

# -- simulator (dropsync/simulator/) -----------------------------------------------------
main.add_command(simulate)
main.add_command(demo)

# -- many sites through Syncthing (dropsync/sites/) ------------------------------------
sites_cli.register(main)


if __name__ == "__main__":
    sys.exit(main())
