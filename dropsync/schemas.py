"""marshmallow schemas: they validate every request body and shape every response."""

from __future__ import annotations

from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, pre_load, validate

from .clock import iso_from_epoch
from .devices import DEVICE_ID_RE, GROUP_RE

USERNAME_RE = r"^[A-Za-z0-9_.@-]{1,64}$"


class GroupList(fields.Field):
    """A list of group names; form posts may send them comma-separated or repeated."""

    def _deserialize(self, value: Any, attr, data, **kwargs) -> list[str]:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list) or not all(isinstance(g, str) for g in value):
            raise ValidationError("must be a list of group names")
        for group in value:
            if not GROUP_RE.match(group):
                raise ValidationError(f"{group!r}: use 1-64 letters, digits, '-' or '_'")
        return value

    def _serialize(self, value: Any, attr, obj, **kwargs) -> list[str]:
        return list(value or [])


def _rename(data: Any, aliases: dict[str, str]) -> Any:
    """Accept the seed's field names (device_id, device_type) beside ours."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    for alias, name in aliases.items():
        if alias in data and name not in data:
            data[name] = data.pop(alias)
    return data


DEVICE_ALIASES = {"device_id": "id", "device_type": "type"}


class DeviceRegisterSchema(Schema):
    id = fields.String(required=True, validate=validate.Regexp(
        DEVICE_ID_RE, error="use 1-64 letters, digits, '-', '_' or ':'"))
    name = fields.String(validate=validate.Length(1, 100))
    type = fields.String(load_default="esp8266", validate=validate.Length(1, 32))
    groups = GroupList(load_default=list)

    @pre_load
    def accept_seed_names(self, data, **kwargs):
        return _rename(data, DEVICE_ALIASES)


class DeviceUpdateSchema(Schema):
    name = fields.String(validate=validate.Length(1, 100))
    type = fields.String(validate=validate.Length(1, 32))
    groups = GroupList()
    enabled = fields.Boolean()

    @pre_load
    def accept_seed_names(self, data, **kwargs):
        return _rename(data, DEVICE_ALIASES)


class DeviceSchema(Schema):
    id = fields.String()
    name = fields.String()
    type = fields.String()
    groups = GroupList()
    enabled = fields.Boolean()
    created_at = fields.String()
    updated_at = fields.String()
    token_rotated_at = fields.String()
    last_seen = fields.Method("dump_last_seen")
    address = fields.Method("dump_address")

    class Meta:
        unknown = EXCLUDE

    def dump_last_seen(self, device: dict) -> str | None:
        seen = device.get("liveness", {}).get("last_seen")
        return iso_from_epoch(seen) if seen else None

    def dump_address(self, device: dict) -> str | None:
        return device.get("liveness", {}).get("ip")


class DeviceWithTokenSchema(DeviceSchema):
    token = fields.String()


class DeviceImportSchema(Schema):
    tokens = fields.Dict(keys=fields.String(), values=fields.String(), required=True)


class AdminTokenCreateSchema(Schema):
    label = fields.String(load_default="admin token", validate=validate.Length(1, 100))


class AdminTokenSchema(Schema):
    id = fields.String()
    label = fields.String()
    created_at = fields.String()


class OperatorCreateSchema(Schema):
    username = fields.String(required=True, validate=validate.Regexp(
        USERNAME_RE, error="use 1-64 letters, digits, '.', '@', '-' or '_'"))
    password = fields.String(required=True, validate=validate.Length(max=1024))


class PasswordSchema(Schema):
    password = fields.String(required=True, validate=validate.Length(max=1024))


class OperatorSchema(Schema):
    username = fields.String()
    created_at = fields.String()
    password_changed_at = fields.String()


class DeviceListSchema(Schema):
    devices = fields.List(fields.Nested(DeviceSchema))
    count = fields.Integer()


class DeviceImportResultSchema(Schema):
    added = fields.List(fields.String())
    updated = fields.List(fields.String())
    unchanged = fields.List(fields.String())
    weak = fields.List(fields.String())
    summary = fields.String()


class AdminTokenListSchema(Schema):
    tokens = fields.List(fields.Nested(AdminTokenSchema))
    count = fields.Integer()


class AdminTokenWithSecretSchema(AdminTokenSchema):
    token = fields.String()


class OperatorListSchema(Schema):
    operators = fields.List(fields.Nested(OperatorSchema))
    count = fields.Integer()


class DeletedSchema(Schema):
    deleted = fields.String()


class RevokedSchema(Schema):
    revoked = fields.String()


class PingSchema(Schema):
    status = fields.String()
    device_id = fields.String()
    server_time = fields.String()


class HealthSchema(Schema):
    status = fields.String()
    version = fields.String()
    uptime_s = fields.Float()
    store = fields.Dict()
