"""Faults the simulator injects on demand, and how each one is told apart from a real error.

A fault is an injected misbehaviour of a device or its network: the hub is expected to
survive it, and the device to recover. Every fault is counted, and a request that fails
*because of* a fault is counted as explained; any other failure is an unexplained error,
which makes ``dropsync simulate`` exit non-zero.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

#: Fault kinds with what one occurrence does and the default chance of it, per chance
#: (a poll cycle, or for ``corrupt`` one received chunk).
FAULT_KINDS: dict[str, tuple[str, float]] = {
    "drop": ("send a request, then drop the connection before the answer", 0.05),
    "corrupt": ("flip a byte of a received chunk; the device must catch it and refetch",
                0.05),
    "offline": ("go quiet for 2-4 poll intervals, then come back", 0.02),
    "stall": ("send half a request body, pause, then send the rest", 0.02),
    "bad-token": ("send a request with a wrong token; the hub must refuse it", 0.05),
    "bad-image": ("this share of devices cannot run a firmware image they install: a "
                  "reboot loop, a rollback, or never coming back (per device and image)",
                  0.2),
}
#: What a device that cannot run an image does: reports a boot loop, reports that it
#: rolled back to the image before, or goes quiet (until the fault is cleared).
BAD_IMAGE_MODES = ("reboot-loop", "rollback", "never-return")


@dataclass(frozen=True)
class FaultPlan:
    """Which faults to inject and how often (a probability per chance, 0..1)."""

    rates: dict[str, float] = field(default_factory=dict)
    #: Seconds a ``stall`` pauses mid-body.
    stall_s: float = 3.0

    @classmethod
    def parse(cls, text: str | None, stall_s: float = 3.0) -> FaultPlan:
        """``drop,corrupt=0.1`` -> drop at its default rate, corrupt at 10%."""
        rates: dict[str, float] = {}
        for part in (text or "").split(","):
            part = part.strip()
            if not part:
                continue
            name, _, rate = part.partition("=")
            name = name.strip()
            if name not in FAULT_KINDS:
                raise ValueError(f"unknown fault {name!r}; use {', '.join(FAULT_KINDS)}")
            value = float(rate) if rate else FAULT_KINDS[name][1]
            if not 0 <= value <= 1:
                raise ValueError(f"{name}: a rate is a probability between 0 and 1")
            rates[name] = value
        return cls(rates, stall_s)

    def roll(self, kind: str, rng: random.Random) -> bool:
        rate = self.rates.get(kind, 0.0)
        return rate > 0 and rng.random() < rate

    def bad_image(self, device_id: str, sha256: str) -> str | None:
        """How ``device_id`` fails to run the image ``sha256`` (a ``BAD_IMAGE_MODES``
        entry), or None. Fixed per device and image, so a fleet fails the same way each
        time an image is tried, and a test can tell beforehand which devices will."""
        share = self.rates.get("bad-image", 0.0)
        digest = hashlib.sha256(f"bad-image:{sha256}:{device_id}".encode()).digest()
        if int.from_bytes(digest[:4], "big") >= share * 2**32:
            return None
        return BAD_IMAGE_MODES[digest[4] % len(BAD_IMAGE_MODES)]

    def describe(self) -> str:
        return ", ".join(f"{k}={v:g}" for k, v in self.rates.items()) or "none"
