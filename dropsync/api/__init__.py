"""HTTP interface: one blueprint per audience, plus the shared error and auth plumbing."""

from __future__ import annotations

from flask import Flask

from . import admin, admin_fleet, device, errors, health, openapi  # noqa: F401 (routes)


def init_app(app: Flask) -> None:
    errors.init_app(app)
    app.register_blueprint(health.bp)
    app.register_blueprint(device.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(openapi.bp)
