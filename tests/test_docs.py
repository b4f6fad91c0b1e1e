"""The documentation: a site that builds offline, and every setting, CLI command and route
documented exactly once.

"Documented" means one stable entry a reader (or a link) can find:
- a setting: a row of the settings table, ``| `NAME` | default | help |``
  (``docs/admin/settings.md``; ``test_config.py`` compares the row with the code);
- a CLI command: a table row whose first cell is the whole command, ``| `dropsync tls init` |``;
- a route: a heading or table row ``` `METHOD /path/{param}` ```, as the API reference
  (written from the OpenAPI document at build time) heads each operation; routes outside
  the OpenAPI document (dashboard pages, the docs viewer, static files) have table rows.
Guide pages that describe a route again link to its entry instead of repeating it.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import click
import pytest
from support import BIN, ROOT

from dropsync import create_app
from dropsync.api.openapi import PATH_PARAM
from dropsync.cli import main as cli_main
from dropsync.config import SETTINGS

sys.path.insert(0, str(ROOT / "docs" / "_mkdocs"))
import api_reference  # noqa: E402

SETTING_ROW = re.compile(r"^\| `([A-Z][A-Z0-9_]*)` \|", re.M)
COMMAND_ROW = re.compile(r"^\| `(dropsync(?: [a-z][a-z-]*)*)` \|", re.M)
ROUTE_ENTRY = re.compile(r"^(?:#+ `([A-Z]+ /[^`]*)`(?: \{#[\w-]+\})?"
                         r"|\| `([A-Z]+ /[^`]*)` \|)", re.M)
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}


def documents() -> dict[str, str]:
    """Every page of the site as Markdown, the generated API reference included."""
    pages = {str(p.relative_to(ROOT)): p.read_text() for p in sorted((ROOT / "docs").rglob("*.md"))
             if "_mkdocs" not in p.parts}
    pages["README.md"] = (ROOT / "README.md").read_text()
    pages["firmware/README.md"] = (ROOT / "firmware" / "README.md").read_text()
    pages["(generated) reference/api.md"] = api_reference.render(api_reference.build_document())
    return pages


def entries(pattern: re.Pattern, pages: dict[str, str]) -> Counter:
    return Counter(next(group for group in (m.groups() or [m[0]]) if group)
                   for text in pages.values() for m in pattern.finditer(text))


def leaf_commands(group: click.Group, path: str = "dropsync") -> list[str]:
    found = []
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            found += leaf_commands(command, f"{path} {name}")
        else:
            found.append(f"{path} {name}")
    return found


def served_routes(tmp_path) -> list[str]:
    app = create_app({"DATA_DIR": str(tmp_path / "data"), "STAGING_DIR": str(tmp_path / "s"),
                      "SERVING": False, "STAGING_WATCH": False, "LOG_LEVEL": "ERROR"})
    try:
        return sorted(f"{method} {PATH_PARAM.sub(lambda m: '{' + m['name'] + '}', rule.rule)}"
                      for rule in app.url_map.iter_rules()
                      for method in rule.methods - {"HEAD", "OPTIONS"})
    finally:
        app.extensions["dropsync"].close()


def once_each(expected: list[str], found: Counter) -> dict[str, int]:
    """What is not documented exactly once: missing (0), repeated (2+) or unknown (-1)."""
    wrong = {name: found[name] for name in expected if found[name] != 1}
    wrong |= {name: -1 for name in found if name not in expected}
    return wrong


@pytest.fixture(scope="module")
def pages():
    return documents()


def test_every_setting_is_documented_once(pages):
    assert once_each([s.name for s in SETTINGS], entries(SETTING_ROW, pages)) == {}


def test_every_cli_command_is_documented_once(pages):
    assert once_each(leaf_commands(cli_main), entries(COMMAND_ROW, pages)) == {}


def test_every_route_is_documented_once(pages, tmp_path):
    routes = served_routes(tmp_path)
    assert len(routes) > 60
    assert once_each(routes, entries(ROUTE_ENTRY, pages)) == {}


class References(HTMLParser):
    """Every address an HTML page makes a browser load or follow."""

    ATTRIBUTES = {"href", "src", "action", "formaction", "poster", "data", "srcset", "content"}

    def __init__(self):
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in self.ATTRIBUTES and value:
                self.found += re.findall(r"(?:https?:)?//[^\s,'\"]+", value)
        if tag == "meta" and ("http-equiv", "refresh") in attrs:
            self.found += [v for n, v in attrs if n == "content" and "url=" in (v or "")]


def foreign_references(site: Path) -> list[str]:
    """Addresses on another host that the built site loads or links to: HTML attributes,
    CSS ``url()`` and ``@import``. (The theme's bundled scripts name hosts only in their
    license comments; they fetch nothing.)"""
    found = []
    for path in sorted(site.rglob("*")):
        if path.suffix == ".html":
            parser = References()
            parser.feed(path.read_text(errors="replace"))
            addresses = parser.found
            addresses += re.findall(r"url\(\s*['\"]?((?:https?:)?//[^)'\"]+)",
                                    path.read_text(errors="replace"))
        elif path.suffix == ".css":
            text = path.read_text(errors="replace")
            addresses = re.findall(r"(?:url\(\s*['\"]?|@import\s+['\"])((?:https?:)?//[^)'\"]+)",
                                   text)
        else:
            continue
        found += [f"{path.relative_to(site)}: {address}" for address in addresses
                  if urlsplit(address if "//" in address[:8] else "//" + address).hostname
                  not in LOCAL_HOSTS]
    return found


def test_the_site_builds_strictly_and_offline(tmp_path):
    site = tmp_path / "site"
    built = subprocess.run([str(BIN / "mkdocs"), "build", "--strict", "--site-dir", str(site)],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stdout + built.stderr
    for page in ("index.html", "reference/api.html", "admin/settings.html",
                 "nodes/firmware-sketch.html", "operators/rollouts.html"):
        assert (site / page).is_file(), page
    api = (site / "reference" / "api.html").read_text()
    assert 'id="get-api-v1-device-commands-device_id"' in api
    assert foreign_references(site) == []
