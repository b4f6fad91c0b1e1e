"""Turning a request body or query string into validated data, through a schema.

Every JSON body goes through ``loads_bounded`` (``dropsync.jsonbounds``): nesting deeper
than ``MAX_JSON_DEPTH`` is a 400, never a ``RecursionError``. Every body, however it is
framed, is held to the size limit by ``BoundedRequest``.
"""

from __future__ import annotations

from functools import cached_property
from typing import IO, Any

from flask import Request, request
from marshmallow import Schema, ValidationError
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wsgi import LimitedStream

from ..errors import BadRequest, UnsupportedMediaType, ValidationFailed
from ..jsonbounds import JSONTooDeep, loads_bounded

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


class OverLimitStream(LimitedStream):
    """A body with no ``Content-Length`` (chunked), read up to ``limit`` bytes: one byte
    more is a 413.

    werkzeug's own limit for such bodies stops reading at the limit and reports a normal
    end, so a chunked body past the limit was silently cut short (a valid JSON prefix
    became a command, an upload was stored truncated) instead of refused.
    """

    def __init__(self, stream: IO[bytes], limit: int):
        super().__init__(stream, limit + 1, is_max=True)
        self.allowed = limit

    def readinto(self, b) -> int | None:  # type: ignore[override]
        size = super().readinto(b)
        if self._pos > self.allowed:
            raise RequestEntityTooLarge()
        return size


class BoundedRequest(Request):
    """Flask's request with the size limit held for chunked bodies too."""

    @cached_property
    def stream(self) -> IO[bytes]:
        """A server that terminates the body (granian's bridge, gunicorn) gets
        ``OverLimitStream`` with or without a Content-Length: werkzeug's own stream for
        that case refuses a body of exactly the limit (it raises on the read that finds
        the end), so an upload of exactly ``UPLOAD_MAX_BYTES`` got 413."""
        limit = self.max_content_length
        if limit is not None and "wsgi.input_terminated" in self.environ:
            if self.content_length is not None and self.content_length > limit:
                raise RequestEntityTooLarge()
            return OverLimitStream(self.environ["wsgi.input"], limit)
        return super().stream


def parse_body(schema: Schema) -> dict[str, Any]:
    """The request body (JSON or form-encoded) loaded through ``schema``: 400/415 if not."""
    mimetype = request.mimetype
    if is_json(mimetype):
        return load_json_body(request.get_data(), schema)
    if mimetype in FORM_TYPES:
        data = {key: values[0] if len(values) == 1 else values
                for key, values in request.form.lists()}
    elif not request.get_data():
        data = {}
    else:
        raise UnsupportedMediaType(
            f"send JSON (application/json) or a form post, not {mimetype or 'no type'}")
    return load_body_fields(data, schema)


def is_json(mimetype: str) -> bool:
    return mimetype == "application/json" or mimetype.endswith("+json")


def load_json_body(raw: bytes, schema: Schema) -> dict[str, Any]:
    """A JSON body's bytes loaded through ``schema`` (the lanes call this too)."""
    try:
        data = loads_bounded(raw) if raw else {}  # no body at all: no fields
    except JSONTooDeep as exc:
        raise BadRequest(f"request body is {exc}", {"max_depth": exc.max_depth},
                         code="json_too_deep") from None
    except ValueError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}",
                         code="invalid_json") from None
    return load_body_fields(data, schema)


def load_body_fields(data: Any, schema: Schema) -> dict[str, Any]:
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
