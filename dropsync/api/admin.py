"""Admin API under ``/api/v1/admin``: managing devices and credentials; needs an admin token."""

from __future__ import annotations

from flask import Blueprint, g, jsonify

from .. import credentials, devices
from ..schemas import (
    AdminTokenCreateSchema,
    AdminTokenSchema,
    DeviceImportSchema,
    DeviceRegisterSchema,
    DeviceSchema,
    DeviceUpdateSchema,
    DeviceWithTokenSchema,
    OperatorCreateSchema,
    OperatorSchema,
    PasswordSchema,
)
from .context import bearer_token, current_hub
from .parsing import parse_body

bp = Blueprint("admin", __name__, url_prefix="/api/v1/admin")


@bp.before_request
def require_admin():
    g.admin = current_hub().admin.identify(bearer_token())


def stores():
    return current_hub().stores


def with_liveness(device: dict) -> dict:
    return {**device, "liveness": stores().liveness.get(device["id"])}


# -- devices ---------------------------------------------------------------------------
@bp.get("/devices")
def list_devices():
    found = [with_liveness(d) for d in devices.list_devices(stores())]
    return jsonify({"devices": DeviceSchema(many=True).dump(found), "count": len(found)})


@bp.post("/devices/register")
def register_device():
    body = parse_body(DeviceRegisterSchema())
    device, token = devices.register_device(stores(), body.pop("id"), actor=g.admin, **body)
    return jsonify(DeviceWithTokenSchema().dump({**with_liveness(device), "token": token})), 201


@bp.get("/devices/<device_id>")
def show_device(device_id: str):
    return jsonify(DeviceSchema().dump(with_liveness(devices.get_device(stores(), device_id))))


@bp.patch("/devices/<device_id>")
def update_device(device_id: str):
    changes = parse_body(DeviceUpdateSchema())
    device = devices.update_device(stores(), device_id, changes, actor=g.admin)
    return jsonify(DeviceSchema().dump(with_liveness(device)))


@bp.delete("/devices/<device_id>")
def delete_device(device_id: str):
    devices.delete_device(stores(), device_id, actor=g.admin)
    return jsonify({"deleted": device_id})


@bp.post("/devices/<device_id>/rotate-token")
def rotate_token(device_id: str):
    device, token = devices.rotate_token(stores(), device_id, actor=g.admin)
    return jsonify(DeviceWithTokenSchema().dump({**with_liveness(device), "token": token}))


@bp.post("/devices/import")
def import_devices():
    body = parse_body(DeviceImportSchema())
    result = devices.import_device_tokens(stores(), body["tokens"], actor=g.admin)
    return jsonify({"added": result.added, "updated": result.updated,
                    "unchanged": result.unchanged, "weak": result.weak,
                    "summary": result.summary()})


# -- admin tokens ----------------------------------------------------------------------
@bp.get("/tokens")
def list_tokens():
    tokens = credentials.list_admin_tokens(stores())
    return jsonify({"tokens": AdminTokenSchema(many=True).dump(tokens), "count": len(tokens)})


@bp.post("/tokens")
def create_token():
    body = parse_body(AdminTokenCreateSchema())
    record, token = credentials.create_admin_token(stores(), body["label"])
    return jsonify({**AdminTokenSchema().dump(record), "token": token}), 201


@bp.delete("/tokens/<token_id>")
def revoke_token(token_id: str):
    credentials.revoke_admin_token(stores(), token_id)
    return jsonify({"revoked": token_id})


# -- operators -------------------------------------------------------------------------
@bp.get("/operators")
def list_operators():
    found = credentials.list_operators(stores())
    return jsonify({"operators": OperatorSchema(many=True).dump(found), "count": len(found)})


@bp.post("/operators")
def add_operator():
    body = parse_body(OperatorCreateSchema())
    operator = credentials.add_operator(stores(), body["username"], body["password"])
    return jsonify(OperatorSchema().dump(operator)), 201


@bp.put("/operators/<username>/password")
def set_operator_password(username: str):
    body = parse_body(PasswordSchema())
    operator = credentials.set_operator_password(stores(), username, body["password"])
    return jsonify(OperatorSchema().dump(operator))
