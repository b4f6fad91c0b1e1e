"""marshmallow schemas of rollouts: what an operator asks for and what a rollout shows.

The admin API validates with them and the OpenAPI document is generated from them.
"""

from __future__ import annotations

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from .rollouts import DEFAULTS, FILTER_FIELDS, STATES, TARGET_KINDS, WAVE_STATES, WINDOW_PATTERN


class RolloutTargetSchema(Schema):
    kind = fields.String(required=True, validate=validate.OneOf(TARGET_KINDS))
    device = fields.String(validate=validate.Length(1, 64),
                           metadata={"description": "With kind device."})
    group = fields.String(validate=validate.Length(1, 64),
                          metadata={"description": "With kind group."})
    filter = fields.Dict(keys=fields.String(validate=validate.OneOf(FILTER_FIELDS)),
                         values=fields.String(validate=validate.Length(1, 64)),
                         metadata={"description": "With kind filter: inventory fields "
                                                  "(type, firmware_version, group)."})

    @validates_schema
    def names_what_its_kind_needs(self, data, **kwargs):
        needed = {"device": "device", "group": "group", "filter": "filter"}.get(data["kind"])
        if needed and not data.get(needed):
            raise ValidationError(f"a {data['kind']} target needs {needed}", needed)


class RolloutCreateSchema(Schema):
    package = fields.String(required=True, validate=validate.Length(1, 64),
                            metadata={"description": "The package id (its current version)."})
    target = fields.Nested(RolloutTargetSchema, load_default=lambda: {"kind": "all"})
    canary = fields.Integer(load_default=DEFAULTS["canary"],
                            validate=validate.Range(min=0, max=10_000),
                            metadata={"description": "Devices in the first wave."})
    percents = fields.List(fields.Float(validate=validate.Range(min=0, max=100,
                                                                min_inclusive=False)),
                           load_default=lambda: list(DEFAULTS["percents"]),
                           validate=validate.Length(1, 20),
                           metadata={"description": "Cumulative shares of the target, "
                                                    "one wave each; the last is 100."})
    success_threshold = fields.Float(load_default=DEFAULTS["success_threshold"],
                                     validate=validate.Range(min=0, max=1, min_inclusive=False),
                                     metadata={"description": "Share of a wave that must "
                                                              "succeed before the next."})
    error_threshold = fields.Float(load_default=DEFAULTS["error_threshold"],
                                   validate=validate.Range(min=0, max=1),
                                   metadata={"description": "A wave with a larger share "
                                                            "failed pauses the rollout."})
    soak_s = fields.Float(load_default=DEFAULTS["soak_s"],
                          validate=validate.Range(min=0, max=30 * 86400),
                          metadata={"description": "Seconds a wave holds before the next."})
    deadline_s = fields.Float(load_default=DEFAULTS["deadline_s"],
                              validate=validate.Range(min=0.1, max=30 * 86400),
                              metadata={"description": "Seconds a device has to succeed."})
    start_at = fields.Float(load_default=None, allow_none=True,
                            validate=validate.Range(min=0),
                            metadata={"description": "Unix seconds; unset: now."})
    window = fields.String(load_default=None, allow_none=True,
                           validate=validate.Regexp(WINDOW_PATTERN,
                                                    error="HH:MM-HH:MM, e.g. 22:00-05:00"),
                           metadata={"description": "A daily window in the hub's local time "
                                                    "(HH:MM-HH:MM): waves start only inside "
                                                    "it. Unset: any time."})


class RolloutListQuerySchema(Schema):
    state = fields.String(validate=validate.OneOf(STATES))


class WaveSchema(Schema):
    index = fields.Integer()
    name = fields.String()
    state = fields.String(metadata={"enum": list(WAVE_STATES)})
    started_at = fields.Float(allow_none=True)
    ended_at = fields.Float(allow_none=True)
    size = fields.Integer()
    succeeded = fields.Integer()
    failed = fields.Integer()
    pending = fields.Integer()
    devices = fields.List(fields.String())


class RolloutDeviceSchema(Schema):
    wave = fields.Integer()
    state = fields.String()
    reason = fields.String()


class RolloutSummarySchema(Schema):
    """A rollout with each wave's counts (in lists)."""

    id = fields.String()
    state = fields.String(metadata={"enum": list(STATES)})
    reason = fields.String(allow_none=True)
    package_id = fields.String()
    package_version = fields.Integer()
    path = fields.String()
    package_target = fields.String()
    kind = fields.String()
    sha256 = fields.String()
    target = fields.Nested(RolloutTargetSchema)
    canary = fields.Integer()
    percents = fields.List(fields.Float())
    success_threshold = fields.Float()
    error_threshold = fields.Float()
    soak_s = fields.Float()
    deadline_s = fields.Float()
    start_at = fields.Float(allow_none=True)
    window = fields.String(allow_none=True)
    created = fields.String()
    updated = fields.String()
    totals = fields.Dict(keys=fields.String(), values=fields.Integer())
    waves = fields.List(fields.Nested(WaveSchema))


class RolloutSchema(RolloutSummarySchema):
    """A rollout with each device's outcome too."""

    devices = fields.Dict(keys=fields.String(), values=fields.Nested(RolloutDeviceSchema))


class RolloutListSchema(Schema):
    rollouts = fields.List(fields.Nested(RolloutSummarySchema))
    count = fields.Integer()
