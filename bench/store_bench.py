"""Benchmark the hub's append-only history store against SQLite on the same workload.

What it measures: the cost of one acknowledged write to ``dropsync.store.history.HistoryLog``
(one JSON line appended and fdatasynced before ``append`` returns), on a fresh store filled
with 10,000 and then 50,000 device-log records of about 250 bytes, appended one at a time.
For each run it reports the median, mean (total time / N) and p99 per-append latency, and the
median and mean of the *last* 1,000 appends, which is the cost of a write once the store holds
that much history.

Why: the history store claims its write cost does not depend on how much history exists.
The issue's targets are that the per-write cost at 50k is within 1.5x of the cost at 10k, and
within 2x of SQLite doing the same durable work (WAL journal, ``synchronous=FULL``, one
INSERT committed per record), run in the same process on the same disk in the same run.

Each workload runs ``--repeat`` times on a fresh store; the figures reported are medians across
runs. The benchmark reports; it does not assert: the exit code is 0 whether or not the targets
are met.

Run it from the project root with the project's virtualenv:

    .venv/bin/python bench/store_bench.py            # 10k and 50k, 3 repeats
    .venv/bin/python bench/store_bench.py --quick    # 1k and 5k, 1 repeat (smoke test)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from dropsync.store import history as history_module
from dropsync.store.history import HistoryLog

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
RESULTS_FILE = RESULTS_DIR / "store_bench.json"

DEFAULT_SIZES = (10_000, 50_000)
QUICK_SIZES = (1_000, 5_000)
DEFAULT_REPEAT = 3
TAIL_WRITES = 1_000
SEED = 20240601

#: Targets from the issue: growth from the smallest to the largest size, and history vs SQLite.
GROWTH_TARGET = 1.5
SQLITE_TARGET = 2.0

STORES = ("history", "sqlite")

Record = dict[str, Any]


# -- workload ----------------------------------------------------------------------------------

LEVELS = ("debug", "info", "info", "info", "warning", "error")
MESSAGES = (
    "sensor read ok",
    "wifi reconnected after {n} attempts",
    "relay {n} switched on by schedule",
    "soil moisture below threshold on channel {n}",
    "firmware check: up to date, next check in {n} minutes",
    "file chunk {n} verified, sha256 matches manifest",
    "battery voltage dropping, entering low-power mode in {n} s",
    "command {n} finished with exit status 0",
)


def make_records(count: int, seed: int = SEED) -> list[Record]:
    """Deterministic device-log records of about 250 bytes once serialised."""
    rng = random.Random(seed)
    start = datetime(2024, 6, 1, tzinfo=UTC)
    records = []
    for i in range(count):
        at = start + timedelta(milliseconds=i * 1_500 + rng.randrange(1_000))
        records.append({
            "at": at.isoformat(timespec="milliseconds"),
            "received_at": (at + timedelta(milliseconds=rng.randrange(5, 400)))
            .isoformat(timespec="milliseconds"),
            "device_id": f"esp{rng.randrange(1, 64):03d}",
            "level": rng.choice(LEVELS),
            "text": rng.choice(MESSAGES).format(n=rng.randrange(1, 1_000)),
            "data": {
                "rssi": -rng.randrange(30, 90),
                "battery_v": round(rng.uniform(3.2, 4.2), 2),
                "uptime_s": rng.randrange(10, 10_000_000),
                "heap_free": rng.randrange(8_000, 40_000),
            },
        })
    return records


def mean_record_bytes(records: list[Record]) -> float:
    """Mean size of a record as the history store writes it (with its ``seq``, plus newline)."""
    sizes = [len(json.dumps({"seq": i + 1, **r}, ensure_ascii=False, separators=(",", ":"))
                 .encode()) + 1 for i, r in enumerate(records)]
    return statistics.fmean(sizes)


# -- the two stores, each timed one acknowledged append at a time -------------------------------

Append = Callable[[Record], object]


@contextmanager
def open_history(folder: Path) -> Iterator[Append]:
    """A fresh HistoryLog with the hub's default segment size and retention."""
    log = HistoryLog(folder / "history")
    try:
        yield log.append
    finally:
        log.close()


@contextmanager
def open_sqlite(folder: Path) -> Iterator[Append]:
    """A fresh SQLite database in WAL mode with synchronous=FULL; every INSERT commits."""
    conn = sqlite3.connect(folder / "history.sqlite3", isolation_level=None)  # autocommit
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise RuntimeError(f"SQLite refused WAL mode (got {mode!r})")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE history (seq INTEGER PRIMARY KEY, body TEXT NOT NULL)")

        def append(record: Record) -> None:
            conn.execute("INSERT INTO history (body) VALUES (?)", (json.dumps(record),))

        yield append
    finally:
        conn.close()


OPENERS = {"history": open_history, "sqlite": open_sqlite}


@dataclass
class RunResult:
    """Per-write figures of one run, in microseconds."""

    store: str
    size: int
    median_us: float
    mean_us: float
    p99_us: float
    max_us: float
    tail_median_us: float
    tail_mean_us: float
    total_s: float


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    index = max(0, min(len(sorted_values) - 1, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


def time_appends(store: str, records: list[Record], workdir: Path) -> RunResult:
    """Append every record to a fresh store, one acknowledged write at a time."""
    folder = Path(tempfile.mkdtemp(prefix=f"{store}-", dir=workdir))
    latencies_ns: list[int] = []
    clock = time.perf_counter_ns
    try:
        with OPENERS[store](folder) as append:
            started = clock()
            for record in records:
                before = clock()
                append(record)
                latencies_ns.append(clock() - before)
            total_ns = clock() - started
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    us = [ns / 1_000 for ns in latencies_ns]
    tail = us[-TAIL_WRITES:]
    ordered = sorted(us)
    return RunResult(
        store=store,
        size=len(records),
        median_us=statistics.median(ordered),
        mean_us=total_ns / 1_000 / len(records),
        p99_us=percentile(ordered, 0.99),
        max_us=ordered[-1],
        tail_median_us=statistics.median(tail),
        tail_mean_us=statistics.fmean(tail),
        total_s=total_ns / 1e9,
    )


# -- aggregation and reporting ------------------------------------------------------------------

METRICS = ("median_us", "mean_us", "p99_us", "max_us", "tail_median_us", "tail_mean_us",
           "total_s")
#: The metrics the ratios are computed on, and how the report labels them.
RATIO_METRICS = {"mean_us": "mean", "median_us": "median", "tail_mean_us": "last-1k mean"}


def median_across_runs(runs: list[RunResult]) -> dict[str, float]:
    return {metric: statistics.median(getattr(run, metric) for run in runs)
            for metric in METRICS}


def size_label(size: int) -> str:
    return f"{size // 1000}k" if size % 1000 == 0 else str(size)


def compute_ratios(summary: dict[str, dict[int, dict[str, float]]],
                   sizes: list[int]) -> list[dict[str, Any]]:
    """The ratios the targets are stated on, per metric, each with a PASS/MISS verdict."""
    wanted: list[tuple[str, float, dict[str, float], dict[str, float]]] = []
    smallest, largest = min(sizes), max(sizes)
    if largest != smallest:
        wanted.append((f"history {size_label(largest)}/{size_label(smallest)}", GROWTH_TARGET,
                       summary["history"][largest], summary["history"][smallest]))
    for size in sizes:
        wanted.append((f"history/sqlite at {size_label(size)}", SQLITE_TARGET,
                       summary["history"][size], summary["sqlite"][size]))

    ratios = []
    for name, target, numerator, denominator in wanted:
        values = {label: numerator[metric] / denominator[metric]
                  for metric, label in RATIO_METRICS.items()}
        ratios.append({
            "name": name,
            "target": target,
            "values": values,
            "verdicts": {label: "PASS" if value <= target else "MISS"
                         for label, value in values.items()},
        })
    return ratios


def format_table(summary: dict[str, dict[int, dict[str, float]]], sizes: list[int]) -> str:
    header = (f"{'store':<8} {'size':>6} {'median':>9} {'mean':>9} {'p99':>9} {'max':>10} "
              f"{'last1k med':>11} {'last1k mean':>12} {'total s':>8}")
    lines = ["Per-write cost in microseconds (median across runs):", header, "-" * len(header)]
    for size in sizes:
        for store in STORES:
            f = summary[store][size]
            lines.append(
                f"{store:<8} {size_label(size):>6} {f['median_us']:>9.1f} {f['mean_us']:>9.1f} "
                f"{f['p99_us']:>9.1f} {f['max_us']:>10.1f} {f['tail_median_us']:>11.1f} "
                f"{f['tail_mean_us']:>12.1f} {f['total_s']:>8.2f}"
            )
    return "\n".join(lines)


def format_ratios(ratios: list[dict[str, Any]]) -> str:
    labels = list(RATIO_METRICS.values())
    header = f"{'ratio':<24} {'target':>7} " + " ".join(f"{label:>18}" for label in labels)
    lines = ["Ratios (verdict per metric; the headline metric is the mean, total/N):", header,
             "-" * len(header)]
    for ratio in ratios:
        cells = " ".join(
            f"{ratio['values'][label]:>12.2f}x {ratio['verdicts'][label]:>4}" for label in labels
        )
        lines.append(f"{ratio['name']:<24} {'<=' + format(ratio['target'], '.1f') + 'x':>7} "
                     f"{cells}")
    return "\n".join(lines)


def history_source_digest() -> str:
    """Short SHA-256 of the history store's source, so a result can be tied to the code run."""
    source = Path(history_module.__file__).read_bytes()
    return hashlib.sha256(source).hexdigest()[:12]


def filesystem_type(path: Path) -> str:
    """The type of the filesystem holding ``path`` (Linux only; 'unknown' elsewhere)."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return "unknown"
    best, fstype = "", "unknown"
    resolved = str(path.resolve())
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        mount_point = fields[1]
        inside = resolved == mount_point or resolved.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) > len(best):
            best, fstype = mount_point, fields[2]
    return fstype


# -- command line -------------------------------------------------------------------------------

def parse_sizes(text: str) -> list[int]:
    sizes = sorted({int(part.replace("_", "")) for part in text.split(",") if part.strip()})
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError("sizes must be positive integers, e.g. 10000,50000")
    return sizes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=parse_sizes, default=list(DEFAULT_SIZES),
                        help="comma-separated record counts (default: 10000,50000)")
    parser.add_argument("--repeat", type=int, default=DEFAULT_REPEAT,
                        help=f"runs per workload; medians are reported (default: {DEFAULT_REPEAT})")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: sizes 1000,5000 and repeat 1")
    parser.add_argument("--workdir", type=Path, default=RESULTS_DIR,
                        help="where the temporary stores are created; use a real disk, not tmpfs "
                             "(default: bench/results/)")
    parser.add_argument("--output", type=Path, default=RESULTS_FILE,
                        help="JSON file for all figures (default: bench/results/store_bench.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.repeat = list(QUICK_SIZES), 1
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    fstype = filesystem_type(args.workdir)
    records = make_records(max(args.sizes))
    source_digest = history_source_digest()

    print(f"store benchmark: sizes {', '.join(map(size_label, args.sizes))}, "
          f"repeat {args.repeat}, mean record {mean_record_bytes(records):.0f} bytes")
    print(f"workdir {args.workdir} ({fstype}); Python {platform.python_version()}, "
          f"SQLite {sqlite3.sqlite_version}; history.py sha256 {source_digest}")
    if fstype in ("tmpfs", "ramfs"):
        print("warning: the workdir is in memory, so fsync costs nothing; pass --workdir on a "
              "real disk", file=sys.stderr)

    started = time.perf_counter()
    runs: list[RunResult] = []
    for attempt in range(1, args.repeat + 1):
        # Interleave stores and sizes so slow drift of the disk affects both stores alike.
        for size in args.sizes:
            for store in STORES:
                run = time_appends(store, records[:size], args.workdir)
                runs.append(run)
                print(f"  run {attempt}/{args.repeat} {store:<7} {size_label(size):>4}: "
                      f"median {run.median_us:8.1f} us, mean {run.mean_us:8.1f} us, "
                      f"last-1k mean {run.tail_mean_us:8.1f} us, {run.total_s:6.2f} s",
                      flush=True)
    wall_s = time.perf_counter() - started

    summary = {
        store: {size: median_across_runs([r for r in runs if r.store == store and r.size == size])
                for size in args.sizes}
        for store in STORES
    }
    ratios = compute_ratios(summary, args.sizes)

    print()
    print(format_table(summary, args.sizes))
    print()
    print(format_ratios(ratios))
    print()
    print(f"wall time {wall_s:.1f} s")

    report = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "sizes": args.sizes,
        "repeat": args.repeat,
        "tail_writes": TAIL_WRITES,
        "mean_record_bytes": mean_record_bytes(records),
        "targets": {"growth": GROWTH_TARGET, "vs_sqlite": SQLITE_TARGET},
        "environment": {
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "workdir": str(args.workdir.resolve()),
            "filesystem": fstype,
            "history_segment_records": HistoryLog.segment_records,
            "history_max_records": HistoryLog.max_records,
            "history_source_sha256": source_digest,
        },
        "units": "microseconds per write, except total_s",
        "summary": {store: {str(size): figures for size, figures in by_size.items()}
                    for store, by_size in summary.items()},
        "ratios": ratios,
        "runs": [asdict(run) for run in runs],
        "wall_s": wall_s,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"figures written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
