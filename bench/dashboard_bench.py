"""Benchmark the dashboard on a real hub: page times, page weight, and what open dashboards
cost the nodes.

What it measures, on a hub started as production runs it (``dropsync serve``), with 1,000
registered devices (all seen recently, with heartbeat figures) and 100,000 finished commands
in the history (seeded through dropsync's own code, as ``poll_bench.py`` does):

- response time on loopback of the overview and the devices pages (and the devices page
  searched and filtered, and a device's page), cold (the shared fleet figures just expired,
  so the page computes them) and warm (within the 2 s the figures are shared), medians;
  with a client on loopback this is the server's time plus well under a millisecond;
- the worker's CPU time per live refresh of the overview (``?live=1``, what an open page
  asks every 2.5 s) beside its CPU time per device poll;
- bytes of the overview page with its stylesheet and script (the budget: under 150 KB);
- polls per second (wrk, every request a different device) with no dashboard open and with
  5 open (5 clients refreshing the overview every 2.5 s, as the page's script does),
  alternating rounds; the ratio of the medians is the cost of the open dashboards.

The machine is shared with other work: the figures are medians, and the ratio (both sides
measured in the same run, alternating) is what to read. The benchmark reports; it does not
assert. Run it from the project root:

    .venv/bin/python bench/dashboard_bench.py           # 1,000 devices, 100k history, 3 rounds
    .venv/bin/python bench/dashboard_bench.py --quick   # 50 devices, 1k history, 1 round
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import requests

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from benchkit import (  # noqa: E402 (the benchmarks' shared helpers)
    RESULTS_DIR,
    Server,
    clean_environment,
    ensure_wrk,
    free_port,
    parse_wrk,
    read_cpu_seconds,
    seed_data_dir,
    venv_tool,
    write_wrk_script,
)

PASSWORD = "bench-password-" + secrets.token_hex(4)
REFRESH_S = 2.5  # what the page's script does
CACHE_S = 2.0  # dashboard.views.REFRESH_S: fleet figures are shared this long
BUDGET_BYTES = 150 * 1024


def give_liveness(data_dir: Path, credentials: list[tuple[str, str]]) -> None:
    """Every device seen recently with heartbeat figures, as a live fleet would be."""
    from dropsync.store import Stores

    stores = Stores(data_dir)
    try:
        now = time.time()
        for n, (device_id, _) in enumerate(credentials):
            stores.liveness.update(device_id, last_seen=now - n % 90, ip="10.0.0.1",
                                   heartbeat_at=now - n % 90, rssi=-50 - n % 40,
                                   free_heap=20_000 + n, firmware_version="1.4.2",
                                   attributes={})
    finally:
        stores.close()


def log_in(url: str) -> requests.Session:
    session = requests.Session()
    page = session.get(url + "/dashboard/login", timeout=30).text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)[1]
    answer = session.post(url + "/dashboard/login", timeout=30, allow_redirects=False,
                          data={"username": "admin", "password": PASSWORD, "csrf_token": token})
    if answer.status_code != 302:
        raise RuntimeError(f"login failed: {answer.status_code} {answer.text[:200]}")
    return session


def timed_get(session: requests.Session, url: str) -> tuple[float, int]:
    started = time.perf_counter()
    answer = session.get(url, timeout=60)
    elapsed = (time.perf_counter() - started) * 1000
    if answer.status_code != 200:
        raise RuntimeError(f"{url}: {answer.status_code} {answer.text[:200]}")
    return elapsed, len(answer.content)


def page_times(session, url: str, cold: int, warm: int) -> dict[str, float]:
    cold_ms = []
    for _ in range(cold):
        time.sleep(CACHE_S + 0.2)  # the shared figures have expired: this one computes
        cold_ms.append(timed_get(session, url)[0])
    warm_ms = [timed_get(session, url)[0] for _ in range(warm)]
    return {"cold_median_ms": round(statistics.median(cold_ms), 1),
            "cold_max_ms": round(max(cold_ms), 1),
            "warm_median_ms": round(statistics.median(warm_ms), 1),
            "bytes": timed_get(session, url)[1]}


def overview_weight(session, url: str) -> dict[str, int]:
    html = session.get(url + "/dashboard/", timeout=30)
    assets = re.findall(r'(?:href|src)="(/static/[^"]+)"', html.text)
    sizes = {"html": len(html.content)}
    for asset in assets:
        sizes[asset.split("?")[0]] = len(session.get(url + asset, timeout=30).content)
    sizes["total"] = sum(sizes.values())
    return sizes


def cpu_per_request(pid: int, run) -> float:
    """Worker CPU milliseconds per request over ``run()`` (which returns its count)."""
    before = sum(read_cpu_seconds(pid))
    count = run()
    return (sum(read_cpu_seconds(pid)) - before) * 1000 / count


class OpenDashboards:
    """``count`` clients, each refreshing the overview's live regions every 2.5 s."""

    def __init__(self, url: str, sessions: list[requests.Session]):
        self.url, self.sessions = url, sessions
        self.stop = threading.Event()
        self.refreshes = 0
        self.failures: list[str] = []

    def run(self, session: requests.Session, offset: float) -> None:
        self.stop.wait(offset)
        while not self.stop.is_set():
            try:
                answer = session.get(self.url + "/dashboard/?live=1", timeout=30,
                                     headers={"Accept": "application/json"})
                if answer.status_code != 200:
                    self.failures.append(str(answer.status_code))
            except requests.RequestException as exc:
                self.failures.append(repr(exc))
            self.refreshes += 1
            self.stop.wait(REFRESH_S)

    def __enter__(self):
        self.threads = [threading.Thread(target=self.run, args=(s, n * REFRESH_S / 5),
                                         daemon=True) for n, s in enumerate(self.sessions)]
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=40)


def wrk_polls(wrk: str, script: Path, url: str, seconds: float) -> dict:
    output = subprocess.run([wrk, "-t2", "-c16", f"-d{seconds:g}s", "--latency", "-s",
                             str(script), url], capture_output=True, text=True, check=True)
    found = parse_wrk(output.stdout)
    if found["non_2xx"] or any(found["socket_errors"].values()):
        raise RuntimeError(f"wrk saw failures:\n{output.stdout}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--devices", type=int, default=1_000)
    parser.add_argument("--history", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args(argv)
    if args.quick:
        args.devices, args.history, args.rounds, args.duration = 50, 1_000, 1, 3.0
    wrk = ensure_wrk()
    work = Path(tempfile.mkdtemp(prefix="dashboard_bench-"))
    hub = None
    try:
        print(f"dashboard benchmark: {args.devices:,} devices, {args.history:,} finished "
              f"commands, {args.rounds} round(s) of {args.duration:g} s; shared machine",
              flush=True)
        data_dir = work / "data"
        credentials, _ = seed_data_dir(data_dir, args.devices, args.history)
        give_liveness(data_dir, credentials)
        script = work / "poll.lua"
        write_wrk_script(script, credentials, 2)
        port = free_port()
        env = clean_environment()
        env.update({"DROPSYNC_HOST": "127.0.0.1", "DROPSYNC_PORT": str(port),
                    "DROPSYNC_LOG_LEVEL": "WARNING", "DROPSYNC_DATA_DIR": str(data_dir),
                    "DROPSYNC_STAGING_DIR": str(work / "staging"),
                    "DROPSYNC_ADMIN_PASSWORD": PASSWORD,
                    "DROPSYNC_RATE_LIMIT_DEVICE": "1000000/minute"})
        hub = Server("hub", [venv_tool("dropsync"), "serve"], env, work, port,
                     work / "hub.log")
        hub.start(120)
        url = hub.url
        session = log_in(url)
        worker = hub.worker()

        pages = {}
        for name, path in (("overview", "/dashboard/"), ("devices", "/dashboard/devices"),
                           ("devices searched", "/dashboard/devices?q=bench09&state=online"),
                           ("device", f"/dashboard/devices/{credentials[7][0]}"),
                           ("overview live refresh", "/dashboard/?live=1")):
            pages[name] = page_times(session, url + path, cold=5, warm=20)
            print(f"  {name:22s} cold {pages[name]['cold_median_ms']:7.1f} ms (max "
                  f"{pages[name]['cold_max_ms']:.1f}), warm {pages[name]['warm_median_ms']:6.1f}"
                  f" ms, {pages[name]['bytes']:,} bytes", flush=True)
        weight = overview_weight(session, url)
        print(f"  overview with assets: {weight['total']:,} bytes "
              f"({weight['total'] / BUDGET_BYTES:.0%} of the 150 KB budget)", flush=True)

        def live_refreshes() -> int:
            for _ in range(50):
                session.get(url + "/dashboard/?live=1", timeout=30)
            return 50

        live_cpu_ms = cpu_per_request(worker, live_refreshes)

        dashboards = [log_in(url) for _ in range(5)]
        wrk_polls(wrk, script, url, 2)  # warm-up
        runs: dict[str, list[dict]] = {"none": [], "5 open": []}
        refresh_counts = []
        for round_ in range(args.rounds):
            for label in ("none", "5 open"):
                before = sum(read_cpu_seconds(worker))
                if label == "none":
                    found = wrk_polls(wrk, script, url, args.duration)
                else:
                    with OpenDashboards(url, dashboards) as open_:
                        found = wrk_polls(wrk, script, url, args.duration)
                    refresh_counts.append(open_.refreshes)
                    if open_.failures:
                        raise RuntimeError(f"dashboard refreshes failed: {open_.failures[:3]}")
                found["worker_cpu_ms_per_poll"] = \
                    (sum(read_cpu_seconds(worker)) - before) * 1000 / found["requests"]
                runs[label].append(found)
                print(f"  round {round_ + 1} {label:7s}: {found['requests_per_s']:8.0f} polls/s,"
                      f" p99 {found['p99_ms']:.1f} ms", flush=True)
        medians = {label: statistics.median(r["requests_per_s"] for r in rs)
                   for label, rs in runs.items()}
        ratio = medians["5 open"] / medians["none"]
        poll_cpu_ms = statistics.median(r["worker_cpu_ms_per_poll"] for r in runs["none"])
        print(f"\npolls/s, medians: none {medians['none']:.0f}, 5 dashboards open "
              f"{medians['5 open']:.0f}: ratio {ratio:.3f}")
        print(f"worker CPU per live refresh {live_cpu_ms:.2f} ms vs per poll {poll_cpu_ms:.2f} ms"
              f" (an open page refreshes every {REFRESH_S:g} s; a node polls every "
              f"POLL_INTERVAL_S)")
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        out = RESULTS_DIR / f"dashboard_bench-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
        out.write_text(json.dumps({
            "devices": args.devices, "history": args.history, "pages": pages,
            "overview_weight": weight, "live_refresh_cpu_ms": live_cpu_ms,
            "poll_cpu_ms": poll_cpu_ms, "polls_per_s": runs, "medians": medians,
            "ratio_5_open_vs_none": ratio, "dashboard_refreshes": refresh_counts}, indent=2))
        print(f"results: {out}")
        return 0
    except RuntimeError as exc:
        print(f"dashboard_bench FAILED: {exc}", file=sys.stderr)
        if hub is not None:
            print(hub.log_tail(), file=sys.stderr)
        return 1
    finally:
        if hub is not None:
            hub.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
