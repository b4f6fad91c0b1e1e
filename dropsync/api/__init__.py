"""HTTP interface: one blueprint per audience, plus the shared error and auth plumbing."""

from __future__ import annotations

from flask import Flask

from . import admin, admin_files, device, errors, files, health, openapi  # noqa: F401


def init_app(app: Flask) -> None:
    errors.init_app(app)
    app.register_blueprint(health.bp)
    app.register_blueprint(device.bp)
    app.register_blueprint(admin.bp)  # with the routes of admin_files
    app.register_blueprint(files.bp)
    app.register_blueprint(openapi.bp)
