"""The OpenAPI document matches the routes, and its viewer works with no internet."""

from __future__ import annotations

import re

from dropsync.api.openapi import PATH_PARAM


def test_every_route_with_a_contract_is_documented_and_nothing_else(app, client):
    document = client.get("/api/v1/openapi.json").get_json()
    assert document["openapi"].startswith("3.")
    documented = {(path, method.upper()) for path, operations in document["paths"].items()
                  for method in operations}
    served = set()
    for rule in app.url_map.iter_rules():
        if getattr(app.view_functions[rule.endpoint], "contract", None) is None:
            continue
        path = PATH_PARAM.sub(lambda m: "{" + m["name"] + "}", rule.rule)
        served |= {(path, m) for m in rule.methods - {"HEAD", "OPTIONS"}}
    assert documented == served
    undocumented = [rule.rule for rule in app.url_map.iter_rules()
                    if getattr(app.view_functions[rule.endpoint], "contract", None) is None
                    and not rule.endpoint.startswith("dashboard.")]  # pages, not API
    assert set(undocumented) <= {"/static/<path:filename>", "/api/v1/openapi.json",
                                 "/api/v1/docs", "/api/v1/docs/assets/<path:filename>"}


def test_the_document_names_credentials_bodies_and_errors(client):
    paths = client.get("/api/v1/openapi.json").get_json()["paths"]
    poll = paths["/api/v1/device/commands/{device_id}"]["get"]
    assert poll["security"] == [{"deviceToken": []}]
    assert {"200", "401", "403", "429"} <= set(poll["responses"])
    assert [p["name"] for p in poll["parameters"]] == ["device_id", "limit"]
    register = paths["/api/v1/admin/devices/register"]["post"]
    assert register["security"] == [{"adminToken": []}]
    assert set(register["requestBody"]["content"]) == \
        {"application/json", "application/x-www-form-urlencoded"}
    assert "201" in register["responses"] and "409" in register["responses"]
    assert "security" not in paths["/health"]["get"]


def test_the_viewer_loads_only_local_files(client):
    page = client.get("/api/v1/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert not re.search(r"(src|href)=\"(https?:)?//", html)  # nothing from elsewhere
    assert "<script>" not in html  # no inline script: the CSP allows none
    assets = re.findall(r"(?:src|href)=\"([^\"]+)\"", html)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets)
    start = next(a for a in assets if a.endswith("api_docs.js"))
    # Swagger UI would post the document out otherwise
    script = client.get(start, buffered=True)
    assert "validatorUrl: null" in script.get_data(as_text=True)
    script.close()
    for asset in ["/api/v1/docs", "/api/v1/openapi.json", "/static/dashboard.css", *assets]:
        response = client.get(asset)
        try:
            assert response.status_code == 200 and len(response.data) > 100, asset
            assert response.headers["X-Content-Type-Options"] == "nosniff", asset
            csp = response.headers["Content-Security-Policy"]
            assert "script-src 'self';" in csp and "frame-ancestors 'none'" in csp, asset
        finally:
            response.close()  # a file-backed answer holds the file open until closed
    assert client.get("/api/v1/docs/assets/../../setup.cfg").status_code == 404


def test_the_document_states_the_rules_the_hub_enforces(client):
    """What a client would otherwise learn from a 400: name charsets, the password's
    length, one expiry, a failed sync report's reason, a message's data limit."""
    schemas = client.get("/api/v1/openapi.json").get_json()["components"]["schemas"]
    register = schemas["DeviceRegister"]["properties"]
    assert register["id"]["pattern"] == "^[A-Za-z0-9_:-]{1,64}$"
    assert register["groups"]["items"]["pattern"] == "^[A-Za-z0-9_-]{1,64}$"
    assert schemas["OperatorCreate"]["properties"]["username"]["pattern"]
    for name in ("OperatorCreate", "Password"):
        assert schemas[name]["properties"]["password"]["minLength"] == 8
    for name in ("CommandCreate", "DeviceCommandCreate"):
        fields = schemas[name]["properties"]
        assert fields["name"]["pattern"]
        assert "not with expires_at" in fields["expires_in_s"]["description"]
        assert "not with expires_in_s" in fields["expires_at"]["description"]
    assert "required with failed" in schemas["SyncReport"]["properties"]["reason"][
        "description"]
    assert "MESSAGE_DATA_MAX_BYTES" in schemas["MessageCreate"]["properties"]["data"][
        "description"]
