"""The bridge and the lanes find a request's view with ``serving.MarkedRoutes``, built
from the app's URL map: it must find exactly what werkzeug's own matcher finds for every
marked view, and nothing for the others."""

from __future__ import annotations

from dropsync.api.serving import MarkedRoutes, lane_of, runs_on_loop

SAMPLE = {"device_id": "esp-001", "package_id": "0a1b2c3d4e5f", "version": 7, "index": 3,
          "expires": 1800000000, "sig": "c2lnbmF0dXJl", "filename": "log.txt",
          "username": "alice", "token_id": "t1", "command_id": 12, "path": "data/x.bin",
          "target": "all", "group": "barn", "name": "barn", "change": "enable",
          "anything": "x"}


def test_marked_routes_match_as_the_url_map_does(app):
    routes = MarkedRoutes(app)
    urls = app.url_map.bind("hub")
    marked = 0
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        view = app.view_functions[rule.endpoint]
        path = urls.build(rule.endpoint, {k: rule.defaults[k] if k in (rule.defaults or {})
                                          else SAMPLE.get(k, "sample-1") for k in rule.arguments})
        for method in sorted(rule.methods - {"OPTIONS"}):
            found = routes.match(method, path)
            if runs_on_loop(view) or lane_of(view):
                marked += 1
                assert found is not None, (method, path)
                assert found[:2] == urls.match(path, method), (method, path)
                assert routes.runs_on_loop(method, path) == runs_on_loop(view)
            else:
                assert found is None, (method, path, found)
    assert marked >= 10
    # what no marked view takes: a near miss, a bad number, a doubled slash
    for method, path in (("GET", "/api/v1/device/commands/"),
                         ("GET", "/api/v1/files/download/esp-001/0a1b/x/3"),
                         ("GET", "/api/v1/device//commands/esp-001"),
                         ("DELETE", "/api/v1/device/commands/esp-001")):
        assert routes.match(method, path) is None, (method, path)
