"""Capacity: how many simulated devices one hub carries at a 10 s poll with p99 <= 100 ms.

What it measures: a real hub (``dropsync serve`` as it stands, rate limits on) driven by
``dropsync simulate`` in a separate process, N devices polling at the hub's 10 s interval
as the firmware behaves (a poll each interval, a heartbeat every 60 s, a manifest check
at boot and every 300 s, an occasional message; see docs/operators/simulator.md). N is stepped up
(250, 500, 1,000, 2,000, ...) until the poll p99 (after 20 s of warm-up: devices come up
over the first 10 s) exceeds 100 ms, an error appears, or the fleet cannot keep its pace
(fewer than 90% of the polls it should make). The largest N that held is the capacity.
That N is then run ``--confirm`` more times and the median p99 of all its rounds is
reported.

Polls are the measure (as in the issue's baseline): writes that are fsynced before they
are acknowledged (messages, command completions, sync reports) wait for the disk, and
their latency is reported beside it ("all requests"). Also reported at each step: the
simulator's own CPU during the run (its process time, start-up excluded) per device, the
hub's RSS (master and worker, sampled every second, the peak) and its CPU. The machine
has two cores shared by the hub, the simulator and whatever else runs: the load average
is printed with every step; figures from a busy machine are lower bounds. Each run first
waits (up to 90 s) for the 1-minute load to fall below 2.5.

``--scenario`` (on by default) then replays the issue's baseline, measured there with a
separate firmware-like load generator on this machine: 500 devices at a 5 s poll plus a
command (``sync``) and a 256 KiB file to all, until every device has completed the command
and verified the file (read back through the admin API every 2 s; at most 300 s); it
reports errors, how long that took, and latency (all requests, and polls).

The simulator is a whole node in Python: one core drives some 3,000-4,000 devices, and
past that its own lag is what the step measures. ``connections_bench.py`` drives 10,000
devices (a connection each, at their pace) from a lean generator, with a separate probe.

The benchmark reports; it does not assert (exit 0 either way). It exits 1 only when
something is broken: the hub does not start, registration fails.

    .venv/bin/python bench/capacity_bench.py                 # full run (~10-15 min)
    .venv/bin/python bench/capacity_bench.py --quick         # 50 and 100 devices, 15 s
    .venv/bin/python bench/capacity_bench.py --steps 1000,2000 --no-scenario
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiohttp
from benchkit import stop_process_group  # noqa: E402 (after the path set-up)

from dropsync.simulator.fleet import AdminAPI, device_ids

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
VENV_BIN = Path(sys.executable).parent
ADMIN_TOKEN = "capacity-bench-" + secrets.token_hex(12)
P99_LIMIT_MS = 100.0
#: A step holds only if the fleet made at least this share of the polls its pace asks.
PACE_KEPT = 0.9
IMPORT_BATCH = 500
#: Before each run, wait up to QUIET_PATIENCE_S for the 1-minute load to fall below this.
QUIET_LOAD, QUIET_PATIENCE_S = 2.5, 90.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Hub:
    """``dropsync serve`` in a temporary folder, with its processes' RSS and CPU."""

    def __init__(self, workdir: Path, poll_interval_s: int):
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("DROPSYNC_")}
        env.update(DROPSYNC_HOST="127.0.0.1", DROPSYNC_PORT=str(self.port),
                   DROPSYNC_ADMIN_TOKEN=ADMIN_TOKEN, DROPSYNC_LOG_LEVEL="WARNING",
                   DROPSYNC_POLL_INTERVAL_S=str(poll_interval_s),
                   DROPSYNC_STAGING_SETTLE_S="0.5")
        self.log = open(workdir / "hub.log", "ab")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen([str(VENV_BIN / "dropsync"), "serve"], cwd=workdir,
                                        env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"the hub exited: {(workdir / 'hub.log').read_text()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        raise SystemExit("the hub did not start within 30 s")

    def pids(self) -> list[int]:
        pid = self.process.pid
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            children = []
        return [pid, *map(int, children)]

    def rss_bytes(self) -> int:
        total = 0
        for pid in self.pids():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
            except OSError:
                pass
        return total

    def cpu_s(self) -> float:
        total = 0.0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            except (OSError, IndexError):
                pass
        return total

    def stop(self) -> None:
        stop_process_group(self.process, self.log)


async def admin_calls(hub: Hub, calls: list[tuple[str, str, Any, bytes | None]]) -> list:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        admin = AdminAPI(session, hub.url, ADMIN_TOKEN)
        return [await admin.request(method, path, body, data)
                for method, path, body, data in calls]


def register(hub: Hub, tokens: dict[str, str], count: int, prefix: str = "cap-") -> float:
    """Register devices until ``tokens`` holds ``count``; seconds it took."""
    started = time.monotonic()
    new = device_ids(prefix, count)[len(tokens):]
    fresh = {device_id: secrets.token_urlsafe(24) for device_id in new}
    asyncio.run(admin_calls(hub, [
        ("POST", "/devices/import", {"tokens": dict(list(fresh.items())[i:i + IMPORT_BATCH])},
         None) for i in range(0, len(fresh), IMPORT_BATCH)]))
    tokens.update(fresh)
    return time.monotonic() - started


def simulate(hub: Hub, tokens_file: Path, count: int, duration_s: float, ramp_s: float,
             warmup_s: float, workdir: Path, done_when: Any = None) -> dict[str, Any]:
    """One simulator run in its own process; its summary plus CPU and the hub's figures.

    ``done_when()``, checked every 2 s, ends the run early (SIGINT: the simulator stops
    and prints its summary) once it returns true.
    """
    out_path = workdir / f"sim-{count}.json"
    hub_cpu_before = hub.cpu_s()
    peak_rss = [hub.rss_bytes()]
    done = threading.Event()

    finished_at: list[float] = []

    def sample() -> None:
        checked = time.monotonic()
        while not done.wait(1.0):
            peak_rss.append(hub.rss_bytes())
            if done_when and not finished_at and time.monotonic() - checked >= 2:
                checked = time.monotonic()
                if done_when():
                    finished_at.append(time.monotonic() - started)
                    process.send_signal(signal.SIGINT)

    wait_for_quiet()
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    with open(out_path, "w") as out:
        process = subprocess.Popen(
            [str(VENV_BIN / "dropsync"), "simulate", "--hub", hub.url, "--tokens",
             str(tokens_file), "--devices", str(count), "--duration", str(duration_s),
             "--ramp", str(ramp_s), "--warmup", str(warmup_s), "--seed", "1", "--json",
             "--quiet"],
            stdout=out, stderr=subprocess.PIPE)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        stderr = process.stderr.read().decode(errors="replace")
        process.stderr.close()
    done.set()
    sampler.join()
    try:
        summary = json.loads(out_path.read_text())
    except ValueError:
        raise SystemExit(f"the simulator failed ({process.returncode}): {stderr}") from None
    cpu = usage.ru_utime + usage.ru_stime
    return {"summary": summary, "simulator_cpu_s": summary["simulator_cpu_s"],
            "simulator_process_cpu_s": round(cpu, 2),
            "hub_cpu_s": round(hub.cpu_s() - hub_cpu_before, 2),
            "hub_peak_rss_mb": round(max(peak_rss) / 2**20, 1),
            "done_after_s": round(finished_at[0], 1) if finished_at else None,
            "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2)}


def wait_for_quiet(load: float = QUIET_LOAD, patience_s: float = QUIET_PATIENCE_S) -> None:
    """Wait (a while) for the machine's 1-minute load to drop: other sessions share it."""
    deadline = time.monotonic() + patience_s
    while os.getloadavg()[0] > load and time.monotonic() < deadline:
        time.sleep(5)


def verdict(run: dict[str, Any], count: int, duration_s: float, ramp_s: float,
            interval_s: float, p99_limit_ms: float) -> dict[str, Any]:
    summary = run["summary"]
    polls = summary["requests"]["by_kind"].get("poll", 0)
    # a device polls at boot (some moment of the ramp), then every interval
    expected = count * ((duration_s - ramp_s / 2) / interval_s + 0.5)
    poll = summary["latency_ms_by_kind"].get("poll", {})
    p99 = poll.get("p99") or 0.0
    errors = summary["errors"]["unexplained"]
    pace = polls / expected if expected else 0.0
    return {"devices": count, "p99_ms": p99, "p50_ms": poll.get("p50"),
            "all_requests_p99_ms": summary["latency_ms"]["p99"],
            "req_per_s": summary["requests"]["per_s"], "errors": errors,
            "pace_kept": round(pace, 3),
            "simulator_loop_lag_p99_ms": summary["loop_lag_ms"]["p99"],
            # When the simulator's own loop lag is half the measured p99 or more, the
            # step measured the load generator's starvation as much as the hub.
            "limited_by": "simulator" if summary["loop_lag_ms"]["p99"] >= p99 / 2 else "hub",
            "held": p99 <= p99_limit_ms and errors == 0 and pace >= PACE_KEPT,
            "simulator_cpu_s": run["simulator_cpu_s"],
            "simulator_cpu_us_per_device_s": round(
                run["simulator_cpu_s"] / (count * duration_s) * 1e6, 1),
            "simulator_cpu_share_of_a_core": round(run["simulator_cpu_s"] / duration_s, 3),
            "hub_cpu_share_of_a_core": round(run["hub_cpu_s"] / duration_s, 3),
            "hub_peak_rss_mb": run["hub_peak_rss_mb"],
            "load_before": run["load_before"], "load_after": run["load_after"]}


def print_row(row: dict[str, Any]) -> None:
    print(f"  N={row['devices']:>6}  poll p50 {row['p50_ms'] or 0:6.1f} ms  p99 "
          f"{row['p99_ms']:7.1f} ms (all requests {row['all_requests_p99_ms']:7.1f})  "
          f"{row['req_per_s']:6.1f} req/s  errors {row['errors']}  pace "
          f"{row['pace_kept']:.2f}  sim loop lag p99 {row['simulator_loop_lag_p99_ms']:.0f} ms"
          f"  sim CPU {row['simulator_cpu_us_per_device_s']:6.1f} "
          f"us/device-s ({row['simulator_cpu_share_of_a_core']:.0%} of a core)  hub CPU "
          f"{row['hub_cpu_share_of_a_core']:.0%}  hub RSS {row['hub_peak_rss_mb']} MB  "
          f"load {row['load_before']}->{row['load_after']}  "
          f"{'held' if row['held'] else 'FAILED'} (limited by the {row['limited_by']})",
          flush=True)


def capacity(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    hub_dir = workdir / "capacity"
    hub_dir.mkdir()
    hub = Hub(hub_dir, args.interval)
    tokens: dict[str, str] = {}
    tokens_file = hub_dir / "tokens.json"
    rows, held = [], None
    try:
        for count in args.steps:
            took = register(hub, tokens, count)
            tokens_file.write_text(json.dumps(tokens))
            print(f"  ({len(tokens)} devices registered; {took:.1f} s for this step's)",
                  flush=True)
            run = simulate(hub, tokens_file, count, args.duration, args.ramp, args.warmup,
                           hub_dir)
            row = verdict(run, count, args.duration, args.ramp, args.interval, args.p99_ms)
            rows.append(row)
            print_row(row)
            if not row["held"]:
                break
            held = row
        confirm = []
        if held is not None:
            for _ in range(args.confirm):
                run = simulate(hub, tokens_file, held["devices"], args.duration, args.ramp,
                               args.warmup, hub_dir)
                row = verdict(run, held["devices"], args.duration, args.ramp, args.interval,
                              args.p99_ms)
                confirm.append(row)
                print_row(row)
    finally:
        hub.stop()
    rounds = ([held] + confirm) if held else []
    return {"steps": rows, "confirm": confirm, "largest_held": held["devices"] if held else None,
            "median_p99_ms_at_largest": statistics.median(r["p99_ms"] for r in rounds)
            if rounds else None,
            "rounds_at_largest_held": len(rounds),
            "all_rounds_held": all(r["held"] for r in rounds) if rounds else None}


def scenario(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """The issue's baseline: 500 devices at 5 s, a command and a 256 KiB file to all."""
    hub_dir = workdir / "scenario"
    hub_dir.mkdir()
    hub = Hub(hub_dir, 5)
    count = args.scenario_devices
    try:
        tokens: dict[str, str] = {}
        register(hub, tokens, count, prefix="base-")
        tokens_file = hub_dir / "tokens.json"
        tokens_file.write_text(json.dumps(tokens))
        package, command = asyncio.run(admin_calls(hub, [
            ("PUT", "/staging/all/data/dataset.bin", None, os.urandom(256 * 1024)),
            ("POST", "/commands", {"target": "all", "name": "sync"}, None)]))
        def progress() -> tuple[dict, dict]:
            return tuple(asyncio.run(admin_calls(hub, [
                ("GET", f"/packages/{package['id']}", None, None),
                ("GET", f"/commands/{command['id']}", None, None)])))

        def everyone_done() -> bool:
            have, found = progress()
            return have["progress"]["have"] == count and \
                found["counts"].get("completed", 0) == count

        run = simulate(hub, tokens_file, count, args.scenario_duration, 5.0, 0.0, hub_dir,
                       done_when=everyone_done)
        have, found = progress()
    finally:
        hub.stop()
    summary = run["summary"]
    result = {"devices": count, "poll_interval_s": 5,
              "ran_s": run["summary"]["duration_s"],
              "errors": summary["errors"]["unexplained"],
              "file_verified_on": have["progress"]["have"],
              "every_device_done_after_s": run["done_after_s"],
              "command_completed_on": found["counts"].get("completed", 0),
              "p50_ms": summary["latency_ms"]["p50"], "p99_ms": summary["latency_ms"]["p99"],
              "poll_p99_ms": summary["latency_ms_by_kind"].get("poll", {}).get("p99"),
              "max_ms": summary["latency_ms"]["max"],
              "simulator_cpu_share_of_a_core": round(run["simulator_cpu_s"]
                                                      / args.scenario_duration, 3),
              "hub_peak_rss_mb": run["hub_peak_rss_mb"],
              "load_before": run["load_before"], "load_after": run["load_after"]}
    print(f"  {count} devices at 5 s + a sync command + 256 KiB to all: errors "
          f"{result['errors']}, file verified on {result['file_verified_on']}/{count}, "
          f"command completed on {result['command_completed_on']}/{count} (all done after "
          f"{result['every_device_done_after_s']} s), p50 "
          f"{result['p50_ms']} ms, p99 {result['p99_ms']} ms, poll p99 {result['poll_p99_ms']} ms "
          "(issue's baseline generator: p99 596-638 ms)", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", default="250,500,750,1000,1500,2000,3000,4000,6000,8000,10000",
                        help="device counts to step through, comma-separated")
    parser.add_argument("--duration", type=float, default=50.0, help="seconds per step")
    parser.add_argument("--warmup", type=float, default=20.0,
                        help="seconds at the start of a step (devices coming up) whose "
                        "latencies are left out")
    parser.add_argument("--ramp", type=float, default=10.0,
                        help="seconds over which a step's devices come up")
    parser.add_argument("--interval", type=int, default=10, help="the hub's poll interval")
    parser.add_argument("--p99-ms", type=float, default=P99_LIMIT_MS)
    parser.add_argument("--confirm", type=int, default=2,
                        help="extra rounds at the largest N that held")
    parser.add_argument("--no-scenario", dest="scenario", action="store_false")
    parser.add_argument("--scenario-devices", type=int, default=500)
    parser.add_argument("--scenario-duration", type=float, default=300.0,
                        help="at most this long; the run ends once every device is done")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 50 and 100 devices, 15 s, no confirm, small scenario")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "capacity_bench.json")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.duration, args.ramp, args.confirm = "50,100", 15.0, 5.0, 0
        args.warmup = 5.0
        args.scenario_devices, args.scenario_duration = 50, 15.0
    args.steps = [int(s) for s in args.steps.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="capacity-bench-"))
    report: dict[str, Any] = {"at": datetime.now(UTC).isoformat(timespec="seconds"),
                              "cpus": os.cpu_count(), "args": {k: v for k, v in vars(args)
                                                               .items() if k != "output"}}
    report["args"]["output"] = str(args.output)
    try:
        print(f"Capacity at a {args.interval} s poll (poll p99 <= {args.p99_ms:g} ms after "
              f"{args.warmup:g} s of warm-up, no errors, pace kept), {args.duration:g} s per "
              "step:", flush=True)
        report["capacity"] = capacity(args, workdir)
        if args.scenario:
            print("Issue baseline scenario:", flush=True)
            report["scenario"] = scenario(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    found = report["capacity"]
    print(f"Largest N that held: {found['largest_held']} (median p99 over "
          f"{found['rounds_at_largest_held']} rounds: {found['median_p99_ms_at_largest']} ms; "
          f"all held: {found['all_rounds_held']})")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    print(f"Figures in {args.output}")


if __name__ == "__main__":
    main()
