"""marshmallow schemas of the files API and of package administration.

Kept apart from ``schemas.py`` (devices, credentials) so the two areas can change
independently; both feed the same OpenAPI document through ``@contract``.
"""

from __future__ import annotations

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from ..config import RELEASE_ACTIONS
from ..schemas import HealthSchema, UnixSeconds
from .packages import SYNC_STATES, UPLOAD_SOURCES


class ManifestFileSchema(Schema):
    """One file of a manifest: kept to what a device needs, so it parses in little RAM."""

    id = fields.String(metadata={"description": "Package id (stable for the staged path)."})
    path = fields.String(metadata={"description": "Where the file goes on the device."})
    size = fields.Integer()
    sha256 = fields.String()
    md5 = fields.String(metadata={"description": "For the ESP8266 Update class."})
    chunk_size = fields.Integer()
    chunks = fields.Integer(metadata={"description": "Number of chunks."})
    version = fields.Integer(metadata={"description": "This content's version; a request "
                                                      "naming a replaced one gets 409."})
    url = fields.String(metadata={"description": "Whole file (Range supported); append "
                                                 "/<index> for one chunk."})


class ManifestSchema(Schema):
    device = fields.String()
    version = fields.Integer(metadata={"description": "Rises whenever the list changes."})
    files = fields.List(fields.Nested(ManifestFileSchema))


class SyncPackageSchema(ManifestFileSchema):
    target = fields.String()
    created = UnixSeconds()
    source = fields.String()


class SyncPackagesSchema(Schema):
    device_id = fields.String()
    manifest_version = fields.Integer()
    packages = fields.List(fields.Nested(SyncPackageSchema))
    count = fields.Integer()


class SyncReportSchema(Schema):
    package = fields.String(required=True, validate=validate.Length(1, 64))
    version = fields.Integer(required=True, validate=validate.Range(min=1))
    state = fields.String(required=True, validate=validate.OneOf(SYNC_STATES))
    received = fields.Integer(validate=validate.Range(min=0), metadata={
        "description": "Bytes received so far (with downloading)."})
    reason = fields.String(validate=validate.Length(1, 500),
                           metadata={"description": "Why it failed (required with failed)."})

    @validates_schema
    def failure_has_reason(self, data, **kwargs):
        if data.get("state") == "failed" and not data.get("reason"):
            raise ValidationError("a failed report needs a reason", "reason")


class SyncEntrySchema(Schema):
    seq = fields.Integer()
    at = UnixSeconds()
    device_id = fields.String()
    package_id = fields.String()
    path = fields.String()
    version = fields.Integer()
    state = fields.String()
    received = fields.Integer()
    reason = fields.String()


class SyncHistoryQuerySchema(Schema):
    limit = fields.Integer(load_default=100, validate=validate.Range(1, 1000))


class SyncHistorySchema(Schema):
    device_id = fields.String()
    history = fields.List(fields.Nested(SyncEntrySchema))
    count = fields.Integer()


class UploadQuerySchema(Schema):
    filename = fields.String(metadata={
        "description": "Name to store a raw (non-multipart) upload under."})


class UploadSchema(Schema):
    device_id = fields.String()
    name = fields.String()
    size = fields.Integer()
    sha256 = fields.String()
    uploaded_at = fields.String()


class UploadListSchema(Schema):
    uploads = fields.List(fields.Nested(UploadSchema))
    count = fields.Integer()


class DeviceUploadSchema(UploadSchema):
    """An upload as its device sees it: times in Unix seconds, as in every device answer."""

    uploaded_at = UnixSeconds()


class DeviceUploadListSchema(Schema):
    uploads = fields.List(fields.Nested(DeviceUploadSchema))
    count = fields.Integer()


class UploadListQuerySchema(Schema):
    device = fields.String(metadata={"description": "Only this device's uploads."})


class ProgressSchema(Schema):
    targets = fields.Integer(metadata={"description": "Devices whose manifest lists it."})
    have = fields.Integer(metadata={"description": "Of those, verified or applied."})
    downloading = fields.Integer()
    failed = fields.Integer()


class SignatureSchema(Schema):
    format = fields.String(metadata={"description": "esp8266 or esp32 (the cores' layouts)."})
    key_id = fields.String(metadata={
        "description": "The verifying public key: SHA-256 of its DER form, 16 hex digits."})
    signed_size = fields.Integer(metadata={"description": "Bytes of image the signature covers."})


class PackageSchema(Schema):
    id = fields.String()
    target = fields.String()
    path = fields.String()
    size = fields.Integer()
    sha256 = fields.String()
    md5 = fields.String()
    chunk_size = fields.Integer()
    chunk_count = fields.Integer()
    version = fields.Integer()
    created = fields.String()
    source = fields.String()
    progress = fields.Nested(ProgressSchema)
    signature = fields.Nested(SignatureSchema, allow_none=True, metadata={
        "description": "Which configured key signed this firmware image "
                       "(FIRMWARE_SIGNING_KEYS); null when signatures are not checked."})


class PackageListQuerySchema(Schema):
    target = fields.String()


class PackageListSchema(Schema):
    packages = fields.List(fields.Nested(PackageSchema))
    count = fields.Integer()


class DeviceSyncStatusSchema(Schema):
    device_id = fields.String()
    state = fields.String(metadata={
        "description": "pending, downloading, verified, applied, failed, or outdated "
                       "(the last report was about an older version)."})
    version = fields.Integer(allow_none=True)
    percent = fields.Integer()
    received = fields.Integer()
    reason = fields.String()
    updated_at = fields.String()


class PackageStatusSchema(PackageSchema):
    devices = fields.List(fields.Nested(DeviceSyncStatusSchema))


class StageQuerySchema(Schema):
    source = fields.String(load_default="api", validate=validate.OneOf(UPLOAD_SOURCES))
    release = fields.String(validate=validate.OneOf(RELEASE_ACTIONS),
                            metadata={"description": "publish: offer it to every device of "
                                      "its target at once; draft: hold it in a rollout draft. "
                                      "Unset: as STAGING_RELEASE says for its kind."})


class StagedSchema(PackageSchema):
    changed = fields.Boolean(metadata={"description": "False when the content was already "
                                                      "the package's current version."})


class WithdrawnSchema(Schema):
    withdrawn = fields.String()
    target = fields.String()
    path = fields.String()


class StagingProblemSchema(Schema):
    kind = fields.String()
    path = fields.String()
    message = fields.String()


class StagingReportSchema(Schema):
    state = fields.String()
    staging_dir = fields.String()
    problems = fields.List(fields.Nested(StagingProblemSchema))
    watcher = fields.Dict()


class HealthWithStagingSchema(HealthSchema):
    staging = fields.Nested(StagingReportSchema)
