"""Rollout rules with 200 simulated devices, kept in the real stores across restarts."""

from __future__ import annotations

import random

import pytest

from dropsync.store import Stores
from dropsync.sync import rollouts

DEVICES = [f"node-{n:03d}" for n in range(200)]


def simulate(stores: Stores, rollout_id: str, *, bad: set[str], now: float,
             seen: set[str]) -> float:
    """One poll round: every device asks whether it may see the package; those offered it
    install and report. Saves the rollout after the round, as the hub does."""
    rollout = stores.rollouts.get(rollout_id)
    for device_id in DEVICES:
        if rollouts.may_offer(rollout, device_id):
            seen.add(device_id)
            outcome = rollout["outcomes"].get(device_id, {}).get("outcome")
            if outcome == rollouts.PENDING:
                rollouts.record_outcome(rollout, device_id, device_id not in bad, now)
    rollouts.advance(rollout, now)
    stores.rollouts.update(rollout_id, rollout)
    return now + 1


def started_devices(rollout: dict) -> set[str]:
    return {d for wave in rollout["waves"] if wave["state"] != "waiting"
            for d in wave["devices"]}


def test_waves_are_canary_then_cumulative_percentages_and_stable():
    waves = rollouts.plan_waves(reversed(DEVICES), canary=1, percents=[10, 50, 100],
                                seed="r1")
    assert [len(w) for w in waves] == [1, 19, 80, 100]
    assert sorted(d for w in waves for d in w) == DEVICES
    assert waves == rollouts.plan_waves(DEVICES, canary=1, percents=[10, 50, 100],
                                        seed="r1")


def test_good_image_reaches_all_200_across_a_restart(tmp_path):
    stores = Stores(tmp_path)
    rollout = rollouts.new_rollout("good", "pkg-1", DEVICES, canary=1,
                                   percents=[10, 50, 100], soak_s=2, now=0)
    rollouts.start(rollout, 0)
    stores.rollouts.insert(rollout)
    now, seen, restarted = 1.0, set(), False
    while stores.rollouts.get("good")["state"] == "running" and now < 100:
        now = simulate(stores, "good", bad=set(), now=now, seen=seen)
        current = stores.rollouts.get("good")
        assert seen <= started_devices(current)
        if not restarted and current["waves"][2]["state"] == "running":
            before = current
            stores.close()
            stores = Stores(tmp_path)
            assert stores.rollouts.get("good") == before
            restarted = True
    final = stores.rollouts.get("good")
    assert restarted
    assert final["state"] == "finished"
    assert [w["state"] for w in final["waves"]] == ["succeeded"] * 4
    assert {o["outcome"] for o in final["outcomes"].values()} == {"succeeded"}
    assert seen == set(DEVICES)
    stores.close()


def test_bad_image_pauses_in_first_percentage_wave_and_resume_finishes(tmp_path):
    stores = Stores(tmp_path)
    rollout = rollouts.new_rollout("bad", "pkg-2", DEVICES, canary=1,
                                   percents=[10, 50, 100], error_threshold=0.1,
                                   success_threshold=0.9, now=0)
    canary = rollout["waves"][0]["devices"][0]
    bad = set(random.Random(7).sample([d for d in DEVICES if d != canary], 40))
    rollouts.start(rollout, 0)
    stores.rollouts.insert(rollout)
    now, seen = 1.0, set()
    for _ in range(10):
        now = simulate(stores, "bad", bad=bad, now=now, seen=seen)
    paused = stores.rollouts.get("bad")
    assert paused["state"] == "paused"
    assert [w["state"] for w in paused["waves"]] == ["succeeded", "failed", "waiting",
                                                      "waiting"]
    assert seen == started_devices(paused) == set(paused["waves"][0]["devices"]) | set(
        paused["waves"][1]["devices"])
    stores.close()
    stores = Stores(tmp_path)
    rollout = stores.rollouts.get("bad")
    rollouts.resume(rollout, now)
    stores.rollouts.update("bad", rollout)
    for _ in range(10):
        now = simulate(stores, "bad", bad=set(), now=now, seen=seen)
    final = stores.rollouts.get("bad")
    assert final["state"] == "finished"
    assert seen == set(DEVICES)
    stores.close()


def test_deadline_fails_silent_devices_and_abort_stops_further_waves():
    rollout = rollouts.new_rollout("quiet", "pkg-3", DEVICES[:20], canary=0,
                                   percents=[50, 100], deadline_s=5, now=0)
    rollouts.start(rollout, 0)
    assert rollouts.advance(rollout, 4) == []
    events = rollouts.advance(rollout, 5)
    assert events[-1]["event"] == "paused" and rollout["state"] == "paused"
    rollouts.abort(rollout, 6)
    waiting = rollout["waves"][1]["devices"][0]
    assert not rollouts.may_offer(rollout, waiting)
    assert rollouts.may_offer(rollout, rollout["waves"][0]["devices"][0])
    with pytest.raises(rollouts.RolloutError):
        rollouts.resume(rollout, 7)


def test_scheduled_rollout_offers_nothing_and_bad_settings_are_refused():
    rollout = rollouts.new_rollout("later", "pkg-4", DEVICES, now=0)
    assert not any(rollouts.may_offer(rollout, d) for d in DEVICES)
    with pytest.raises(rollouts.RolloutError):
        rollouts.new_rollout("x", "p", DEVICES, percents=[50, 10], now=0)
    with pytest.raises(rollouts.RolloutError):
        rollouts.new_rollout("x", "p", [], now=0)
