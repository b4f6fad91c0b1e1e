"""What a device's poll feels while a load generator drives the hub: a separate process.

A load generator that simulates hundreds of nodes in one Python process measures its own
event loop's lag along with the hub's answer: with the generator busy hashing downloads,
its poll timings said a second where the hub had answered in milliseconds. This probe
runs on its own, polls as a few devices of its own at a steady pace over keep-alive
connections (blocking ``http.client``: a request is timed from send to last byte), and
reports when each poll was made (``time.monotonic()``, the same clock in every process on
Linux) and how long it took, so a bench can cut out the window it cares about.

    python bench/poll_probe.py URL TOKENS.json --rate 20 --out probe.json
    (runs until SIGTERM or SIGINT, then writes ``[[when, seconds, status], ...]``)
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import time
from pathlib import Path
from urllib.parse import urlsplit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("tokens", type=Path, help='{"device id": "token"} of the probe devices')
    parser.add_argument("--rate", type=float, default=20.0, help="polls per second in all")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))
    where = urlsplit(args.url)
    devices = list(json.loads(args.tokens.read_text()).items())
    connections = {}
    samples: list[tuple[float, float, int]] = []
    step = 1.0 / args.rate
    next_at = time.monotonic()
    turn = 0
    while not stopping:
        device_id, token = devices[turn % len(devices)]
        turn += 1
        connection = connections.get(device_id)
        if connection is None:
            connection = connections[device_id] = http.client.HTTPConnection(
                where.hostname, where.port, timeout=30)
        started = time.monotonic()
        try:
            connection.request("GET", f"/api/v1/device/commands/{device_id}",
                               headers={"Authorization": f"Bearer {token}"})
            answer = connection.getresponse()
            answer.read()
            status = answer.status
        except (OSError, http.client.HTTPException):
            status = 0
            connection.close()
            connections.pop(device_id, None)
        samples.append((started, time.monotonic() - started, status))
        next_at += step
        pause = next_at - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        else:
            next_at = time.monotonic()  # fell behind: carry on from now, do not burst
    args.out.write_text(json.dumps(samples))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
