"""Benchmark: bytes an open dashboard page costs per minute, before and after times are
drawn in the browser.

What it measures: a real hub (``dropsync serve``) with ``--devices`` registered devices
that sent one heartbeat each; for each of the overview, devices and a device's page, a
client refreshes the live regions as the page's script does (``?live=1`` every 2.5 s,
sending the last ``ETag`` as ``If-None-Match``) for ``--seconds``, and the bytes of the
answers (status line, headers, body) are summed and scaled to a minute, with the count of
304s. Run for this checkout ("after") and, with ``--before REF``, for the code of a git ref
(its ``dropsync``, ``templates`` and ``static`` unpacked into a temp folder), on hubs set up
alike, one after the other. The ratio before/after is what to read. Nothing polls: this is
a quiet fleet, where only the clock moves (a polling fleet changes its last-seen times,
which is data, and the pages show it).

    .venv/bin/python bench/dashboard_bytes_bench.py --before 2704d51
    .venv/bin/python bench/dashboard_bytes_bench.py --seconds 20     # quick, after only
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from benchkit import Server, clean_environment, free_port  # noqa: E402

ADMIN_TOKEN = "bench-admin-token-0123456789abcdef"
PASSWORD = "bench-password-1"
REFRESH_S = 2.5
PAGES = {"overview": "/dashboard/", "devices": "/dashboard/devices",
         "device": "/dashboard/devices/bench-0000"}


def unpack(ref: str, into: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "dropsync",
                              "templates", "static"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def answer_bytes(response: requests.Response) -> int:
    head = len(f"HTTP/1.1 {response.status_code} {response.reason}\r\n") + sum(
        len(k) + len(v) + 4 for k, v in response.headers.items()) + 2
    return head + len(response.content)


def measure(code: Path, devices: int, seconds: float, work: Path) -> dict:
    port = free_port()
    data = Path(tempfile.mkdtemp(dir=work))
    env = {**clean_environment(), "PYTHONPATH": str(code), "DROPSYNC_PORT": str(port),
           "DROPSYNC_HOST": "127.0.0.1", "DROPSYNC_ADMIN_TOKEN": ADMIN_TOKEN,
           "DROPSYNC_ADMIN_PASSWORD": PASSWORD, "DROPSYNC_DATA_DIR": str(data / "data"),
           "DROPSYNC_STAGING_DIR": str(data / "staging"), "DROPSYNC_LOG_LEVEL": "WARNING",
           "DROPSYNC_MDNS": "false", "DROPSYNC_RATE_LIMITS_ENABLED": "false"}
    server = Server("hub", [sys.executable, "-m", "dropsync", "serve"], env, data, port,
                    data / "hub.log")
    server.start(60)
    try:
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        for i in range(devices):
            token = requests.post(f"{server.url}/api/v1/admin/devices/register",
                                  headers=admin, json={"id": f"bench-{i:04d}"},
                                  timeout=10).json()["token"]
            requests.post(f"{server.url}/api/v1/device/heartbeat/bench-{i:04d}",
                          headers={"Authorization": f"Bearer {token}"},
                          json={"rssi": -60, "free_heap": 30000}, timeout=10)
        results = {}
        for name, path in PAGES.items():
            session = requests.Session()
            login = session.get(f"{server.url}/dashboard/login", timeout=10).text
            csrf = re.search(r'name="csrf_token" value="([^"]+)"', login)[1]
            session.post(f"{server.url}/dashboard/login", timeout=10, data={
                "username": "admin", "password": PASSWORD, "csrf_token": csrf})
            etag, total, answers, not_modified = None, 0, 0, 0
            started = time.monotonic()
            while time.monotonic() - started < seconds:
                headers = {"Accept": "application/json"}
                if etag:
                    headers["If-None-Match"] = etag
                response = session.get(f"{server.url}{path}?live=1", headers=headers,
                                       timeout=10)
                assert response.status_code in (200, 304), (path, response.status_code)
                etag = response.headers.get("ETag", etag)
                total += answer_bytes(response)
                answers += 1
                not_modified += response.status_code == 304
                time.sleep(REFRESH_S)
            minutes = (time.monotonic() - started) / 60
            results[name] = {"bytes_per_minute": round(total / minutes),
                             "refreshes": answers, "not_modified": not_modified}
        return results
    finally:
        server.stop()
        shutil.rmtree(data, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="a git ref whose code to measure as well")
    parser.add_argument("--devices", type=int, default=150)
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        work = Path(temp)
        codes = {"after": ROOT}
        if args.before:
            codes = {"before": unpack(args.before, Path(tempfile.mkdtemp(dir=work))),
                     **codes}
        results = {label: measure(code, args.devices, args.seconds, work)
                   for label, code in codes.items()}
    print(f"{args.devices} devices, one heartbeat each, no polling; a live refresh every "
          f"{REFRESH_S} s for {args.seconds:.0f} s per page:")
    for page in PAGES:
        line = [f"{page:9}"]
        for label, found in results.items():
            r = found[page]
            line.append(f"{label}: {r['bytes_per_minute'] / 1024:7.1f} KiB/min "
                        f"({r['not_modified']} of {r['refreshes']} answered 304)")
        if "before" in results:
            ratio = results["before"][page]["bytes_per_minute"] / \
                max(1, results["after"][page]["bytes_per_minute"])
            line.append(f"RATIO before/after {ratio:.1f}x")
        print("  " + "   ".join(line))


if __name__ == "__main__":
    main()
