"""Admin API under ``/api/v1/admin``: managing devices and credentials; needs an admin token."""

from __future__ import annotations

from flask import Blueprint, g

from ..fleet import credentials, devices
from ..schemas import (
    AdminTokenCreateSchema,
    AdminTokenListSchema,
    AdminTokenWithSecretSchema,
    DeletedSchema,
    DeviceImportResultSchema,
    DeviceImportSchema,
    DeviceListSchema,
    DeviceRegisterSchema,
    DeviceSchema,
    DeviceUpdateSchema,
    DeviceWithTokenSchema,
    OperatorCreateSchema,
    OperatorListSchema,
    OperatorSchema,
    PasswordSchema,
    RevokedSchema,
)
from .context import bearer_token, current_hub
from .contract import contract

bp = Blueprint("admin", __name__, url_prefix="/api/v1/admin")


@bp.before_request
def require_admin():
    g.admin = current_hub().admin.identify(bearer_token())


def stores():
    return current_hub().stores


def with_liveness(device: dict) -> dict:
    """A device as operators see it: with last seen, connection, inventory and pace."""
    return current_hub().pacing.fleet_view(device)


# -- devices ---------------------------------------------------------------------------
@bp.get("/devices")
@contract(response=DeviceListSchema)
def list_devices():
    """List every registered device with its liveness."""
    found = [with_liveness(d) for d in devices.list_devices(stores())]
    return {"devices": found, "count": len(found)}


@bp.post("/devices/register")
@contract(body=DeviceRegisterSchema, response=DeviceWithTokenSchema, status=201,
          errors=(409,))
def register_device(body):
    """Register a device; the answer holds its token, shown only this once."""
    device, token = devices.register_device(stores(), body.pop("id"), actor=g.admin, **body)
    return {**with_liveness(device), "token": token}


@bp.get("/devices/<device_id>")
@contract(response=DeviceSchema)
def show_device(device_id: str):
    """Show one device."""
    return with_liveness(devices.get_device(stores(), device_id))


@bp.patch("/devices/<device_id>")
@contract(body=DeviceUpdateSchema, response=DeviceSchema)
def update_device(device_id: str, body):
    """Change a device's name, type, groups or enabled flag."""
    device = devices.update_device(stores(), device_id, body, actor=g.admin)
    return with_liveness(device)


@bp.delete("/devices/<device_id>")
@contract(response=DeletedSchema)
def delete_device(device_id: str):
    """Delete a device; its token stops working at once."""
    devices.delete_device(stores(), device_id, actor=g.admin)
    return {"deleted": device_id}


@bp.post("/devices/<device_id>/rotate-token")
@contract(response=DeviceWithTokenSchema)
def rotate_token(device_id: str):
    """Give a device a new token; the old one stops working."""
    device, token = devices.rotate_token(stores(), device_id, actor=g.admin)
    return {**with_liveness(device), "token": token}


@bp.post("/devices/import")
@contract(body=DeviceImportSchema, response=DeviceImportResultSchema)
def import_devices(body):
    """Import a seed-style map of device id to token.

    Devices that already exist with another token are skipped unless ``replace``; tokens
    shorter than 16 characters are refused unless ``force``.
    """
    result = devices.import_device_tokens(stores(), body["tokens"], replace=body["replace"],
                                          force=body["force"], actor=g.admin)
    return {"added": result.added, "updated": result.updated, "skipped": result.skipped,
            "unchanged": result.unchanged, "weak": result.weak, "summary": result.summary()}


# -- admin tokens ----------------------------------------------------------------------
@bp.get("/tokens")
@contract(response=AdminTokenListSchema)
def list_tokens():
    """List admin tokens (never their secrets)."""
    tokens = credentials.list_admin_tokens(stores())
    return {"tokens": tokens, "count": len(tokens)}


@bp.post("/tokens")
@contract(body=AdminTokenCreateSchema, response=AdminTokenWithSecretSchema, status=201)
def create_token(body):
    """Create an admin token; the answer holds it, shown only this once."""
    record, token = credentials.create_admin_token(stores(), body["label"])
    return {**record, "token": token}


@bp.delete("/tokens/<token_id>")
@contract(response=RevokedSchema)
def revoke_token(token_id: str):
    """Revoke an admin token."""
    credentials.revoke_admin_token(stores(), token_id)
    return {"revoked": token_id}


# -- operators -------------------------------------------------------------------------
@bp.get("/operators")
@contract(response=OperatorListSchema)
def list_operators():
    """List dashboard operators."""
    found = credentials.list_operators(stores())
    return {"operators": found, "count": len(found)}


@bp.post("/operators")
@contract(body=OperatorCreateSchema, response=OperatorSchema, status=201, errors=(409,))
def add_operator(body):
    """Add a dashboard operator."""
    return credentials.add_operator(stores(), body["username"], body["password"])


@bp.put("/operators/<username>/password")
@contract(body=PasswordSchema, response=OperatorSchema)
def set_operator_password(username: str, body):
    """Set an operator's password."""
    return credentials.set_operator_password(stores(), username, body["password"])
