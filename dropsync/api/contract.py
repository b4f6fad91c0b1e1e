"""Each view declares its contract once: body, query and response schemas and its status.

The same declaration validates the request, shapes the answer and writes the OpenAPI
document (``openapi.py``), so the document cannot drift from the code. It is a small
cousin of flask-smorest's ``@blp.arguments``/``@blp.response``; ours accepts JSON *or*
form bodies through one schema (the seed's curl examples post forms) and raises the hub's
own errors, so every failure keeps the one JSON error shape.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass, field

from flask import Response, current_app, request
from marshmallow import Schema

from .device_requests import json_bytes
from .parsing import parse_body, parse_query


@dataclass(frozen=True)
class Contract:
    body: Schema | None = None
    query: Schema | None = None
    response: Schema | None = None
    status: int = 200
    #: Error statuses this view answers besides the ones every route of its kind answers.
    errors: tuple[int, ...] = ()
    #: Other successful answers (e.g. 304, 206), documented with no body schema.
    other_responses: dict[int, str] = field(default_factory=dict)
    #: Content types of a body the view reads itself (uploads); documented, not parsed.
    raw_body: tuple[str, ...] = ()
    #: Content type of an answer that is not JSON (downloads).
    produces: str | None = None


def contract(*, body: type[Schema] | None = None, query: type[Schema] | None = None,
             response: type[Schema] | Schema | None = None, status: int = 200,
             errors: tuple[int, ...] = (), other_responses: dict[int, str] | None = None,
             raw_body: tuple[str, ...] = (), produces: str | None = None) -> Callable:
    """Declare a view's contract.

    The view receives ``body=`` and ``query=`` (validated dicts) when those schemas are
    given. It returns the data to dump through ``response`` (optionally with a headers
    mapping as ``(data, headers)``), or a finished ``Response`` that is passed through
    unchanged (downloads, 304s).
    """
    declared = Contract(
        body=body() if body else None,
        query=query() if query else None,
        response=response() if isinstance(response, type) else response,
        status=status, errors=errors, other_responses=dict(other_responses or {}),
        raw_body=raw_body, produces=produces)

    # Most polls send no query string: load the defaults once, not per request.
    query_defaults = declared.query.load({}) if declared.query is not None else None

    def wrap(view: Callable) -> Callable:
        @functools.wraps(view)
        def run(**kwargs):
            if declared.body is not None:
                kwargs["body"] = parse_body(declared.body)
            if declared.query is not None:
                kwargs["query"] = parse_query(declared.query) if request.query_string \
                    else copy.deepcopy(query_defaults)
            result = view(**kwargs)
            if isinstance(result, Response):
                return result
            headers = None
            if isinstance(result, tuple):
                result, headers = result
            if declared.response is not None:
                result = declared.response.dump(result)
            answer = current_app.response_class(json_bytes(current_app.json, result),
                                                status=declared.status,
                                                mimetype=current_app.json.mimetype)
            if headers:
                answer.headers.update(headers)
            return answer

        run.contract = declared
        return run

    return wrap
