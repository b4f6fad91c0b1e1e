"""Chunk throughput with nginx in front of the hub, against nginx serving the file itself.

A real hub (``dropsync serve``, production settings plus what deploy/nginx.conf asks
for: ``DOWNLOAD_ACCEL_PREFIX=/_blobs/``, ``TRUSTED_PROXIES=127.0.0.1``) holds an 8 MiB
blob for one device; nginx runs the site ``dropsync.ops.nginx.render_site`` makes (the
same as deploy/nginx.conf, one worker, plain HTTP on loopback). ``wrk -t2 -c32`` fetches
pieces of 4 KiB and 64 KiB:

- fronted chunk: ``GET /download/<device>/<package>/<version>/<index>`` through nginx (the
  hub authorises each request, nginx sends the bytes from its blob server);
- fronted Range: the whole-file route with ``Range`` through nginx;
- nginx direct (the baseline): nginx serving the blob file with ``Range``, no hub.

The three alternate for ``--rounds`` rounds (default 3); the report gives the median
payload MB/s of each and the ratios fronted/direct. Target: chunk >= 0.5x.
All traffic stays on 127.0.0.1; every run is bounded by its duration.

    .venv/bin/python bench/nginx_front_bench.py             # ~2 minutes
    .venv/bin/python bench/nginx_front_bench.py --quick     # ~30 s smoke run
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
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
    ensure_tools,
    run_wrk,
    running_hub,
    running_nginx,
    size_label,
)
from support import NginxFront  # noqa: E402

PIECES = (4 * KIB, 64 * KIB)
KINDS = ("fronted_chunk", "fronted_range", "nginx_direct")


def measure(workdir: Path, tools: dict, duration: int, rounds: int) -> dict:
    blob = os.urandom(BLOB_BYTES)
    scripts = workdir / "wrk"
    scripts.mkdir(parents=True, exist_ok=True)
    results = {}
    for piece in PIECES:
        label = size_label(piece)
        with running_hub(workdir / f"hub-{piece}", CHUNK_SIZE=piece, STAGING_WATCH="false",
                         RATE_LIMIT_FILES="10000000/minute", REQUEST_LOG="false",
                         DOWNLOAD_ACCEL_PREFIX="/_blobs/", TRUSTED_PROXIES="127.0.0.1",
                         MDNS="false") as hub:
            token = hub.register(DEVICE)
            status, _, body = hub.call("PUT", f"/api/v1/admin/staging/{DEVICE}/blob.bin",
                                       data=blob,
                                       headers={"Content-Type": "application/octet-stream"})
            assert status == 200, body
            _, _, body = hub.call("GET", f"/api/v1/files/manifest/{DEVICE}", token=token)
            entry = json.loads(body)["files"][0]
            assert entry["sha256"] == hashlib.sha256(blob).hexdigest()
            front = NginxFront(workdir / f"front-{piece}", hub.port, hub.data_dir).start()
            blob_path = hub.data_dir / "blobs" / entry["sha256"][:2] / entry["sha256"]
            count, auth = BLOB_BYTES // piece, f"Bearer {token}"
            runs: dict[str, list[dict]] = {kind: [] for kind in KINDS}
            try:
                with running_nginx(tools["nginx"], blob_path,
                                   workdir / f"direct-{piece}") as direct:
                    for round_ in range(rounds):
                        for kind in KINDS:
                            print(f"  {label} round {round_ + 1}/{rounds}: {kind}...",
                                  flush=True)
                            if kind == "nginx_direct":
                                run = run_wrk(tools["wrk"], direct, "/blob", piece, count, True,
                                              auth, duration, scripts)
                            else:
                                run = run_wrk(tools["wrk"], front.url, entry["url"], piece,
                                              count, kind == "fronted_range", auth, duration,
                                              scripts)
                            runs[kind].append(run)
            finally:
                front.stop()
        medians = {kind: statistics.median(r["payload_mb_per_s"] for r in runs[kind])
                   for kind in KINDS}
        results[label] = {
            "median_payload_mb_per_s": medians,
            "median_req_per_s": {kind: statistics.median(r["req_per_s"] for r in runs[kind])
                                 for kind in KINDS},
            "ratio_chunk_to_direct": medians["fronted_chunk"] / medians["nginx_direct"],
            "ratio_range_to_direct": medians["fronted_range"] / medians["nginx_direct"],
            "runs": runs}
    return {"blob_bytes": BLOB_BYTES, "wrk": "-t2 -c32", "duration_s": duration,
            "rounds": rounds, "pieces": results}


def report(result: dict) -> None:
    print(f"\nnginx-fronted hub vs nginx direct, {result['blob_bytes'] // MIB} MiB blob, wrk "
          f"{result['wrk']}, {result['duration_s']} s runs, median of {result['rounds']} "
          "alternating rounds (payload MB/s, requests/s)")
    print(f"{'piece':>7} {'fronted chunk':>22} {'fronted Range':>22} {'nginx direct':>22} "
          f"{'chunk/direct':>13} {'Range/direct':>13}")
    for label, row in result["pieces"].items():
        cells = [f"{row['median_payload_mb_per_s'][k]:7.1f} ({row['median_req_per_s'][k]:6.0f}/s)"
                 for k in KINDS]
        print(f"{label:>7} {cells[0]:>22} {cells[1]:>22} {cells[2]:>22} "
              f"{row['ratio_chunk_to_direct']:>12.3f}x {row['ratio_range_to_direct']:>12.3f}x")


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
