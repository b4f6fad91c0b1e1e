"""How a device request is answered: the rules the Flask views and the lanes both call.

A fleet's requests are mostly polls, chunks and heartbeats. They are answered two ways:
by the Flask views (``device.py``, ``files.py``, ``ota.py``) and, for the common case,
by the lanes (``lanes.py``), which skip Flask's request machinery for speed. Neither
keeps a rule of its own: who may make the request (``DeviceGate.admit``), what a poll,
a chunk or a heartbeat answers, whether nginx sends a chunk's bytes and how a JSON
answer is written are the functions below, called by both (and what the request log
says is ``ops.requestlog.note_request``). A
lane that cannot answer a request with them leaves it to the app, which answers it the
same way, refusals included.

Nothing here reads a Flask request: callers pass what the request said (``Caller``).
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import Forbidden, Unauthorized
from ..fleet.devices import authenticate_device
from ..fleet.pacing import record_heartbeat
from ..sync.blobs import BlobInfo
from .limits import RateLimited, credential_fingerprint

if TYPE_CHECKING:
    from ..hub import Hub
    from .limits import RateLimits

@dataclass(frozen=True, slots=True)
class Caller:
    """What a request says about who sends it: its address and credential headers."""

    address: str
    authorization: str = ""
    token_header: str = ""

    @classmethod
    def of(cls, environ: Mapping[str, Any]) -> Caller:
        """From a WSGI environ (behind a trusted proxy, ``REMOTE_ADDR`` is already the
        client's: ``ops.requestlog.TrustedProxyFix`` runs before anything here)."""
        return cls(environ.get("REMOTE_ADDR") or "unknown",
                   environ.get("HTTP_AUTHORIZATION", ""),
                   environ.get("HTTP_X_DEVICE_TOKEN", ""))

    @property
    def fingerprint(self) -> str:
        return credential_fingerprint(self.authorization, self.token_header)

    def token(self, device_id: str, *, basic: bool = False) -> str | None:
        """The device token the request carries: a bearer token or ``X-Device-Token``;
        with ``basic`` (the stock updaters' route) also HTTP Basic, whose user must be
        the device id in the path and whose password is the token."""
        scheme, _, value = self.authorization.partition(" ")
        if basic and scheme.lower() == "basic" \
                and (credentials := decode_basic(value)) is not None:
            user, password = credentials
            if user != device_id:
                raise Forbidden("the HTTP Basic user must be the device id in the URL",
                                code="wrong_device")
            return password or None
        return device_token_of(self.authorization, self.token_header)


def bearer_of(authorization: str) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value."""
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


def device_token_of(authorization: str, device_token_header: str) -> str | None:
    """Devices may send their token as a bearer token or in ``X-Device-Token``."""
    return bearer_of(authorization) or device_token_header.strip() or None


def decode_basic(value: str) -> tuple[str, str] | None:
    """HTTP Basic's user and password, or None when the value is not base64 of
    ``user:password`` (as werkzeug reads it: then there are no Basic credentials)."""
    try:
        user, colon, password = base64.b64decode(value.strip(), validate=True) \
            .decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return (user, password) if colon else None


class DeviceGate:
    """Who may make a device request, checked in one order on every path:

    1. a credential this address has had refused too often is turned away (429),
       unchecked, before any token is compared;
    2. the token must be the device's own, and the device enabled (401, 403);
    3. the device's own rate on this blueprint (429): counted only once it has proved
       who it is, so nobody can use up a device's rate by naming it;
    4. the device is seen now, from this address (liveness).
    """

    def __init__(self, hub: Hub, limits: RateLimits | None):
        self.hub = hub
        self.limits = limits if limits is not None and limits.enabled else None

    def admit(self, blueprint: str, device_id: str, caller: Caller, *,
              basic: bool = False) -> dict[str, Any]:
        try:
            device = self.identify(blueprint, device_id, caller, basic=basic)
        except Unauthorized as refused:
            if refused.code == "invalid_token" and device_id in self.hub.stores.devices:
                self.hub.refused_tokens.note(device_id, caller.address)
            raise
        limits = self.limits
        per_device = limits.per_device.get(blueprint) \
            if limits is not None and blueprint in limits.guarded_blueprints else None
        if per_device is not None and not per_device.count(device_id):
            raise RateLimited(per_device, (device_id,))
        self.hub.stores.liveness.update(device_id, last_seen=time.time(), ip=caller.address)
        return device

    def identify(self, blueprint: str, device_id: str, caller: Caller, *,
                 basic: bool = False) -> dict[str, Any]:
        """Steps 1 and 2 alone, counting and changing nothing: whether the request may go
        on at all (the bridge asks before it reads a body, ``admission.py``)."""
        limits = self.limits
        if limits is not None and blueprint in limits.guarded_blueprints:
            key = (caller.address, caller.fingerprint)
            if limits.failed_credential.exceeded(*key):
                raise RateLimited(limits.failed_credential, key)
        return authenticate_device(self.hub.stores, device_id,
                                   caller.token(device_id, basic=basic))


# -- the answers -----------------------------------------------------------------------------
def poll_answer(hub: Hub, device: Mapping[str, Any], limit: int) -> dict[str, Any]:
    """A poll: lease up to ``limit`` pending commands, and say when to come back."""
    handed = hub.commands.lease_pending_commands(device["id"], limit)
    return {"commands": handed, "next_poll_s": hub.pacing.next_poll_s(device),
            "server_time": int(time.time())}


def heartbeat_answer(hub: Hub, device: Mapping[str, Any], body: Mapping[str, Any]) \
        -> dict[str, Any]:
    """A heartbeat: what the node says about itself, kept in memory (checkpointed)."""
    record_heartbeat(hub.stores, device["id"], body)
    return {"status": "ok", "next_poll_s": hub.pacing.next_poll_s(device),
            "server_time": int(time.time())}


@dataclass(frozen=True, slots=True)
class Chunk:
    blob: BlobInfo
    index: int
    first: int
    length: int
    headers: dict[str, str]


def chunk_answer(hub: Hub, device: Mapping[str, Any], package_id: str, version: int,
                 index: int) -> Chunk:
    """One chunk of a package the device's manifest lists, at its current version (403,
    409 otherwise), with the headers a device checks it by."""
    packages = hub.packages
    blob = packages.blob_info(packages.authorize_download(device, package_id, version))
    first, length = blob.chunk_span(index)
    return Chunk(blob, index, first, length, chunk_headers(blob, index, version))


def chunk_headers(blob: BlobInfo, index: int, version: int) -> dict[str, str]:
    """What a device checks a chunk with (the same for every device)."""
    return {"X-Chunk-SHA256": blob.chunk_sha256(index), "X-Chunk-Index": str(index),
            "X-Chunk-Count": str(blob.chunk_count), "X-Package-Version": str(version)}


def nginx_sends_chunk(accel_prefix: str | None, chunk: Chunk, *, ticketed: bool) -> bool:
    """Whether nginx sends the chunk's bytes (``X-Accel-Redirect``): when the hub sits
    behind it, except for an empty blob and for a chunk asked for by download ticket,
    whose bytes must be in the answer for nginx to cache it for the whole fleet."""
    return bool(accel_prefix) and bool(chunk.blob.size) and not ticketed


# -- JSON ------------------------------------------------------------------------------------
def json_bytes(provider: Any, data: Any) -> bytes:
    """A JSON answer's body as ``provider`` (the app's ``app.json``) writes it: compact
    unless in debug, one newline at the end. The encoder is built once per provider."""
    encoder = getattr(provider, "_dropsync_encoder", None)
    if encoder is None:
        indent = provider.compact is False or (provider.compact is None
                                               and provider._app.debug)
        encoder = json.JSONEncoder(default=provider.default,
                                   ensure_ascii=provider.ensure_ascii,
                                   sort_keys=provider.sort_keys,
                                   indent=2 if indent else None,
                                   separators=None if indent else (",", ":"))
        provider._dropsync_encoder = encoder
    return (encoder.encode(data) + "\n").encode()
