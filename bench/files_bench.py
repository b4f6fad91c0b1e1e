"""Benchmark file sync on a real hub: close-to-manifest latency, and chunk throughput
against nginx serving the same blob.

(a) Latency. A real hub (``dropsync serve``: gunicorn, one gthread worker, the staging
    watcher running with the production settle time unless ``--settle`` says otherwise)
    is given files of 1 KiB, 1 MiB and 50 MiB, written into ``staging/<device>/`` and
    closed. The time from ``close()`` to the first manifest poll that lists the file is
    measured (the manifest is polled every 10 ms with ``If-None-Match``, as a device
    would, only faster). Median and p95 per size. The settle time is part of the rule,
    so it is part of the figure; the report also gives the figure minus the settle time
    (the hub's own cost: events, hashing, copying into the blob store, publishing).

(b) Throughput. The same 8 MiB blob is served by the hub and by nginx on 127.0.0.1, in
    4 KiB and 64 KiB pieces, measured with ``wrk`` (``-t2 -c32``, ``--duration`` seconds
    each, same run): the hub's chunk route (``/download/.../<index>``), the hub's whole-
    file route with ``Range``, and nginx (one worker, ``sendfile on``) serving the hub's
    blob file with ``Range``. Payload MB/s (requests x piece size / time) and the ratios
    hub/nginx. The hub runs its production configuration (``dropsync serve``, default
    threads), with ``CHUNK_SIZE`` set to the piece size; wrk and both servers share the
    machine's cores, as they would on a Pi.

nginx-light and wrk are installed from Debian's packages (apt-get) when missing. All
traffic goes to 127.0.0.1; every run is bounded by a duration or a trial count.

    .venv/bin/python bench/files_bench.py             # ~3 minutes
    .venv/bin/python bench/files_bench.py --quick     # ~40 s smoke run
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchkit import stop_process_group  # noqa: E402 (after the path set-up)

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
DROPSYNC = Path(sys.executable).parent / "dropsync"
ADMIN_TOKEN = "bench-admin-token-" + "0" * 24
DEVICE = "bench01"
KIB, MIB = 1024, 1024 * 1024

LATENCY_TRIALS = {KIB: 20, MIB: 20, 50 * MIB: 5}
QUICK_LATENCY_TRIALS = {KIB: 3, MIB: 3, 50 * MIB: 1}
PIECES = (4 * KIB, 64 * KIB)
BLOB_BYTES = 8 * MIB
POLL_S = 0.01


# -- tools -----------------------------------------------------------------------------
def ensure_tools() -> dict[str, str]:
    """nginx and wrk, installed from Debian's packages if missing (needs root)."""
    missing = [pkg for tool, pkg in (("nginx", "nginx-light"), ("wrk", "wrk"))
               if not shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin")]
    if missing:
        if os.geteuid() != 0:
            sys.exit(f"missing {', '.join(missing)}: run as root, or apt-get install them")
        print(f"installing {', '.join(missing)} from Debian's packages...", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env)
    found = {tool: shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin")
             for tool in ("nginx", "wrk")}
    versions = {
        "nginx": subprocess.run([found["nginx"], "-v"], capture_output=True,
                                text=True).stderr.strip(),
        "wrk": subprocess.run([found["wrk"], "-v"], capture_output=True,
                              text=True).stdout.splitlines()[0].strip(),
    }
    return {**found, **{f"{k}_version": v for k, v in versions.items()}}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except (urllib.error.URLError, OSError):  # refused, or slow to answer yet
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


# -- a real hub ------------------------------------------------------------------------
class Hub:
    def __init__(self, workdir: Path, **settings: Any):
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.staging = workdir / "staging"
        self.data_dir = workdir / "data"
        self.env = {**os.environ, "DROPSYNC_HOST": "127.0.0.1", "DROPSYNC_PORT": str(self.port),
                    "DROPSYNC_DATA_DIR": str(self.data_dir),
                    "DROPSYNC_STAGING_DIR": str(self.staging),
                    "DROPSYNC_ADMIN_TOKEN": ADMIN_TOKEN, "DROPSYNC_LOG_LEVEL": "WARNING",
                    **{f"DROPSYNC_{k}": str(v) for k, v in settings.items()}}
        self.log = open(workdir / "hub.log", "ab")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen([str(DROPSYNC), "serve"], cwd=workdir, env=self.env,
                                        stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        wait_for(self.url + "/health")

    def call(self, method: str, path: str, body: Any = None, token: str = ADMIN_TOKEN,
             headers: dict[str, str] | None = None, data: bytes | None = None):
        if body is not None:
            data = json.dumps(body).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Authorization": f"Bearer {token}",
                                                  **(headers or {})})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, response.headers, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers, exc.read()

    def register(self, device_id: str) -> str:
        status, _, body = self.call("POST", "/api/v1/admin/devices/register",
                                    {"id": device_id})
        assert status == 201, body
        return json.loads(body)["token"]

    def stop(self) -> None:
        stop_process_group(self.process, self.log)


@contextmanager
def running_hub(workdir: Path, **settings: Any):
    workdir.mkdir(parents=True, exist_ok=True)
    hub = Hub(workdir, **settings)
    try:
        yield hub
    finally:
        hub.stop()


# -- (a) close -> manifest latency -----------------------------------------------------
class ManifestPoller:
    """Polls a device's manifest with If-None-Match, as a device would."""

    def __init__(self, hub: Hub, token: str):
        self.hub, self.token = hub, token
        self.etag: str | None = None
        self.paths: set[str] = set()

    def poll(self) -> set[str]:
        headers = {"If-None-Match": self.etag} if self.etag else {}
        status, response_headers, body = self.hub.call(
            "GET", f"/api/v1/files/manifest/{DEVICE}", token=self.token, headers=headers)
        if status == 200:
            self.etag = response_headers["ETag"]
            self.paths = {f["path"] for f in json.loads(body)["files"]}
        return self.paths


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    rank = fraction * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def measure_latency(workdir: Path, trials: dict[int, int], settle: float | None) -> dict:
    settings = {"STAGING_SETTLE_S": settle} if settle else {}
    with running_hub(workdir / "latency", **settings) as hub:
        token = hub.register(DEVICE)
        poller = ManifestPoller(hub, token)
        folder = hub.staging / DEVICE
        folder.mkdir(parents=True, exist_ok=True)
        settle_s = settle or 2.0
        results = {}
        for size, count in trials.items():
            latencies = []
            for trial in range(count):
                name = f"file-{size}-{trial}.bin"
                write_file(folder / name, size)
                closed = time.monotonic()
                while name not in poller.poll():
                    if time.monotonic() - closed > 120:
                        raise RuntimeError(f"{name} never appeared in the manifest")
                    time.sleep(POLL_S)
                latencies.append(time.monotonic() - closed)
                (folder / name).unlink()  # withdraw it, so trials do not overlap
                while name in poller.poll():
                    time.sleep(POLL_S)
                print(f"  {size_label(size):>6} trial {trial + 1}/{count}: "
                      f"{latencies[-1] * 1000:.0f} ms", flush=True)
            results[size_label(size)] = {
                "trials": count, "median_s": statistics.median(latencies),
                "p95_s": percentile(latencies, 0.95), "min_s": min(latencies),
                "max_s": max(latencies),
                "median_minus_settle_s": statistics.median(latencies) - settle_s,
                "all_s": latencies}
        return {"settle_s": settle_s, "sizes": results}


def write_file(path: Path, size: int) -> None:
    """Write ``size`` fresh random bytes (1 MiB at a time) and close the file."""
    with open(path, "wb") as out:
        remaining = size
        while remaining:
            remaining -= out.write(os.urandom(min(remaining, MIB)))


def size_label(size: int) -> str:
    return f"{size // MIB} MiB" if size >= MIB else f"{size // KIB} KiB"


# -- (b) chunk throughput --------------------------------------------------------------
#: The ``done`` of every wrk script here: one ``RESULT`` line that ``run_wrk`` parses (requests,
#: bytes, duration, p50, p99, errors). A %-template fragment, like the scripts it ends.
WRK_RESULT = """done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %%d %%d %%d %%d %%d %%d\\n", summary.requests,
    summary.bytes, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""

WRK_SCRIPT = """
local paths = {}
local ranges = {}
local count = %(count)d
local piece = %(piece)d
local base = "%(base)s"
local by_range = %(by_range)s
local i = 0
init = function(args)
  i = math.random(0, count - 1)
end
request = function()
  local index = i %% count
  i = i + 1
  if by_range then
    local first = index * piece
    return wrk.format("GET", base, {["Authorization"] = "%(auth)s",
      ["Range"] = "bytes=" .. first .. "-" .. (first + piece - 1)})
  end
  return wrk.format("GET", base .. "/" .. index, {["Authorization"] = "%(auth)s"})
end
""" + WRK_RESULT


def run_wrk(wrk: str, url: str, path: str, piece: int, count: int, by_range: bool,
            auth: str, duration: int, scripts: Path) -> dict:
    script = scripts / f"wrk-{piece}-{'range' if by_range else 'chunk'}-{time.time_ns()}.lua"
    script.write_text(WRK_SCRIPT % {"count": count, "piece": piece, "base": path,
                                    "by_range": "true" if by_range else "false",
                                    "auth": auth})
    output = subprocess.run([wrk, "-t2", "-c32", f"-d{duration}s", "-s", str(script), url],
                            capture_output=True, text=True, timeout=duration + 60).stdout
    line = next(line for line in output.splitlines() if line.startswith("RESULT"))
    requests, wire_bytes, duration_us, p50_us, p99_us, errors = map(int, line.split()[1:])
    if errors:  # a refused or failed request carries no payload: never count it as one
        raise SystemExit(f"{url}: {errors} of {requests} requests failed (non-2xx or "
                         "socket errors); the figures would be wrong")
    seconds = duration_us / 1e6
    return {"requests": requests, "req_per_s": requests / seconds,
            "payload_mb_per_s": requests * piece / seconds / 1e6,
            "wire_mb_per_s": wire_bytes / seconds / 1e6, "p50_ms": p50_us / 1000,
            "p99_ms": p99_us / 1000, "errors": errors}


NGINX_CONF = """
daemon off;
worker_processes 1;
%(user)s
pid %(dir)s/nginx.pid;
error_log %(dir)s/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  client_body_temp_path %(dir)s/client_body;
  proxy_temp_path %(dir)s/proxy;
  fastcgi_temp_path %(dir)s/fastcgi;
  uwsgi_temp_path %(dir)s/uwsgi;
  scgi_temp_path %(dir)s/scgi;
  server {
    listen 127.0.0.1:%(port)d;
    location = /blob { alias %(blob)s; default_type application/octet-stream; }
  }
}
"""


@contextmanager
def running_nginx(nginx: str, blob: Path, workdir: Path):
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(NGINX_CONF % {"dir": workdir, "port": port, "blob": blob,
                                  "user": "user root;" if os.geteuid() == 0 else ""})
    process = subprocess.Popen([nginx, "-c", str(conf), "-p", str(workdir)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(f"http://127.0.0.1:{port}/blob")
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def measure_throughput(workdir: Path, tools: dict[str, str], duration: int) -> dict:
    blob = os.urandom(BLOB_BYTES)
    results = {}
    scripts = workdir / "wrk"
    scripts.mkdir(parents=True, exist_ok=True)
    for piece in PIECES:
        label = size_label(piece)
        # One device fetching flat out would meet its RATE_LIMIT_FILES budget within
        # seconds; the bench measures serving, so the budget is raised (the limiter still
        # runs and counts every request).
        with running_hub(workdir / f"throughput-{piece}", CHUNK_SIZE=piece,
                         STAGING_WATCH="false", RATE_LIMIT_FILES="10000000/minute") as hub:
            token = hub.register(DEVICE)
            status, _, body = hub.call("PUT", f"/api/v1/admin/staging/{DEVICE}/blob.bin",
                                       data=blob,
                                       headers={"Content-Type": "application/octet-stream"})
            assert status == 200, body
            _, _, body = hub.call("GET", f"/api/v1/files/manifest/{DEVICE}", token=token)
            entry = json.loads(body)["files"][0]
            assert entry["chunk_size"] == piece and entry["sha256"] == \
                hashlib.sha256(blob).hexdigest()
            count = BLOB_BYTES // piece
            auth = f"Bearer {token}"
            print(f"  {label}: hub chunk route...", flush=True)
            chunk = run_wrk(tools["wrk"], hub.url, entry["url"], piece, count, False, auth,
                            duration, scripts)
            print(f"  {label}: hub Range route...", flush=True)
            ranged = run_wrk(tools["wrk"], hub.url, entry["url"], piece, count, True, auth,
                             duration, scripts)
            blob_path = hub.data_dir / "blobs" / entry["sha256"][:2] / entry["sha256"]
            with running_nginx(tools["nginx"], blob_path, workdir / f"nginx-{piece}") as url:
                print(f"  {label}: nginx Range...", flush=True)
                nginx = run_wrk(tools["wrk"], url, "/blob", piece, count, True, auth,
                                duration, scripts)
        results[label] = {
            "hub_chunk": chunk, "hub_range": ranged, "nginx_range": nginx,
            "ratio_hub_chunk_to_nginx": chunk["payload_mb_per_s"] / nginx["payload_mb_per_s"],
            "ratio_hub_range_to_nginx": ranged["payload_mb_per_s"] / nginx["payload_mb_per_s"],
        }
    return {"blob_bytes": BLOB_BYTES, "wrk": "-t2 -c32", "duration_s": duration,
            "pieces": results}


# -- report ----------------------------------------------------------------------------
def report(result: dict) -> None:
    latency = result["latency"]
    print(f"\n(a) close -> manifest latency (settle {latency['settle_s']:.1f} s, "
          "manifest polled every 10 ms)")
    print(f"{'size':>8} {'trials':>6} {'median':>9} {'p95':>9} {'max':>9} {'median-settle':>14}")
    for label, row in latency["sizes"].items():
        print(f"{label:>8} {row['trials']:>6} {row['median_s'] * 1000:>7.0f}ms "
              f"{row['p95_s'] * 1000:>7.0f}ms {row['max_s'] * 1000:>7.0f}ms "
              f"{row['median_minus_settle_s'] * 1000:>12.0f}ms")
    throughput = result["throughput"]
    print(f"\n(b) throughput of an {throughput['blob_bytes'] // MIB} MiB blob, wrk "
          f"{throughput['wrk']}, {throughput['duration_s']} s each (payload MB/s)")
    print(f"{'piece':>7} {'hub chunk':>16} {'hub Range':>16} {'nginx Range':>18} "
          f"{'chunk/nginx':>12} {'Range/nginx':>12}")
    for label, row in throughput["pieces"].items():
        cells = [f"{row[k]['payload_mb_per_s']:7.1f} ({row[k]['req_per_s']:6.0f}/s)"
                 for k in ("hub_chunk", "hub_range", "nginx_range")]
        print(f"{label:>7} {cells[0]:>16} {cells[1]:>16} {cells[2]:>18} "
              f"{row['ratio_hub_chunk_to_nginx']:>11.3f}x "
              f"{row['ratio_hub_range_to_nginx']:>11.3f}x")
        errors = sum(row[k]["errors"] for k in ("hub_chunk", "hub_range", "nginx_range"))
        if errors:
            print(f"        {errors} wrk errors (non-2xx, timeouts): see the JSON")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few trials, 3 s wrk runs")
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--settle", type=float, default=None,
                        help="STAGING_SETTLE_S for the latency hub (default: the hub's)")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "files_bench.json")
    args = parser.parse_args()
    tools = ensure_tools()
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=RESULTS_DIR, prefix="work-") as work:
        workdir = Path(work)
        print("(a) close -> manifest latency", flush=True)
        latency = measure_latency(workdir, QUICK_LATENCY_TRIALS if args.quick
                                  else LATENCY_TRIALS, args.settle)
        print("(b) chunk throughput, hub vs nginx", flush=True)
        throughput = measure_throughput(workdir, tools, 3 if args.quick else args.duration)
    result = {"latency": latency, "throughput": throughput, "environment": {
        "python": platform.python_version(), "platform": platform.platform(),
        "cpus": os.cpu_count(), **{k: v for k, v in tools.items() if k.endswith("version")},
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}}
    args.output.write_text(json.dumps(result, indent=2))
    report(result)
    print(f"\nFull figures: {args.output}")


if __name__ == "__main__":
    main()
