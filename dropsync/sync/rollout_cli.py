"""``dropsync rollout create|list|show|pause|resume|abort|retry-failed``.

Every command goes through the admin API (the running hub's, or in-process when none
holds the data directory), as the other management commands do.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import click

from ..console import admin_api, echo_json, echo_rows, echo_table
from .rollouts import DEFAULTS, STATES, parse_percents, parse_target, target_label

ROLLOUT_COLUMNS = [("ID", "id"), ("STATE", "state"), ("PACKAGE", "package_id"),
                   ("PATH", "path"), ("VERSION", "package_version"), ("TARGET", "target"),
                   ("WAVES", "waves"), ("DONE", "done"), ("FAILED", "failed")]
WAVE_COLUMNS = [("WAVE", "name"), ("STATE", "state"), ("SIZE", "size"),
                ("SUCCEEDED", "succeeded"), ("FAILED", "failed"), ("PENDING", "pending")]


def api(ctx: click.Context, method: str, path: str, body: Any = None) -> Any:
    return admin_api(ctx, method, "/rollouts" + path, body)


def as_row(rollout: dict) -> dict:
    states = [w["state"] for w in rollout["waves"]]
    done = sum(s == "succeeded" for s in states)
    return {**rollout, "target": target_label(rollout["target"]),
            "waves": f"{done}/{len(states)}",
            "done": f"{rollout['totals']['succeeded']}/{rollout['totals']['devices']}",
            "failed": rollout["totals"]["failed"]}


def show(rollout: dict, as_json: bool) -> None:
    if as_json:
        echo_json(rollout)
        return
    row = as_row(rollout)
    click.echo(f"Rollout {rollout['id']}: {rollout['state']}"
               + (f" ({rollout['reason']})" if rollout.get("reason") else ""))
    click.echo(f"  package {rollout['package_id']} v{rollout['package_version']} "
               f"{rollout['path']} to {row['target']}; {row['done']} succeeded, "
               f"{row['failed']} failed")
    if rollout["waves"]:
        echo_table(rollout["waves"], WAVE_COLUMNS)


@click.group("rollout")
def rollout_group() -> None:
    """Deliver a package in waves that pause by themselves when devices fail."""


def wave_options(command):
    """How the waves go: shared by ``rollout create`` and ``stage --rollout``, with the
    defaults every way of asking for a rollout starts from (``rollouts.DEFAULTS``)."""
    options = [
        click.option("--canary", type=int, default=DEFAULTS["canary"], show_default=True,
                     help="Devices in the first wave."),
        click.option("--waves", "percents", show_default=True,
                     default=",".join(f"{p:g}" for p in DEFAULTS["percents"]),
                     help="Cumulative percentages of the target, one wave each; the last "
                          "is 100."),
        click.option("--success", "success_threshold", type=float, show_default=True,
                     default=DEFAULTS["success_threshold"],
                     help="Share of a wave that must succeed before the next."),
        click.option("--errors", "error_threshold", type=float, show_default=True,
                     default=DEFAULTS["error_threshold"],
                     help="A wave with a larger share failed pauses the rollout."),
        click.option("--soak", "soak_s", type=float, default=DEFAULTS["soak_s"],
                     show_default=True, help="Seconds a wave holds after meeting its "
                                             "threshold."),
        click.option("--deadline", "deadline_s", type=float, show_default=True,
                     default=DEFAULTS["deadline_s"], help="Seconds a device has to succeed."),
        click.option("--window", help="Start waves only between these local times, "
                                      "HH:MM-HH:MM (e.g. 22:00-05:00)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def rollout_body(package_id: str, target: str, canary: int, percents: str,
                 success_threshold: float, error_threshold: float, soak_s: float,
                 deadline_s: float, window: str | None) -> dict[str, Any]:
    """What ``POST /api/v1/admin/rollouts`` takes, from the command line's options."""
    try:
        waves = parse_percents(percents)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--waves") from None
    return {"package": package_id, "target": parse_target(target), "canary": canary,
            "percents": waves, "success_threshold": success_threshold,
            "error_threshold": error_threshold, "soak_s": soak_s, "deadline_s": deadline_s,
            "window": window}


@rollout_group.command("create")
@click.argument("package_id")
@click.option("--target", "target", default="all", show_default=True,
              help="all, group-<name>, a device id, or a filter: type=esp32,group=pump,"
                   "firmware_version=1.2.0")
@wave_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def create(ctx, package_id, target, as_json, **waves) -> None:
    """Start a rollout of a package (a staged image's draft becomes it)."""
    show(api(ctx, "POST", "", rollout_body(package_id, target, **waves)), as_json)


@rollout_group.command("list")
@click.option("--state", type=click.Choice(STATES), help="Only rollouts in this state.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def list_rollouts(ctx, state, as_json) -> None:
    """List rollouts, newest first."""
    found = api(ctx, "GET", f"?state={state}" if state else "")["rollouts"]
    echo_rows(found if as_json else [as_row(r) for r in found], ROLLOUT_COLUMNS, as_json,
              empty="No rollouts. Start one with: dropsync rollout create <package id>")


@rollout_group.command("show")
@click.argument("rollout_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def show_rollout(ctx, rollout_id, as_json) -> None:
    """Show a rollout and its waves."""
    show(api(ctx, "GET", f"/{quote(rollout_id, safe='')}"), as_json)


def action(name: str, help_text: str) -> None:
    @click.argument("rollout_id")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @click.pass_context
    def run(ctx, rollout_id, as_json) -> None:
        show(api(ctx, "POST", f"/{quote(rollout_id, safe='')}/{name}"), as_json)
    run.__doc__ = help_text
    rollout_group.command(name)(run)


action("pause", "Pause a rollout: no further wave starts.")
action("resume", "Resume a paused rollout.")
action("abort", "Abort a rollout: no further wave starts; updated devices stay updated.")
action("retry-failed", "Count a rollout's failed devices as pending again.")


def register(main: click.Group) -> None:
    main.add_command(rollout_group)



