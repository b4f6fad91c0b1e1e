"""10,000 devices at a 10 s poll, from a load generator that costs the hub almost nothing.

``dropsync simulate`` is a Python process: past a few thousand devices its own event loop
lags by seconds, and its timings measure that lag more than the hub (see capacity_bench).
This bench drives the same load from ``wrk`` (C, on loopback): ``--devices`` keep-alive
connections (one per device, as each node holds its own), each sending a request every
``--interval`` seconds (10, spread at random so devices do not move in step; the first
spread over one interval as a fleet powering up), cycling over the devices' own tokens:
five polls then a heartbeat (``POST``, a node's 60 s heartbeat at a 10 s poll). So
10,000 devices make 1,000 requests a second. Before the measured run the hub takes one
interval of the same load (every device's first contact), not counted.

Reported: requests/s achieved, latency p50/p99/max of every request (wrk measures from
sending to the last byte; the pause between requests is not counted), non-2xx answers and
socket errors, the hub's CPU and RSS. The issue's target: p99 < 100 ms and no errors at
10,000 devices. A real hub (``dropsync serve``, rate limits on) in a temporary folder; the
devices are imported through the admin API. Traffic stays on 127.0.0.1.

    .venv/bin/python bench/wrk_fleet_bench.py                       # 10,000 devices, 3 rounds
    .venv/bin/python bench/wrk_fleet_bench.py --devices 2000 --rounds 1 --duration 20
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from capacity_bench import Hub, register, wait_for_quiet  # noqa: E402 (bench helpers)

RESULTS_DIR = BENCH_DIR / "results"
P99_TARGET_MS = 100.0
HEARTBEAT_EVERY = 6  # requests: a heartbeat a minute at a 10 s poll


def lua_script(path: Path, tokens: dict[str, str], interval_s: float) -> None:
    """wrk script: each thread cycles over its half of the devices; a request every
    interval per connection, the first one at a random moment of the first interval."""
    ids = list(tokens)
    table = ",\n".join(f'{{"{d}","{tokens[d]}"}}' for d in ids)
    heartbeat = json.dumps({"firmware": "bench-1.0", "uptime_s": 60, "free_heap": 30000,
                            "rssi": -60})
    path.write_text(f"""
local devices = {{
{table}
}}
local interval = {int(interval_s * 1000)}
local counter = 0
local first = {{}}
local thread_index = 0
local thread_count = 1
local heartbeat = '{heartbeat}'

function setup(thread)
  thread:set("thread_index", thread_index)
  thread_index = thread_index + 1
end

function init(args)
  thread_count = tonumber(args[1]) or 1
  counter = thread_index
  math.randomseed(os.time() + thread_index)
end

function delay()
  -- spread: the next request of this connection within [0.9, 1.1] intervals
  return math.floor(interval * (0.9 + 0.2 * math.random()))
end

function request()
  counter = counter + thread_count
  local device = devices[(counter % #devices) + 1]
  local headers = {{["Authorization"] = "Bearer " .. device[2]}}
  if math.floor(counter / thread_count) % {HEARTBEAT_EVERY} == 0 then
    headers["Content-Type"] = "application/json"
    return wrk.format("POST", "/api/v1/device/heartbeat/" .. device[1], headers, heartbeat)
  end
  return wrk.format("GET", "/api/v1/device/commands/" .. device[1], headers)
end
""")


def parse_ms(text: str) -> float:
    number, unit = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text).groups()
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def run_wrk(url: str, script: Path, connections: int, threads: int,
            duration_s: float) -> dict:
    output = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{int(duration_s)}s", "--latency",
         # longer than the pause: wrk's timeout clock runs while a connection waits
         "--timeout", "60s", "-s", str(script), url, "--", str(threads)],
        capture_output=True, text=True, check=True, timeout=duration_s + 120).stdout
    found = {"raw": output}
    latency = re.search(r"Latency\s+(\S+)\s+(\S+)\s+(\S+)", output)
    found["max_ms"] = parse_ms(latency.group(3))
    for pct in ("50", "99"):
        match = re.search(rf"\s{pct}(?:\.000)?%\s+(\S+)", output)
        found[f"p{pct}_ms"] = parse_ms(match.group(1))
    found["req_per_s"] = float(re.search(r"Requests/sec:\s+([0-9.]+)", output).group(1))
    found["requests"] = int(re.search(r"(\d+) requests in", output).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    found["non_2xx"] = int(non2xx.group(1)) if non2xx else 0
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                       output)
    found["socket_errors"] = sum(map(int, errors.groups())) if errors else 0
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--duration", type=float, default=40.0, help="measured seconds")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk_fleet_bench needs wrk (tests/system-deps.sh installs it)")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # wrk inherits it
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="wrk_fleet-", dir=RESULTS_DIR))
    rounds = []
    try:
        hub = Hub(work, int(args.interval))
        try:
            tokens: dict[str, str] = {}
            took = register(hub, tokens, args.devices, prefix="fleet-")
            print(f"{args.devices:,} devices imported in {took:.1f} s", flush=True)
            script = work / "fleet.lua"
            lua_script(script, tokens, args.interval)
            print(f"warming up: one interval of the load ({args.interval:g} s, not counted)",
                  flush=True)
            run_wrk(hub.url, script, args.devices, args.threads, args.interval + 2)
            for number in range(1, args.rounds + 1):
                wait_for_quiet()
                cpu_before, load_before = hub.cpu_s(), os.getloadavg()[0]
                found = run_wrk(hub.url, script, args.devices, args.threads, args.duration)
                found.update(round=number, hub_cpu_share_of_a_core=round(
                    (hub.cpu_s() - cpu_before) / args.duration, 3),
                    hub_rss_mb=round(hub.rss_bytes() / 2**20, 1),
                    load_before=round(load_before, 2),
                    load_after=round(os.getloadavg()[0], 2))
                rounds.append(found)
                print(f"round {number}: {found['req_per_s']:.0f} req/s (expected "
                      f"{args.devices / args.interval:.0f}), p50 {found['p50_ms']:.1f} ms, "
                      f"p99 {found['p99_ms']:.1f} ms, max {found['max_ms']:.0f} ms, non-2xx "
                      f"{found['non_2xx']}, socket errors {found['socket_errors']}, hub CPU "
                      f"{found['hub_cpu_share_of_a_core']:.0%} of a core, RSS "
                      f"{found['hub_rss_mb']} MB, load {found['load_before']}->"
                      f"{found['load_after']}", flush=True)
        finally:
            hub.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    p99 = statistics.median(r["p99_ms"] for r in rounds)
    errors = sum(r["non_2xx"] + r["socket_errors"] for r in rounds)
    held = p99 < P99_TARGET_MS and errors == 0
    print(f"\n{args.devices:,} devices at a {args.interval:g} s poll: median p99 {p99:.1f} ms "
          f"over {len(rounds)} rounds, {errors} errors: "
          f"{'PASS' if held else 'MISS'} (target p99 < {P99_TARGET_MS:g} ms, 0 errors)")
    out = RESULTS_DIR / f"wrk_fleet_bench-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.write_text(json.dumps({"args": vars(args), "rounds": [
        {k: v for k, v in r.items() if k != "raw"} for r in rounds]}, indent=2) + "\n")
    print(f"figures written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
