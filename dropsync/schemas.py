"""marshmallow schemas: they validate every request body and shape every response."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from marshmallow import (
    EXCLUDE,
    INCLUDE,
    Schema,
    ValidationError,
    fields,
    post_load,
    pre_load,
    validate,
)

from .clock import unix_seconds
from .fleet.credentials import MIN_PASSWORD_LENGTH
from .fleet.devices import DEVICE_ID_RE, GROUP_RE
from .fleet.messages import LEVELS
from .jsonbounds import JSONTooDeep, loads_bounded
from .relay.commands import STATES

USERNAME_RE = r"^[A-Za-z0-9_.@-]{1,64}$"


class FullMatch(validate.Regexp):
    """``validate.Regexp`` that must match the whole value: its ``match`` and a ``$``
    let ``"admin\\n"`` through. The pattern still documents the rule in OpenAPI."""

    def __call__(self, value: str) -> str:
        if self.regex.fullmatch(value) is None:
            raise ValidationError(self._format_error(value))
        return value


class GroupList(fields.Field):
    """A list of group names; form posts may send them comma-separated or repeated."""

    def __init__(self, **kwargs):
        kwargs["metadata"] = {"type": "array", "items": {"type": "string",
                                                         "pattern": GROUP_RE.pattern},
                              **kwargs.get("metadata", {})}
        super().__init__(**kwargs)

    def _deserialize(self, value: Any, attr, data, **kwargs) -> list[str]:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list) or not all(isinstance(g, str) for g in value):
            raise ValidationError("must be a list of group names")
        for group in value:
            if not GROUP_RE.fullmatch(group):
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
    id = fields.String(required=True, validate=FullMatch(
        DEVICE_ID_RE, error="use 1-64 letters, digits, '-', '_' or ':'"))
    name = fields.String(validate=validate.Length(1, 100))
    type = fields.String(load_default="esp8266", validate=validate.Length(1, 32))
    groups = GroupList(load_default=list)

    @pre_load
    def accept_seed_names(self, data, **kwargs):
        return _rename(data, DEVICE_ALIASES)


POLL_INTERVAL = validate.Range(1, 86_400)


class DeviceUpdateSchema(Schema):
    name = fields.String(validate=validate.Length(1, 100))
    type = fields.String(validate=validate.Length(1, 32))
    groups = GroupList()
    enabled = fields.Boolean()
    poll_interval_s = fields.Integer(allow_none=True, validate=POLL_INTERVAL,
                                     metadata={"description": "null: use the group's or "
                                               "the hub's interval"})

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
    poll_interval_s = fields.Integer(allow_none=True)
    effective_poll_interval_s = fields.Integer()
    last_seen = fields.String(allow_none=True)
    address = fields.String(allow_none=True)
    connection = fields.String(metadata={"enum": ["online", "overdue", "offline"]})
    heartbeat_at = fields.String(allow_none=True)
    inventory = fields.Dict()

    class Meta:
        unknown = EXCLUDE


class DeviceWithTokenSchema(DeviceSchema):
    token = fields.String()


class DeviceImportSchema(Schema):
    tokens = fields.Dict(keys=fields.String(), values=fields.String(), required=True)
    replace = fields.Boolean(load_default=False, metadata={
        "description": "replace the tokens of devices that already exist (default: skip "
                       "them)"})
    force = fields.Boolean(load_default=False, metadata={
        "description": "accept tokens shorter than 16 characters"})


class AdminTokenCreateSchema(Schema):
    label = fields.String(load_default="admin token", validate=validate.Length(1, 100))


class AdminTokenSchema(Schema):
    id = fields.String()
    label = fields.String()
    created_at = fields.String()


#: What the OpenAPI document says of a password: ``credentials.check_password_policy``
#: enforces the minimum (one rule; stated here from its constant).
PASSWORD_RULE = {"minLength": MIN_PASSWORD_LENGTH,
                 "description": f"at least {MIN_PASSWORD_LENGTH} characters"}


class OperatorCreateSchema(Schema):
    username = fields.String(required=True, validate=FullMatch(
        USERNAME_RE, error="use 1-64 letters, digits, '.', '@', '-' or '_'"))
    password = fields.String(required=True, validate=validate.Length(max=1024),
                             metadata=PASSWORD_RULE)


class PasswordSchema(Schema):
    password = fields.String(required=True, validate=validate.Length(max=1024),
                             metadata=PASSWORD_RULE)


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
    skipped = fields.List(fields.String(), metadata={
        "description": "existing devices with another token, left alone (see replace)"})
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


class UnixSeconds(fields.Field):
    """A time in a device-facing answer: whole Unix seconds (stored as ISO 8601)."""

    def __init__(self, **kwargs):
        super().__init__(metadata={"type": "integer", "description": "Unix seconds",
                                   **kwargs.pop("metadata", {})}, **kwargs)

    def _serialize(self, value: Any, attr, obj, **kwargs) -> int | None:
        return unix_seconds(value)


class PingSchema(Schema):
    status = fields.String()
    device_id = fields.String()
    server_time = UnixSeconds(metadata={"description": "Unix seconds: a clock for nodes "
                                        "with no NTP"})


class HealthSchema(Schema):
    status = fields.String()
    version = fields.String()
    uptime_s = fields.Float()
    store = fields.Dict()


class StatsSchema(Schema):
    version = fields.String()
    uptime_s = fields.Float()
    devices = fields.Dict()
    commands = fields.Dict()
    history = fields.Dict()
    store = fields.Dict()


# -- fields shared by the command and message schemas -----------------------------------
class JSONObject(fields.Field):
    """A JSON object; form posts send it as a JSON string. ``null`` means none: ``{}``."""

    def deserialize(self, value: Any, attr=None, data=None, **kwargs) -> dict:
        return super().deserialize({} if value is None else value, attr, data, **kwargs)

    def _deserialize(self, value: Any, attr, data, **kwargs) -> dict:
        if isinstance(value, str):
            try:
                value = loads_bounded(value) if value.strip() else {}
            except JSONTooDeep as exc:
                raise ValidationError(f"{exc}") from None
            except ValueError:
                raise ValidationError("must be a JSON object (form posts: a JSON string)") \
                    from None
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ValidationError("must be a JSON object")
        return value

    def _serialize(self, value: Any, attr, obj, **kwargs) -> Any:
        return value


#: Unix seconds of 9999-12-31T23:59:59Z: the last moment the API can write back as ISO.
LAST_MOMENT = 253_402_300_799


class Timestamp(fields.Field):
    """A moment as ISO 8601 or Unix seconds (from 1970 to 9999); loads as Unix seconds."""

    def __init__(self, **kwargs):
        metadata = {"oneOf": [{"type": "string", "format": "date-time"},
                              {"type": "number", "minimum": 0, "maximum": LAST_MOMENT}],
                    **kwargs.pop("metadata", {})}
        super().__init__(metadata=metadata, **kwargs)

    def _deserialize(self, value: Any, attr, data, **kwargs) -> float:
        moment = self._moment(value)
        if not 0 <= moment <= LAST_MOMENT:  # also refuses NaN
            raise ValidationError("must be between 1970 and 9999")
        return moment

    @staticmethod
    def _moment(value: Any) -> float:
        if isinstance(value, bool):
            raise ValidationError("must be ISO 8601 or Unix seconds")
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
            try:
                moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                raise ValidationError("must be ISO 8601 or Unix seconds") from None
            if moment.tzinfo is None:
                raise ValidationError("give a time zone (e.g. 'Z') or Unix seconds")
            return moment.timestamp()
        raise ValidationError("must be ISO 8601 or Unix seconds")


class NameList(fields.Field):
    """A list of strings; query strings and forms may send them comma-separated."""

    def __init__(self, choices: tuple[str, ...] | None = None, **kwargs):
        items = {"type": "string", **({"enum": list(choices)} if choices else {})}
        metadata = {"type": "array", "items": items, **kwargs.pop("metadata", {})}
        super().__init__(metadata=metadata, **kwargs)
        self.choices = choices

    def _deserialize(self, value: Any, attr, data, **kwargs) -> list[str]:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValidationError("must be a list of names")
        if self.choices:
            wrong = [v for v in value if v not in self.choices]
            if wrong:
                raise ValidationError(f"unknown: {', '.join(wrong)}; "
                                      f"use {', '.join(self.choices)}")
        return value


# -- commands ----------------------------------------------------------------------------
COMMAND_NAME = FullMatch(r"^[A-Za-z0-9_.:-]{1,64}$",
                         error="use 1-64 letters, digits, '.', '_', ':' or '-'")
MAX_EXPIRY_S = 10 * 365 * 86_400
COMMAND_ALIASES = {"command": "name", "params": "args", "parameters": "args"}


class DeviceCommandCreateSchema(Schema):
    name = fields.String(required=True, validate=COMMAND_NAME,
                         metadata={"description": "reboot, sync, upload-log or your own"})
    args = JSONObject(load_default=dict)
    priority = fields.Integer(load_default=50, validate=validate.Range(0, 100),
                              metadata={"description": "0-100; higher is handed out first"})
    expires_in_s = fields.Float(validate=validate.Range(min=0, max=MAX_EXPIRY_S,
                                                        min_inclusive=False),
                                metadata={"description": "seconds, more than 0; at most "
                                          "ten years; not with expires_at",
                                          "exclusiveMinimum": True})
    expires_at = Timestamp(metadata={"description": "ISO 8601 or Unix seconds; not with "
                                     "expires_in_s"})

    @pre_load
    def accept_seed_names(self, data, **kwargs):
        return _rename(data, COMMAND_ALIASES)

    @post_load
    def one_expiry(self, data, **kwargs):
        if "expires_in_s" in data and "expires_at" in data:
            raise ValidationError("give expires_in_s or expires_at, not both")
        return data


class CommandCreateSchema(DeviceCommandCreateSchema):
    target = fields.String(required=True, validate=validate.Length(1, 80), metadata={
        "description": "a device id, 'group:<name>' (or 'group-<name>'), or 'all'"})


class DeliverySchema(Schema):
    id = fields.Integer()
    name = fields.String()
    args = fields.Dict()
    priority = fields.Integer()
    target = fields.String()
    device_id = fields.String()
    state = fields.String(metadata={"enum": list(STATES)})
    attempts = fields.Integer()
    created_at = fields.String()
    created_by = fields.String(allow_none=True)
    expires_at = fields.String(allow_none=True)
    delivered_at = fields.String(allow_none=True)
    lease_expires_at = fields.String(allow_none=True)
    reason = fields.String(allow_none=True)
    result = fields.Raw(allow_none=True)
    ended_at = fields.String(allow_none=True)
    ended_by = fields.String(allow_none=True)
    seq = fields.Integer(allow_none=True, metadata={"description": "history position"})


class CommandSchema(Schema):
    id = fields.Integer()
    name = fields.String()
    args = fields.Dict()
    priority = fields.Integer()
    target = fields.String()
    created_at = fields.String()
    created_by = fields.String(allow_none=True)
    expires_at = fields.String(allow_none=True)
    counts = fields.Dict(keys=fields.String(), values=fields.Integer())
    deliveries = fields.List(fields.Nested(DeliverySchema))


class CommandListSchema(Schema):
    commands = fields.List(fields.Nested(CommandSchema))
    count = fields.Integer()


class CancelSchema(Schema):
    device_id = fields.String(validate=validate.Length(1, 64),
                              metadata={"description": "cancel only this device's copy"})


class PageQuerySchema(Schema):
    before = fields.Integer(validate=validate.Range(min=1),
                            metadata={"description": "the next_before of the previous page"})
    limit = fields.Integer(load_default=50, validate=validate.Range(1, 500))


class DeviceCommandsQuerySchema(PageQuerySchema):
    state = NameList(choices=STATES, load_default=list,
                     metadata={"description": "comma-separated states"})


class DeviceCommandsSchema(Schema):
    device_id = fields.String()
    commands = fields.List(fields.Nested(DeliverySchema))
    next_before = fields.Integer(allow_none=True)


class PollQuerySchema(Schema):
    limit = fields.Integer(load_default=5, validate=validate.Range(1, 20))


class HandoutSchema(Schema):
    id = fields.Integer()
    name = fields.String()
    args = fields.Dict()
    priority = fields.Integer()
    attempt = fields.Integer(metadata={"description": "1 the first time this device got "
                                       "it; kept across hub restarts"})
    lease_s = fields.Float()
    expires_at = UnixSeconds(allow_none=True)


#: Seconds until the next poll: whole seconds, the POLL_JITTER spread kept by rounding
#: up or down at random (plain rounding took a 5 s interval's spread away).
NEXT_POLL = {"description": "whole seconds until the next poll, spread by the hub's "
                            "jitter"}


class PollSchema(Schema):
    commands = fields.List(fields.Nested(HandoutSchema))
    next_poll_s = fields.Integer(metadata=NEXT_POLL)
    server_time = UnixSeconds(metadata={"description": "Unix seconds: a clock for nodes "
                                        "with no NTP"})


class CompleteSchema(Schema):
    command_id = fields.Integer(required=True, validate=validate.Range(min=0))
    success = fields.Boolean(load_default=True)
    result = fields.Raw(load_default=None, allow_none=True)
    error = fields.String(validate=validate.Length(max=500))

    @pre_load
    def accept_other_names(self, data, **kwargs):
        data = _rename(data, {"id": "command_id", "message": "error"})
        if isinstance(data, dict) and "status" in data and "success" not in data:
            status = str(data.pop("status")).lower()
            if status not in ("completed", "success", "ok", "failed", "error"):
                raise ValidationError({"status": ["use completed or failed"]})
            data["success"] = status in ("completed", "success", "ok")
        return data


class CompletionSchema(Schema):
    command_id = fields.Integer()
    state = fields.String()
    duplicate = fields.Boolean(metadata={"description": "already recorded; nothing changed"})
    ended_at = UnixSeconds()


# -- messages ----------------------------------------------------------------------------
class MessageCreateSchema(Schema):
    level = fields.String(load_default="info", validate=validate.OneOf(LEVELS))
    text = fields.String(required=True, validate=validate.Length(1, 2000))
    data = fields.Raw(load_default=None, allow_none=True, metadata={
        "description": "any JSON, at most MESSAGE_DATA_MAX_BYTES (4096 unless set) as "
                       "compact JSON; more is a 400"})
    device_time = fields.Raw(load_default=None, allow_none=True, metadata={
        "description": "the device's own timestamp, kept as sent",
        "oneOf": [{"type": "string", "maxLength": 64}, {"type": "number"}],
        "nullable": True})

    @pre_load
    def accept_other_names(self, data, **kwargs):
        data = _rename(data, {"message": "text", "timestamp": "device_time"})
        if isinstance(data, dict) and isinstance(data.get("level"), str):
            level = data["level"].lower()
            data["level"] = {"warn": "warning", "err": "error"}.get(level, level)
        return data

    @post_load
    def bounded_device_time(self, data, **kwargs):
        value = data.get("device_time")
        if value is not None and (not isinstance(value, str | int | float)
                                  or isinstance(value, bool) or len(str(value)) > 64):
            raise ValidationError({"device_time": ["a number or a string of 64 or fewer"]})
        return data


class MessageStoredSchema(Schema):
    seq = fields.Integer()
    received_at = UnixSeconds()


class MessageSchema(Schema):
    seq = fields.Integer()
    device_id = fields.String()
    level = fields.String()
    text = fields.String()
    data = fields.Raw(allow_none=True)
    device_time = fields.Raw(allow_none=True)
    received_at = fields.String()


class MessagesQuerySchema(PageQuerySchema):
    after = fields.Integer(validate=validate.Range(min=0),
                           metadata={"description": "only messages after this seq (follow)"})
    level = fields.String(validate=validate.OneOf(LEVELS))
    since = Timestamp(metadata={"description": "ISO 8601 or Unix seconds (hub time)"})
    until = Timestamp(metadata={"description": "ISO 8601 or Unix seconds (hub time)"})


class MessagePageSchema(Schema):
    messages = fields.List(fields.Nested(MessageSchema))
    count = fields.Integer()
    next_before = fields.Integer(allow_none=True)


# -- heartbeat and status ----------------------------------------------------------------
ATTRIBUTE_LIMIT = 32


class HeartbeatSchema(Schema):
    """Known fields are checked; any other field is an attribute for the inventory."""

    firmware_version = fields.String(validate=validate.Length(max=64))
    uptime_s = fields.Integer(validate=validate.Range(min=0))
    #: At most what the health series stores (a signed 32-bit array): a larger value was
    #: taken in and then broke the series' checkpoint at close.
    free_heap = fields.Integer(validate=validate.Range(min=0, max=2**31 - 1))
    rssi = fields.Integer(validate=validate.Range(-150, 0))
    ip = fields.String(validate=validate.Length(max=45))
    attributes = fields.Dict(keys=fields.String(validate=validate.Length(1, 64)),
                             load_default=dict)

    class Meta:
        unknown = INCLUDE

    @pre_load
    def accept_seed_names(self, data, **kwargs):
        return _rename(data, {"version": "firmware_version", "uptime": "uptime_s",
                              "heap": "free_heap"})

    @post_load
    def gather_attributes(self, data, **kwargs):
        attributes = dict(data.pop("attributes", {}))
        for key in [k for k in data if k not in self.fields]:
            attributes[key] = data.pop(key)
        if len(attributes) > ATTRIBUTE_LIMIT:
            raise ValidationError({"attributes": [f"at most {ATTRIBUTE_LIMIT}"]})
        for key, value in attributes.items():
            if len(key) > 64 or not (value is None or isinstance(value, bool | int | float)
                                     or (isinstance(value, str) and len(value) <= 256)):
                raise ValidationError({key: ["attributes are numbers, booleans or "
                                             "strings of 256 or fewer characters"]})
        data["attributes"] = attributes
        return data


class HeartbeatAckSchema(Schema):
    status = fields.String()
    next_poll_s = fields.Integer(metadata=NEXT_POLL)
    server_time = UnixSeconds()


class DeviceStatusSchema(Schema):
    device_id = fields.String()
    name = fields.String()
    groups = GroupList()
    connection = fields.String()
    last_seen = UnixSeconds(allow_none=True)
    pending_commands = fields.Integer(metadata={"description": "waiting to be handed out"})
    leased_commands = fields.Integer(metadata={
        "description": "handed out (delivered), not yet completed; handed out again if "
                       "their lease lapses"})
    next_poll_s = fields.Integer(metadata=NEXT_POLL)
    server_time = UnixSeconds()


# -- groups ------------------------------------------------------------------------------
class GroupSchema(Schema):
    name = fields.String()
    description = fields.String(allow_none=True)
    poll_interval_s = fields.Integer(allow_none=True)
    devices = fields.List(fields.String())
    count = fields.Integer()


class GroupListSchema(Schema):
    groups = fields.List(fields.Nested(GroupSchema))
    count = fields.Integer()


class GroupSettingsSchema(Schema):
    description = fields.String(allow_none=True, validate=validate.Length(max=200))
    poll_interval_s = fields.Integer(allow_none=True, validate=POLL_INTERVAL)


class GroupMembersSchema(Schema):
    devices = NameList(required=True, validate=validate.Length(min=1, max=1000))
