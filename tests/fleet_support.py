"""The simulator's fleet beside a test: its own thread and event loop, stopped after."""

from __future__ import annotations

import asyncio
import threading

from dropsync.simulator.fleet import Fleet, FleetOptions


class RunningFleet:
    """The simulator's fleet in its own thread and event loop, beside the test.

    ``tokens`` maps device ids to tokens (``None`` each, with ``enroll_key`` in
    ``options``: the devices enroll first)."""

    def __init__(self, hub_url, tokens, **options):
        self.fleet = Fleet(hub_url, tokens, FleetOptions(**{
            "devices": len(tokens), "ramp_s": 1, "heartbeat_every_s": 1,
            "manifest_every_s": 1, "request_timeout_s": 10, "seed": 21, **options}))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_until_complete,
                                       args=(self.fleet.run(stop_on_signals=()),))

    def start(self) -> RunningFleet:
        self.thread.start()
        return self

    def offered(self, sha256):
        return set(self.fleet.stats.offered.get(sha256, ()))

    def stop(self):
        if self.loop.is_closed():
            return  # stopped already
        self.loop.call_soon_threadsafe(self.fleet.stop.set)
        self.thread.join(60)
        self.loop.close()
