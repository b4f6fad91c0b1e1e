"""``dropsync simulate`` and ``dropsync demo``: registered on the main command group."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import click

from ..config import load_config
from ..errors import StartupError
from ..fleet.bootstrap import FIRST_ADMIN_FILE
from ..hubclient import HubError
from ..store import current_holder
from .faults import FAULT_KINDS, FaultPlan
from .stats import progress_printer

FAULT_HELP = "; ".join(f"{name}: {what} (default rate {rate:g})"
                       for name, (what, rate) in FAULT_KINDS.items())


def first_admin_token(data_dir: Path) -> str | None:
    """The admin API token a fresh hub wrote to ``first-admin.txt``, if still there."""
    try:
        text = (data_dir / FIRST_ADMIN_FILE).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("admin API token:"):
            return line.split(":", 1)[1].strip() or None
    return None


def locate_hub(overrides: dict[str, Any], hub_url: str | None,
               admin_token: str | None) -> tuple[str, str | None]:
    """The hub's URL and an admin token: as given, else from the data directory (the
    running hub's lock file, then ``first-admin.txt``)."""
    try:
        settings = load_config(overrides, config_file=overrides.get("CONFIG_FILE"))
    except StartupError as exc:
        raise click.ClickException(exc.message) from None
    data_dir = Path(settings["DATA_DIR"]).resolve()
    holder = current_holder(data_dir) or {}
    local_url = holder.get("url")
    if hub_url is None:
        if not local_url:
            raise click.ClickException(
                f"no hub is running on {data_dir}: start one (dropsync serve), or give "
                "--hub URL")
        hub_url = local_url
    if admin_token is None and local_url and hub_url.rstrip("/") == local_url.rstrip("/"):
        admin_token = holder.get("cli_token")
    if admin_token is None:
        admin_token = first_admin_token(data_dir)
    return hub_url.rstrip("/"), admin_token


@click.command()
@click.option("--hub", "hub_url", help="Hub URL (default: the hub running on the data "
              "directory).")
@click.option("--devices", "-n", "count", type=click.IntRange(1, 64_000), default=10,
              show_default=True, help="Number of virtual devices.")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True),
              help="Seconds to run (default: until Ctrl-C).")
@click.option("--start", type=click.Choice(["staggered", "together"]), default="staggered",
              show_default=True, help="together: every device comes up in the same second, "
              "as after a power cut.")
@click.option("--ramp", "ramp_s", type=click.FloatRange(min=0), default=10.0,
              show_default=True, help="Seconds over which staggered devices come up.")
@click.option("--warmup", "warmup_s", type=click.FloatRange(min=0), default=0.0,
              help="Seconds at the start whose latencies the summary leaves out.")
@click.option("--prefix", default="sim-", show_default=True, help="Device id prefix.")
@click.option("--group", "groups", multiple=True,
              help="Put devices in this group (repeat: dealt in turn).")
@click.option("--type", "device_type", type=click.Choice(["esp8266", "esp32"]),
              default="esp8266", show_default=True)
@click.option("--fault", "fault_spec", metavar="KIND[=RATE],...",
              help=f"Faults to inject. {FAULT_HELP}.")
@click.option("--stall-s", type=click.FloatRange(min=0), default=3.0, show_default=True,
              help="Pause of a stall fault.")
@click.option("--admin-token", envvar="DROPSYNC_ADMIN_TOKEN",
              help="Admin token for registering (also DROPSYNC_ADMIN_TOKEN; default: "
              "found in the data directory).")
@click.option("--tokens", "tokens_file", type=click.Path(exists=True, dir_okay=False),
              help='Use registered devices from a {"id": "token"} JSON file instead.')
@click.option("--enroll-key", help="Start the fleet unenrolled: each device enrolls with "
              "this key, waits until an operator accepts it (or its MAC is preauthorised), "
              "claims its token, then runs.")
@click.option("--save-tokens", type=click.Path(dir_okay=False),
              help="Write the registered devices' ids and tokens there (mode 0600).")
@click.option("--heartbeat-every", "heartbeat_s", type=click.FloatRange(min=1), default=60.0,
              show_default=True, help="Seconds between a device's heartbeats.")
@click.option("--manifest-every", "manifest_s", type=click.FloatRange(min=1), default=300.0,
              show_default=True, help="Seconds between a device's manifest checks (also "
              "at boot and on a sync command).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0, min_open=True),
              default=30.0, show_default=True, help="Seconds before a request fails.")
@click.option("--progress-every", type=click.FloatRange(min=0.1),
              help="Seconds between progress lines (default 1 on a terminal, else 10).")
@click.option("--quiet", "-q", is_flag=True, help="No progress line.")
@click.option("--seed", type=int, help="Random seed, for a repeatable run.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def simulate(ctx: click.Context, hub_url, count, duration, start, ramp_s, warmup_s, prefix,
             groups, device_type, fault_spec, stall_s, admin_token, enroll_key, tokens_file,
             save_tokens,
             heartbeat_s, manifest_s, timeout_s, progress_every, quiet, seed, as_json) -> None:
    """Run N virtual devices against a hub, as the firmware behaves on the wire.

    Exits 1 if any request failed that no injected fault explains.
    """
    import aiohttp

    from .fleet import Fleet, FleetOptions, load_tokens, prepare_credentials
    from .stats import format_summary

    try:
        faults = FaultPlan.parse(fault_spec, stall_s)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--fault") from None
    hub_url, admin_token = locate_hub(ctx.obj or {}, hub_url, admin_token)
    tokens = None
    if tokens_file:
        try:
            limit = count if ctx.get_parameter_source("count").name != "DEFAULT" else None
            tokens = load_tokens(Path(tokens_file).read_text(), limit)
        except ValueError as exc:
            raise click.ClickException(f"{tokens_file}: {exc}") from None
    options = FleetOptions(devices=count, prefix=prefix, groups=tuple(groups),
                           device_type=device_type, start=start, ramp_s=ramp_s,
                           warmup_s=warmup_s,
                           duration_s=duration, faults=faults, request_timeout_s=timeout_s,
                           heartbeat_every_s=heartbeat_s, manifest_every_s=manifest_s,
                           seed=seed, enroll_key=enroll_key)
    show, every_s = progress_printer(quiet, progress_every)

    async def main() -> dict[str, Any]:
        credentials = await prepare_credentials(hub_url, admin_token, options, tokens)
        if save_tokens:
            path = Path(save_tokens)
            path.touch(mode=0o600, exist_ok=True)
            path.chmod(0o600)
            path.write_text(json.dumps(credentials, indent=1))
        if show:
            show(f"{len(credentials)} devices, {start} start, faults: {faults.describe()}, "
                 f"hub {hub_url}")
            if sys.stderr.isatty():
                sys.stderr.write("\n")
        return await Fleet(hub_url, credentials, options).run(show, every_s)

    try:
        summary = asyncio.run(main())
    except KeyboardInterrupt:  # before the fleet started: nothing to summarise
        raise click.Abort() from None
    except HubError as exc:
        raise click.ClickException(f"{exc.message} ({exc.code})") from None
    except (OSError, aiohttp.ClientError) as exc:
        raise click.ClickException(f"cannot reach the hub at {hub_url}: {exc}") from None
    if show and sys.stderr.isatty():
        sys.stderr.write("\n")
    click.echo(json.dumps(summary, indent=2) if as_json else format_summary(summary, hub_url))
    if summary["errors"]["unexplained"]:
        ctx.exit(1)


@click.command()
@click.option("--devices", "-n", "count", type=click.IntRange(2, 200), default=6,
              show_default=True, help="Simulated devices (dealt to two groups).")
@click.option("--port", type=int, help="Port for the demo hub (default: a free one).")
@click.option("--poll", "poll_s", type=click.IntRange(1, 3600), default=5, show_default=True,
              help="Poll interval the demo hub asks of its devices.")
def demo(count: int, port: int | None, poll_s: int) -> None:
    """Start a throw-away hub with simulated devices; Ctrl-C stops it and removes it all."""
    from .demo import Demo

    sys.exit(Demo(devices=count, port=port, poll_s=poll_s).run())
