"""Crash safety: SIGKILL a writer at random moments; every acknowledged write survives."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dropsync.store import Stores

WRITER = Path(__file__).with_name("crash_writer.py")
KILLS = 50


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_no_acknowledged_write(tmp_path):
    rng = random.Random(20261126)
    data_dir = tmp_path / "data"
    acknowledged_history: set[int] = set()
    acknowledged_devices: set[str] = set()
    last_counter = -1
    last_checkpoint = -1
    next_n = 0
    killed_mid_write = 0
    for kill in range(KILLS):
        child = subprocess.Popen([sys.executable, str(WRITER), str(data_dir), str(next_n)],
                                 stdout=subprocess.PIPE, text=True)
        # Kill anywhere: while it opens and recovers the stores, or mid-write.
        time.sleep(rng.uniform(0.05, 0.6))
        child.send_signal(signal.SIGKILL)
        output, _ = child.communicate(timeout=10)
        assert child.returncode == -signal.SIGKILL
        for line in output.splitlines():
            kind, _, value = line.partition(" ")
            if kind == "dev":
                last_counter = int(value)
            elif kind == "hist":
                acknowledged_history.add(int(value))
            elif kind == "add":
                acknowledged_devices.add(value)
            elif kind == "live":
                last_checkpoint = int(value)
        killed_mid_write += "ready" in output

        stores = Stores(data_dir, history_segment_records=200, history_retention=1_000_000)
        try:
            counter = stores.devices.get("counter")["count"] if "counter" in stores.devices \
                else -1
            # the write in flight when killed may or may not have landed; none acked is lost
            assert counter >= last_counter, f"kill {kill}: counter went back"
            assert acknowledged_devices <= {d["id"] for d in stores.devices.all()}
            stored = {r["n"] for r in stores.history["events"].records()}
            assert acknowledged_history <= stored, f"kill {kill}: lost history"
            assert not list(data_dir.rglob("*.tmp")), "temp files left after restart"
            # liveness.json parsed (or Stores would have refused); its checkpoint is kept
            assert stores.liveness.get("counter").get("last_seen", -1) >= last_checkpoint
            next_n = max(counter, last_counter) + 1
        finally:
            stores.close()
    assert len(acknowledged_history) > 200, "the writer barely wrote: the test proved little"
    assert killed_mid_write >= KILLS // 2, "most kills should land mid-write"
