"""marshmallow schemas of enrollment: what a board sends, what an operator asks for, and
what both are answered. The routes validate with them and the OpenAPI document is
generated from them."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from .enrollment import STATES

HEX64 = validate.Regexp(r"^[0-9a-fA-F]{64}$", error="64 hex digits")


class EnrollSchema(Schema):
    enroll_key = fields.String(required=True, validate=validate.Length(1, 200))
    hardware_id = fields.String(required=True, validate=validate.Length(1, 64),
                                metadata={"description": "The board's MAC, a4:cf:12:00:00:01."})
    board = fields.String(load_default="esp8266", validate=validate.Length(1, 32))
    firmware_version = fields.String(load_default=None, allow_none=True,
                                     validate=validate.Length(max=64))
    sketch_md5 = fields.String(load_default=None, allow_none=True,
                               validate=validate.Regexp(r"^[0-9a-fA-F]{32}$",
                                                        error="32 hex digits"))
    name_hint = fields.String(load_default=None, allow_none=True,
                              validate=validate.Length(max=64))
    secret_sha256 = fields.String(required=True, validate=HEX64,
                                  metadata={"description": "SHA-256 of the board's secret "
                                                           "(its 64 hex characters)."})


class EnrollAnswerSchema(Schema):
    state = fields.String(metadata={"enum": ["pending", "accepted"]})
    retry_after_s = fields.Integer(metadata={"description": "With pending: ask again then."})
    device_id = fields.String(metadata={"description": "With accepted: claim the token."})


class ClaimSchema(Schema):
    hardware_id = fields.String(required=True, validate=validate.Length(1, 64))
    secret = fields.String(required=True, validate=HEX64,
                           metadata={"description": "The board's secret, 64 hex characters."})


class ClaimAnswerSchema(Schema):
    device_id = fields.String()
    token = fields.String()
    hub_time = fields.Integer()
    state = fields.String(metadata={"description": "pending: not accepted yet."})
    retry_after_s = fields.Integer()


class EnrollKeyCreateSchema(Schema):
    group = fields.String(load_default=None, allow_none=True, validate=validate.Length(1, 64),
                          metadata={"description": "Boards enrolled with it join this group "
                                                   "when accepted."})
    site = fields.String(load_default=None, allow_none=True, validate=validate.Length(1, 64))
    label = fields.String(load_default="", validate=validate.Length(max=100))


class EnrollKeySchema(Schema):
    id = fields.String()
    label = fields.String()
    group = fields.String(allow_none=True)
    site = fields.String(allow_none=True)
    created_at = fields.String()


class EnrollKeyWithSecretSchema(EnrollKeySchema):
    key = fields.String(metadata={"description": "Shown this once."})


class EnrollKeyListSchema(Schema):
    keys = fields.List(fields.Nested(EnrollKeySchema))
    count = fields.Integer()


class RefusalSchema(Schema):
    at = fields.String()
    why = fields.String()
    address = fields.String(allow_none=True)


class EnrollmentSchema(Schema):
    hardware_id = fields.String()
    state = fields.String(metadata={"enum": list(STATES)})
    board = fields.String()
    firmware_version = fields.String(allow_none=True)
    sketch_md5 = fields.String(allow_none=True)
    name_hint = fields.String(allow_none=True)
    secret_fingerprint = fields.String()
    address = fields.String(allow_none=True)
    group = fields.String(allow_none=True)
    site = fields.String(allow_none=True)
    key_id = fields.String()
    first_seen = fields.String()
    last_seen = fields.String()
    device_id = fields.String(allow_none=True)
    re_enrollment_of = fields.String(allow_none=True)
    refusals = fields.List(fields.Nested(RefusalSchema))


class EnrollmentListQuerySchema(Schema):
    state = fields.String(validate=validate.OneOf(STATES))


class EnrollmentListSchema(Schema):
    enrollments = fields.List(fields.Nested(EnrollmentSchema))
    count = fields.Integer()


class AcceptSchema(Schema):
    hardware_ids = fields.List(fields.String(validate=validate.Length(1, 64)),
                               required=True, validate=validate.Length(1, 1000))
    device_id = fields.String(load_default=None, allow_none=True,
                              metadata={"description": "With one board only."})
    name = fields.String(load_default=None, allow_none=True, validate=validate.Length(1, 100))
    groups = fields.List(fields.String(), load_default=None, allow_none=True,
                         metadata={"description": "Default: the enrollment key's group."})


class RejectSchema(Schema):
    hardware_ids = fields.List(fields.String(validate=validate.Length(1, 64)),
                               required=True, validate=validate.Length(1, 1000))


class PreauthorizedBoardSchema(Schema):
    hardware_id = fields.String(required=True, validate=validate.Length(1, 64))
    groups = fields.List(fields.String(), load_default=list)
    name = fields.String(load_default=None, allow_none=True, validate=validate.Length(1, 100))
    device_id = fields.String(load_default=None, allow_none=True)
    added_at = fields.String(dump_only=True)


class PreauthorizeSchema(Schema):
    boards = fields.List(fields.Nested(PreauthorizedBoardSchema), required=True,
                         validate=validate.Length(1, 10_000))


class PreauthorizedListSchema(Schema):
    boards = fields.List(fields.Nested(PreauthorizedBoardSchema))
    count = fields.Integer()
