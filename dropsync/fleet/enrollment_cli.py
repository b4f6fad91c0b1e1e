"""``dropsync enroll-key ...`` and ``dropsync device pending|accept|reject|preauthorize``:
enrollment from the command line, through the admin API like every other command."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import click

from ..console import admin_api, echo_json, echo_rows
from .enrollment import read_preauthorized_csv

PENDING_COLUMNS = [("MAC", "hardware_id"), ("STATE", "state"), ("BOARD", "board"),
                   ("FIRMWARE", "firmware_version"), ("NAME HINT", "name_hint"),
                   ("GROUP", "group"), ("SECRET", "secret_fingerprint"),
                   ("ADDRESS", "address"), ("LAST SEEN", "last_seen"), ("NOTE", "note")]
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@click.group("enroll-key")
def enroll_key() -> None:
    """Keys boards enroll with: a board with one (and no token) can ask to join."""


@enroll_key.command("new")
@click.option("--group", help="Boards enrolled with it join this group when accepted.")
@click.option("--site", help="The site it is for (a label).")
@click.option("--label", default="", help="What it is for.")
@json_option
@click.pass_context
def enroll_key_new(ctx, group, site, label, as_json) -> None:
    """Create an enrollment key and print it (shown this once): put it in config.h."""
    created = admin_api(ctx, "POST", "/enroll-keys",
                        {"group": group, "site": site, "label": label})
    if as_json:
        echo_json(created)
        return
    click.echo(f"Enrollment key {created['id']}"
               + (f" (group {group})" if group else "") + f", shown once: {created['key']}")
    click.echo(f'In the firmware\'s config.h:  #define ENROLL_KEY "{created["key"]}"')


@enroll_key.command("list")
@json_option
@click.pass_context
def enroll_key_list(ctx, as_json) -> None:
    """List enrollment keys (never the keys themselves)."""
    echo_rows(admin_api(ctx, "GET", "/enroll-keys")["keys"],
              [("ID", "id"), ("GROUP", "group"), ("SITE", "site"), ("LABEL", "label"),
               ("CREATED", "created_at")], as_json,
              empty="No enrollment keys: enrollment is off. Create one with: "
                    "dropsync enroll-key new --group <name>")


@enroll_key.command("revoke")
@click.argument("key_id")
@click.pass_context
def enroll_key_revoke(ctx, key_id) -> None:
    """Revoke an enrollment key: boards using it are refused from then on."""
    admin_api(ctx, "DELETE", f"/enroll-keys/{quote(key_id, safe='')}")
    click.echo(f"Revoked enrollment key {key_id}.")


@click.command("pending")
@click.option("--all", "everything", is_flag=True,
              help="Every enrollment (accepted, rejected, claimed too), not just pending.")
@json_option
@click.pass_context
def device_pending(ctx, everything, as_json) -> None:
    """Boards waiting for an operator to accept or reject them."""
    found = admin_api(ctx, "GET", "/enrollments" + ("" if everything else "?state=pending"))
    rows = [{**e, "note": note_of(e)} for e in found["enrollments"]]
    echo_rows(rows, PENDING_COLUMNS, as_json,
              empty="No boards waiting. Boards enroll with a key from: dropsync enroll-key new")


def note_of(entry: dict) -> str:
    notes = []
    if entry.get("re_enrollment_of"):
        notes.append(f"re-enrollment of {entry['re_enrollment_of']}")
    if entry.get("refusals"):
        notes.append(f"refused: {entry['refusals'][-1]['why']}")
    return "; ".join(notes)


@click.command("accept")
@click.argument("hardware_ids", nargs=-1, required=True)
@click.option("--id", "device_id", help="The device id (one board only; default: its name "
                                        "hint, else esp-<MAC digits>).")
@click.option("--name", help="The device's name (one board only).")
@click.option("--group", "groups", multiple=True,
              help="A group to join (repeatable; default: the enrollment key's group).")
@json_option
@click.pass_context
def device_accept(ctx, hardware_ids, device_id, name, groups, as_json) -> None:
    """Accept pending boards by MAC: each becomes a device and may claim its token."""
    accepted = admin_api(ctx, "POST", "/enrollments/accept", {
        "hardware_ids": list(hardware_ids), "device_id": device_id, "name": name,
        "groups": list(groups) or None})["enrollments"]
    if as_json:
        echo_json(accepted)
        return
    for entry in accepted:
        click.echo(f"Accepted {entry['hardware_id']} as {entry['device_id']}: it gets its "
                   "token when it next asks.")


@click.command("reject")
@click.argument("hardware_ids", nargs=-1, required=True)
@click.pass_context
def device_reject(ctx, hardware_ids) -> None:
    """Reject pending boards by MAC: they get nothing."""
    rejected = admin_api(ctx, "POST", "/enrollments/reject",
                         {"hardware_ids": list(hardware_ids)})["enrollments"]
    click.echo(f"Rejected {', '.join(e['hardware_id'] for e in rejected)}.")


@click.command("preauthorize")
@click.argument("csv_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_option
@click.pass_context
def device_preauthorize(ctx, csv_file, as_json) -> None:
    """Accept these MACs as they arrive: a CSV of mac,groups,name,id (groups separated by
    spaces or semicolons; a header row is optional)."""
    try:
        boards = read_preauthorized_csv(csv_file.read_text())
    except UnicodeDecodeError:
        raise click.BadParameter("not a text file", param_hint="CSV_FILE") from None
    added = admin_api(ctx, "POST", "/preauthorized", {"boards": boards})
    if as_json:
        echo_json(added)
        return
    click.echo(f"Preauthorised {added['count']} board(s): they are accepted as they enroll.")


def register(main: click.Group) -> None:
    main.add_command(enroll_key)
    device = main.commands["device"]
    for command in (device_pending, device_accept, device_reject, device_preauthorize):
        device.add_command(command)
