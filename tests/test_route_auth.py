"""Every route outside an explicit public list refuses a request without credentials, and
every admin route refuses a device token.

The routes come from ``app.url_map`` at run time and are classified by blueprint, so a new
blueprint (files, dashboard...) is covered the day it is registered; only the public list
below is written by hand.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from marshmallow import fields
from support import ADMIN_TOKEN, assert_error

#: Endpoints anyone may call. Keep it short: every entry is a route with no auth at all.
PUBLIC = {"health.show", "docs.openapi_document", "docs.viewer", "docs.viewer_asset", "static",
          # a board with no token yet: its credential (the enrollment key, its secret) is
          # in the body; tests/test_enrollment.py refuses wrong ones on both routes
          "enroll.enroll", "enroll.claim"}
#: The dashboard's login page(s) are public too, once the dashboard exists.
OPTIONAL_PUBLIC_PREFIX = "dashboard.login"
#: Blueprints whose routes need the token of the device named in the path.
DEVICE_BLUEPRINTS = {"device", "files"}
ADMIN_BLUEPRINTS = {"admin"}
#: Browser routes may refuse with a redirect to the login page instead of a JSON 401.
SESSION_BLUEPRINTS = {"dashboard"}

DEVICE = "esp001"
OTHER_DEVICE = "esp002"
PATH_ARGUMENT = re.compile(r"<(?:(\w+)(?:\([^)]*\))?:)?(\w+)>")
GARBAGE = "not-a-token-0123456789abcdef0123456789"
#: A value per marshmallow field type, to build a body the view would accept if a route let
#: a request through: then a missing auth check shows up as a side effect, not as a 400.
SAMPLE_VALUES = {
    fields.String: "intruder-1", fields.Integer: 1, fields.Float: 1.0,
    fields.Boolean: True, fields.Dict: {"intruder-1": "intruder-token-0123456789abcdef"},
    fields.List: ["intruder-1"],
}


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


ADMIN = bearer(ADMIN_TOKEN)


def blueprint_of(endpoint: str) -> str:
    return endpoint.partition(".")[0] if "." in endpoint else ""


def is_public(endpoint: str) -> bool:
    return endpoint in PUBLIC or endpoint.startswith(OPTIONAL_PUBLIC_PREFIX)


def kind_of(rule) -> str:
    """admin, device, session or other: by blueprint name, then by path prefix."""
    blueprint = blueprint_of(rule.endpoint)
    if blueprint in ADMIN_BLUEPRINTS or rule.rule.startswith("/api/v1/admin/"):
        return "admin"
    if blueprint in DEVICE_BLUEPRINTS or rule.rule.startswith(("/api/v1/device/",
                                                               "/api/v1/files/")):
        return "device"
    if blueprint in SESSION_BLUEPRINTS or rule.rule.startswith("/dashboard"):
        return "session"
    return "other"


def fill_path(rule) -> str:
    """The rule with plausible values: the registered device, 1 for numbers, "x" otherwise."""
    values = {name: DEVICE if name == "device_id" else 1 if converter in ("int", "float")
              else "x" for converter, name in PATH_ARGUMENT.findall(rule.rule)}
    return rule.build(values, append_unknown=False)[1]


def plausible_body(view) -> dict:
    """A body the view's declared schema accepts: every field if it can, else the required
    ones, else ``{}``. A route that let it through would then change something."""
    schema = getattr(getattr(view, "contract", None), "body", None)
    if schema is None:
        return {}
    candidates = []
    for only_required in (False, True):
        candidates.append({
            field.data_key or name: next(
                (v for t, v in SAMPLE_VALUES.items() if isinstance(field, t)), "intruder-1")
            for name, field in schema.fields.items()
            if field.required or not only_required})
    return next((body for body in candidates if not schema.validate(body)), {})


def requests_for(app):
    """(rule, method, path, body) for every non-public route and method."""
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: (r.rule, r.endpoint)):
        if is_public(rule.endpoint):
            continue
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            body = None if method in ("GET", "DELETE") else \
                plausible_body(app.view_functions[rule.endpoint])
            yield rule, method, fill_path(rule), body


def refused(response, kind: str, statuses=(401,), code: str | None = None) -> None:
    if kind == "session" and 300 <= response.status_code < 400:
        assert "login" in response.headers.get("Location", ""), response.headers
        return
    if len(statuses) == 1:
        assert_error(response, statuses[0], code)
    else:
        assert response.status_code in statuses, (response.status_code, response.get_json())
        assert_error(response, response.status_code)


def state_snapshot(client, data_dirs: list[Path]) -> dict:
    """What a request that got through would change: registry, queues, messages,
    credentials, groups, and the files in the data and staging folders (history aside:
    it may one day record refusals)."""
    snapshot = {}
    for path in ("/devices", f"/devices/{DEVICE}", f"/devices/{DEVICE}/commands?state=",
                 f"/devices/{DEVICE}/messages", "/messages", "/commands", "/tokens",
                 "/operators", "/groups"):
        response = client.get("/api/v1/admin" + path, headers=ADMIN)
        assert response.status_code == 200, (path, response.get_json())
        snapshot[path] = response.get_json()
    snapshot["files"] = sorted(
        str(p.relative_to(folder)) for folder in data_dirs if folder.exists()
        for p in folder.rglob("*") if p.is_file() and "history" not in p.parts)
    return snapshot


@pytest.fixture
def tokens(admin):
    return {name: admin.register_device(name) for name in (DEVICE, OTHER_DEVICE)}


def test_public_list_names_existing_routes(app):
    endpoints = {rule.endpoint for rule in app.url_map.iter_rules()}
    assert PUBLIC - endpoints == set(), "stale entries in PUBLIC"


def test_every_non_public_route_refuses_missing_wrong_and_foreign_credentials(
        app, client, tokens, settings):
    token, other = tokens[DEVICE], tokens[OTHER_DEVICE]
    folders = [Path(settings["DATA_DIR"]), Path(settings["STAGING_DIR"])]
    before = state_snapshot(client, folders)
    failures, kinds, checked = [], {}, 0
    for rule, method, path, body in requests_for(app):
        kind = kinds[rule.endpoint] = kind_of(rule)
        scenarios = [
            ("no credentials", {}, (401,), None),
            ("garbage bearer", bearer(GARBAGE), (401,), None),
            ("garbage X-Device-Token", {"X-Device-Token": GARBAGE}, (401,), None),
            ("malformed Authorization", {"Authorization": f"Basic {token}"}, (401,), None),
        ]
        if kind == "device":
            # Some device route might name no device; then "another device's" has no meaning.
            if "device_id" in rule.arguments:
                scenarios += [
                    ("another device's bearer", bearer(other), (403,), "wrong_device"),
                    ("another device's X-Device-Token", {"X-Device-Token": other}, (403,),
                     "wrong_device"),
                ]
            scenarios.append(("admin token", ADMIN, (401,), None))
        elif kind == "admin":
            scenarios += [
                ("device bearer", bearer(token), (401, 403), None),
                ("device X-Device-Token", {"X-Device-Token": token}, (401, 403), None),
                ("device token in both", {**bearer(token), "X-Device-Token": token},
                 (401, 403), None),
            ]
        for label, headers, statuses, code in scenarios:
            response = client.open(path, method=method, headers=headers, json=body)
            checked += 1
            try:
                refused(response, kind, statuses, code)
            except AssertionError as exc:
                failures.append(f"{method} {path} [{rule.endpoint}] {label}: "
                                f"{response.status_code} {str(exc)[:300]}")
    assert not failures, "routes that did not refuse:\n" + "\n".join(failures)
    # Nothing that was refused reached a view: same registry, queues, credentials, files.
    after = state_snapshot(client, folders)
    assert after == before
    # The walk saw the blueprints it must guard (so it cannot pass by seeing nothing).
    assert {"admin", "device"} <= set(kinds.values()), kinds
    assert checked > 50


def test_credentials_that_fit_are_let_through(app, client, tokens):
    """Positive control: the refusals above are about credentials, not broken routes."""
    response = client.get(f"/api/v1/device/ping/{DEVICE}", headers=bearer(tokens[DEVICE]))
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["device_id"] == DEVICE
    response = client.get(f"/api/v1/device/ping/{DEVICE}",
                          headers={"X-Device-Token": tokens[DEVICE]})
    assert response.status_code == 200, response.get_json()
    # The right credential opens every admin GET route and every device GET route naming
    # its device, and gets a 200 from at least one GET route of every guarded blueprint.
    credentials = {"admin": ADMIN, "device": bearer(tokens[DEVICE])}
    opened: dict[str, list[int]] = {}
    for rule, method, path, _ in requests_for(app):
        kind = kind_of(rule)
        if method != "GET" or kind not in credentials:
            continue
        response = client.get(path, headers=credentials[kind])
        status = response.status_code
        opened.setdefault(blueprint_of(rule.endpoint), []).append(status)
        if "sig" in rule.arguments:  # a download ticket: a second credential, in the path
            assert_error(response, 403, "ticket_invalid")
        elif kind == "admin" or "device_id" in rule.arguments:
            assert status not in (401, 403), (path, status)
    assert {"admin", "device"} <= set(opened), opened
    for blueprint, statuses in opened.items():
        assert 200 in statuses, (blueprint, statuses)
