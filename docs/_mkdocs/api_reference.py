"""The API reference page, written as Markdown from the OpenAPI document the hub serves.

The document is built from the app's URL map and the views' contracts (the same
marshmallow schemas that validate each request), so the reference cannot drift from the
code. It is made when the site is built, never kept as a copy. One heading per operation,
``### `METHOD /path` {#method-path}``, gives each route one stable anchor;
``tests/test_docs.py`` checks that every route of the URL map is documented exactly once.
"""

from __future__ import annotations

import inspect
import re
import tempfile
from typing import Any

#: Sections of the page: the first path segment below /api/v1 (or the bare path's first).
SECTIONS = {"device": "Device API", "files": "Files API", "ota": "Stock updaters",
            "admin": "Admin API", "health": "Health", "metrics": "Metrics"}
CREDENTIALS = {"deviceToken": "the device's own token", "adminToken": "an admin token"}
RST_LITERAL = re.compile(r"``(.+?)``")


def build_document() -> dict:
    """The OpenAPI document of a hub created on a throw-away data directory."""
    from dropsync import create_app
    from dropsync.api.openapi import build_openapi

    with tempfile.TemporaryDirectory(prefix="dropsync-docs-") as scratch:
        app = create_app({"DATA_DIR": f"{scratch}/data", "STAGING_DIR": f"{scratch}/staging",
                          "SERVING": False, "STAGING_WATCH": False, "LOG_LEVEL": "ERROR"})
        try:
            return build_openapi(app)
        finally:
            app.extensions["dropsync"].close()


def section_of(path: str) -> str:
    parts = path.removeprefix("/api/v1").strip("/").split("/")
    return SECTIONS.get(parts[0], parts[0].capitalize())


def operation_anchor(method: str, path: str) -> str:
    """``put-api-v1-admin-staging-target-path``: what other pages link to."""
    return "-".join([method.lower(), *re.findall(r"[a-z0-9_]+", path.lower())])


def operation_heading(method: str, path: str) -> str:
    return f"### `{method.upper()} {path}` {{#{operation_anchor(method, path)}}}"


def render(document: dict) -> str:
    """The whole page."""
    schemas = document.get("components", {}).get("schemas", {})
    by_section: dict[str, list[str]] = {}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            by_section.setdefault(section_of(path), []).extend(
                _operation(method, path, operation, schemas))
    lines = [
        "# API reference",
        "",
        f"{document['info']['title']} {document['info']['version']}: written when this site was "
        "built from the OpenAPI document a hub serves at `/api/v1/openapi.json` (and shows at "
        "`/api/v1/docs`), so it lists exactly the routes the code has. Errors, credentials "
        "and rate limits: [Using the API](conventions.md).",
        "",
    ]
    order = list(SECTIONS.values())
    for section in sorted(by_section, key=lambda s: (order.index(s) if s in order else 99, s)):
        lines += [f"## {section}", "", *by_section[section]]
    lines += ["## Schemas", "", "The bodies and answers named above.", ""]
    for name in sorted(schemas):
        lines += [f"### {name}", ""]
        lines += _fields({"$ref": f"#/components/schemas/{name}"}, schemas) or ["Any JSON.", ""]
    return "\n".join(lines).rstrip() + "\n"


def _operation(method: str, path: str, operation: dict, schemas: dict) -> list[str]:
    lines = [operation_heading(method, path), ""]
    description = _text(operation.get("description") or operation.get("summary") or "")
    if description:
        lines += [description, ""]
    security = [name for item in operation.get("security", []) for name in item]
    lines += ["Credential: " + (" or ".join(CREDENTIALS.get(n, n) for n in security)
                                if security else "none") + ".", ""]
    parameters = operation.get("parameters", [])
    if parameters:
        lines += ["| Parameter | In | Type | Required |", "|---|---|---|---|"]
        lines += [f"| `{p['name']}` | {p['in']} | {_type(p.get('schema', {}), schemas)} | "
                  f"{'yes' if p.get('required') else 'no'} |" for p in parameters]
        lines.append("")
    body = operation.get("requestBody")
    if body:
        kinds = ", ".join(f"`{kind}`" for kind in body.get("content", {}))
        lines += [f"Body ({kinds}):", ""]
        schema = next(iter(body.get("content", {}).values()), {}).get("schema", {})
        lines += _fields(schema, schemas) or ["Any bytes.", ""]
    lines += ["| Status | Answer |", "|---|---|"]
    for status, answer in operation.get("responses", {}).items():
        content = answer.get("content", {})
        shape = ", ".join(f"`{kind}` {_type(c.get('schema', {}), schemas)}".rstrip()
                          for kind, c in content.items())
        lines.append(f"| {status} | {_text(answer.get('description', ''))}"
                     f"{': ' + shape if shape else ''} |")
    lines.append("")
    return lines


def _fields(schema: dict, schemas: dict) -> list[str]:
    resolved = _resolve(schema, schemas)
    properties = resolved.get("properties", {})
    if not properties:
        return []
    required = set(resolved.get("required", []))
    lines = ["| Field | Type | Required |", "|---|---|---|"]
    lines += [f"| `{name}` | {_type(prop, schemas)} | {'yes' if name in required else 'no'} |"
              for name, prop in properties.items()]
    return lines + [""]


def _resolve(schema: dict, schemas: dict) -> dict:
    ref = schema.get("$ref", "")
    return schemas.get(ref.rsplit("/", 1)[-1], {}) if ref else schema


def _type(schema: dict[str, Any], schemas: dict) -> str:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{name.lower()})"
    kind = schema.get("type", "any")
    if kind == "array":
        return f"array of {_type(schema.get('items', {}), schemas)}".strip()
    if "enum" in schema:
        return " / ".join(f"`{value}`" for value in schema["enum"])
    return kind + (f" ({schema['format']})" if "format" in schema else "")


def _text(text: str) -> str:
    """A docstring as Markdown: dedented, its reStructuredText literals as code spans."""
    return RST_LITERAL.sub(r"`\1`", inspect.cleandoc(text)).replace("|", "\\|")
