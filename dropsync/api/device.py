"""Device API under ``/api/v1/device``: every route names a device id and needs its token.

These routes carry the fleet's polling, so they are kept lean: a poll that hands nothing
out touches no disk, and every answer tells the device when to come back (``next_poll_s``).
"""

from __future__ import annotations

import time

from flask import Blueprint, current_app, g

from ..fleet.messages import record_message
from ..schemas import (
    CompleteSchema,
    CompletionSchema,
    DeviceStatusSchema,
    HeartbeatAckSchema,
    HeartbeatSchema,
    MessageCreateSchema,
    MessageStoredSchema,
    PingSchema,
    PollQuerySchema,
    PollSchema,
)
from .context import admit_device_request, current_hub
from .contract import contract
from .device_requests import heartbeat_answer, poll_answer
from .serving import lane, on_loop

bp = Blueprint("device", __name__, url_prefix="/api/v1/device")
bp.before_request(admit_device_request)


@bp.get("/ping/<device_id>")
@on_loop
@contract(response=PingSchema)
def ping(device_id: str):
    """Check the hub is reachable and the token works."""
    return {"status": "ok", "device_id": device_id, "server_time": time.time()}


@bp.get("/commands/<device_id>")
@lane("poll")
@on_loop
@contract(query=PollQuerySchema, response=PollSchema)
def poll_commands(device_id: str, query):
    """Poll: hand out (and lease) pending commands, highest priority then oldest first.

    Complete each within its lease (``lease_s``) or it is handed out again, up to the
    hub's attempt limit. The same command id may arrive twice; run it once.
    """
    return poll_answer(current_hub(), g.device, query["limit"])


@bp.post("/commands/<device_id>/complete")
@contract(body=CompleteSchema, response=CompletionSchema, errors=(409,))
def complete_command(device_id: str, body):
    """Report a command's outcome. Reporting again changes nothing (``duplicate``)."""
    record, duplicate = current_hub().commands.complete(
        device_id, body["command_id"], success=body["success"], result=body["result"],
        error=body.get("error"))
    return {"command_id": record["command_id"], "state": record["state"],
            "duplicate": duplicate, "ended_at": record["ended_at"]}


@bp.post("/messages/<device_id>")
@contract(body=MessageCreateSchema, response=MessageStoredSchema, status=201)
def post_message(device_id: str, body):
    """Send a log line (level, text, optional data and the device's own timestamp)."""
    return record_message(current_hub().stores, device_id, level=body["level"],
                          text=body["text"], data=body["data"],
                          device_time=body["device_time"],
                          data_max_bytes=current_app.config["MESSAGE_DATA_MAX_BYTES"])


@bp.post("/heartbeat/<device_id>")
@lane("heartbeat")
@on_loop
@contract(body=HeartbeatSchema, response=HeartbeatAckSchema)
def heartbeat(device_id: str, body):
    """Report firmware version, uptime, free heap, RSSI, IP and any other attributes."""
    return heartbeat_answer(current_hub(), g.device, body)


@bp.get("/status/<device_id>")
@on_loop
@contract(response=DeviceStatusSchema)
def status(device_id: str):
    """What the hub knows of this device: connection, its open commands (pending: not
    yet handed out; leased: handed out, not completed), next poll."""
    hub = current_hub()
    view = hub.pacing.fleet_view(g.device)
    open_commands = hub.commands.open_counts(device_id)
    return {"device_id": device_id, "name": view["name"], "groups": view["groups"],
            "connection": view["connection"], "last_seen": view["last_seen"],
            "pending_commands": open_commands["pending"],
            "leased_commands": open_commands["leased"],
            "next_poll_s": hub.pacing.next_poll_s(g.device),
            "server_time": int(time.time())}
