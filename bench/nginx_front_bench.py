"""Chunk throughput with nginx in front of the hub, against nginx serving the file itself.

A real hub (``dropsync serve``, production settings plus what deploy/nginx.conf asks
for: ``DOWNLOAD_ACCEL_PREFIX=/_blobs/``, ``TRUSTED_PROXIES=127.0.0.1``, a
``DOWNLOAD_TICKET_SECRET``) holds one blob for a fleet of 33 devices (8 MiB for 4 KiB
pieces, 64 MiB for 64 KiB: 1,024 chunks at least); nginx runs the site
``dropsync.ops.nginx.render_site`` makes (the same as deploy/nginx.conf, one worker, plain
HTTP on loopback). ``wrk -t2 -c32`` fetches pieces of 4 KiB and 64 KiB:

- fronted chunk: ``GET /download/<device>/<package>/<version>/<index>`` through nginx (the
  hub authorises each request, nginx sends the bytes from its blob server);
- fronted Range: the whole-file route with ``Range`` through nginx;
- ticket cold: the manifest's ticket urls of 32 devices in turn, nginx's chunk cache
  emptied first, every chunk fetched once (all misses: the first device of a fleet),
  timed from the wrk threads' first request to their last miss;
- ticket warm: the same urls once every chunk is cached (what the other devices of a
  fleet get: one miss per chunk per version, the rest hits), for the run's duration;
- nginx direct (the baseline): nginx serving the blob file with ``Range``, no hub.

The five alternate for ``--rounds`` rounds (default 3); the report gives the median
payload MB/s and requests/s of each and the ratios to nginx direct. Target: >= 0.5x.
All traffic stays on 127.0.0.1; every run is bounded by its duration (a cold pass by 120 s).

    .venv/bin/python bench/nginx_front_bench.py             # ~5 minutes
    .venv/bin/python bench/nginx_front_bench.py --quick     # ~1 minute smoke run
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH_DIR), str(BENCH_DIR.parent / "tests")]

from files_bench import (  # noqa: E402 (after the path set-up)
    BLOB_BYTES,
    DEVICE,
    KIB,
    MIB,
    RESULTS_DIR,
    WRK_RESULT,
    ensure_tools,
    run_wrk,
    running_hub,
    running_nginx,
    size_label,
)
from support import NginxFront  # noqa: E402

PIECES = (4 * KIB, 64 * KIB)
KINDS = ("fronted_chunk", "fronted_range", "ticket_cold", "ticket_warm", "nginx_direct")
#: Devices whose tickets the ticketed runs take turns with (a fleet, not one device).
FLEET = 32
#: Chunks in the blob at least: a cold pass fetches each once.
COLD_CHUNKS = 1024
TICKET_SECRET = "bench-ticket-secret-0123456789abcdefghijkl"

#: wrk script for ticketed chunks: each request takes the next device's ticket url and
#: token. Cold: the two threads split the chunks (each fetched once, all misses) and stop
#: when their share has come back from the hub (X-Cache: MISS). Warm: chunks in turn
#: from a random start, for the run's duration, all from nginx's cache.
TICKET_SCRIPT = """
local urls = {%(urls)s}
local auths = {%(auths)s}
local count = %(count)d
local cold = %(cold)s
local threads = 2
local next_id = 0
id, misses, share = 0, 0, 0  -- globals: setup() gives each thread its id
local i, d, started, reported = 0, 0, 0, false
local function now_us()  -- wall clock (LuaJIT has none finer than a second)
  local pipe = io.popen("date +%%s%%6N")
  local value = tonumber(pipe:read("*l"))
  pipe:close()
  return value
end
setup = function(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
end
init = function(args)
  if cold then
    i = id
    share = math.floor((count - id + threads - 1) / threads)
    started = now_us()
  else
    i = math.random(0, count - 1)
  end
  d = math.random(0, #urls - 1)
end
request = function()
  local index
  if cold then
    index = i < count and i or id  -- past its share: its own first chunk again (a hit)
    i = i + threads
  else
    index = i %% count
    i = i + 1
  end
  d = (d + 1) %% #urls
  return wrk.format("GET", urls[d + 1] .. "/" .. index, {["Authorization"] = auths[d + 1]})
end
if cold then
  response = function(status, headers, body)
    if headers["X-Cache"] == "MISS"
        and tonumber(headers["x-chunk-index"]) %% threads == id then
      misses = misses + 1
      if misses >= share and not reported then
        reported = true
        io.stderr:write(string.format("COLD %%d %%d %%d %%d\\n", id, started, now_us(),
                                      misses))
        io.stderr:flush()
        wrk.thread:stop()
      end
    end
  end
end
""" + WRK_RESULT


def run_ticketed(wrk: str, url: str, fleet: list[tuple[str, str]], piece: int, count: int,
                 cold: bool, duration: int, scripts: Path) -> dict:
    """One wrk run over the fleet's ticket urls (see TICKET_SCRIPT). A cold pass is timed
    from its threads' own start and end (wrk itself always runs its full duration)."""
    script = scripts / f"wrk-{piece}-ticket-{'cold' if cold else 'warm'}-{time.time_ns()}.lua"
    script.write_text(TICKET_SCRIPT % {
        "urls": ", ".join(f'"{u}"' for u, _ in fleet),
        "auths": ", ".join(f'"Bearer {t}"' for _, t in fleet),
        "count": count, "cold": "true" if cold else "false"})
    limit = 120 if cold else duration
    process = subprocess.Popen([wrk, "-t2", "-c32", f"-d{limit}s", "-s", str(script), url],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    passes = []
    if cold:
        for line in process.stderr:  # bounded: wrk ends after `limit` seconds at most
            if line.startswith("COLD "):
                passes.append([int(x) for x in line.split()[1:]])
                if len(passes) == 2:
                    process.send_signal(signal.SIGINT)  # wrk reports and ends
                    break
    output = process.communicate(timeout=limit + 60)[0]
    line = next(line for line in output.splitlines() if line.startswith("RESULT"))
    requests, wire_bytes, duration_us, p50_us, p99_us, errors = map(int, line.split()[1:])
    if errors:
        raise SystemExit(f"{url}: {errors} of {requests} ticketed requests failed")
    if cold:
        if len(passes) != 2 or sum(p[3] for p in passes) != count:
            raise SystemExit(f"{url}: the cold pass did not finish within {limit} s")
        duration_us = max(p[2] for p in passes) - min(p[1] for p in passes)
        requests = count  # only the misses count (a few hits pad the pass's end)
    seconds = duration_us / 1e6
    return {"requests": requests, "req_per_s": requests / seconds,
            "payload_mb_per_s": requests * piece / seconds / 1e6,
            "wire_mb_per_s": wire_bytes / seconds / 1e6 if not cold else None,
            "p50_ms": p50_us / 1000, "p99_ms": p99_us / 1000, "errors": errors}


def measure(workdir: Path, tools: dict, duration: int, rounds: int) -> dict:
    scripts = workdir / "wrk"
    scripts.mkdir(parents=True, exist_ok=True)
    results = {}
    for piece in PIECES:
        label = size_label(piece)
        blob = os.urandom(max(BLOB_BYTES, piece * COLD_CHUNKS))
        settings = {"RATE_LIMIT_FILES": "10000000/minute",
                    "DOWNLOAD_TICKET_SECRET": TICKET_SECRET}
        with running_hub(workdir / f"hub-{piece}", CHUNK_SIZE=piece, STAGING_WATCH="false",
                         REQUEST_LOG="false", DOWNLOAD_ACCEL_PREFIX="/_blobs/",
                         TRUSTED_PROXIES="127.0.0.1", MDNS="false", **settings) as hub:
            # One file for the whole fleet (the cache is shared between devices).
            status, _, body = hub.call("PUT", "/api/v1/admin/staging/all/blob.bin",
                                       data=blob,
                                       headers={"Content-Type": "application/octet-stream"})
            assert status == 200, body
            fleet = []
            for number in range(FLEET + 1):
                device = DEVICE if number == 0 else f"fleet{number:03d}"
                token = hub.register(device)
                _, _, body = hub.call("GET", f"/api/v1/files/manifest/{device}", token=token)
                fleet.append((device, token, json.loads(body)["files"][0]))
            _, token, entry = fleet[0]
            assert entry["sha256"] == hashlib.sha256(blob).hexdigest()
            assert entry["url"].startswith("/api/v1/files/t/")  # tickets are on
            plain = f"/api/v1/files/download/{DEVICE}/{entry['id']}/{entry['version']}"
            tickets = [(e["url"], t) for _, t, e in fleet[1:]]
            front = NginxFront(workdir / f"front-{piece}", hub.port, hub.data_dir,
                               settings=settings)
            blob_path = hub.data_dir / "blobs" / entry["sha256"][:2] / entry["sha256"]
            count, auth = len(blob) // piece, f"Bearer {token}"
            runs: dict[str, list[dict]] = {kind: [] for kind in KINDS}
            try:
                with running_nginx(tools["nginx"], blob_path,
                                   workdir / f"direct-{piece}") as direct:
                    for round_ in range(rounds):
                        for kind in KINDS:
                            print(f"  {label} round {round_ + 1}/{rounds}: {kind}...",
                                  flush=True)
                            if kind == "ticket_cold":  # an empty cache: every chunk a miss
                                front.stop()
                                shutil.rmtree(front.prefix / "chunks", ignore_errors=True)
                                front.start()
                            if kind == "nginx_direct":
                                run = run_wrk(tools["wrk"], direct, "/blob", piece, count, True,
                                              auth, duration, scripts)
                            elif kind.startswith("ticket_"):
                                run = run_ticketed(tools["wrk"], front.url, tickets, piece,
                                                   count, kind == "ticket_cold", duration,
                                                   scripts)
                            else:
                                if front.process is None:
                                    front.start()
                                run = run_wrk(tools["wrk"], front.url, plain, piece,
                                              count, kind == "fronted_range", auth, duration,
                                              scripts)
                            runs[kind].append(run)
            finally:
                front.stop()
        medians = {kind: statistics.median(r["payload_mb_per_s"] for r in runs[kind])
                   for kind in KINDS}
        results[label] = {
            "blob_bytes": len(blob),
            "median_payload_mb_per_s": medians,
            "median_req_per_s": {kind: statistics.median(r["req_per_s"] for r in runs[kind])
                                 for kind in KINDS},
            **{f"ratio_{kind}_to_direct": medians[kind] / medians["nginx_direct"]
               for kind in KINDS if kind != "nginx_direct"},
            "runs": runs}
    return {"wrk": "-t2 -c32", "duration_s": duration, "fleet": FLEET,
            "rounds": rounds, "pieces": results}


def report(result: dict) -> None:
    print(f"\nnginx-fronted hub vs nginx direct, wrk {result['wrk']}, {result['duration_s']} s "
          f"runs, median of {result['rounds']} alternating rounds (payload MB/s, requests/s); "
          f"ticketed: {result['fleet']} devices in turn")
    names = {"fronted_chunk": "chunk (hub each)", "fronted_range": "Range (hub each)",
             "ticket_cold": "ticket cold", "ticket_warm": "ticket warm",
             "nginx_direct": "nginx direct"}
    for label, row in result["pieces"].items():
        print(f"{label} pieces ({row['blob_bytes'] // MIB} MiB blob):")
        for kind in KINDS:
            ratio = row.get(f"ratio_{kind}_to_direct")
            print(f"  {names[kind]:>17} {row['median_payload_mb_per_s'][kind]:8.1f} MB/s "
                  f"{row['median_req_per_s'][kind]:8.0f}/s"
                  + (f"  {ratio:6.3f}x direct" if ratio is not None else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 3 s runs")
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "nginx_front_bench.json")
    args = parser.parse_args()
    tools = ensure_tools()
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=RESULTS_DIR, prefix="work-") as work:
        result = measure(Path(work), tools, 3 if args.quick else args.duration,
                         1 if args.quick else args.rounds)
    result["environment"] = {"python": platform.python_version(), "cpus": os.cpu_count(),
                             "platform": platform.platform(),
                             **{k: v for k, v in tools.items() if k.endswith("version")},
                             "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    args.output.write_text(json.dumps(result, indent=2))
    report(result)
    print(f"\nFull figures: {args.output}")


if __name__ == "__main__":
    main()
