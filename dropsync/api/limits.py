"""Rate limits (flask-limiter): per device on the device API, per client address on
refused credentials.

A device that polls in a tight loop gets 429 instead of starving the fleet, and an address
that keeps presenting bad tokens is shut out for a while, whichever route it tries. Counts
live in this process's memory: the hub runs one gunicorn worker, so they are exact.
Every 429 carries ``Retry-After`` and the one JSON error shape.
"""

from __future__ import annotations

import math
import time

from flask import Blueprint, Flask, request
from flask_limiter import Limiter, RequestLimit

from .errors import error_response

#: Responses that count against the failed-auth limit of the client's address.
REFUSED = (401, 403)


def client_address() -> str:
    return request.remote_addr or "unknown"


def device_in_path() -> str:
    return "device:" + (request.view_args or {}).get("device_id", "")


def answer_breach(limit: RequestLimit):
    # reset_at is whole seconds; never promise more than one window of waiting.
    retry_after = min(max(1, math.ceil(limit.reset_at - time.time())),
                      limit.limit.get_expiry())
    response = error_response(
        429, "rate_limited", f"too many requests: the limit is {limit.limit}; "
        f"retry in {retry_after} s", {"limit": str(limit.limit), "retry_after_s": retry_after})
    response.headers["Retry-After"] = str(retry_after)
    return response


def init_app(app: Flask, device_blueprints: list[Blueprint],
             guarded_blueprints: list[Blueprint]) -> Limiter:
    """One limiter per app (tests build many apps; counts must not leak between them)."""
    config = app.config
    limiter = Limiter(client_address, app=app, storage_uri="memory://",
                      enabled=config["RATE_LIMITS_ENABLED"], on_breach=answer_breach,
                      headers_enabled=False, strategy="moving-window")
    failed_auth = limiter.shared_limit(
        config["RATE_LIMIT_FAILED_AUTH"], scope="failed-auth", key_func=client_address,
        deduct_when=lambda response: response.status_code in REFUSED)
    for blueprint in guarded_blueprints:
        failed_auth(blueprint)
    per_device = limiter.shared_limit(config["RATE_LIMIT_DEVICE"], scope="device",
                                      key_func=device_in_path)
    for blueprint in device_blueprints:
        per_device(blueprint)
    app.extensions["dropsync.limiter"] = limiter
    return limiter
