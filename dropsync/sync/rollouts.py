"""Rollouts: one package reaches its target devices in waves, and pauses by itself.

Plain rules on plain dicts (a rollout document as the ``rollouts`` store keeps it), so the
manifest builder, download authorisation, the stock updater's route, a periodic tick, the
CLI and tests all ask the same questions without a request: :func:`may_offer` ("may this
device see this package now?"), :func:`record_outcome` (a device reported) and
:func:`advance` (thresholds, soak, deadlines). Every state change returns an event dict
for the activity log.

States in the style of Eclipse hawkBit. Rollout: scheduled, running, paused, finished,
aborted. Wave: waiting, running, succeeded, failed. Wave membership is chosen once, at
creation, from a stable hash of the rollout id and device id, and stored: a restart or a
newly registered device does not reshuffle it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from typing import Any

ROLLOUT_STATES = ("scheduled", "running", "paused", "finished", "aborted")
WAVE_STATES = ("waiting", "running", "succeeded", "failed")
#: Outcomes a device can have inside its wave.
PENDING, SUCCEEDED, FAILED = "pending", "succeeded", "failed"


class RolloutError(ValueError):
    """An operation that the rollout's current state does not allow."""


def plan_waves(device_ids: Iterable[str], *, canary: int, percents: list[float],
               seed: str) -> list[list[str]]:
    """Split devices into waves: ``canary`` devices, then cumulative percentages of all.

    The order is a hash of ``seed`` and the device id, so it is the same on every call and
    independent of the order devices were registered in. The last wave always takes the
    remainder, so every targeted device is in exactly one wave.
    """
    ordered = sorted(set(device_ids),
                     key=lambda d: hashlib.sha256(f"{seed}/{d}".encode()).hexdigest())
    total = len(ordered)
    if canary < 0 or any(not 0 < p <= 100 for p in percents):
        raise RolloutError("canary must be >= 0 and percentages in (0, 100]")
    if list(percents) != sorted(percents):
        raise RolloutError("percentages must rise")
    cuts = [min(canary, total)] if canary else []
    for percent in percents:
        cuts.append(max(cuts[-1] if cuts else 0, math.ceil(total * percent / 100)))
    if not cuts or cuts[-1] < total:
        cuts.append(total)
    waves, start = [], 0
    for cut in cuts:
        if cut > start:
            waves.append(ordered[start:cut])
            start = cut
    return waves


def new_rollout(rollout_id: str, package_id: str, device_ids: Iterable[str], *,
                canary: int = 1, percents: list[float] | None = None,
                success_threshold: float = 0.95, error_threshold: float = 0.1,
                soak_s: float = 0.0, deadline_s: float = 900.0, now: float,
                target: Any = None) -> dict[str, Any]:
    """A scheduled rollout with its waves chosen once."""
    if not 0 < success_threshold <= 1 or not 0 <= error_threshold < 1:
        raise RolloutError("thresholds are fractions: success in (0, 1], error in [0, 1)")
    waves = plan_waves(device_ids, canary=canary, percents=percents or [10, 50, 100],
                       seed=rollout_id)
    if not waves:
        raise RolloutError("the target has no devices")
    return {
        "id": rollout_id, "package_id": package_id, "target": target, "state": "scheduled",
        "created_at": now, "success_threshold": success_threshold,
        "error_threshold": error_threshold, "soak_s": soak_s, "deadline_s": deadline_s,
        "waves": [{"state": "waiting", "devices": devices, "started_at": None,
                   "threshold_met_at": None, "finished_at": None} for devices in waves],
        "outcomes": {},
    }


def _event(rollout: dict, what: str, **fields: Any) -> dict[str, Any]:
    return {"kind": "rollout", "rollout_id": rollout["id"], "event": what,
            "state": rollout["state"], **fields}


def wave_of(rollout: dict, device_id: str) -> int | None:
    for index, wave in enumerate(rollout["waves"]):
        if device_id in wave["devices"]:
            return index
    return None


def may_offer(rollout: dict, device_id: str) -> bool:
    """May ``device_id`` see the rollout's package now? Only devices of a wave that has
    started (and whose rollout has started): a paused or aborted rollout keeps what it
    already gave, and offers nothing new."""
    if rollout["state"] == "scheduled":
        return False
    index = wave_of(rollout, device_id)
    return index is not None and rollout["waves"][index]["state"] != "waiting"


def _start_wave(rollout: dict, index: int, now: float) -> dict[str, Any]:
    wave = rollout["waves"][index]
    wave.update(state="running", started_at=now, threshold_met_at=None)
    for device_id in wave["devices"]:
        rollout["outcomes"].setdefault(device_id, {"outcome": PENDING, "at": None})
    return _event(rollout, "wave_started", wave=index, devices=len(wave["devices"]))


def start(rollout: dict, now: float) -> list[dict[str, Any]]:
    if rollout["state"] != "scheduled":
        raise RolloutError(f"a {rollout['state']} rollout cannot start")
    rollout["state"] = "running"
    return [_event(rollout, "started"), _start_wave(rollout, 0, now)]


def record_outcome(rollout: dict, device_id: str, succeeded: bool,
                   now: float) -> list[dict[str, Any]]:
    """A device of a started wave reported success or failure; others are ignored."""
    if not may_offer(rollout, device_id):
        return []
    outcome = SUCCEEDED if succeeded else FAILED
    current = rollout["outcomes"].get(device_id, {})
    if current.get("outcome") == outcome:
        return []
    rollout["outcomes"][device_id] = {"outcome": outcome, "at": now}
    return [_event(rollout, f"device_{outcome}", device_id=device_id)]


def wave_counts(rollout: dict, index: int) -> dict[str, int]:
    counts = {PENDING: 0, SUCCEEDED: 0, FAILED: 0}
    for device_id in rollout["waves"][index]["devices"]:
        counts[rollout["outcomes"].get(device_id, {}).get("outcome", PENDING)] += 1
    return counts


def running_wave(rollout: dict) -> int | None:
    for index, wave in enumerate(rollout["waves"]):
        if wave["state"] == "running":
            return index
    return None


def advance(rollout: dict, now: float) -> list[dict[str, Any]]:
    """Move a running rollout on: fail devices past their deadline, pause on the error
    threshold, and start the next wave once the success threshold has held for the soak
    time. Called after device reports and by the hub's periodic tick."""
    if rollout["state"] != "running":
        return []
    index = running_wave(rollout)
    if index is None:
        return []
    wave, events = rollout["waves"][index], []
    if now - wave["started_at"] >= rollout["deadline_s"]:
        for device_id in wave["devices"]:
            if rollout["outcomes"][device_id]["outcome"] == PENDING:
                rollout["outcomes"][device_id] = {"outcome": FAILED, "at": now,
                                                  "reason": "deadline"}
                events.append(_event(rollout, "device_failed", device_id=device_id,
                                     reason="deadline"))
    counts, size = wave_counts(rollout, index), len(wave["devices"])
    if counts[FAILED] / size > rollout["error_threshold"]:
        wave.update(state="failed", finished_at=now)
        rollout["state"] = "paused"
        events.append(_event(rollout, "paused", wave=index, reason="error_threshold",
                             failed=counts[FAILED], devices=size))
        return events
    if counts[SUCCEEDED] / size < rollout["success_threshold"]:
        wave["threshold_met_at"] = None
        return events
    if wave["threshold_met_at"] is None:
        wave["threshold_met_at"] = now
    if now - wave["threshold_met_at"] < rollout["soak_s"]:
        return events
    wave.update(state="succeeded", finished_at=now)
    events.append(_event(rollout, "wave_succeeded", wave=index))
    if index + 1 < len(rollout["waves"]):
        events.append(_start_wave(rollout, index + 1, now))
    else:
        rollout["state"] = "finished"
        events.append(_event(rollout, "finished"))
    return events


def pause(rollout: dict, now: float) -> list[dict[str, Any]]:
    if rollout["state"] != "running":
        raise RolloutError(f"a {rollout['state']} rollout cannot pause")
    rollout["state"] = "paused"
    return [_event(rollout, "paused", reason="operator")]


def retry_failed(rollout: dict, now: float) -> list[dict[str, Any]]:
    """Give every failed device of the started waves another chance (after a fix)."""
    if rollout["state"] in ("finished", "aborted"):
        raise RolloutError(f"a {rollout['state']} rollout has nothing to retry")
    retried = [d for d, o in rollout["outcomes"].items() if o["outcome"] == FAILED]
    for device_id in retried:
        rollout["outcomes"][device_id] = {"outcome": PENDING, "at": None}
    return [_event(rollout, "retried", devices=len(retried))] if retried else []


def resume(rollout: dict, now: float) -> list[dict[str, Any]]:
    """Carry on a paused rollout. A wave that failed runs again, its failed devices retried
    and its deadline counted from now, so it does not pause again at once."""
    if rollout["state"] != "paused":
        raise RolloutError(f"a {rollout['state']} rollout cannot resume")
    events = []
    for index, wave in enumerate(rollout["waves"]):
        if wave["state"] == "failed":
            for device_id in wave["devices"]:
                if rollout["outcomes"][device_id]["outcome"] == FAILED:
                    rollout["outcomes"][device_id] = {"outcome": PENDING, "at": None}
            wave.update(state="running", started_at=now, threshold_met_at=None,
                        finished_at=None)
            events.append(_event(rollout, "wave_retried", wave=index))
    rollout["state"] = "running"
    return [_event(rollout, "resumed"), *events]


def abort(rollout: dict, now: float) -> list[dict[str, Any]]:
    """Stop further waves; devices already updated stay as they are."""
    if rollout["state"] in ("finished", "aborted"):
        raise RolloutError(f"a {rollout['state']} rollout cannot abort")
    rollout["state"] = "aborted"
    return [_event(rollout, "aborted")]


def summary(rollout: dict) -> dict[str, Any]:
    """What a page or the API shows: state and each wave's counts."""
    return {"id": rollout["id"], "package_id": rollout["package_id"],
            "state": rollout["state"],
            "waves": [{"state": wave["state"], "devices": len(wave["devices"]),
                       **wave_counts(rollout, index)}
                      for index, wave in enumerate(rollout["waves"])]}
