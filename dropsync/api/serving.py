"""How the server may run a view, declared on the view itself.

The bridge (``dropsync.bridge``) and the lanes (``lanes.py``) read these marks from the
app's URL map; neither keeps a list of paths of its own, so a route that moves or is
added keeps what its view says.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from werkzeug.exceptions import HTTPException

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


def loop_routes(app: Any) -> Callable[[str, str], bool]:
    """``runs_on_loop(method, path)`` for the server: whether the view the request
    reaches is marked ``@on_loop`` (a request that reaches none runs in a thread)."""
    urls = app.url_map.bind("hub")
    views = app.view_functions

    def runs_here(method: str, path: str) -> bool:
        try:
            endpoint, _ = urls.match(path, method)
        except HTTPException:
            return False
        return runs_on_loop(views.get(endpoint))
    return runs_here


def runs_on_loop(view: View | None) -> bool:
    return bool(getattr(view, "runs_on_loop", False))


def lane_of(view: View | None) -> str | None:
    return getattr(view, "lane", None)
