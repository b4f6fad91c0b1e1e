"""How the server may run a view, declared on the view itself.

The bridge (``dropsync.bridge``) and the lanes (``lanes.py``) read these marks from the
app's URL map; neither keeps a list of paths of its own, so a route that moves or is
added keeps what its view says.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from typing import Any

View = Callable


def on_loop(view: View) -> View:
    """The view may run on the server's event loop: it reads memory (or a blob in the
    page cache) and never writes to disk or waits. A GET or HEAD without a body runs
    there at once; a POST runs there once its whole body has arrived. A view that may
    write or read the disk per request must not say so: one fsync there holds every
    poll of the fleet."""
    view.runs_on_loop = True
    return view


def lane(name: str) -> Callable[[View], View]:
    """The view's common case is answered by the lane ``name`` of ``lanes.DeviceLanes``,
    with the same rules (``device_requests``) and the same answer, without Flask."""
    def mark(view: View) -> View:
        view.lane = name
        return view
    return mark


class MarkedRoutes:
    """The routes of the views marked ``@on_loop`` or ``@lane``, taken from the app's URL
    map and matched by their segments: what the bridge and the lanes ask on every
    request. werkzeug's matcher costs 6-12 µs a request; this costs about 1-2 (a poll is
    ~60 µs of work in all). A path it does not know is no marked view's: the app (and
    its own matcher) answers it."""

    def __init__(self, app: Any):
        #: (method, number of segments) -> [(static segments, variables, endpoint, view)]
        self.table: dict[tuple[str, int], list] = {}
        for rule in app.url_map.iter_rules():
            view = app.view_functions[rule.endpoint]
            if not (runs_on_loop(view) or lane_of(view)):
                continue
            segments = rule.rule.split("/")
            static, variables = [], []
            for position, segment in enumerate(segments):
                if segment.startswith("<") and segment.endswith(">"):
                    name = segment[1:-1].rpartition(":")[2]
                    converter = rule._converters[name]
                    variables.append((position, name, re.compile(converter.regex),
                                      converter.to_python))
                else:
                    static.append((position, segment))
            positions, texts = zip(*static, strict=True)
            # the static segments, fetched in one C call and compared as a tuple
            pick = operator.itemgetter(*positions) if len(positions) > 1 \
                else lambda found, at=positions[0]: (found[at],)
            for method in rule.methods or ():
                self.table.setdefault((method, len(segments)), []).append(
                    (pick, texts, tuple(variables), rule.endpoint, view))

    def match(self, method: str, path: str) -> tuple[str, dict[str, Any], Any] | None:
        """The (endpoint, arguments, view) of a marked route, or None."""
        segments = path.split("/")
        for pick, texts, variables, endpoint, view in self.table.get(
                (method, len(segments)), ()):
            if pick(segments) != texts:
                continue
            args = {}
            for position, name, pattern, to_python in variables:
                value = segments[position]
                if pattern.fullmatch(value) is None:
                    break
                args[name] = to_python(value)
            else:
                return endpoint, args, view
        return None

    def runs_on_loop(self, method: str, path: str) -> bool:
        """For the server: whether the request reaches a view marked ``@on_loop``."""
        found = self.match(method, path)
        return found is not None and runs_on_loop(found[2])


def not_on_lane_routes(reason: str) -> Callable[[View], View]:
    """Marks an app-wide request hook as one that never acts on a route a lane serves
    (``reason`` says why), so ``lanes.check_hooks`` lets it be: the lanes skip it."""
    def mark(hook: View) -> View:
        hook.not_on_lane_routes = reason
        return hook
    return mark


def runs_on_loop(view: View | None) -> bool:
    return bool(getattr(view, "runs_on_loop", False))


def lane_of(view: View | None) -> str | None:
    return getattr(view, "lane", None)
