"""Admin routes for enrollment: keys, the boards waiting to join, accepting and rejecting
them (one or many), and the preauthorised MACs.

They live on the admin blueprint (``/api/v1/admin``, admin token); the rules are in
``fleet/enrollment.py``.
"""

from __future__ import annotations

from flask import g

from ..fleet.enrollment_schemas import (
    AcceptSchema,
    EnrollKeyCreateSchema,
    EnrollKeyListSchema,
    EnrollKeySchema,
    EnrollKeyWithSecretSchema,
    EnrollmentListQuerySchema,
    EnrollmentListSchema,
    PreauthorizedBoardSchema,
    PreauthorizedListSchema,
    PreauthorizeSchema,
    RejectSchema,
)
from .admin import bp
from .context import current_hub
from .contract import contract


def enrollment():
    return current_hub().enrollment


@bp.get("/enroll-keys")
@contract(response=EnrollKeyListSchema)
def list_enroll_keys():
    """Enrollment keys (never the keys themselves: only their hashes are kept)."""
    keys = enrollment().list_keys()
    return {"keys": keys, "count": len(keys)}


@bp.post("/enroll-keys")
@contract(body=EnrollKeyCreateSchema, response=EnrollKeyWithSecretSchema, status=201)
def create_enroll_key(body):
    """A new enrollment key, for a group or a site; the answer shows it this once."""
    record, key = enrollment().create_key(body["group"], body["site"], body["label"])
    return {**record, "key": key}


@bp.delete("/enroll-keys/<key_id>")
@contract(response=EnrollKeySchema, errors=(404,))
def revoke_enroll_key(key_id: str):
    """Revoke an enrollment key: boards using it get 401 from then on."""
    return enrollment().revoke_key(key_id)


@bp.get("/enrollments")
@contract(query=EnrollmentListQuerySchema, response=EnrollmentListSchema)
def list_enrollments(query):
    """Boards that enrolled: pending ones wait for an operator."""
    found = enrollment().list(query.get("state"))
    return {"enrollments": found, "count": len(found)}


@bp.post("/enrollments/accept")
@contract(body=AcceptSchema, response=EnrollmentListSchema, errors=(404, 409))
def accept_enrollments(body):
    """Accept pending boards (all or none): each becomes a device; ``device_id`` and
    ``name`` only with one board."""
    accepted = enrollment().accept(body["hardware_ids"], device_id=body["device_id"],
                                   name=body["name"], groups=body["groups"], actor=g.admin)
    return {"enrollments": accepted, "count": len(accepted)}


@bp.post("/enrollments/reject")
@contract(body=RejectSchema, response=EnrollmentListSchema, errors=(404, 409))
def reject_enrollments(body):
    """Reject pending boards (all or none): their enrollments and claims get 403."""
    rejected = enrollment().reject(body["hardware_ids"], actor=g.admin)
    return {"enrollments": rejected, "count": len(rejected)}


@bp.get("/preauthorized")
@contract(response=PreauthorizedListSchema)
def list_preauthorized():
    """MACs accepted as they arrive."""
    boards = enrollment().list_preauthorized()
    return {"boards": boards, "count": len(boards)}


@bp.post("/preauthorized")
@contract(body=PreauthorizeSchema, response=PreauthorizedListSchema, status=201)
def preauthorize(body):
    """Add MACs (with groups, a name, an id) to accept on arrival, all or none."""
    boards = enrollment().preauthorize(body["boards"], actor=g.admin)
    return {"boards": boards, "count": len(boards)}


@bp.delete("/preauthorized/<hardware_id>")
@contract(response=PreauthorizedBoardSchema, errors=(400, 404))
def unpreauthorize(hardware_id: str):
    """Take a MAC off the list."""
    return enrollment().unpreauthorize(hardware_id)
