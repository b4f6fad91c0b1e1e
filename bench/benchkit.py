"""What the benchmarks share: the servers they start and stop, the data they seed, wrk
and its output, and reading a process's CPU and memory from /proc. Each bench script
imports these; none imports another bench script for them."""

from __future__ import annotations

import contextlib
import http.client
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_DIR = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
VENV_BIN = Path(sys.executable).parent
POLL_PATH = "/api/v1/device/commands/{device_id}"
SEED = 20261126
COMMAND_NAMES = ("reboot", "set_relay", "read_sensor", "ota_check", "set_interval", "blink")
#: How finished deliveries ended: mostly completed, as in a healthy fleet.
OUTCOMES = (("completed", None, "device"),) * 18 + (
    ("failed", "sensor not responding", "device"),
    ("expired", "expired", "hub"),
    ("failed", "timeout", "hub"),
    ("cancelled", "cancelled", "operator"),
)


def device_ids(count: int) -> list[str]:
    width = max(4, len(str(count - 1)))
    return [f"bench{i:0{width}d}" for i in range(count)]

def history_record(index: int, total: int, device_id: str, rng: random.Random,
                   now: float) -> dict:
    """One ended delivery, shaped like ``CommandQueue._end`` writes it (it adds ``seq``).

    Command ids are 1..total; one delivery ended every 30 s, the last about ``now``.
    """
    from dropsync.clock import iso_from_epoch

    state, reason, ended_by = rng.choice(OUTCOMES)
    created = now - (total - index) * 30
    delivered = created + rng.uniform(1, 60) if state != "expired" else None
    ended = (delivered or created) + rng.uniform(0.2, 30)
    name = rng.choice(COMMAND_NAMES)
    return {
        "id": index + 1, "name": name, "args": {"channel": rng.randrange(1, 5), "on": True}
        if name == "set_relay" else {},
        "priority": rng.choice((50, 50, 50, 80)), "target": device_id,
        "created_at": iso_from_epoch(created),
        "expires_at": iso_from_epoch(created + 3_600) if state == "expired" else None,
        "created_by": "admin", "device_id": device_id, "command_id": index + 1,
        "state": state, "reason": reason,
        "result": {"ok": True, "uptime_s": rng.randrange(100, 10**6)}
        if state == "completed" else None,
        "attempts": 0 if state == "expired" else rng.choice((1, 1, 1, 2)),
        "delivered_at": iso_from_epoch(delivered) if delivered else None,
        "ended_at": iso_from_epoch(ended), "ended_by": ended_by,
    }

def seed_data_dir(data_dir: Path, devices: int, history: int) -> tuple[list[tuple[str, str]],
                                                                        dict[str, float]]:
    """Register the devices and write the finished-command history, as the hub would.

    Returns the (device id, token) pairs and how long each part took. The stores are closed
    before returning: the hub holds the data directory exclusively.
    """
    from dropsync.fleet.devices import register_device
    from dropsync.relay.commands import ID_FACT
    from dropsync.store import Stores

    rng = random.Random(SEED)
    timings: dict[str, float] = {}
    stores = Stores(data_dir)
    try:
        started = time.perf_counter()
        credentials = []
        for device_id in device_ids(devices):
            _, token = register_device(stores, device_id, actor="bench")
            credentials.append((device_id, token))
        timings["register_s"] = time.perf_counter() - started
        print(f"  registered {devices:,} devices in {timings['register_s']:.1f} s", flush=True)

        started = time.perf_counter()
        log = stores.history["commands"]
        now = time.time() - 60
        step = max(1, history // 5)
        for index in range(history):
            device_id = credentials[index % devices][0]
            log.append(history_record(index, history, device_id, rng, now))
            if (index + 1) % step == 0 and index + 1 < history:
                print(f"  history {index + 1:,}/{history:,}", flush=True)
        # Command ids the hub hands out next start after the ones in history.
        stores.meta.insert({"name": ID_FACT, "value": history + 1})
        timings["history_s"] = time.perf_counter() - started
        print(f"  appended {history:,} finished commands in {timings['history_s']:.1f} s "
              f"(history now holds {len(log):,})", flush=True)
    finally:
        stores.close()
    return credentials, timings

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

def clean_environment() -> dict[str, str]:
    """This environment without anything that would configure DropSync or gunicorn."""
    return {key: value for key, value in os.environ.items()
            if not key.startswith("DROPSYNC_") and key != "GUNICORN_CMD_ARGS"
            and key not in ("HOST", "PORT", "SECRET_KEY", "LOG_LEVEL")}

def venv_tool(name: str) -> str:
    path = VENV_BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"poll_bench: {name} not found next to {sys.executable} or on PATH")
    return found

def read_cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds a process has used so far, all its threads together."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks

def read_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")

def machine_cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)

class Server:
    """A gunicorn master started in its own process group; stopped with the whole group."""

    def __init__(self, name: str, command: list[str], env: Mapping[str, str], cwd: Path,
                 port: int, log_path: Path):
        self.name, self.command, self.env, self.cwd = name, command, dict(env), cwd
        self.port, self.log_path = port, log_path
        self.url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen | None = None
        self.start_s = float("nan")
        #: uvicorn with one worker serves in its own process (no master/worker pair).
        self.single_process = False

    def start(self, timeout_s: float) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command, env=self.env, cwd=self.cwd,
                                            stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        started = time.perf_counter()
        deadline = started + timeout_s
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode} while "
                                   f"starting\n{self.log_tail()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                status, _, _ = http_get(self.port, "/health", timeout=2)
                if status == 200:
                    self.start_s = time.perf_counter() - started
                    return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not answer /health within {timeout_s:.0f} s\n"
                           f"{self.log_tail()}")

    def workers(self) -> list[int]:
        assert self.process is not None
        pid = self.process.pid
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        return [int(p) for p in text.split()]

    def worker(self) -> int:
        workers = self.workers()
        if not workers and self.single_process:
            assert self.process is not None
            return self.process.pid
        if len(workers) != 1:
            raise RuntimeError(f"{self.name}: expected one gunicorn worker, found {workers}")
        return workers[0]

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(f"    | {line}" for line in text[-lines:])

    def stop(self) -> None:
        """SIGTERM the process group (gunicorn stops gracefully), SIGKILL if it lingers.

        The group is the one ``start`` created (``start_new_session``): the master, its
        worker, nothing else. A worker left behind by a master that died is killed too.
        """
        if self.process is None:
            return
        group = self.process.pid
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(group, signal.SIGKILL)
                self.process.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, 0)  # anyone left in the group?
            os.killpg(group, signal.SIGKILL)
        self.process = None

def http_get(port: int, path: str, headers: Mapping[str, str] | None = None,
             timeout: float = 5) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path, headers=dict(headers or {}))
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()

def ensure_wrk() -> str:
    """wrk's path; installs the Debian package when it is missing (needs root)."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0:
        raise SystemExit("poll_bench: wrk is not installed; run: sudo apt-get install -y wrk")
    print("wrk not found: installing the Debian package (apt-get install -y wrk)", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, env=env)
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("poll_bench: apt-get installed wrk but it is not on PATH")
    return found

def write_wrk_script(path: Path, credentials: list[tuple[str, str]], threads: int,
                     path_for=None, extra_headers=None, delay_ms: float = 0) -> None:
    """A wrk Lua script: each request polls the next device with that device's token.

    ``path_for(index, device_id)`` and ``extra_headers(index)`` (a dict) make other rotating
    loads (chunks, ranges) from the same script. The requests are formatted once per wrk
    thread; each thread starts at its own point of the fleet so the threads do not poll
    the same device in step.
    """
    path_for = path_for or (lambda index, device_id: POLL_PATH.format(device_id=device_id))

    def row(index: int, device_id: str, token: str) -> str:
        headers = {"Authorization": f"Bearer {token}", **(extra_headers(index)
                                                          if extra_headers else {})}
        fields = ", ".join(f'["{k}"] = "{v}"' for k, v in headers.items())
        return f'  {{"{path_for(index, device_id)}", {{{fields}}}}}'

    rows = ",\n".join(row(i, d, t) for i, (d, t) in enumerate(credentials))
    path.write_text(f"""-- generated by bench/poll_bench.py
local targets = {{
{rows}
}}
local count = #targets
local threads_started = 0

function setup(thread)
  thread:set("thread_index", threads_started)
  threads_started = threads_started + 1
end

function init(args)
  requests = {{}}
  for i, target in ipairs(targets) do
    requests[i] = wrk.format("GET", target[1], target[2])
  end
  position = (thread_index * math.floor(count / {threads})) % count
end

function request()
  position = position % count + 1
  return requests[position]
end
""" + (f"""
function delay()
  return {delay_ms:g}
end
""" if delay_ms else ""))

UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}

def parse_duration_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not match:
        raise ValueError(f"unreadable wrk duration {text!r}")
    return float(match.group(1)) * UNIT_MS[match.group(2)]

def parse_wrk(output: str) -> dict[str, Any]:
    """Requests/s, request count, latency percentiles, non-2xx and socket errors."""
    found: dict[str, Any] = {"non_2xx": 0, "socket_errors": {}}
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total = re.search(r"(\d+) requests in ([\d.]+\w+)", output)
    if not rate or not total:
        raise RuntimeError(f"could not read wrk's output:\n{output}")
    found["requests_per_s"] = float(rate.group(1))
    found["requests"] = int(total.group(1))
    found["duration_s"] = parse_duration_ms(total.group(2)) / 1000
    for pct in (50, 75, 90, 99):
        match = re.search(rf"^\s+{pct}%\s+(\S+)", output, re.MULTILINE)
        if not match:
            raise RuntimeError(f"wrk printed no {pct}% latency (was --latency given?)")
        found[f"p{pct}_ms"] = parse_duration_ms(match.group(1))
    latency = re.search(r"^\s+Latency\s+\S+\s+\S+\s+(\S+)", output, re.MULTILINE)
    found["max_ms"] = parse_duration_ms(latency.group(1)) if latency else float("nan")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    if non_2xx:
        found["non_2xx"] = int(non_2xx.group(1))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                       output)
    if errors:
        found["socket_errors"] = dict(zip(("connect", "read", "write", "timeout"),
                                          map(int, errors.groups()), strict=True))
    return found

@contextlib.contextmanager
def started(server: Server, timeout_s: float) -> Iterator[Server]:
    """A running server for the block; stopped (its whole process group) however it ends."""
    try:
        server.start(timeout_s)
        yield server
    finally:
        server.stop()


def stop_process_group(process: subprocess.Popen, log: Any = None, timeout: float = 30) \
        -> None:
    """Stop a server started in its own session: SIGTERM to its group, SIGKILL if it
    has not ended within ``timeout``; then close its log."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    if log is not None:
        log.close()
