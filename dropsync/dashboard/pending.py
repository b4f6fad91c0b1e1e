"""The Pending page: boards that enrolled and wait for an operator, accepted or rejected
one at a time or many at once; and the count in the navigation.

Its own module and templates (``pending.html``); the rules are
``dropsync/fleet/enrollment.py``, the same the admin API and ``dropsync device
accept`` call. The list is not a live region: a refresh would clear the boxes an operator
is ticking. The overview's tile counts pending boards live.
"""

from __future__ import annotations

from flask import request, url_for

from ..api.context import current_hub
from ..errors import DropSyncError
from . import bp
from .auth import actor, wants_json
from .pages import confirmed, done, failed, render_page


@bp.app_template_global()
def pending_boards() -> int:
    """How many boards wait for an operator (the navigation's badge)."""
    return current_hub().enrollment.pending_count()


@bp.get("/pending")
def pending_list():
    enrollment = current_hub().enrollment
    return render_page("dashboard/pending.html", pending=enrollment.list("pending"),
                       refused=[e for e in enrollment.list() if e.get("refusals")][-20:],
                       keys=enrollment.list_keys())


def chosen() -> list[str]:
    """The boards a post names: one row's button, else every ticked box."""
    only = request.form.get("only")
    return [only] if only else request.form.getlist("hardware_id")


@bp.post("/pending/accept")
def accept_pending():
    back = url_for(".pending_list")
    boards = chosen()
    groups = [g for g in request.form.get("groups", "").replace(",", " ").split() if g]
    try:
        accepted = current_hub().enrollment.accept(boards, groups=groups or None,
                                                   actor=actor())
    except DropSyncError as exc:
        return failed(exc, back)
    if wants_json():
        return {"enrollments": accepted, "count": len(accepted)}
    return done(f"Accepted {len(accepted)} board(s): "
                + ", ".join(e["device_id"] for e in accepted[:10])
                + (" ..." if len(accepted) > 10 else "")
                + ". Each gets its token when it next asks.", back)


@bp.post("/pending/reject")
def reject_pending():
    back = url_for(".pending_list")
    boards = chosen()
    if page := confirmed(f"Reject {len(boards)} board(s)? They get no token, now or later.",
                         "Reject"):
        return page
    try:
        rejected = current_hub().enrollment.reject(boards, actor=actor())
    except DropSyncError as exc:
        return failed(exc, back)
    return done(f"Rejected {len(rejected)} board(s).", back)
