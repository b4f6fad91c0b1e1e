"""HTTP interface: one blueprint per audience, plus the shared error and auth plumbing."""

from __future__ import annotations

from flask import Flask

from . import admin, admin_fleet, device, errors, health, limits, openapi  # noqa: F401


def init_app(app: Flask) -> None:
    errors.init_app(app)
    app.register_blueprint(health.bp)
    app.register_blueprint(device.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(openapi.bp)
    limits.init_app(app, device_blueprints=[device.bp],
                    guarded_blueprints=[device.bp, admin.bp])
