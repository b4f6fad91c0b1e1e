"""MkDocs hooks: the pages the site takes from elsewhere, made at build time.

- ``index.md`` is the repository's ``README.md``, what a newcomer reads first;
- ``nodes/firmware-sketch.md`` is ``firmware/README.md``, which stays beside the sketch;
- ``reference/api.md`` is written from the hub's OpenAPI document (``api_reference.py``).

Pages are written to be read as files in the repository too, so their links name
repository paths (``../admin/serving.md``, ``firmware/README.md``); links to the files the
site includes under another name are rewritten to that name here.
"""

from __future__ import annotations

import posixpath
import re
import sys
from pathlib import Path

from mkdocs.structure.files import File

sys.path.insert(0, str(Path(__file__).resolve().parent))
import api_reference  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
#: Repository files the site includes, by their page in the site.
INCLUDED = {"index.md": "README.md", "nodes/firmware-sketch.md": "firmware/README.md"}
API_PAGE = "reference/api.md"
LINK = re.compile(r"\]\((?!https?:|mailto:|#)([^)#\s]+)(#[^)\s]*)?\)")


def on_config(config):
    from dropsync import __version__

    config.extra["version"] = __version__
    return config


def on_files(files, config):
    for page, source in INCLUDED.items():
        files.append(File.generated(config, page, content=(ROOT / source).read_text()))
    files.append(File.generated(config, API_PAGE,
                                content=api_reference.render(api_reference.build_document())))
    return files


def on_page_markdown(markdown, page, config, files):
    """Links as the repository names them, made into links between the site's pages."""
    page_uri = page.file.src_uri
    source = INCLUDED.get(page_uri, f"docs/{page_uri}")
    site_of = {repo: site for site, repo in INCLUDED.items()}

    def relink(match: re.Match) -> str:
        target = posixpath.normpath(posixpath.join(posixpath.dirname(source), match[1]))
        if target in site_of:
            site_path = site_of[target]
        elif target.startswith("docs/"):
            site_path = target.removeprefix("docs/")
        else:
            return match[0]
        relative = posixpath.relpath(site_path, posixpath.dirname(page_uri) or ".")
        return f"]({relative}{match[2] or ''})"

    return LINK.sub(relink, markdown)
