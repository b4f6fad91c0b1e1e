"""Enrollment under ``/api/v1/enroll``: boards that have no token yet.

The enrollment key (in the body) is the credential of ``POST /api/v1/enroll``; the
board's secret is that of ``POST /api/v1/enroll/claim``, which hands out the device
token once. Both are rate limited per client address (``RATE_LIMIT_ENROLL``) before any
work is done, so a flood costs a counter, not a disk write. The rules are
``fleet/enrollment.py``.
"""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, make_response, request
from marshmallow import Schema

from ..fleet.enrollment import ENROLL_BODY_MAX_BYTES
from ..fleet.enrollment_schemas import (
    ClaimAnswerSchema,
    ClaimSchema,
    EnrollAnswerSchema,
    EnrollSchema,
)
from .context import current_hub
from .contract import contract
from .limits import client_address

bp = Blueprint("enroll", __name__, url_prefix="/api/v1/enroll")


@bp.before_request
def limit_per_address():
    request.max_content_length = ENROLL_BODY_MAX_BYTES  # a board's request is small
    limit = current_app.extensions["dropsync.enroll_limit"]
    if limit is not None and not limit.count(client_address()):
        limit.refuse(client_address())


def answered(result: dict, schema: type[Schema]):
    """202 while the board waits for an operator, 200 once it may go on."""
    if result.get("state") == "pending":
        return make_response(jsonify(schema().dump(result)), 202)
    return result


@bp.post("")
@contract(body=EnrollSchema, response=EnrollAnswerSchema,
          errors=(401, 403, 404, 409, 429, 503),
          other_responses={202: "Pending: ask again after retry_after_s."})
def enroll(body):
    """A board with no token asks to join: pending until an operator accepts it (or at
    once when its MAC is preauthorised); then claim the token."""
    return answered(current_hub().enrollment.enroll(body, client_address()), EnrollAnswerSchema)


@bp.post("/claim")
@contract(body=ClaimSchema, response=ClaimAnswerSchema, errors=(403, 404, 410, 429),
          other_responses={202: "Not accepted yet: ask again after retry_after_s."})
def claim(body):
    """An accepted board shows its secret and gets its device token, once."""
    return answered(current_hub().enrollment.claim(body["hardware_id"], body["secret"],
                                                   client_address()), ClaimAnswerSchema)
