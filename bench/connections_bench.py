"""10,000 devices at a 10 s poll, each on its own keep-alive connection, from a lean load.

``dropsync simulate`` models a node in full (aiohttp, jittered timers, faults): past a few
thousand devices its own event loop lags by seconds and its timings measure that lag more
than the hub (see capacity_bench). wrk cannot pace thousands of connections (with
``delay()`` it made ~80 requests/s whatever the count). This bench keeps what matters for
the hub and drops the rest: ``--devices`` connections, one per device, each sending a
request every ``--interval`` seconds (10, jittered ±10%, the first at a random moment of
the first interval as a fleet powering up): five polls, then a heartbeat (``POST``, a
node's heartbeat a minute). Requests are prepared bytes on asyncio streams (uvloop when
installed), about a tenth of aiohttp's cost. Every device is registered through the admin
API's import.

Latency is measured twice: by the generator (send to last byte) and, as the figure held
against the target, by ``poll_probe.py``: a separate process polling as ten more devices,
which the generator's own lag cannot touch. Reported: requests/s achieved and expected,
p50/p99/max, errors (non-2xx, connection failures), the generator's loop lag, the hub's
CPU and RSS. The issue's target: p99 < 100 ms and no errors at 10,000 devices. A real hub
(``dropsync serve``, rate limits on) in a temporary folder; traffic stays on 127.0.0.1.

    .venv/bin/python bench/connections_bench.py                     # 10,000 devices, 3 rounds
    .venv/bin/python bench/connections_bench.py --devices 2000 --rounds 1 --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from capacity_bench import Hub, register, wait_for_quiet  # noqa: E402 (bench helpers)
from fleet_bench import latency_summary, start_probe, stop_probe  # noqa: E402

RESULTS_DIR = BENCH_DIR / "results"
P99_TARGET_MS = 100.0
HEARTBEAT_EVERY = 6  # requests: a heartbeat a minute at a 10 s poll
PROBE_DEVICES = 10
HEARTBEAT = json.dumps({"firmware": "bench-1.0", "uptime_s": 60, "free_heap": 30000,
                        "rssi": -60}).encode()


def prepared(device_id: str, token: str, port: int, close: bool = False) \
        -> tuple[bytes, bytes]:
    head = f"Host: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
    if close:  # a connection per wake-up, as the firmware's HTTP/1.0 transport makes
        head += "Connection: close\r\n"
    poll = f"GET /api/v1/device/commands/{device_id} HTTP/1.1\r\n{head}\r\n".encode()
    beat = (f"POST /api/v1/device/heartbeat/{device_id} HTTP/1.1\r\n{head}"
            f"Content-Type: application/json\r\nContent-Length: {len(HEARTBEAT)}\r\n\r\n"
            ).encode() + HEARTBEAT
    return poll, beat


class Fleet:
    def __init__(self, port: int, interval_s: float, per_request: bool = False):
        self.port, self.interval_s = port, interval_s
        #: A new connection for every request (closed after it), instead of one kept open.
        self.per_request = per_request
        self.samples: list[tuple[float, float]] = []  # (when, seconds)
        self.errors: list[str] = []
        self.lags: list[float] = []
        self.stop = asyncio.Event()

    async def device(self, device_id: str, token: str) -> None:
        poll, beat = prepared(device_id, token, self.port, close=self.per_request)
        rng = random.Random(device_id)
        await asyncio.sleep(rng.uniform(0, self.interval_s))
        reader = writer = None
        count = 0
        while not self.stop.is_set():
            count += 1
            started = time.monotonic()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.write(beat if count % HEARTBEAT_EVERY == 0 else poll)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                await reader.readexactly(length)
                self.samples.append((started, time.monotonic() - started))
                if self.per_request:
                    writer.close()
                    reader = writer = None
                if status >= 300:
                    self.errors.append(f"{status}")
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                self.errors.append(type(exc).__name__)
                if writer is not None:
                    writer.close()
                reader = writer = None
            pause = self.interval_s * rng.uniform(0.9, 1.1)
            try:
                await asyncio.wait_for(self.stop.wait(), pause)
            except TimeoutError:
                pass
        if writer is not None:
            writer.close()

    async def watch_lag(self) -> None:
        while not self.stop.is_set():
            planned = time.monotonic() + 0.1
            await asyncio.sleep(0.1)
            self.lags.append(time.monotonic() - planned)


async def drive(hub: Hub, tokens: dict[str, str], probes: dict[str, str], args,
                work: Path) -> list[dict]:
    fleet = Fleet(hub.port, args.interval, per_request=args.connection_per_request)
    tasks = [asyncio.create_task(fleet.device(d, t)) for d, t in tokens.items()]
    lag = asyncio.create_task(fleet.watch_lag())
    probe = start_probe(hub.url, list(probes.items()), work, args.probe_rate)
    print(f"warming up: one interval ({args.interval:g} s), every device's first contact, "
          "not counted", flush=True)
    await asyncio.sleep(args.interval + 2)
    windows = []
    for _ in range(args.rounds):
        cpu_before, started = hub.cpu_s(), time.monotonic()
        load_before = os.getloadavg()[0]
        await asyncio.sleep(args.duration)
        windows.append((started, time.monotonic(), cpu_before, load_before,
                        hub.cpu_s(), hub.rss_bytes(), os.getloadavg()[0]))
    fleet.stop.set()
    await asyncio.gather(*tasks, lag, return_exceptions=True)
    probed = stop_probe(*probe)
    rounds = []
    for number, (start, end, cpu0, load0, cpu1, rss, load1) in enumerate(windows, 1):
        mine = [s * 1000 for when, s in fleet.samples if start <= when < end]
        seen = [s * 1000 for when, s, _ in probed if start <= when < end]
        rounds.append({
            "round": number, "req_per_s": round(len(mine) / (end - start), 1),
            "expected_req_per_s": round(len(tokens) / args.interval, 1),
            "generator": latency_summary(mine), "probe": latency_summary(seen),
            "probe_errors": sum(1 for when, _, status in probed
                                if start <= when < end and status != 200),
            "hub_cpu_share_of_a_core": round((cpu1 - cpu0) / (end - start), 3),
            "hub_rss_mb": round(rss / 2**20, 1), "load_before": round(load0, 2),
            "load_after": round(load1, 2)})
    lags = sorted(fleet.lags)
    for r in rounds:
        r["errors"] = len(fleet.errors)  # over the whole run, warm-up included
        r["generator_lag_p99_ms"] = round(lags[int(len(lags) * 0.99)] * 1000, 1) \
            if lags else 0.0
    if fleet.errors:
        print(f"errors: {len(fleet.errors)} ({sorted(set(fleet.errors))[:5]})")
    return rounds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connection-per-request", action="store_true",
                        help="open a connection for every request and close it after, as "
                             "the firmware does (HTTP/1.0): few sockets are open at once, "
                             "so fleets past the 20,000 open files a process may hold "
                             "here can be driven")
    parser.add_argument("--probe-rate", type=float, default=20.0)
    args = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # a socket per device
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="connections-", dir=RESULTS_DIR))
    try:
        wait_for_quiet()
        hub = Hub(work, int(args.interval))
        try:
            tokens: dict[str, str] = {}
            took = register(hub, tokens, args.devices + PROBE_DEVICES, prefix="conn-")
            print(f"{args.devices + PROBE_DEVICES:,} devices imported in {took:.1f} s",
                  flush=True)
            # a hub serves a fleet it knew at start (as after any restart)
            hub.stop()
            hub = Hub(work, int(args.interval))
            items = list(tokens.items())
            fleet, probes = dict(items[:args.devices]), dict(items[args.devices:])
            rounds = asyncio.run(drive(hub, fleet, probes, args, work))
        finally:
            hub.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for r in rounds:
        print(f"round {r['round']}: {r['req_per_s']:.0f} req/s (expected "
              f"{r['expected_req_per_s']:.0f}); probe p50 {r['probe']['p50_ms']:.1f} ms, "
              f"p99 {r['probe']['p99_ms']:.1f} ms, max {r['probe']['max_ms']:.0f} ms "
              f"({r['probe']['count']} polls); generator p99 {r['generator']['p99_ms']:.1f}"
              f" ms (its loop lag p99 {r['generator_lag_p99_ms']:.0f} ms); hub CPU "
              f"{r['hub_cpu_share_of_a_core']:.0%} of a core, RSS {r['hub_rss_mb']} MB; "
              f"load {r['load_before']}->{r['load_after']}", flush=True)
    p99 = statistics.median(r["probe"]["p99_ms"] for r in rounds)
    errors = rounds[-1]["errors"] + sum(r["probe_errors"] for r in rounds)
    pace = min(r["req_per_s"] / r["expected_req_per_s"] for r in rounds)
    held = p99 < P99_TARGET_MS and errors == 0 and pace >= 0.9
    print(f"\n{args.devices:,} devices at a {args.interval:g} s poll: median probe p99 "
          f"{p99:.1f} ms over {len(rounds)} rounds, {errors} errors, pace kept "
          f"{pace:.0%}: {'PASS' if held else 'MISS'} (target p99 < {P99_TARGET_MS:g} ms, "
          "0 errors)")
    out = RESULTS_DIR / f"connections_bench-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.write_text(json.dumps({"args": vars(args), "rounds": rounds}, indent=2) + "\n")
    print(f"figures written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
