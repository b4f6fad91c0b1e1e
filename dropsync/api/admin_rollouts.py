"""Admin routes for rollouts: create, list, show, pause, resume, abort, retry the failed.

They live on the admin blueprint (``/api/v1/admin``, admin token); the rules are in
``sync/rollouts.py``.
"""

from __future__ import annotations

from flask import g

from ..sync.rollout_schemas import (
    RolloutCreateSchema,
    RolloutListQuerySchema,
    RolloutListSchema,
    RolloutSchema,
)
from .admin import bp
from .context import current_hub
from .contract import contract


@bp.post("/rollouts")
@contract(body=RolloutCreateSchema, response=RolloutSchema, status=201, errors=(404, 409))
def create_rollout(body):
    """Start a rollout of a package (or schedule it with ``start_at``): its waves are
    chosen now and kept; a staged image's draft becomes this rollout."""
    return current_hub().rollouts.create(body, actor=g.admin)


@bp.get("/rollouts")
@contract(query=RolloutListQuerySchema, response=RolloutListSchema)
def list_rollouts(query):
    """List rollouts, newest first, with each wave's counts."""
    found = current_hub().rollouts.list(query.get("state"))
    return {"rollouts": found, "count": len(found)}


@bp.get("/rollouts/<rollout_id>")
@contract(response=RolloutSchema)
def show_rollout(rollout_id: str):
    """Show a rollout: its waves, their counts, and each device's outcome."""
    return current_hub().rollouts.get(rollout_id)


def action(name: str, doc: str):
    def view(rollout_id: str):
        return getattr(current_hub().rollouts, name)(rollout_id, actor=g.admin)
    view.__name__ = f"{name}_rollout"
    view.__doc__ = doc
    path = name.replace("_", "-")
    bp.post(f"/rollouts/<rollout_id>/{path}")(
        contract(response=RolloutSchema, errors=(409,))(view))


action("pause", "Pause a rollout: no further wave starts; started ones keep the package.")
action("resume", "Resume a paused rollout (a wave paused by its error threshold carries on).")
action("abort", "Abort a rollout: no further wave starts; updated devices stay as they are.")
action("retry_failed", "Count a rollout's failed devices as pending again, with a new "
                       "deadline.")
