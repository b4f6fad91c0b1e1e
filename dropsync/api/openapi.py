"""The OpenAPI 3 document, written from the views' contracts, and its local viewer.

``GET /api/v1/openapi.json`` serves the document; ``GET /api/v1/docs`` serves Swagger UI
from the installed ``swagger-ui-bundle`` package, so the viewer works with no internet.
"""

from __future__ import annotations

import re

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import (
    Blueprint,
    Flask,
    current_app,
    jsonify,
    render_template,
    request,
    send_from_directory,
)
from marshmallow import Schema, fields
from swagger_ui_bundle import swagger_ui_path

from .. import __version__
from .serving import not_on_lane_routes

bp = Blueprint("docs", __name__, url_prefix="/api/v1")

#: Which credential each blueprint's routes need; routes of other blueprints are public.
SECURITY = {"device": "deviceToken", "files": "deviceToken", "admin": "adminToken",
            "ota": "deviceToken", "metrics": "adminToken"}
#: Errors any route may answer: too large, rate limited, disk full.
COMMON_ERRORS = (413, 429, 507)
ERROR_TEXT = {
    400: "Invalid input", 401: "Missing or invalid credentials",
    403: "Credentials valid but not for this resource", 404: "Not found",
    405: "Method not allowed", 409: "Conflict with the current state",
    410: "Gone (an expired download ticket; a token claimed before)",
    413: "Body too large",
    415: "Unsupported content type", 416: "Range not satisfiable",
    429: "Too many requests; see Retry-After",
    503: "Not now (e.g. too many boards already waiting for an operator)",
    507: "The hub's disk is full",
}
PATH_PARAM = re.compile(r"<(?:(?P<converter>[a-z]+):)?(?P<name>\w+)>")
CONVERTER_TYPES = {"int": {"type": "integer", "minimum": 0}, "path": {"type": "string"}}


class ErrorDetailSchema(Schema):
    code = fields.String(required=True)
    message = fields.String(required=True)
    details = fields.Raw(allow_none=True)


class ErrorSchema(Schema):
    error = fields.Nested(ErrorDetailSchema, required=True)


def build_openapi(app: Flask) -> dict:
    spec = APISpec(title="DropSync hub API", version=__version__, openapi_version="3.0.3",
                   plugins=[MarshmallowPlugin()],
                   info={"description": "Device, files and admin API of a DropSync hub."})
    spec.components.schema("Error", schema=ErrorSchema)
    spec.components.security_scheme("deviceToken", {
        "type": "http", "scheme": "bearer",
        "description": "The device's own token (also accepted as X-Device-Token)."})
    spec.components.security_scheme("adminToken", {"type": "http", "scheme": "bearer"})
    paths: dict[str, dict] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        view = app.view_functions[rule.endpoint]
        declared = getattr(view, "contract", None)
        if declared is None:
            continue
        path = PATH_PARAM.sub(lambda m: "{" + m["name"] + "}", rule.rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            paths.setdefault(path, {})[method.lower()] = _operation(rule, view, declared)
    for path, operations in paths.items():
        spec.path(path=path, operations=operations)
    return spec.to_dict()


def _operation(rule, view, declared) -> dict:
    blueprint = rule.endpoint.partition(".")[0]
    doc = (view.__doc__ or rule.endpoint).strip()
    operation: dict = {
        "operationId": rule.endpoint.replace(".", "_"),
        "summary": doc.splitlines()[0],
        "tags": [blueprint],
        "parameters": [],
        "responses": {},
    }
    if "\n" in doc:
        operation["description"] = doc
    for match in PATH_PARAM.finditer(rule.rule):
        operation["parameters"].append({
            "in": "path", "name": match["name"], "required": True,
            "schema": CONVERTER_TYPES.get(match["converter"] or "", {"type": "string"})})
    if declared.query is not None:
        operation["parameters"].append({"in": "query", "schema": declared.query})
    if declared.body is not None:
        # An empty body is read as {}: it is required only when some field is.
        required = any(f.required for f in declared.body.fields.values())
        operation["requestBody"] = {"required": required, "content": {
            kind: {"schema": declared.body}
            for kind in ("application/json", "application/x-www-form-urlencoded")}}
    elif declared.raw_body:
        operation["requestBody"] = {"required": True, "content": {
            kind: {"schema": {"type": "string", "format": "binary"}}
            for kind in declared.raw_body}}

    success: dict = {"description": "Success"}
    if declared.produces:
        success["content"] = {declared.produces: {"schema": {"type": "string",
                                                             "format": "binary"}}}
    elif declared.response is not None:
        success["content"] = {"application/json": {"schema": declared.response}}
    operation["responses"][str(declared.status)] = success
    for status, text in declared.other_responses.items():
        operation["responses"][str(status)] = {"description": text}

    errors = set(COMMON_ERRORS) | set(declared.errors)
    if declared.body is not None or declared.query is not None:
        errors |= {400}
    if declared.body is not None:
        errors |= {415}
    if operation["parameters"]:
        errors |= {404}
    scheme = SECURITY.get(blueprint)
    if scheme:
        operation["security"] = [{scheme: []}]
        errors |= {401, 403}
    for status in sorted(errors):
        operation["responses"][str(status)] = {
            "description": ERROR_TEXT[status],
            "content": {"application/json": {"schema": "Error"}}}
    return operation


@bp.get("/openapi.json")
def openapi_document():
    document = current_app.extensions.get("dropsync.openapi")
    if document is None:  # built once, on first request: every route is registered by then
        document = current_app.extensions["dropsync.openapi"] = build_openapi(current_app)
    return jsonify(document)


#: The API viewer's page and assets: the hub's own files only, no framing, no sniffing.
#: Swagger UI sets inline styles; its script and the page's start are files.
DOCS_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "style-src 'self' 'unsafe-inline'; script-src 'self'; "
                               "connect-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


@bp.after_request
def docs_security_headers(response):
    response.headers.update(DOCS_HEADERS)
    return response


@not_on_lane_routes("it acts on the static endpoint only")
def static_security_headers(response):
    """``/static`` (the dashboard's CSS and scripts, the viewer's start): no sniffing."""
    if request.endpoint == "static":
        response.headers.update(DOCS_HEADERS)
    return response


@bp.get("/docs")
def viewer():
    return render_template("api_docs.html")


@bp.get("/docs/assets/<path:filename>")
def viewer_asset(filename: str):
    return send_from_directory(swagger_ui_path, filename, max_age=86400)
