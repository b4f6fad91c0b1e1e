"""Benchmark: a node's polls while one address floods the enrollment route.

What it measures: the p50 and p99 latency of a polling node (a poll every 20 ms on its
own kept-alive connection) against a real hub (``dropsync serve``, granian), first
alone (the baseline) and then while ``--connections`` (20) connections from the same address send
``--flood`` enrollments, each from a new MAC, as fast as the hub answers them. Alternated
``--rounds`` times; the medians are reported, and the ratio flood/baseline (the target:
p99 within 2x). Also: what the flood got (429 once the address's ``RATE_LIMIT_ENROLL``
is spent, 503 once ``ENROLL_PENDING_MAX`` boards wait) and the pending list at the end.
Traffic goes to 127.0.0.1 only and every phase is bounded in count.

    .venv/bin/python bench/enroll_flood_bench.py
    .venv/bin/python bench/enroll_flood_bench.py --flood 2000 --rounds 1   # quick
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from benchkit import Server, clean_environment, free_port, venv_tool  # noqa: E402

ADMIN_TOKEN = "bench-admin-token-0123456789abcdef"


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def admin(session, url, method, path, body=None):
    async with session.request(method, f"{url}/api/v1/admin{path}", json=body,
                               headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as r:
        return await r.json()


async def poller(url, token, stop, latencies):
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            started = time.perf_counter()
            async with session.get(f"{url}/api/v1/device/commands/steady",
                                   headers={"Authorization": f"Bearer {token}"}) as r:
                await r.read()
                assert r.status == 200, r.status
            latencies.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(0.02)


async def flood(url, key, first, count, statuses):
    async with aiohttp.ClientSession() as session:
        for n in range(first, first + count):
            mac = ":".join(f"{b:02x}" for b in (0x06, 1, (n >> 16) & 255, (n >> 8) & 255,
                                                n & 255, 2))
            async with session.post(f"{url}/api/v1/enroll", json={
                    "enroll_key": key, "hardware_id": mac, "secret_sha256": "0" * 64}) as r:
                await r.read()
                statuses[r.status] = statuses.get(r.status, 0) + 1


def flood_process(url, key, flood_count, offset, connections, answer) -> None:
    """The flood in a process of its own: its event loop must not delay the poller's."""
    statuses: dict[int, int] = {}

    async def all_connections():
        share = flood_count // connections
        await asyncio.gather(*(flood(url, key, offset + i * share, share, statuses)
                               for i in range(connections)))
    asyncio.run(all_connections())
    answer.put(statuses)


async def phase(url, token, key, flood_count, offset, polls_s, connections=20):
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    stop = asyncio.Event()
    task = asyncio.create_task(poller(url, token, stop, latencies))
    started = time.perf_counter()
    if flood_count:
        answer = multiprocessing.Queue()
        worker = multiprocessing.Process(target=flood_process, args=(
            url, key, flood_count, offset, connections, answer))
        worker.start()
        while worker.is_alive() and answer.empty():
            await asyncio.sleep(0.05)
        statuses = answer.get(timeout=60)
        worker.join(30)
    else:
        await asyncio.sleep(polls_s)
    elapsed = time.perf_counter() - started
    stop.set()
    await task
    return latencies, statuses, elapsed


async def run(args) -> dict:
    port = free_port()
    with tempfile.TemporaryDirectory() as work:
        env = {**clean_environment(), "DROPSYNC_PORT": str(port),
               "DROPSYNC_HOST": "127.0.0.1", "DROPSYNC_ADMIN_TOKEN": ADMIN_TOKEN,
               "DROPSYNC_DATA_DIR": f"{work}/data", "DROPSYNC_STAGING_DIR": f"{work}/s",
               "DROPSYNC_LOG_LEVEL": "WARNING", "DROPSYNC_MDNS": "false",
               "DROPSYNC_REQUEST_LOG": "false",
               # the node polls every 20 ms to sample latency; its own limit is not measured
               "DROPSYNC_RATE_LIMIT_DEVICE": "100000/minute"}
        server = Server("hub", [venv_tool("dropsync"), "serve"], env, Path(work), port,
                        Path(work) / "hub.log")
        server.start(60)
        try:
            url = server.url
            async with aiohttp.ClientSession() as session:
                key = (await admin(session, url, "POST", "/enroll-keys", {}))["key"]
                token = (await admin(session, url, "POST", "/devices/register",
                                     {"device_id": "steady"}))["token"]
            rounds, statuses_total = [], {}
            for round_no in range(args.rounds):
                base, _, _ = await phase(url, token, key, 0, 0, args.baseline_s)
                loaded, statuses, elapsed = await phase(url, token, key, args.flood,
                                                        round_no * args.flood, 0,
                                                        args.connections)
                for status, count in statuses.items():
                    statuses_total[status] = statuses_total.get(status, 0) + count
                rounds.append({"baseline_p50": percentile(base, .5),
                               "baseline_p99": percentile(base, .99),
                               "flood_p50": percentile(loaded, .5),
                               "flood_p99": percentile(loaded, .99),
                               "flood_s": round(elapsed, 1), "polls": len(loaded)})
            async with aiohttp.ClientSession() as session:
                pending = (await admin(session, url, "GET",
                                       "/enrollments?state=pending"))["count"]
        finally:
            server.stop()
    med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    return {"rounds": rounds, "median": {k: round(v, 2) for k, v in med.items()},
            "p99_ratio": round(med["flood_p99"] / med["baseline_p99"], 2),
            "p50_ratio": round(med["flood_p50"] / med["baseline_p50"], 2),
            "flood_statuses": statuses_total, "pending_at_end": pending}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flood", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=20,
                        help="Concurrent connections the flood comes on.")
    parser.add_argument("--baseline-s", type=float, default=5.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    m = result["median"]
    print(f"poll latency, median of {len(result['rounds'])} alternating rounds:")
    print(f"  alone:        p50 {m['baseline_p50']:.2f} ms  p99 {m['baseline_p99']:.2f} ms")
    print(f"  during flood: p50 {m['flood_p50']:.2f} ms  p99 {m['flood_p99']:.2f} ms "
          f"({m['flood_s']:.1f} s for {args.flood} enrollments)")
    print(f"  ratio flood/alone: p50 {result['p50_ratio']}x, p99 {result['p99_ratio']}x "
          "(target: p99 within 2x)")
    print(f"  the flood got: {result['flood_statuses']}; pending at the end: "
          f"{result['pending_at_end']}")


if __name__ == "__main__":
    main()
