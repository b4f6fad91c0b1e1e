"""Property: whatever JSON (values, depths, encodings, content types) reaches any JSON
route, the hub answers without a 500, in the one error shape when it refuses, and what it
stored loads again after a restart.

Hypothesis draws each request: a route (every view whose contract has a body), a body
built from the route's own field names (so values get past the first check) with
arbitrary JSON values, sometimes a value nested up to thousands of levels (as text, so
the test itself never recurses), sent as JSON in one of several encodings, as a form, as
raw bytes, or under a wrong content type. The app is built once per test (not per
example) on ``tmp_path``; the examples share its store, as a hub's clients would.
"""

from __future__ import annotations

import json
from urllib.parse import urlencode

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import ADMIN_TOKEN, assert_error, json_routes

from dropsync import create_app

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
EXAMPLES = 200
#: Stands for a deeply nested value in a body, replaced in its JSON text.
DEEP = "\x00deep\x00"

scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) \
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=12)


@st.composite
def deep_text(draw) -> str:
    depth = draw(st.sampled_from([32, 33, 490, 1000, 5000]))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
    return opener * depth + draw(st.sampled_from(["1", "null", '"x"'])) + closer * depth


@st.composite
def bodies(draw, field_names: list[str]) -> tuple[bytes, str]:
    """(body bytes, content type) for a route whose schema has ``field_names``."""
    keys = st.sampled_from(field_names) | st.text(max_size=8) if field_names \
        else st.text(max_size=8)
    document = draw(st.dictionaries(keys, json_values, max_size=6) | json_values)
    if draw(st.booleans()):  # half the bodies hold a deeply nested value somewhere
        if isinstance(document, dict):
            document[draw(keys)] = DEEP
        else:
            document = DEEP
    kind = draw(st.sampled_from(["json", "json", "json", "form", "bytes", "other"]))
    if kind == "form":
        fields = document if isinstance(document, dict) else {"value": document}
        pairs = {k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()}
        text = urlencode({k: draw(deep_text()) if v == DEEP else v for k, v in pairs.items()})
        return text.encode("utf-8", "surrogatepass"), "application/x-www-form-urlencoded"
    if kind == "bytes":
        return draw(st.binary(max_size=200)), "application/json"
    text = json.dumps(document).replace(json.dumps(DEEP), draw(deep_text()))
    encoding = draw(st.sampled_from(["utf-8", "utf-16", "utf-32", "utf-16-be", "latin-1"]))
    data = text.encode(encoding, "surrogatepass" if encoding != "latin-1" else "replace")
    if kind == "other":
        return data, draw(st.sampled_from(["text/plain", "application/xml", ""]))
    return data, "application/json" + (f"; charset={encoding}" if encoding != "utf-8" else "")


def test_any_json_on_any_route_never_500s_and_the_store_loads_after(settings, tmp_path):
    app = create_app(settings)
    client = app.test_client()
    token = client.post("/api/v1/admin/devices/register", headers=ADMIN,
                        json={"id": "esp001", "groups": ["field"]}).get_json()["token"]
    device = {"Authorization": f"Bearer {token}"}
    client.post("/api/v1/admin/commands", headers=ADMIN, json={"target": "esp001",
                                                               "name": "reboot"})
    routes = json_routes(app)
    seen: dict[int, int] = {}

    @settings_for_property
    @given(data=st.data())
    def any_request(data):
        method, path, blueprint, field_names = data.draw(st.sampled_from(routes))
        body, content_type = data.draw(bodies(field_names))
        response = client.open(path, method=method, data=body, content_type=content_type,
                               headers=ADMIN if blueprint == "admin" else device)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        assert response.status_code < 500, (path, body[:300], response.get_data()[:300])
        if response.status_code >= 400:
            assert_error(response, response.status_code)
        else:
            assert response.is_json

    any_request()
    assert any(status < 300 for status in seen), seen  # some requests got through
    app.extensions["dropsync"].close()

    reopened = create_app(settings)  # everything stored loads again
    client = reopened.test_client()
    for path in ("/api/v1/admin/devices", "/api/v1/admin/commands", "/api/v1/admin/messages",
                 "/api/v1/admin/groups", "/api/v1/admin/devices/esp001/commands"):
        assert client.get(path, headers=ADMIN).status_code == 200, path
    reopened.extensions["dropsync"].close()


settings_for_property = settings(
    max_examples=EXAMPLES, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.function_scoped_fixture])
