"""The Rollouts pages: every rollout, one rollout's waves live, and the forms that start,
pause, resume, abort and retry one.

Its own module and templates (``rollouts.html``, ``rollout.html`` and their live
regions); the rules are ``dropsync/sync/rollouts.py``, the same the admin API and
``dropsync rollout`` call. A rollout is started from a package's page.
"""

from __future__ import annotations

from flask import jsonify, request, url_for
from marshmallow import ValidationError

from ..api.context import current_hub
from ..errors import DropSyncError, ValidationFailed
from ..sync.rollout_schemas import RolloutCreateSchema
from ..sync.rollouts import DEFAULTS, OPEN_STATES, parse_percents, parse_target, target_label
from . import bp
from .auth import actor, wants_json
from .pages import confirmed, done, failed, render_page

#: The dashboard's actions on a rollout, as the rules name them.
ACTIONS = {"pause": "pause", "resume": "resume", "abort": "abort",
           "retry-failed": "retry_failed"}
#: Failed devices listed on a rollout's page (the admin API has them all).
FAILED_SHOWN = 50

bp.add_app_template_filter(target_label, "rollout_target")


@bp.get("/rollouts")
def rollout_list():
    found = current_hub().rollouts.list()
    if wants_json() and request.args.get("live") != "1":
        return jsonify({"rollouts": found, "count": len(found)})
    return render_page("dashboard/rollouts.html",
                       {"rollout-rows": "dashboard/_rollout_rows.html"}, rollouts=found)


@bp.get("/rollouts/<rollout_id>")
def rollout_detail(rollout_id: str):
    rollout = current_hub().rollouts.get(rollout_id)  # 404 for an unknown id
    if wants_json() and request.args.get("live") != "1":
        return jsonify(rollout)
    failures = [{"device_id": d, **entry} for d, entry in sorted(rollout["devices"].items())
                if entry["state"] == "failed"]
    return render_page("dashboard/rollout.html", {"rollout-live": "dashboard/_rollout.html"},
                       rollout=rollout, failures=failures[:FAILED_SHOWN],
                       failed_total=len(failures), open_states=OPEN_STATES)


@bp.post("/rollouts")
def start_rollout():
    """The package page's form: waves as people type them, checked by the API's schema."""
    package_id = request.form.get("package", "")
    back = url_for(".package_detail", package_id=package_id) if package_id else \
        url_for(".rollout_list")
    form = {k: v.strip() for k, v in request.form.items()}
    try:
        try:
            percents = parse_percents(form.get("waves", ""))
        except ValueError as exc:
            raise ValidationFailed("the form has errors", {"waves": [str(exc)]}) from None
        body = {"package": package_id, "target": parse_target(form.get("target", "")),
                "percents": percents or DEFAULTS["percents"],
                **{name: form[name] for name in ("canary", "success_threshold",
                                                 "error_threshold", "soak_s", "deadline_s",
                                                 "window") if form.get(name)}}
        try:
            spec = RolloutCreateSchema().load(body)
        except ValidationError as exc:
            raise ValidationFailed("the form has errors", exc.messages) from None
        rollout = current_hub().rollouts.create(spec, actor=actor())
    except DropSyncError as exc:
        return failed(exc, back)
    if wants_json():
        return jsonify(rollout), 201
    return done(f"Rollout {rollout['id']} started: {len(rollout['waves'])} waves, "
                f"{rollout['totals']['devices']} devices.",
                url_for(".rollout_detail", rollout_id=rollout["id"]))


@bp.post("/rollouts/<rollout_id>/pause", defaults={"action": "pause"})
@bp.post("/rollouts/<rollout_id>/resume", defaults={"action": "resume"})
@bp.post("/rollouts/<rollout_id>/abort", defaults={"action": "abort"})
@bp.post("/rollouts/<rollout_id>/retry-failed", defaults={"action": "retry-failed"})
def act_on_rollout(rollout_id: str, action: str):
    back = url_for(".rollout_detail", rollout_id=rollout_id)
    if action == "abort" and (page := confirmed(
            f"Abort rollout {rollout_id}? No further wave starts; devices already updated "
            "stay as they are.", "Abort")):
        return page
    try:
        rollout = getattr(current_hub().rollouts, ACTIONS[action])(rollout_id, actor=actor())
    except DropSyncError as exc:
        return failed(exc, back)
    if wants_json():
        return jsonify(rollout)
    return done(f"Rollout {rollout_id}: {rollout['state']}.", back)
