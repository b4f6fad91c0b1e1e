"""Schemathesis against ``/api/v1/openapi.json``: every documented operation, fuzzed with a
bounded number of valid and invalid requests, answers as its document says.

- no 5xx; status codes, content types and bodies as documented;
- invalid input is answered 4xx (``negative_data_rejection``);
- credentials are enforced (``ignored_auth`` replays each request without and with a wrong
  token), and explicitly: no credentials or a wrong token gets the one 401 error shape.

How it is wired, and why:

- The document is read from a real app over WSGI. Test ids must exist at collection time,
  so a throwaway app (temporary folder, closed at once) serves the document the ids come
  from; each test then loads the schema again from its own fresh ``app`` fixture and fuzzs
  that one. ``test_document_is_the_same_on_every_app`` keeps the two honest.
- Plain ``pytest.mark.parametrize`` over the operations plus Hypothesis ``@given`` on
  ``operation.as_strategy(...)`` (public schemathesis API), rather than schemathesis's own
  pytest integration: with pytest 9.2, ``schemathesis.pytest.from_fixture`` crashes
  (``'Function' object has no attribute '_nodeid'``) and ``@schema.parametrize()`` gives
  every item the same node id (``test_x``), so failures could not be told apart.
- Each operation gets its own app, so destructive operations (delete device, rotate token,
  disable) are fuzzed like any other: they cannot break the credentials other operations use.
- Rate limits are off in the ``settings`` fixture. Hypothesis keeps no example database
  (``database=None``); it still caches source constants in ``.hypothesis/``, a folder that
  ignores itself (Hypothesis writes a ``.gitignore`` holding ``*`` into it).
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)
from support import ADMIN_TOKEN, assert_error

from dropsync import create_app

DOCUMENT_PATH = "/api/v1/openapi.json"
DEVICE = "esp001"
OTHER_DEVICE = "esp002"
WRONG_TOKEN = "wrong-token-0123456789abcdef0123456789"
#: Examples per operation (valid and invalid requests drawn together).
MAX_EXAMPLES = 25
#: Tags (= blueprints) whose operations need the token of the device named in the path.
DEVICE_TAGS = {"device", "files", "ota"}
ADMIN_TAGS = {"admin"}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, negative_data_rejection, ignored_auth]


#: Credentials are not generated: each request gets the right ones (``credentials_for``),
#: ``ignored_auth`` replays it without and with wrong ones, and a test below sends every
#: secured operation bad credentials. Generated ones would only be overwritten by ours.
CONFIG = schemathesis.Config.from_dict({"generation": {"with-security-parameters": False}})


def load_document() -> dict:
    """The OpenAPI document as a freshly built hub serves it (for the test ids)."""
    with tempfile.TemporaryDirectory(prefix="dropsync-openapi-") as folder:
        app = create_app({"DATA_DIR": str(Path(folder) / "data"),
                          "STAGING_DIR": str(Path(folder) / "staging"),
                          "ADMIN_TOKEN": ADMIN_TOKEN, "LOG_LEVEL": "WARNING",
                          "SERVING": False, "TESTING": True})
        try:
            response = app.test_client().get(DOCUMENT_PATH)
            assert response.status_code == 200, response.data[:500]
            return response.get_json()
        finally:
            app.extensions["dropsync"].close()


DOCUMENT = load_document()
OPERATIONS = [(method.upper(), path) for path, item in DOCUMENT["paths"].items()
              for method in item if method in ("get", "put", "post", "patch", "delete")]


def operation_id(value) -> str:
    method, path = value
    return f"{method} {path}"


@pytest.fixture
def device_tokens(admin) -> dict[str, str]:
    return {DEVICE: admin.register_device(DEVICE),
            OTHER_DEVICE: admin.register_device(OTHER_DEVICE)}


@pytest.fixture
def live_schema(app, device_tokens):
    """The schema as this test's app serves it; schemathesis sends to the app over WSGI."""
    return schemathesis.openapi.from_wsgi(DOCUMENT_PATH, app, config=CONFIG)


def credentials_for(operation, tokens: dict[str, str]) -> dict[str, str]:
    tags = set(operation.tags or ())
    if tags & ADMIN_TAGS:
        return {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    if tags & DEVICE_TAGS:
        return {"Authorization": f"Bearer {tokens[DEVICE]}"}
    return {}


def fixed_path_parameters(operation) -> dict[str, str] | None:
    """Device routes only answer the device whose token is sent, so ``device_id`` is the
    registered device everywhere (admin routes included: they then reach their real work
    instead of a 404). Other path parameters are fuzzed."""
    names = {p.name for p in operation.path_parameters}
    return {"device_id": DEVICE} if "device_id" in names else None


def security_of(method: str, path: str) -> list:
    operation = DOCUMENT["paths"][path][method.lower()]
    return operation.get("security", DOCUMENT.get("security", []))


def lossy_form_body(case) -> bool:
    """A form body holding lists or objects: urlencoding cannot carry them (schemathesis
    drops empty ones and flattens the rest), so the app receives another body than the
    one schemathesis judges, often a valid one."""
    return (case.media_type or "") == "application/x-www-form-urlencoded" \
        and isinstance(case.body, dict) \
        and any(isinstance(v, list | dict) for v in case.body.values())


def checks_for(case, response) -> list:
    """All of CHECKS, minus the ones that cannot judge the request as it was really sent."""
    skipped = set()
    if lossy_form_body(case):
        skipped.add(negative_data_rejection)
    return [check for check in CHECKS if check not in skipped]


@pytest.mark.parametrize("method_path", OPERATIONS, ids=operation_id)
def test_operation_honours_its_contract(method_path, live_schema, device_tokens):
    method, path = method_path
    operation = live_schema[path][method]
    headers = credentials_for(operation, device_tokens)
    fixed = fixed_path_parameters(operation)
    modes = [operation.as_strategy(GenerationMode.POSITIVE, path_parameters=fixed),
             operation.as_strategy(GenerationMode.NEGATIVE, path_parameters=fixed)]

    @settings(max_examples=MAX_EXAMPLES, derandomize=True, database=None, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                     HealthCheck.data_too_large])
    @given(case=st.one_of(modes))
    def fuzz(case):
        response = case.call(headers=headers)
        # Explicit headers make ``ignored_auth`` replay the request without them and with a
        # wrong token, and expect 401/403 both times.
        case.validate_response(response, checks=checks_for(case, response), headers=headers,
                               transport_kwargs={"headers": dict(headers)})

    fuzz()


def test_missing_or_wrong_credentials_are_refused(live_schema, client, device_tokens):
    """Every operation the document marks as secured answers 401 in the one error shape
    without credentials or with a wrong token (before looking at the body); a device's
    token does not open admin operations nor another device's routes (403)."""
    failures, secured = [], 0
    for method, path in OPERATIONS:
        if not security_of(method, path):
            continue
        secured += 1
        operation = live_schema[path][method]
        values = {p.name: DEVICE if p.name == "device_id" else
                  (1 if p.definition.get("schema", {}).get("type") == "integer" else "x")
                  for p in operation.path_parameters}
        url = operation.Case(path_parameters=values).formatted_path
        tags = set(operation.tags or ())
        attempts = {
            "no credentials": ({}, {401}),
            "a wrong bearer token": ({"Authorization": f"Bearer {WRONG_TOKEN}"}, {401}),
            "a wrong X-Device-Token": ({"X-Device-Token": WRONG_TOKEN}, {401}),
        }
        if tags & ADMIN_TAGS:
            attempts["a device's token"] = (
                {"Authorization": f"Bearer {device_tokens[DEVICE]}"}, {401, 403})
        if tags & DEVICE_TAGS and "device_id" in values:
            attempts["another device's token"] = (
                {"Authorization": f"Bearer {device_tokens[OTHER_DEVICE]}"}, {403})
            attempts["the admin token"] = (
                {"Authorization": f"Bearer {ADMIN_TOKEN}"}, {401, 403})
        for label, (headers, statuses) in attempts.items():
            response = client.open(url, method=method, headers=headers)
            try:
                assert response.status_code in statuses, response.get_json()
                assert str(response.status_code) in operation.definition.raw["responses"], \
                    "status not in the document"
                assert_error(response, response.status_code)
            except AssertionError as exc:
                failures.append(f"{method} {url} with {label}: {response.status_code} "
                                f"{str(exc)[:200]}")
    assert not failures, "\n".join(failures)
    assert secured >= 20, "the document marks too few operations as secured"


def test_document_is_the_same_on_every_app(app):
    """The ids above come from a throwaway app; the tests fuzz their own: same document."""
    assert app.test_client().get(DOCUMENT_PATH).get_json() == DOCUMENT


def test_every_api_route_is_documented(app):
    """A route the document leaves out is never fuzzed: every /api route but the docs'
    own must be in it, with each of its methods, and /health must be in it, public."""
    document = app.test_client().get(DOCUMENT_PATH).get_json()
    documented = {(method.upper(), path) for path, item in document["paths"].items()
                  for method in item}
    missing = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith("docs.") or not rule.rule.startswith("/api/"):
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        missing += [f"{method} {path} ({rule.endpoint})"
                    for method in sorted(rule.methods - {"HEAD", "OPTIONS"})
                    if (method, path) not in documented]
    assert not missing, "routes missing from the OpenAPI document:\n" + "\n".join(missing)
    assert ("GET", "/health") in documented and not security_of("GET", "/health")


# -- found by fuzzing, fixed: each stays as a regression test ---------------------------
def test_send_command_documents_its_404(admin):
    response = admin.post("/commands", json={"name": "reboot", "target": "ghost"})
    assert_error(response, 404, "not_found")
    document = admin.client.get(DOCUMENT_PATH).get_json()
    documented = document["paths"]["/api/v1/admin/commands"]["post"]["responses"]
    assert "404" in documented, sorted(documented)


def test_a_required_body_cannot_be_blank(client, device_tokens):
    accepted = []
    for method, path in OPERATIONS:
        operation = DOCUMENT["paths"][path][method.lower()]
        body = operation.get("requestBody", {})
        if not body.get("required") or "application/json" not in body.get("content", {}):
            continue
        headers = ({"Authorization": f"Bearer {ADMIN_TOKEN}"}
                   if "admin" in operation["tags"] else
                   {"Authorization": f"Bearer {device_tokens[DEVICE]}"})
        url = re.sub(r"\{(\w+)\}", lambda m: DEVICE if m[1] == "device_id" else "1", path)
        response = client.open(url, method=method, headers=headers, data="\n",
                               content_type="application/json")
        if response.status_code < 400:
            accepted.append(f"{method} {url}: {response.status_code}")
    assert not accepted, "blank body accepted where the document requires one:\n" + \
        "\n".join(accepted)


@pytest.mark.parametrize("path, body", [
    ("/devices/esp001/command", {"name": "reboot", "expires_at": 5.191977579274467e16}),
    ("/devices/esp001/command", {"name": "reboot", "expires_at": "nan"}),
    ("/devices/esp001/command", {"name": "reboot", "expires_in_s": 1e300}),
    ("/commands", {"name": "reboot", "target": "esp001", "expires_in_s": 1e20}),
], ids=["expires_at-huge", "expires_at-nan", "expires_in_s-huge", "fleet-expires_in_s-huge"])
def test_command_expiry_out_of_range_is_refused(admin, device_tokens, path, body):
    assert_error(admin.post(path, json=body), 400)
