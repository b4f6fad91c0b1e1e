"""Benchmark hub start-up against the open-command backlog it loads, before and after.

What it measures: seconds from ``create_app`` to a hub ready to answer (stores opened,
command queue loaded), in a fresh process, for two data directories holding the same
10,000 open commands:

- spread: 1,000 devices with 10 open commands each;
- one device: all 10,000 for a single device (a node that stayed away while commands
  piled up, or a hub killed again and again under write load).

Each is timed with this checkout's code ("after") and, with ``--before REF``, with the code
of a git ref unpacked into a temp folder ("before"), in the same run on the same data. The
baseline is the spread case of the same code: a start-up linear in the backlog gives a
one-device/spread ratio near 1; a sort after every append made it grow with the square of
one device's backlog. Each start-up is bounded by ``--timeout`` (reported as over it).

    .venv/bin/python bench/startup_bench.py --before ce05a04   # the code before the fix
    .venv/bin/python bench/startup_bench.py --commands 2000    # quick
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TIME_CREATE_APP = """
import sys, time
started = time.perf_counter()
from dropsync import create_app
app = create_app({"DATA_DIR": sys.argv[1], "STAGING_DIR": sys.argv[2], "SERVING": False,
                  "LOG_LEVEL": "ERROR", "ADMIN_TOKEN": "bench-admin-token-0123456789abcdef"})
print(time.perf_counter() - started)
app.extensions["dropsync"].close()
"""


def build(data_dir: Path, devices: int, commands: int) -> None:
    """Open commands written through the store (one write each table), as the queue
    writes them, spread round-robin over ``devices``."""
    from dropsync.relay.commands import ID_FACT
    from dropsync.store import Stores

    stores = Stores(data_dir)
    try:
        ids = [f"esp{n:05d}" for n in range(devices)]
        stores.devices.insert_many({"id": device_id, "token_hash": f"hash-{device_id}",
                                    "groups": [], "enabled": True, "name": device_id}
                                   for device_id in ids)
        stores.commands.insert_many(
            {"id": n, "name": "sync", "args": {"n": n}, "priority": n % 5 * 10,
             "target": ids[n % devices], "devices": [ids[n % devices]],
             "created_at": "2026-12-05T00:00:00.000Z", "expires_at": None,
             "expires_at_epoch": None, "created_by": "bench", "created_seq": 0}
            for n in range(1, commands + 1))
        stores.meta.upsert({"name": ID_FACT, "value": commands + 1})
    finally:
        stores.close()


def start_up(code: Path, data_dir: Path, timeout: float) -> float | None:
    """Seconds to create the app with ``code`` on ``data_dir``; None past ``timeout``."""
    work = Path(tempfile.mkdtemp(prefix="startup-copy-"))
    try:  # a copy: the hub may tidy what it loads
        shutil.copytree(data_dir, work / "data")
        result = subprocess.run([sys.executable, "-c", TIME_CREATE_APP, str(work / "data"),
                                 str(work / "staging")], cwd=work, capture_output=True,
                                text=True, timeout=timeout,
                                env={"PYTHONPATH": str(code), "PATH": "/usr/bin:/bin"})
        if result.returncode != 0:
            raise RuntimeError(result.stderr[-2000:])
        return float(result.stdout.split()[-1])
    except subprocess.TimeoutExpired:
        return None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def unpack(ref: str, into: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "dropsync"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def shown(seconds: float | None, timeout: float) -> str:
    return f"> {timeout:.0f} s" if seconds is None else f"{seconds:.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--commands", type=int, default=10_000)
    parser.add_argument("--devices", type=int, default=1_000)
    parser.add_argument("--before", help="a git ref whose code to time as well")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=180.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="startup-bench-"))
    try:
        cases = {"spread": work / "spread", "one device": work / "one"}
        build(cases["spread"], args.devices, args.commands)
        build(cases["one device"], 1, args.commands)
        codes = {"after": ROOT}
        if args.before:
            codes = {"before": unpack(args.before, Path(tempfile.mkdtemp(dir=work))),
                     **codes}
        print(f"{args.commands} open commands: spread over {args.devices} devices, or "
              f"all for one; median of {args.repeat} start-ups each")
        results: dict[tuple[str, str], float | None] = {}
        for code_name, code in codes.items():
            for case, data_dir in cases.items():
                runs = []
                for _ in range(args.repeat):
                    runs.append(start_up(code, data_dir, args.timeout))
                    if runs[-1] is None:
                        break  # bounded: one run past the timeout says enough
                results[code_name, case] = None if None in runs else statistics.median(runs)
                print(f"  {code_name:6} {case:10}: {shown(results[code_name, case], args.timeout)}")
        for code_name in codes:
            spread, one = results[code_name, "spread"], results[code_name, "one device"]
            if spread and one:
                print(f"RATIO {code_name} one-device/spread: {one / spread:.2f}x")
        if "before" in codes:
            for case in cases:
                before, after = results["before", case], results["after", case]
                if after:
                    text = f"{before / after:.1f}x" if before else f"> {args.timeout / after:.0f}x"
                    print(f"RATIO {case} before/after: {text}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
