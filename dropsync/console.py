"""What the CLI's commands share: calling this data directory's admin API, and printing
JSON or aligned tables. Every command module (``cli.py``, ``ops/cli.py``,
``sites/cli.py``...) uses these, so none imports another command module."""

from __future__ import annotations

import json
from typing import Any

import click

from .hubclient import call_hub


def admin_api(ctx: click.Context, method: str, path: str, body: Any = None) -> Any:
    """Call the admin API for this invocation's data directory; errors end the command."""
    return call_hub(ctx, lambda hub: hub.request(method, "/api/v1/admin" + path, body))


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2))


def echo_table(rows: list[dict], columns: list[tuple[str, str]]) -> None:
    """Rows as aligned columns; ``columns`` pairs a heading with a row key."""
    cells = [[h for h, _ in columns]] + [
        ["" if row.get(k) is None else
         ",".join(row[k]) if isinstance(row[k], list) else str(row[k]) for _, k in columns]
        for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    for r in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def echo_rows(rows: list[dict], columns: list[tuple[str, str]], as_json: bool,
              empty: str | None = None) -> None:
    """What list commands print: JSON, a hint when there is nothing, or a table."""
    if as_json:
        echo_json(rows)
    elif not rows and empty:
        click.echo(empty)
    else:
        echo_table(rows, columns)
