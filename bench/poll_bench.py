"""Serving benchmark: the hub as ``dropsync serve`` runs it against the seed's own stack.

What it measures, with wrk on loopback (``-t2 -c32``; each request a different device with
its own token, cycling over 1,000 devices; 100,000 finished commands in history):

- **poll**: ``GET /api/v1/device/commands/<id>`` (nothing to hand out), requests/s and p99;
- **chunk**: 4 KiB chunks of a 10 MiB blob (the hub runs with ``CHUNK_SIZE=4096`` here,
  the peer's chunk size); **range**: 64 KiB ``Range`` reads of the same blob;
- **poll+stalled**: polls with ``--stalled`` idle and as many trickling connections open,
  against the same hub with none;
- the worker's RSS, and a py-spy profile of a poll.

The baseline, measured in the same run: the seed-stack peer from ``../shared/peers/
seedstack/`` (FastAPI + SQLite + uvicorn, ``PEER_ON_LOOP=1``, one worker), when its folder
and venv are there; also the same hub under gunicorn (``SERVER=gunicorn``, on a copy of
the data) and a bare Flask route under gunicorn. Servers alternate within each round and
the report gives medians across rounds and the issue's targets as ratios.

The procedure: each hub first takes ``--settle`` seconds of load; before every run the
script waits for the machine to go quiet (other sessions share its two cores), warms the
server up, then measures, reading the worker's CPU time and the machine's load around the
run. A counted run during which something else used over a quarter of a core is measured
again (twice at most; the least disturbed counts).

The benchmark reports; it does not assert: the exit code is 0 whether or not a target is
met. It fails (exit 1) only when something is broken: a server does not start, a check
request is refused, or wrk sees a non-2xx answer.

Run it from the project root with the project's virtualenv:

    .venv/bin/python bench/poll_bench.py            # 1,000 devices, 100k history, 3 rounds
    .venv/bin/python bench/poll_bench.py --quick    # 50 devices, 1k history, 1 round of 2 s

The bare app is ``create_bare_app()`` below; the benchmark serves it with
``gunicorn -c python:dropsync.gunicorn_conf 'poll_bench:create_bare_app()'``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import random
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from benchkit import (  # noqa: E402 (after the path set-up)
    POLL_PATH,
    PROJECT_DIR,
    RESULTS_DIR,
    SEED,
    VENV_BIN,
    Server,
    clean_environment,
    ensure_wrk,
    free_port,
    http_get,
    machine_cpu_times,
    parse_wrk,
    read_cpu_seconds,
    read_rss_mib,
    seed_data_dir,
    started,
    venv_tool,
    write_wrk_script,
)

#: The issue's target: hub requests/s over the bare route's, at least this.
TARGET_RATIO = 0.7

DEFAULTS = {"devices": 1_000, "history": 100_000, "duration": 10, "rounds": 3,
            "connections": 32, "warmup": 2, "settle": 60}
QUICK = {"devices": 50, "history": 1_000, "duration": 2, "rounds": 1, "warmup": 1, "settle": 2}

#: Per-device limit for the bench: high enough that no poll is refused, so the bench
#: measures the hub, while the limiter stays on and its per-request cost stays in.
BENCH_DEVICE_RATE_LIMIT = "100000/minute"

PEER_DIR = PROJECT_DIR.parent / "shared" / "peers" / "seedstack"
#: The peer seeds a 10 MiB blob; the hub serves the same bytes (a copy staged for all).
RANGE_BYTES = 65_536
CASES = ("poll", "chunk", "range")
#: Which servers each case runs on (those that were started).
CASE_SERVERS = {"poll": ("hub", "peer", "hub-gunicorn", "bare"),
                "chunk": ("hub", "peer", "hub-gunicorn"),
                "range": ("hub", "peer", "hub-gunicorn")}
#: Targets from the issue.
RSS_TARGET_MIB = 150
STALLED_P99_RATIO = 2.0
STALLED_MAX_MS = 1000
CAPACITY_CONNECTIONS = 100
CAPACITY_P99_MS = 100


# -- the baseline: a bare Flask route ----------------------------------------------------------

def create_bare_app():
    """The baseline app: the poll route with nothing behind it, same JSON shape, ``jsonify``.

    Loaded by gunicorn in its worker as ``poll_bench:create_bare_app()``.
    """
    from flask import Flask, jsonify

    app = Flask("bare_poll")
    app.json.sort_keys = False  # as the hub does

    @app.get("/api/v1/device/commands/<device_id>")
    def poll(device_id: str):
        return jsonify({"commands": [], "next_poll_s": 30, "server_time": int(time.time())})

    @app.get("/health")
    def health():
        return jsonify({"status": "ok"})

    return app


# -- seeding the hub's data directory through the project's own code --------------------------









# -- servers -----------------------------------------------------------------------------------

















def check_poll(server: Server, device_id: str, token: str) -> dict[str, Any]:
    """One poll answers 200 with the poll's JSON shape; returns what it looked like."""
    status, headers, body = http_get(server.port, POLL_PATH.format(device_id=device_id),
                                     {"Authorization": f"Bearer {token}"})
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if status != 200 or not isinstance(data, dict) \
            or set(data) != {"commands", "next_poll_s", "server_time"}:
        raise RuntimeError(f"{server.name}: a check poll got {status} {body[:300]!r}\n"
                           f"{server.log_tail()}")
    return {"status": status, "body": data, "body_bytes": len(body),
            "headers": sorted(headers)}


# -- load with wrk -----------------------------------------------------------------------------











@dataclass
class WrkRun:
    """One wrk run against one server, with what the machine did meanwhile."""

    server: str
    #: "round" (counted), "settle", "profile" or "diagnostic" (reported, not counted).
    kind: str
    round: int
    requests_per_s: float
    requests: int
    duration_s: float
    p50_ms: float
    p75_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    non_2xx: int
    socket_errors: dict[str, int]
    #: The gunicorn worker's CPU time (user + system, all threads) per request, and user only.
    worker_cpu_us_per_request: float
    worker_user_us_per_request: float
    #: CPU use during the run in percent of one core: the worker, wrk, and everything else
    #: on the machine (other processes, kernel work not charged to either).
    worker_cpu_pct: float
    wrk_cpu_pct: float
    other_cpu_pct: float
    #: Machine busy (all cores) in the second before the run started, idle servers.
    busy_before_pct: float
    worker_rss_mib: float
    #: What was requested: "poll", "chunk" (4 KiB), "range" (64 KiB), "poll+stalled".
    case: str = "poll"

    @property
    def noisy(self) -> bool:
        return self.other_cpu_pct > NOISY_OTHER_PCT


#: A run where something besides the worker and wrk used more than this much of a core is
#: flagged in the report: another process competed for the two cores.
NOISY_OTHER_PCT = 25.0
#: Before each run, wait (up to --max-quiet-wait s) until the machine is this idle.
QUIET_BUSY_PCT = 10.0


def machine_busy_pct(seconds: float) -> float:
    """Percent of all cores busy over the next ``seconds``."""
    busy_before, total_before = machine_cpu_times()
    time.sleep(seconds)
    busy_after, total_after = machine_cpu_times()
    return 100 * (busy_after - busy_before) / max(total_after - total_before, 1)


class Load:
    """Drives wrk against a server and measures each run."""

    def __init__(self, wrk: str, scripts: Path | Mapping[str, Path], args: argparse.Namespace,
                 case: str = "poll"):
        self.wrk, self.args, self.case = wrk, args, case
        #: The wrk script per server name ("*": any server without its own).
        self.scripts = {"*": scripts} if isinstance(scripts, Path) else dict(scripts)

    def command(self, server: Server, duration: float) -> list[str]:
        script = self.scripts.get(server.name) or self.scripts["*"]
        return [self.wrk, f"-t{self.args.wrk_threads}", f"-c{self.args.connections}",
                f"-d{duration:g}s", "--latency", "-s", str(script), server.url + "/"]

    def wait_for_quiet(self) -> float:
        """Wait until the machine is idle (other sessions' tests share these cores).

        Returns the busy percentage of the last second sampled; gives up, with a warning,
        after ``--max-quiet-wait`` seconds.
        """
        deadline = time.monotonic() + self.args.max_quiet_wait
        busy = machine_busy_pct(1.0)
        said = False
        while busy > QUIET_BUSY_PCT and time.monotonic() < deadline:
            if not said:
                print(f"    (machine {busy:.0f}% busy with other work: waiting for it to go "
                      f"quiet, up to {self.args.max_quiet_wait:g} s)", flush=True)
                said = True
            busy = machine_busy_pct(1.0)
        if busy > QUIET_BUSY_PCT:
            print(f"    (still {busy:.0f}% busy: measuring anyway; this run will be noisy)",
                  flush=True)
        return busy

    def warm_up(self, server: Server, seconds: float) -> None:
        if seconds > 0:
            subprocess.run(self.command(server, seconds), capture_output=True,
                           timeout=seconds + 60, check=True)

    def measure(self, server: Server, kind: str, round_no: int, duration: float,
                busy_before: float = float("nan")) -> WrkRun:
        """One wrk run, with the worker's CPU time and the machine's load around it."""
        worker = server.worker()
        cpu_before = read_cpu_seconds(worker)
        busy_start, total_start = machine_cpu_times()
        children_before = os.times()
        started_at = time.perf_counter()
        completed = subprocess.run(self.command(server, duration), capture_output=True,
                                   text=True, timeout=duration + 60)
        wall = time.perf_counter() - started_at
        children_after = os.times()
        busy_end, total_end = machine_cpu_times()
        cpu_after = read_cpu_seconds(worker)
        if completed.returncode != 0:
            raise RuntimeError(f"wrk failed ({completed.returncode}):\n{completed.stdout}"
                               f"{completed.stderr}")
        figures = parse_wrk(completed.stdout)
        if figures["non_2xx"]:
            raise RuntimeError(
                f"{server.name}: wrk saw {figures['non_2xx']} non-2xx answers out of "
                f"{figures['requests']}; the figures would not be of polls. wrk said:\n"
                f"{completed.stdout}\n{server.log_tail()}")
        requests = max(figures["requests"], 1)
        user = cpu_after[0] - cpu_before[0]
        worker_cpu = user + cpu_after[1] - cpu_before[1]
        wrk_cpu = (children_after.children_user + children_after.children_system
                   - children_before.children_user - children_before.children_system)
        machine_cores = (busy_end - busy_start) / max(total_end - total_start, 1) \
            * (os.cpu_count() or 1)
        return WrkRun(
            server=server.name, kind=kind, round=round_no,
            requests_per_s=figures["requests_per_s"], requests=figures["requests"],
            duration_s=figures["duration_s"], p50_ms=figures["p50_ms"],
            p75_ms=figures["p75_ms"], p90_ms=figures["p90_ms"], p99_ms=figures["p99_ms"],
            max_ms=figures["max_ms"], case=self.case, non_2xx=figures["non_2xx"],
            socket_errors=figures["socket_errors"],
            worker_cpu_us_per_request=worker_cpu / requests * 1e6,
            worker_user_us_per_request=user / requests * 1e6,
            worker_cpu_pct=100 * worker_cpu / wall, wrk_cpu_pct=100 * wrk_cpu / wall,
            other_cpu_pct=max(0.0, 100 * (machine_cores - (worker_cpu + wrk_cpu) / wall)),
            busy_before_pct=busy_before, worker_rss_mib=read_rss_mib(worker),
        )

    def run(self, server: Server, kind: str, round_no: int = 0,
            duration: float | None = None, warm_up: bool = True,
            discarded: list[WrkRun] | None = None) -> WrkRun:
        """Wait for a quiet machine, warm up, then measure; prints one line.

        A counted run ("round") that other work disturbed is measured again, up to
        ``--noisy-retries`` times, and the least disturbed attempt counts; the others go to
        ``discarded`` as kind "noisy".
        """
        attempts: list[WrkRun] = []
        while True:
            busy = self.wait_for_quiet()
            if warm_up:
                self.warm_up(server, self.args.warmup)
            result = self.measure(server, kind, round_no, duration or self.args.duration,
                                  busy)
            print(f"  {describe_run(result)}", flush=True)
            attempts.append(result)
            if kind != "round" or not result.noisy \
                    or len(attempts) > self.args.noisy_retries:
                break
            print("    (other work shared the machine: measuring that run again)", flush=True)
        best = min(attempts, key=lambda r: r.other_cpu_pct)
        for attempt in attempts:
            if attempt is not best:
                attempt.kind = "noisy"
                if discarded is not None:
                    discarded.append(attempt)
        if len(attempts) > 1:
            print(f"    (counting the attempt with the least other load: "
                  f"{best.other_cpu_pct:.0f}%)", flush=True)
        return best


def describe_run(r: WrkRun) -> str:
    label = f"round {r.round}" if r.kind == "round" else r.kind
    errors = {k: v for k, v in r.socket_errors.items() if v}
    return (f"{label:<10} {r.case:<12} {r.server:<13} {r.requests_per_s:7.0f} req/s, "
            f"p50 {r.p50_ms:6.2f} ms, p99 {r.p99_ms:6.2f} ms, max {r.max_ms:5.0f} ms, "
            f"worker {r.worker_cpu_us_per_request:5.0f} us CPU/req, "
            f"other load {r.other_cpu_pct:3.0f}%" + (" NOISY" if r.noisy else "")
            + (f", socket errors {errors}" if errors else ""))


# -- profile with py-spy -----------------------------------------------------------------------

#: Where a sample's time is charged: the innermost frame that matches one of these wins.
#: Each rule: (component, path fragment, function name or None for any).
PROFILE_RULES: tuple[tuple[str, str, str | None], ...] = (
    ("rate limits, per request", "/dropsync/api/limits.py", None),
    ("rate limits, per request", "/flask_limiter/", None),
    ("rate limits, per request", "/limits/", None),
    ("marshmallow", "/marshmallow/", None),
    ("token check (sha256 + compare)", "/dropsync/fleet/credentials.py", None),
    ("device lookup (KeyedTable.get: TinyDB + deepcopy)", "/dropsync/store/tables.py", None),
    ("liveness update", "/dropsync/store/liveness.py", None),
    ("pacing (next_poll_s)", "/dropsync/fleet/pacing.py", None),
    ("command queue (lease)", "/dropsync/relay/commands.py", None),
    ("JSON encode (flask json provider)", "/flask/json/", None),
    ("werkzeug (request, headers, routing, response)", "/werkzeug/", None),
    ("flask (contexts, session, dispatch, hooks)", "/flask/", None),
    ("gunicorn (accept, HTTP parse, write)", "/gunicorn/", None),
    ("dropsync other (views, auth glue, contract)", "/dropsync/", None),
    ("bare view", "/bench/poll_bench.py", None),
)
#: The ``limits`` memory storage's sweeper (a timer thread restarted every 10 ms), which the
#: hub used through flask-limiter until commit 4216916.
EXPIRY_THREAD = "rate limits: limits' expiry timer thread"
OTHER = "other (threads, selectors, stdlib)"
FRAME_RE = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")
PROFILE_RATE_HZ = 100
PROFILE_MIN_S = 5


def parse_frame(frame: str) -> tuple[str, str]:
    match = FRAME_RE.match(frame)
    return (match.group("func"), match.group("file")) if match else (frame, "")


def bare_name(func: str) -> str:
    """``Flask.wsgi_app`` -> ``wsgi_app``; ``contract.<locals>.wrap.<locals>.run`` -> ``run``."""
    return func.rsplit(".", 1)[-1]


def component(stack: list[tuple[str, str]]) -> str:
    """The component a sample's time belongs to (innermost matching frame)."""
    if any(func.endswith("__expire_events") for func, _ in stack):
        return EXPIRY_THREAD
    for index in range(len(stack) - 1, -1, -1):
        func, path = stack[index]
        for name, fragment, wanted in PROFILE_RULES:
            if fragment in path and (wanted is None or bare_name(func) == wanted):
                if name == "marshmallow":  # loading the query, or dumping the answer?
                    outer = [p for _, p in stack[:index]]
                    return ("marshmallow: query load" if any(
                        "/dropsync/api/parsing.py" in p for p in outer)
                        else "marshmallow: response dump")
                return name
    return OTHER


#: Functions whose inclusive share is worth showing (any frame in the stack).
INCLUSIVE = (
    ("Flask app (wsgi_app), all of it", "/flask/app.py", "wsgi_app"),
    ("DeviceGate.admit (limits, auth, liveness; both paths)",
     "/dropsync/api/device_requests.py", "admit"),
    ("  contract.run (query load, view, dump, JSON)", "/dropsync/api/contract.py", "run"),
    ("  flask session open/save", "/flask/sessions.py", None),
    ("  rate limits (check + count)", "/dropsync/api/limits.py", None),
    ("  flask-limiter (before commit 4216916)", "/flask_limiter/", None),
)


def short_location(path: str) -> str:
    for marker in ("/site-packages/", "/work/main/", "/lib/python3"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def summarise_profile(raw: str, user_us_per_request: float) -> dict[str, Any]:
    """Shares of GIL-holding samples per component, inclusive figures and top leaves.

    Python runs in user mode holding the GIL, so a share times the worker's user CPU time
    per request estimates what that component costs per request.
    """
    by_component: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not stack_text or not count_text.isdigit():
            continue
        count = int(count_text)
        stack = [parse_frame(f) for f in stack_text.split(";")]
        total += count
        by_component[component(stack)] += count
        for label, fragment, func in INCLUSIVE:
            if any(fragment in p and (func is None or bare_name(f) == func) for f, p in stack):
                inclusive[label] += count
        func, path = stack[-1]
        leaves[f"{func} ({short_location(path)})"] += count
    if not total:
        return {"samples": 0}

    def share(count: int) -> dict[str, float]:
        fraction = count / total
        return {"pct": 100 * fraction, "us_per_request": fraction * user_us_per_request}

    return {
        "samples": total,
        "user_us_per_request": user_us_per_request,
        "components": {name: share(n) for name, n in by_component.most_common()},
        "inclusive": {label: share(inclusive[label]) for label, _, _ in INCLUSIVE
                      if inclusive[label]},
        "top_leaf_functions": {name: share(n) for name, n in leaves.most_common(12)},
    }


def profile_server(py_spy: str, load: Load, server: Server, out: Path) -> dict[str, Any]:
    """Sample the worker with py-spy under the same load.

    Only the thread holding the GIL is sampled (``--gil``), 100 times a second. py-spy
    pauses the worker for each sample (consistent stacks, no errors), which costs it some
    throughput while profiled; the run's figures are reported but not counted.
    """
    busy = load.wait_for_quiet()
    load.warm_up(server, load.args.warmup)
    duration = max(PROFILE_MIN_S, int(load.args.duration))
    spy = subprocess.Popen(
        [py_spy, "record", "--pid", str(server.worker()), "--gil", "--full-filenames",
         "--rate", str(PROFILE_RATE_HZ), "--duration", str(duration), "--format", "raw",
         "--output", str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(0.5)  # let py-spy attach before the load starts
        run = load.measure(server, "profile", 0, duration, busy)
        spy_output, _ = spy.communicate(timeout=60)
    finally:
        if spy.poll() is None:
            spy.kill()
            spy.wait()
    print(f"  {describe_run(run)}", flush=True)
    if spy.returncode != 0 or not out.exists():
        print(f"  py-spy failed on {server.name}:\n{spy_output}", file=sys.stderr)
        return {"error": spy_output.strip(), "run": asdict(run)}
    summary = summarise_profile(out.read_text(), run.worker_user_us_per_request)
    summary["run"] = asdict(run)
    summary["raw_file"] = str(out)
    summary["py_spy_said"] = " ".join(line.split("py-spy> ", 1)[-1] for line in
                                      spy_output.splitlines() if "Samples" in line
                                      or "behind" in line)
    return summary


# -- reporting ---------------------------------------------------------------------------------

METRICS = ("requests_per_s", "p50_ms", "p99_ms", "max_ms", "worker_cpu_us_per_request",
           "worker_user_us_per_request", "worker_rss_mib")
#: Payload bytes per request, for MB/s.
CASE_BYTES = {"chunk": 4096, "range": RANGE_BYTES}


def summarise(runs: list[WrkRun]) -> dict[str, dict[str, dict[str, float]]]:
    """Medians across the counted rounds, per case and server."""
    found: dict[str, dict[str, dict[str, float]]] = {}
    for case in sorted({r.case for r in runs if r.kind == "round"}):
        for server in sorted({r.server for r in runs if r.case == case and r.kind == "round"}):
            counted = [r for r in runs if r.case == case and r.server == server
                       and r.kind == "round"]
            figures = {metric: statistics.median(getattr(r, metric) for r in counted)
                       for metric in METRICS}
            figures["rounds"] = len(counted)
            if case in CASE_BYTES:
                figures["mb_per_s"] = figures["requests_per_s"] * CASE_BYTES[case] / 1e6
            found.setdefault(case, {})[server] = figures
    return found


def per_round_ratios(runs: list[WrkRun], case: str, a: str, b: str) -> list[float]:
    """``a``/``b`` requests per second, round by round (alternating runs of one round)."""
    by_round: dict[int, dict[str, float]] = {}
    for r in runs:
        if r.kind == "round" and r.case == case and r.server in (a, b):
            by_round.setdefault(r.round, {})[r.server] = r.requests_per_s
    return [v[a] / v[b] for _, v in sorted(by_round.items()) if a in v and b in v]


def target_table(summary: dict, runs: list[WrkRun]) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured value and a verdict."""
    rows: list[dict[str, Any]] = []

    def ratio_row(measure: str, case: str, other: str, target: float) -> None:
        if other not in summary.get(case, {}) or "hub" not in summary.get(case, {}):
            return
        per_round = per_round_ratios(runs, case, "hub", other)
        value = statistics.median(per_round)
        rows.append({"measure": measure, "value": f"{value:.2f}x (rounds "
                     + ", ".join(f"{r:.2f}" for r in per_round) + ")",
                     "target": f">= {target:.1f}x", "met": value >= target})

    ratio_row("polls/s, hub / peer tuned", "poll", "peer", 1.0)
    if "peer" in summary.get("poll", {}):
        hub_p99, peer_p99 = summary["poll"]["hub"]["p99_ms"], summary["poll"]["peer"]["p99_ms"]
        rows.append({"measure": "poll p99, hub vs peer tuned",
                     "value": f"{hub_p99:.1f} ms vs {peer_p99:.1f} ms",
                     "target": "<= peer's", "met": hub_p99 <= peer_p99})
    ratio_row("4 KiB chunks/s, hub / peer tuned", "chunk", "peer", 1.0)
    ratio_row("64 KiB Range MB/s, hub / peer tuned", "range", "peer", 1.0)
    if "poll+stalled" in summary and "poll-quiet" in summary:
        stalled, quiet = summary["poll+stalled"]["hub"], summary["poll-quiet"]["hub"]
        worst = max(r.max_ms for r in runs if r.case == "poll+stalled" and r.kind == "round")
        rows.append({"measure": "poll p99 with idle + trickling connections / none",
                     "value": f"{stalled['p99_ms'] / quiet['p99_ms']:.2f}x "
                              f"({stalled['p99_ms']:.1f} vs {quiet['p99_ms']:.1f} ms)",
                     "target": f"<= {STALLED_P99_RATIO:.0f}x",
                     "met": stalled["p99_ms"] <= STALLED_P99_RATIO * quiet["p99_ms"]})
        rows.append({"measure": "slowest poll with them open", "value": f"{worst:.0f} ms",
                     "target": f"< {STALLED_MAX_MS} ms", "met": worst < STALLED_MAX_MS})
    paced = [r for r in runs if r.case.startswith("poll@") and r.kind == "round"]
    if paced:
        p99 = statistics.median(r.p99_ms for r in paced)
        rate = statistics.median(r.requests_per_s for r in paced)
        errors = sum(r.non_2xx + sum(r.socket_errors.values()) for r in paced)
        rows.append({"measure": f"paced polls ({paced[0].case}, 10,000 devices at 10 s)",
                     "value": f"{rate:.0f}/s served, p99 {p99:.1f} ms, {errors} errors",
                     "target": f"p99 < {CAPACITY_P99_MS} ms, 0 errors",
                     "met": p99 < CAPACITY_P99_MS and errors == 0})
    rss = max((r.worker_rss_mib for r in runs if r.server == "hub"), default=float("nan"))
    rows.append({"measure": "hub worker RSS (devices, history as seeded)",
                 "value": f"{rss:.0f} MiB", "target": f"<= {RSS_TARGET_MIB} MB",
                 "met": rss * 1.048576 <= RSS_TARGET_MIB})
    for case in CASES:  # what decided the server: the same hub under gunicorn
        if "hub-gunicorn" in summary.get(case, {}):
            per_round = per_round_ratios(runs, case, "hub", "hub-gunicorn")
            rows.append({"measure": f"{case}: granian hub / gunicorn hub",
                         "value": f"{statistics.median(per_round):.2f}x (rounds "
                         + ", ".join(f"{r:.2f}" for r in per_round) + ")",
                         "target": "(decides SERVER)", "met": None})
    if "bare" in summary.get("poll", {}):
        ratio_row("polls/s, hub / bare Flask route under gunicorn", "poll", "bare", 0.7)
    return rows


def format_runs(runs: list[WrkRun]) -> str:
    header = (f"{'run':<10} {'case':<12} {'server':<13} {'req/s':>7} {'p50 ms':>7} "
              f"{'p99 ms':>7} {'max ms':>7} {'CPU us/req':>10} {'RSS MiB':>7} {'other':>5}")
    lines = ["Every run (CPU us/req and RSS: the serving process's; other: CPU use by other "
             "work, in % of one core):", header, "-" * len(header)]
    for r in runs:
        label = f"round {r.round}" if r.kind == "round" else r.kind
        lines.append(f"{label:<10} {r.case:<12} {r.server:<13} {r.requests_per_s:>7.0f} "
                     f"{r.p50_ms:>7.2f} {r.p99_ms:>7.2f} {r.max_ms:>7.0f} "
                     f"{r.worker_cpu_us_per_request:>10.0f} {r.worker_rss_mib:>7.0f} "
                     f"{r.other_cpu_pct:>4.0f}%" + (" NOISY" if r.noisy else ""))
    return "\n".join(lines)


def format_summary(summary: dict) -> str:
    header = (f"{'case':<12} {'server':<13} {'req/s':>8} {'MB/s':>7} {'p50 ms':>7} "
              f"{'p99 ms':>7} {'max ms':>7} {'CPU us/req':>10}")
    lines = ["Medians across rounds:", header, "-" * len(header)]
    for case, by_server in summary.items():
        for server, f in by_server.items():
            mb = f"{f['mb_per_s']:.1f}" if "mb_per_s" in f else "-"
            lines.append(f"{case:<12} {server:<13} {f['requests_per_s']:>8.0f} {mb:>7} "
                         f"{f['p50_ms']:>7.2f} {f['p99_ms']:>7.2f} {f['max_ms']:>7.0f} "
                         f"{f['worker_cpu_us_per_request']:>10.0f}")
    return "\n".join(lines)


def format_targets(rows: list[dict[str, Any]]) -> str:
    width = max(len(r["measure"]) for r in rows)
    lines = ["Targets (issue 11):"]
    for r in rows:
        verdict = "" if r["met"] is None else ("PASS" if r["met"] else "MISS")
        lines.append(f"  {r['measure']:<{width}}  {r['value']:<40} {r['target']:<18} {verdict}")
    return "\n".join(lines)


def format_profile(name: str, profile: dict[str, Any]) -> str:
    if not profile.get("samples"):
        return f"{name}: no profile ({profile.get('error', 'no samples')})"
    run = profile["run"]
    lines = [f"{name}: {profile['samples']} GIL-holding samples during {run['requests']} "
             f"requests ({run['requests_per_s']:.0f} req/s under py-spy), worker "
             f"{profile['user_us_per_request']:.0f} us user CPU per request",
             f"  (py-spy: {profile.get('py_spy_said') or 'no summary'})",
             f"  {'component (innermost matching frame)':<52} {'share':>6} {'~us/req':>8}"]
    for component_name, s in profile["components"].items():
        lines.append(f"  {component_name:<52} {s['pct']:>5.1f}% {s['us_per_request']:>8.0f}")
    lines.append("  inclusive:")
    for label, s in profile["inclusive"].items():
        lines.append(f"  {label:<52} {s['pct']:>5.1f}% {s['us_per_request']:>8.0f}")
    lines.append("  top functions by own time:")
    for label, s in list(profile["top_leaf_functions"].items())[:8]:
        lines.append(f"    {s['pct']:>5.1f}%  {label}")
    return "\n".join(lines)


def source_fingerprint() -> dict[str, Any]:
    """Git commit, uncommitted changes under dropsync/, a digest of the dropsync sources."""
    digest = hashlib.sha256()
    for path in sorted((PROJECT_DIR / "dropsync").rglob("*.py")):
        digest.update(path.relative_to(PROJECT_DIR).as_posix().encode())
        digest.update(path.read_bytes())

    def git(*argv: str) -> str:
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            return subprocess.run(["git", *argv], cwd=PROJECT_DIR, capture_output=True,
                                  text=True, check=True).stdout.strip()
        return ""

    return {"commit": git("rev-parse", "--short", "HEAD"),
            "dirty_files": git("status", "--porcelain", "--", "dropsync").splitlines(),
            "dropsync_sources_sha256": digest.hexdigest()[:12]}


# -- command line and main ---------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, help="registered devices (default: 1000)")
    parser.add_argument("--history", type=int,
                        help="finished commands in history (default: 100000)")
    parser.add_argument("--duration", type=float, help="seconds per measured run (default: 10)")
    parser.add_argument("--rounds", type=int, help="hub+bare rounds; medians are reported "
                        "(default: 3)")
    parser.add_argument("--connections", type=int, help="wrk connections (default: 32)")
    parser.add_argument("--warmup", type=float, help="seconds of load before each measured "
                        "run, not counted (default: 2)")
    parser.add_argument("--settle", type=float,
                        help="seconds of load on each freshly started hub before its first "
                        "measured run, not counted; the default, 60, is the per-device rate "
                        "limit's window, so measured runs see the limiter's steady state")
    parser.add_argument("--max-quiet-wait", type=float, default=60,
                        help="before each run, wait up to this long for other work on the "
                        "machine to stop (default: 60)")
    parser.add_argument("--noisy-retries", type=int, default=2,
                        help="measure a counted run again, up to this many times, when other "
                        f"work used more than {NOISY_OTHER_PCT:.0f}%% of a core during it "
                        "(default: 2)")
    parser.add_argument("--wrk-threads", type=int, default=2, help="wrk threads (default: 2)")
    parser.add_argument("--threads", type=int,
                        help="DROPSYNC_THREADS for both servers (default: the hub's default)")
    parser.add_argument("--pin", type=int, metavar="CPU",
                        help="run both servers on this one CPU (taskset): not the production "
                        "setup, but it takes the GIL's cross-core hand-offs out of the figures "
                        "(see bench/README.md)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 50 devices, 1000 history, 1 round of 2 s")
    parser.add_argument("--no-profile", action="store_true",
                        help="skip the py-spy profile after the rounds")
    parser.add_argument("--no-peer", action="store_true",
                        help="leave the seed-stack peer out (it runs when its folder, "
                        "../shared/peers/seedstack/, and its venv are there)")
    parser.add_argument("--peer-python", help="the peer venv's python (default: $PEER_PYTHON, "
                        "<tmp>/peer-venv/bin/python or ../peer-venv/bin/python)")
    parser.add_argument("--no-gunicorn", action="store_true",
                        help="leave out the same hub under gunicorn (SERVER=gunicorn)")
    parser.add_argument("--seed-cache", type=Path,
                        help="keep the seeded data directory here and reuse it on later runs "
                        "with the same --devices and --history (seeding 100,000 fsynced "
                        "history records takes minutes)")
    parser.add_argument("--capacity-rate", type=int, default=1000,
                        help="paced polls per second for the capacity runs (default: 1000, "
                        "10,000 devices at a 10 s interval; 0 skips them)")
    parser.add_argument("--stalled", type=int, default=200,
                        help="idle and trickling connections each for the slow-client runs "
                        "(default: 200 + 200; 0 skips them)")
    parser.add_argument("--workdir", type=Path, default=RESULTS_DIR,
                        help="where the temporary data directory goes (default: bench/results/)")
    parser.add_argument("--output", type=Path,
                        help="JSON results file (default: bench/results/poll_bench-<time>.json)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary folder (data dir, server logs) afterwards")
    args = parser.parse_args(argv)
    for key, default in DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, QUICK.get(key, default) if args.quick else default)
    if args.devices < 1 or args.history < 0 or args.rounds < 1 or args.duration <= 0:
        parser.error("--devices, --rounds and --duration must be positive, --history >= 0")
    if args.connections < args.wrk_threads:
        parser.error("--connections must be at least --wrk-threads")
    return args


def server_environment(port: int, args: argparse.Namespace, **settings: str) -> dict[str, str]:
    env = clean_environment()
    env.update({"DROPSYNC_HOST": "127.0.0.1", "DROPSYNC_PORT": str(port),
                "DROPSYNC_LOG_LEVEL": "WARNING"})
    if args.threads:
        env["DROPSYNC_THREADS"] = str(args.threads)
    env.update({f"DROPSYNC_{key}": value for key, value in settings.items()})
    return env


def effective_gunicorn_options(env: Mapping[str, str]) -> dict[str, Any]:
    """What ``dropsync.server.gunicorn_options`` gives for this environment (JSON-able)."""
    from dropsync.config import load_config
    from dropsync.server import gunicorn_options

    options = gunicorn_options(load_config(environ=env))
    return {k: v for k, v in options.items() if isinstance(v, str | int | float | bool | list)}




def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM ends the run through the finally blocks, so the servers are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    wrk = ensure_wrk()
    py_spy = None if args.no_profile else (
        str(VENV_BIN / "py-spy") if (VENV_BIN / "py-spy").exists() else shutil.which("py-spy"))
    args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="poll_bench-", dir=args.workdir))
    try:
        return run_bench(args, wrk, py_spy, work)
    except RuntimeError as exc:
        print(f"\npoll_bench FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def find_peer_python(explicit: str | None) -> Path | None:
    """The peer's virtualenv python (its README installs it outside the repo)."""
    candidates = [explicit, os.environ.get("PEER_PYTHON"),
                  str(Path(tempfile.gettempdir()) / "peer-venv" / "bin" / "python"),
                  str(PROJECT_DIR.parent / "peer-venv" / "bin" / "python")]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return Path(candidate)
    return None


def seed_peer(python: Path, work: Path, devices: int, history: int) -> dict[str, Any]:
    out = subprocess.run([str(python), str(PEER_DIR / "app.py"), "seed", "--db",
                          str(work / "peer.db"), "--devices", str(devices), "--history",
                          str(history), "--blobdir", str(work / "peer-blobs"), "--force"],
                         capture_output=True, text=True, check=True, cwd=PEER_DIR)
    return json.loads(out.stdout.strip().splitlines()[-1])


def wait_for_package(port: int, device_id: str, token: str) -> dict[str, Any]:
    """The staged blob's manifest entry, once the hub has taken it in."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status, _, body = http_get(port, f"/api/v1/files/manifest/{device_id}",
                                   {"Authorization": f"Bearer {token}"})
        if status == 200 and json.loads(body)["files"]:
            return json.loads(body)["files"][0]
        time.sleep(0.5)
    raise RuntimeError("the hub did not take the staged blob in within 120 s")


class Stallers:
    """Connections that hold a server's attention without finishing a request: ``idle``
    ones connect and send nothing, ``trickling`` ones send a request (half of them
    mid-headers, half mid-body) one byte a second. Any the server cuts is opened again,
    so the count holds for the whole run."""

    def __init__(self, port: int, idle: int, trickling: int, device_id: str, token: str):
        self.port, self.idle, self.trickling = port, idle, trickling
        self.heads = [
            f"GET {POLL_PATH.format(device_id=device_id)} HTTP/1.1\r\nHost: hub\r\n"
            f"Authorization: Bearer {token}\r\nX-Slow: ".encode(),
            f"POST /api/v1/device/heartbeat/{device_id} HTTP/1.1\r\nHost: hub\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: 100000\r\n\r\n{{\"rssi\": ".encode()]
        self.sockets: list[tuple[socket.socket, bool]] = []
        self.reopened = 0
        self.stop_event = __import__("threading").Event()

    def open(self, kind: int | None) -> tuple[socket.socket, bool]:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        sock.setblocking(False)
        if kind is not None:
            sock.sendall(self.heads[kind])
        return sock, kind is not None

    def __enter__(self) -> Stallers:
        import threading

        self.sockets = [self.open(None) for _ in range(self.idle)]
        self.sockets += [self.open(i % 2) for i in range(self.trickling)]
        self.thread = threading.Thread(target=self.keep_up, daemon=True)
        self.thread.start()
        return self

    def keep_up(self) -> None:
        while not self.stop_event.wait(1.0):
            for index, (sock, trickles) in enumerate(self.sockets):
                try:
                    if sock.recv(4096) == b"":
                        raise ConnectionError
                except BlockingIOError:
                    try:
                        if trickles:
                            sock.send(b"1")
                        continue
                    except OSError:
                        pass
                except OSError:
                    pass
                sock.close()  # answered (408) or cut: open another in its place
                self.reopened += 1
                with contextlib.suppress(OSError):
                    self.sockets[index] = self.open(index % 2 if trickles else None) \
                        if not trickles else self.open((index - self.idle) % 2)

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        self.thread.join(timeout=10)
        for sock, _ in self.sockets:
            sock.close()


def run_bench(args: argparse.Namespace, wrk: str, py_spy: str | None, work: Path) -> int:
    wall_started = time.perf_counter()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    output = args.output or RESULTS_DIR / f"poll_bench-{stamp}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    data_dir, staging_dir = work / "data", work / "staging"
    staging_dir.mkdir()
    fingerprint = source_fingerprint()
    peer_python = None if args.no_peer else find_peer_python(args.peer_python)
    print(f"serving benchmark: {args.devices:,} devices, {args.history:,} finished commands, "
          f"{args.rounds} round(s) of {args.duration:g} s (+{args.warmup:g} s warm-up; "
          f"{args.settle:g} s settle per hub start), wrk -t{args.wrk_threads} "
          f"-c{args.connections}")
    print(f"dropsync {fingerprint['commit']} (sources {fingerprint['dropsync_sources_sha256']}"
          f"{', uncommitted changes' if fingerprint['dirty_files'] else ''}); "
          f"{os.cpu_count()} CPUs; Python {platform.python_version()}")

    cache = args.seed_cache / f"{args.devices}-devices-{args.history}-history" \
        if args.seed_cache else None
    if cache is not None and (cache / "credentials.json").exists():
        print(f"copying the seeded data directory from {cache}", flush=True)
        shutil.copytree(cache / "data", data_dir)
        credentials = [tuple(c) for c in json.loads((cache / "credentials.json").read_text())]
        seed_timings = {"copied_from": str(cache)}
    else:
        print("seeding the data directory through dropsync's own code...", flush=True)
        credentials, seed_timings = seed_data_dir(data_dir, args.devices, args.history)
        if cache is not None:
            shutil.copytree(data_dir, cache / "data")
            (cache / "credentials.json").write_text(json.dumps(credentials))
    peer_seed: dict[str, Any] = {}
    if peer_python is not None and PEER_DIR.exists():
        print(f"seeding the seed-stack peer ({PEER_DIR}, {peer_python})...", flush=True)
        peer_seed = seed_peer(peer_python, work, args.devices, args.history)
        blob = Path(peer_seed["blob_path"]).read_bytes()
    else:
        print("no seed-stack peer (folder or its venv missing): hub-only figures")
        blob = random.Random(SEED).randbytes(10 * 2**20)
    (staging_dir / "all").mkdir()
    (staging_dir / "all" / "blob.bin").write_bytes(blob)
    if not args.no_gunicorn:
        shutil.copytree(data_dir, work / "data-gunicorn")
        shutil.copytree(staging_dir, work / "staging-gunicorn")

    ports: set[int] = set()

    def new_port() -> int:
        port = free_port()
        while port in ports:
            port = free_port()
        ports.add(port)
        return port

    def hub_environment(port: int, limiter: bool, server: str, data: Path,
                        staging: Path) -> dict[str, str]:
        return server_environment(
            port, args, DATA_DIR=str(data), STAGING_DIR=str(staging), SERVER=server,
            ADMIN_TOKEN=secrets.token_urlsafe(24), ADMIN_PASSWORD=secrets.token_urlsafe(16),
            RATE_LIMITS_ENABLED="true" if limiter else "false",
            RATE_LIMIT_DEVICE=BENCH_DEVICE_RATE_LIMIT, RATE_LIMIT_FILES=BENCH_DEVICE_RATE_LIMIT,
            # the peer's chunk route serves 4 KiB: the same piece (the hub's default is 32 KiB)
            CHUNK_SIZE=str(CASE_BYTES["chunk"]))

    # taskset execs the server, so the pid is still the main process; its worker inherits.
    pin = [] if args.pin is None else [venv_tool("taskset"), "-c", str(args.pin)]
    servers: dict[str, Server] = {}

    def hub_server(name: str, limiter: bool = True, server: str = "granian",
                   data: Path = data_dir, staging: Path = staging_dir) -> Server:
        port = new_port()
        return Server(name, [*pin, venv_tool("dropsync"), "serve"],
                      hub_environment(port, limiter, server, data, staging), work, port,
                      work / f"{name.replace(' ', '-')}.log")

    servers["hub"] = hub_server("hub")
    if not args.no_gunicorn:
        servers["hub-gunicorn"] = hub_server("hub-gunicorn", server="gunicorn",
                                             data=work / "data-gunicorn",
                                             staging=work / "staging-gunicorn")
    bare_port = new_port()
    servers["bare"] = Server(
        "bare", [*pin, venv_tool("gunicorn"), "-c", "python:dropsync.gunicorn_conf",
                 "--pythonpath", str(BENCH_DIR), "poll_bench:create_bare_app()"],
        server_environment(bare_port, args), work, bare_port, work / "bare.log")
    if peer_seed:
        peer_port = new_port()
        peer_env = {**clean_environment(), "PEER_DB": str(work / "peer.db"),
                    "PEER_ON_LOOP": "1"}
        servers["peer"] = Server(
            "peer", [*pin, str(peer_python.parent / "uvicorn"), "app:app", "--host",
                     "127.0.0.1", "--port", str(peer_port), "--no-access-log",
                     "--log-level", "warning"], peer_env, PEER_DIR, peer_port,
            work / "peer.log")
        servers["peer"].single_process = True
    print("servers: " + ", ".join(servers) + ("" if args.pin is None else
                                              f"; all pinned to CPU {args.pin} (taskset)"))

    runs: list[WrkRun] = []
    profiles: dict[str, Any] = {}
    checks: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        for name, server in servers.items():
            stack.enter_context(started(server, timeout_s=300))
            print(f"  {name} answered /health after {server.start_s:.1f} s", flush=True)
        sample_device, sample_token = credentials[0]
        for name in ("hub", "hub-gunicorn", "bare"):
            if name in servers:
                checks[name] = check_poll(servers[name], sample_device, sample_token)
        status, _, _ = http_get(servers["hub"].port, POLL_PATH.format(device_id=sample_device))
        if status != 401:
            raise RuntimeError(f"hub answered {status} to a poll with no token; expected 401")
        package = wait_for_package(servers["hub"].port, sample_device, sample_token)
        if "hub-gunicorn" in servers:
            gunicorn_package = wait_for_package(servers["hub-gunicorn"].port, sample_device,
                                                sample_token)
            if gunicorn_package["url"] != package["url"]:
                raise RuntimeError("the two hubs gave the blob different versions")
        chunks = package["chunks"]
        ranges = package["size"] // RANGE_BYTES
        peer_credentials = [(f"dev-{i:05d}", f"tok-{i:05d}") for i in range(args.devices)]

        def script(name: str, creds, path_for=None, extra=None, delay_ms: float = 0) -> Path:
            path = work / f"{name}.lua"
            write_wrk_script(path, creds, args.wrk_threads, path_for, extra, delay_ms)
            return path

        url = package["url"].replace(sample_device, "{device}")

        def range_header(index: int) -> dict[str, str]:
            start = index * 3 % ranges * RANGE_BYTES
            return {"Range": f"bytes={start}-{start + RANGE_BYTES - 1}"}

        hub_scripts = {
            "poll": script("poll", credentials),
            "chunk": script("chunk", credentials, lambda i, d: url.format(device=d)
                            + f"/{i * 7 % chunks}"),
            "range": script("range", credentials, lambda i, d: url.format(device=d),
                            range_header),
        }
        peer_scripts: dict[str, Path] = {}
        if "peer" in servers:
            sha = peer_seed["blob_sha256"]
            peer_scripts = {
                "poll": script("peer-poll", peer_credentials),
                "chunk": script("peer-chunk", peer_credentials,
                                lambda i, d: f"/api/v1/files/chunk/{d}/{sha}/{i * 7 % chunks}"),
                "range": script("peer-range", peer_credentials,
                                lambda i, d: f"/api/v1/files/blob/{d}/{sha}", range_header),
            }
        loads = {case: Load(wrk, {"*": hub_scripts[case],
                                  **({"peer": peer_scripts[case]} if peer_scripts else {})},
                            args, case) for case in CASES}

        if args.settle > 0:
            print(f"\nsettling: {args.settle:g} s of polls on each hub (not counted)",
                  flush=True)
            for name in ("hub", "hub-gunicorn"):
                if name in servers:
                    runs.append(loads["poll"].run(servers[name], "settle",
                                                  duration=args.settle, warm_up=False))

        print(f"\nmeasuring: {args.rounds} round(s); in each, every case on every server",
              flush=True)
        for round_no in range(1, args.rounds + 1):
            for case in CASES:
                for name in CASE_SERVERS[case]:
                    if name in servers:
                        runs.append(loads[case].run(servers[name], "round", round_no,
                                                    discarded=runs))

        if args.stalled:
            print(f"\nslow clients: hub polls with none, then with {args.stalled} idle + "
                  f"{args.stalled} trickling connections open ({args.rounds} rounds)",
                  flush=True)
            stalled_load = Load(wrk, hub_scripts["poll"], args, "poll+stalled")
            quiet_load = Load(wrk, hub_scripts["poll"], args, "poll-quiet")
            for round_no in range(1, args.rounds + 1):
                runs.append(quiet_load.run(servers["hub"], "round", round_no))
                with Stallers(servers["hub"].port, args.stalled, args.stalled, sample_device,
                              sample_token) as stallers:
                    runs.append(stalled_load.run(servers["hub"], "round", round_no))
                print(f"    ({stallers.reopened} stalled connections were cut and reopened)")

        if args.capacity_rate:
            # A fleet polling at a fixed pace rather than as fast as it can: each of
            # CAPACITY_CONNECTIONS connections waits so that together they ask about
            # --capacity-rate polls a second (10,000 devices at a 10 s interval: 1,000/s).
            delay_ms = 1000 * CAPACITY_CONNECTIONS / args.capacity_rate
            paced = Load(wrk, script("poll-paced", credentials, delay_ms=delay_ms),
                         argparse.Namespace(**{**vars(args),
                                               "connections": CAPACITY_CONNECTIONS}),
                         f"poll@{args.capacity_rate}/s")
            print(f"\npaced polls: about {args.capacity_rate}/s over {CAPACITY_CONNECTIONS} "
                  f"connections ({args.rounds} rounds)", flush=True)
            for round_no in range(1, args.rounds + 1):
                runs.append(paced.run(servers["hub"], "round", round_no))

        if py_spy:
            print("\nprofiling the hub's worker under the poll load (py-spy, GIL holder, "
                  f"{PROFILE_RATE_HZ} Hz; not counted)", flush=True)
            for name in ("hub",):
                raw = output.with_name(f"{output.stem}-{name}.pyspy.txt")
                profiles[name] = profile_server(py_spy, loads["poll"], servers[name], raw)
                if "run" in profiles[name]:
                    runs.append(WrkRun(**profiles[name]["run"]))
        elif not args.no_profile:
            print("\npy-spy not found: no profile (install it with: "
                  f"{VENV_BIN / 'pip'} install py-spy)")

    summary = summarise(runs)
    targets = target_table(summary, runs)
    print()
    print(format_runs(runs))
    print()
    print(format_summary(summary))
    print()
    print(format_targets(targets))
    noisy = [r for r in runs if r.noisy and r.kind == "round"]
    if noisy:
        print(f"warning: {len(noisy)} counted run(s) shared the machine with other work "
              f"(other load > {NOISY_OTHER_PCT:.0f}% of a core)")
    for name, profile in profiles.items():
        print()
        print(format_profile(name, profile))
    wall_s = time.perf_counter() - wall_started
    print(f"\nwall time {wall_s:.0f} s")

    report = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "device_rate_limit": BENCH_DEVICE_RATE_LIMIT,
        "environment": {
            "python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "wrk": subprocess.run(
                [wrk, "--version"], capture_output=True, text=True).stdout.split("\n")[0],
            **fingerprint,
        },
        "seed": seed_timings, "peer_seed": peer_seed,
        "start_s": {name: s.start_s for name, s in servers.items()},
        "checks": checks, "summary": summary, "targets": targets,
        "runs": [asdict(r) for r in runs], "profiles": profiles, "wall_s": wall_s,
    }
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"figures written to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
