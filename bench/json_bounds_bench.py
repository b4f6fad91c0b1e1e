"""What the hostile-input bounds cost, as ratios against the unbounded code.

- ``loads_bounded`` (JSON with a nesting limit) against plain ``json.loads``, for a
  device's message, an operator's 4 KiB command and a 600 KiB body full of brackets;
- the store's copy without recursion (``detached``) against the recursive copy it
  replaced, for a device document (every authenticated request copies one).

Each pair runs in alternating rounds in the same process; medians of the rounds are
reported. Absolute times move with the machine's load; the ratios are what count.

    .venv/bin/python bench/json_bounds_bench.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import timeit
from typing import Any

from dropsync.jsonbounds import loads_bounded
from dropsync.store.tables import detached


def recursive_copy(doc: dict) -> dict:
    """The store's copy before the bounds (a RecursionError past ~490 levels in the hub)."""
    def copy(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: copy(item) for key, item in value.items()}
        if isinstance(value, list):
            return [copy(item) for item in value]
        return value
    return {key: copy(value) for key, value in doc.items()}


MESSAGE = json.dumps({"level": "info", "text": "boot ok", "data": {"v": [1, 2, 3]},
                      "timestamp": 1_796_000_000}).encode()
COMMAND = json.dumps({"target": "all", "name": "configure", "args": {
    "sensors": [{"id": i, "pins": [i, i + 1], "cal": {"a": 1.5, "b": [i]}}
                for i in range(40)]}}).encode()
BRACKETS = json.dumps({"args": [{"k": [i, {"x": [i]}]} for i in range(20_000)]}).encode()
DEVICE = {"id": "esp001", "name": "Greenhouse 1", "type": "esp8266", "groups": ["a", "b"],
          "enabled": True, "token_hash": "a" * 64, "created_at": "2026-12-01T00:00:00Z",
          "updated_at": "2026-12-01T00:00:00Z", "poll_interval_s": None}


def per_call_us(call, number: int) -> float:
    return timeit.timeit(call, number=number) / number * 1e6


def compare(name: str, baseline, candidate, number: int, rounds: int) -> None:
    base, cand = [], []
    for _ in range(rounds):  # alternate, so load drifts hit both alike
        base.append(per_call_us(baseline, number))
        cand.append(per_call_us(candidate, number))
    b, c = statistics.median(base), statistics.median(cand)
    print(f"{name:38} baseline {b:10.1f} us   bounded {c:10.1f} us   ratio {c / b:5.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    rounds = parser.parse_args().rounds
    for name, body, number in ((f"message ({len(MESSAGE)} B)", MESSAGE, 20_000),
                               (f"command ({len(COMMAND)} B)", COMMAND, 2_000),
                               (f"brackets ({len(BRACKETS) // 1024} KiB)", BRACKETS, 3)):
        compare(f"parse {name}", lambda b=body: json.loads(b),
                lambda b=body: loads_bounded(b), number, rounds)
    compare("copy a device document", lambda: recursive_copy(DEVICE),
            lambda: detached(DEVICE), 50_000, rounds)


if __name__ == "__main__":
    main()
