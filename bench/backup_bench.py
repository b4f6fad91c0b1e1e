"""Backup throughput: ``dropsync backup`` of a running hub, against tar + gzip of the
same data directory.

A real hub (``dropsync serve``) holds ``--blobs`` MiB of staged files (random bytes, as
firmware images compress little) plus some history. Each round runs, alternating:

- ``dropsync backup FILE.tar.gz`` through the running hub (snapshot, tar stream over
  loopback, gzip level 1 in the CLI, fsync);
- the baseline: ``tar -cf - data | gzip -1 > FILE`` of the same folder (not consistent
  while the hub writes, and not what a backup should be; it is the speed of the disk and
  gzip on this machine).

Reports the median MB/s (hub data bytes / wall time) of each over ``--rounds`` rounds and
their ratio. All traffic stays on 127.0.0.1.

    .venv/bin/python bench/backup_bench.py              # 256 MiB, 3 rounds
    .venv/bin/python bench/backup_bench.py --quick      # 32 MiB, 1 round
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from files_bench import DEVICE, DROPSYNC, MIB, RESULTS_DIR, running_hub  # noqa: E402

FILE_BYTES = 8 * MIB


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def timed(command: list[str], **kwargs) -> float:
    started = time.monotonic()
    subprocess.run(command, check=True, capture_output=True, timeout=1800, **kwargs)
    return time.monotonic() - started


def measure(workdir: Path, blob_mib: int, rounds: int) -> dict:
    with running_hub(workdir / "hub", STAGING_WATCH="false", MDNS="false",
                     REQUEST_LOG="false") as hub:
        hub.register(DEVICE)
        for index in range(max(1, blob_mib * MIB // FILE_BYTES)):
            status, _, body = hub.call(
                "PUT", f"/api/v1/admin/staging/{DEVICE}/fw/image{index:03d}.bin",
                data=os.urandom(FILE_BYTES), headers={"Content-Type": "application/octet-stream"})
            assert status == 200, body
        for index in range(500):
            hub.call("POST", "/api/v1/admin/commands",
                     {"target": DEVICE, "name": "sync", "args": {"n": index}})
        data_bytes = folder_bytes(hub.data_dir)
        env = {**hub.env}
        runs: dict[str, list[float]] = {"dropsync_backup": [], "tar_gzip": []}
        for round_ in range(rounds):
            target = workdir / f"backup-{round_}.tar.gz"
            seconds = timed([str(DROPSYNC), "backup", str(target)], cwd=hub.workdir, env=env)
            runs["dropsync_backup"].append(seconds)
            size = target.stat().st_size
            target.unlink()
            baseline = workdir / f"baseline-{round_}.tar.gz"
            seconds = timed(["sh", "-c", f"tar -cf - data | gzip -1 > {baseline} && sync"],
                            cwd=hub.workdir)
            runs["tar_gzip"].append(seconds)
            baseline.unlink()
            print(f"  round {round_ + 1}/{rounds}: backup {runs['dropsync_backup'][-1]:.2f} s "
                  f"({size / MIB:.0f} MiB archive), tar|gzip {seconds:.2f} s", flush=True)
    medians = {kind: statistics.median(values) for kind, values in runs.items()}
    mb_per_s = {kind: data_bytes / 1e6 / seconds for kind, seconds in medians.items()}
    return {"data_bytes": data_bytes, "rounds": rounds, "median_s": medians,
            "mb_per_s": mb_per_s,
            "ratio_backup_to_tar_gzip": mb_per_s["dropsync_backup"] / mb_per_s["tar_gzip"],
            "runs_s": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blobs", type=int, default=256, help="MiB of staged files")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="32 MiB, one round")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "backup_bench.json")
    args = parser.parse_args()
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=RESULTS_DIR, prefix="work-") as work:
        result = measure(Path(work), 32 if args.quick else args.blobs,
                         1 if args.quick else args.rounds)
    result["environment"] = {"python": platform.python_version(), "cpus": os.cpu_count(),
                             "platform": platform.platform(),
                             "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    args.output.write_text(json.dumps(result, indent=2))
    print(f"\nbackup of {result['data_bytes'] / 1e6:.0f} MB of hub data, median of "
          f"{result['rounds']} alternating rounds:")
    for kind, rate in result["mb_per_s"].items():
        print(f"  {kind:>16}: {rate:7.1f} MB/s ({result['median_s'][kind]:.2f} s)")
    print(f"  backup / tar|gzip: {result['ratio_backup_to_tar_gzip']:.2f}x")
    print(f"\nFull figures: {args.output}")


if __name__ == "__main__":
    main()
