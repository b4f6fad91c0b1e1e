"""``dropsync site ...``, ``dropsync central ...`` and ``dropsync sites``.

The set-up commands talk to the local Syncthing only (not to the hub), so they work
whether or not the hub runs; ``central command`` writes a file; ``sites`` asks the hub.
"""

from __future__ import annotations

import json
from typing import Any

import click

from ..config import load_config
from ..errors import DropSyncError, StartupError
from .central import send_command
from .layout import CentralFolders
from .setup import add_site, init_site
from .syncthing import Syncthing, SyncthingError


def settings_of(ctx: click.Context) -> dict[str, Any]:
    try:
        return load_config(ctx.obj, config_file=ctx.obj.get("CONFIG_FILE"))
    except StartupError as exc:
        raise click.ClickException(exc.message) from None


def syncthing_of(settings: dict[str, Any]) -> Syncthing:
    try:
        return Syncthing.from_settings(settings)
    except SyncthingError as exc:
        raise click.ClickException(str(exc)) from None


def run_setup(ctx: click.Context, set_up, **kwargs: Any) -> tuple[dict[str, Any], dict]:
    """Run ``set_up(syncthing, settings, **kwargs)``; its errors end the command."""
    settings = settings_of(ctx)
    try:
        return settings, set_up(syncthing_of(settings), settings, **kwargs)
    except (SyncthingError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None


def group_flags(groups: tuple[str, ...]) -> str:
    return "".join(f" --group {g}" for g in groups)


groups_option = click.option("--group", "groups", multiple=True,
                             help="A group of sites it is in (it receives the centre's "
                             "sites-<group> feed); repeatable.")


@click.group()
def site() -> None:
    """This hub as one site of a central office (through Syncthing)."""


@site.command("id")
@click.pass_context
def site_id(ctx: click.Context) -> None:
    """Print this hub's Syncthing device id (give it to the other side)."""
    click.echo(run_setup(ctx, lambda st, settings: st.my_id())[1])


@site.command("init")
@click.option("--name", required=True, help="This site's name (lowercase, e.g. north-farm).")
@click.option("--central", "central_id", required=True,
              help="The central hub's Syncthing device id (dropsync site id, there).")
@click.option("--central-address", help="Where the central Syncthing listens, e.g. "
              "tcp://192.0.2.10:22000 (default: discovery).")
@groups_option
@click.pass_context
def site_init(ctx: click.Context, name: str, central_id: str, central_address: str | None,
              groups: tuple[str, ...]) -> None:
    """Receive the centre's packages and commands; send this site's export."""
    _, done = run_setup(ctx, init_site, name=name, groups=list(groups),
                        central_id=central_id, central_address=central_address)
    click.echo(f"Site {name}: {len(done['folders'])} folders shared with the centre.")
    click.echo(f"On the central hub run: dropsync central add-site {name} "
               f"{done['device_id']}{group_flags(groups)}")


@click.group()
def central() -> None:
    """This hub as the central office of many sites (through Syncthing)."""


@central.command("add-site")
@click.argument("name")
@click.argument("device_id")
@click.option("--address", help="Where the site's Syncthing listens, e.g. "
              "tcp://192.0.2.20:22000 (default: discovery).")
@groups_option
@click.pass_context
def central_add_site(ctx: click.Context, name: str, device_id: str, address: str | None,
                     groups: tuple[str, ...]) -> None:
    """Share the feeds and the site's command folder; receive its export."""
    settings, done = run_setup(ctx, add_site, name=name, groups=list(groups),
                               device_id=device_id, address=address)
    outbox = CentralFolders(settings["SITES_DIR"]).outbox
    click.echo(f"Site {name} added: drop files in {outbox}/<feed>/<target>/<path> "
               f"(feeds: all, site-{name}" + "".join(f", sites-{g}" for g in groups) + ").")
    click.echo(f"On the site run: dropsync site init --name {name} "
               f"--central {done['device_id']}{group_flags(groups)}")


@central.command("command")
@click.argument("site_name")
@click.argument("target")
@click.argument("name")
@click.option("--args", "args_json", default="{}", help="JSON object of arguments.")
@click.pass_context
def central_command(ctx: click.Context, site_name: str, target: str, name: str,
                    args_json: str) -> None:
    """Send a command to a site's device, group (group:<name>) or all its devices."""
    try:
        args = json.loads(args_json)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--args") from None
    if not isinstance(args, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--args")
    settings = settings_of(ctx)
    try:
        sent = send_command(CentralFolders(settings["SITES_DIR"]), site_name, target, name,
                            args)
    except (DropSyncError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(sent["id"])


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def sites(ctx: click.Context, as_json: bool) -> None:
    """Every site of this central hub: last export, fleet, failures."""
    from ..console import admin_api, echo_json, echo_table

    found = admin_api(ctx, "GET", "/sites")["sites"]
    if as_json:
        echo_json(found)
        return
    if not found:
        click.echo("No sites (dropsync central add-site adds one).")
        return
    rows = [{"site": s["name"],
             "export": "never" if s["age_s"] is None else f"{s['age_s']:.0f}s ago",
             "status": "SILENT" if s["silent"] else "ok",
             **{k: s["fleet"].get(k, 0) for k in ("online", "overdue", "offline")},
             "packages": len(s["packages"]), "failed": len(s["failures"])}
            for s in found]
    echo_table(rows, [("SITE", "site"), ("LAST EXPORT", "export"), ("STATUS", "status"),
                      ("ONLINE", "online"), ("OVERDUE", "overdue"), ("OFFLINE", "offline"),
                      ("PACKAGES", "packages"), ("FAILURES", "failed")])


def register(main: click.Group) -> None:
    main.add_command(site)
    main.add_command(central)
    main.add_command(sites)
