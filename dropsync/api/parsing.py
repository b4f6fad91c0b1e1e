"""Turning a request body or query string into validated data, through a schema."""

from __future__ import annotations

import json
from typing import Any

from flask import request
from marshmallow import Schema, ValidationError

from ..errors import BadRequest, UnsupportedMediaType, ValidationFailed

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


def parse_body(schema: Schema) -> dict[str, Any]:
    """The request body (JSON or form-encoded) loaded through ``schema``: 400/415 if not."""
    mimetype = request.mimetype
    if mimetype == "application/json" or mimetype.endswith("+json"):
        raw = request.get_data()
        try:
            data = json.loads(raw) if raw else {}  # no body at all: no fields
        except ValueError as exc:
            raise BadRequest(f"request body is not valid JSON: {exc}",
                             code="invalid_json") from None
    elif mimetype in FORM_TYPES:
        data = {key: values[0] if len(values) == 1 else values
                for key, values in request.form.lists()}
    elif not request.get_data():
        data = {}
    else:
        raise UnsupportedMediaType(
            f"send JSON (application/json) or a form post, not {mimetype or 'no type'}")
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object", code="invalid_json")
    try:
        return schema.load(data)
    except ValidationError as exc:
        raise ValidationFailed("request body is invalid", exc.messages) from None


def parse_query(schema: Schema) -> dict[str, Any]:
    """The query string loaded through ``schema`` (repeated keys become lists): 400 if not."""
    data = {key: values[0] if len(values) == 1 else values
            for key, values in request.args.lists()}
    try:
        return schema.load(data)
    except ValidationError as exc:
        raise ValidationFailed("query string is invalid", exc.messages) from None
