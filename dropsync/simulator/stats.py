"""What the simulated fleet saw: requests, latency, bytes, errors, faults, outcomes.

One ``FleetStats`` is shared by every virtual device of a run (one asyncio loop, so no
locks). Latencies are kept per request in milliseconds for exact percentiles; a run of
10,000 devices at a 10 s poll for ten minutes is about a million floats (8 MB).
"""

from __future__ import annotations

import math
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

#: Unexplained errors kept verbatim for the summary (the rest are only counted).
ERROR_SAMPLES = 20


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile (``fraction`` 0..1) of unsorted values; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def spread_band(rate: float) -> tuple[float, float]:
    """Poll counts per second a *randomly* spread fleet stays within: rate -/+ (3 sigma + 1).

    Polls arriving independently at random moments give Poisson counts per second
    (sigma = sqrt(rate)); a fleet still polling in step leaves this band by far, above
    (the seconds it polls in) and below (the gaps between).
    """
    margin = 3 * math.sqrt(rate) + 1
    return rate - margin, rate + margin


def time_until_spread(polls_per_second: list[int], window_s: int) -> dict[str, Any]:
    """How long until polls were spread evenly, and stayed so.

    A window of ``window_s`` seconds (the poll interval) is *spread* when every second in
    it lies within ``spread_band(rate)``, rate being the mean polls per second from the
    window's start to the end of the run (the pace the fleet settles to). The answer is
    the start of the first window from which every later full window is spread; ``None``
    when the run never got there (or was shorter than two windows).
    """
    window_s = max(1, int(window_s))
    counts = polls_per_second
    starts = range(max(0, len(counts) - window_s + 1))
    spread_from = None
    for start in reversed(starts):
        low, high = spread_band(sum(counts[start:]) / (len(counts) - start))
        if not all(low <= c <= high for c in counts[start:start + window_s]):
            break
        spread_from = start
    if len(starts) < 2:
        spread_from = None
    last = counts[-window_s:] if len(counts) >= window_s else counts
    return {"spread_after_s": spread_from, "window_s": window_s,
            "last_window_busiest_second": max(last, default=None),
            "last_window_mean_per_s": round(sum(last) / len(last), 1) if last else None}


@dataclass
class FleetStats:
    started: float = field(default_factory=time.monotonic)
    #: Latencies of the first seconds (a fleet coming up) are left out of the summary.
    warmup_s: float = 0.0
    requests: Counter = field(default_factory=Counter)        # by kind of request
    statuses: Counter = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    latencies_by_kind: dict[str, list[float]] = field(default_factory=dict)
    bytes_in: int = 0
    bytes_out: int = 0
    errors: Counter = field(default_factory=Counter)          # unexplained, by reason
    error_samples: list[str] = field(default_factory=list)
    explained: Counter = field(default_factory=Counter)       # failed requests, by fault
    faults: Counter = field(default_factory=Counter)          # injected, by kind
    caught: Counter = field(default_factory=Counter)          # e.g. corrupt chunks caught
    commands: Counter = field(default_factory=Counter)        # run, by name
    duplicates: int = 0
    reconnects: int = 0
    files_verified: int = 0
    chunks: int = 0
    restarts: int = 0          # downloads restarted on a replaced version
    uploads: int = 0
    messages: int = 0
    heartbeats: int = 0
    enrolled: int = 0          # boards that enrolled and claimed their tokens
    polls_per_second: list[int] = field(default_factory=list)
    loop_lag_ms: list[float] = field(default_factory=list)
    online: set = field(default_factory=set)
    #: Which devices were ever offered a content (by its SHA-256) in a manifest.
    offered: dict = field(default_factory=dict)
    online_at_end: int | None = None
    # the window the live progress line reports on
    _window_requests: int = 0
    _window_latencies: list[float] = field(default_factory=list)
    _window_started: float = field(default_factory=time.monotonic)

    def record(self, kind: str, status: int, latency_s: float, sent: int, received: int) \
            -> None:
        self.requests[kind] += 1
        self.statuses[status] += 1
        ms = latency_s * 1000
        if time.monotonic() - self.started >= self.warmup_s:
            self.latencies_ms.append(ms)
            self.latencies_by_kind.setdefault(kind, []).append(ms)
        self._window_latencies.append(ms)
        self._window_requests += 1
        self.bytes_out += sent
        self.bytes_in += received

    def record_poll(self) -> None:
        second = int(time.monotonic() - self.started)
        if second >= len(self.polls_per_second):
            self.polls_per_second.extend([0] * (second + 1 - len(self.polls_per_second)))
        self.polls_per_second[second] += 1

    def error(self, reason: str, detail: str) -> None:
        self.errors[reason] += 1
        if len(self.error_samples) < ERROR_SAMPLES:
            self.error_samples.append(detail)

    @property
    def unexplained(self) -> int:
        return sum(self.errors.values())

    def progress_line(self, devices: int) -> str:
        """One line for the live view; resets the window it reports on."""
        now = time.monotonic()
        span = max(now - self._window_started, 1e-9)
        p50 = percentile(self._window_latencies, 0.50)
        p99 = percentile(self._window_latencies, 0.99)
        line = (f"[{now - self.started:6.0f}s] online {len(self.online)}/{devices}  "
                f"{self._window_requests / span:7.1f} req/s  errors {self.unexplained}  "
                f"faults {sum(self.faults.values())}  p50 {fmt_ms(p50)}  p99 {fmt_ms(p99)}  "
                f"in {fmt_bytes(self.bytes_in)} out {fmt_bytes(self.bytes_out)}")
        self._window_requests = 0
        self._window_latencies = []
        self._window_started = now
        return line

    def summary(self, devices: int, interval_s: float | None) -> dict[str, Any]:
        elapsed = time.monotonic() - self.started
        total = sum(self.requests.values())
        return {
            "devices": devices,
            "online_at_end": len(self.online) if self.online_at_end is None
            else self.online_at_end,
            "duration_s": round(elapsed, 1),
            "requests": {"total": total, "per_s": round(total / max(elapsed, 1e-9), 1),
                         "by_kind": dict(self.requests),
                         "by_status": {str(k): v for k, v in sorted(self.statuses.items())}},
            "latency_warmup_s": self.warmup_s,
            "latency_ms": {name: None if v is None else round(v, 2) for name, v in (
                ("p50", percentile(self.latencies_ms, 0.50)),
                ("p90", percentile(self.latencies_ms, 0.90)),
                ("p99", percentile(self.latencies_ms, 0.99)),
                ("max", max(self.latencies_ms, default=None)))},
            "latency_ms_by_kind": {kind: {"p50": round(percentile(values, 0.50), 2),
                                          "p99": round(percentile(values, 0.99), 2)}
                                   for kind, values in sorted(self.latencies_by_kind.items())},
            # the simulator's own event loop waking late: its latencies include this
            "loop_lag_ms": {"p50": round(percentile(self.loop_lag_ms, 0.5) or 0, 2),
                            "p99": round(percentile(self.loop_lag_ms, 0.99) or 0, 2)},
            "bytes": {"in": self.bytes_in, "out": self.bytes_out},
            "commands": {"run": dict(self.commands), "duplicates_ignored": self.duplicates},
            "files": {"verified": self.files_verified, "chunks": self.chunks,
                      "restarts_on_new_version": self.restarts},
            "uploads": self.uploads, "messages": self.messages,
            "heartbeats": self.heartbeats, "reconnects": self.reconnects,
            "faults": {"injected": dict(self.faults), "caught": dict(self.caught),
                       "explained_failures": dict(self.explained)},
            "errors": {"unexplained": self.unexplained, "by_reason": dict(self.errors),
                       "samples": self.error_samples},
            # whole seconds only: the last one was cut short by the end of the run
            "spread": time_until_spread(self.polls_per_second[:int(elapsed)],
                                        round(interval_s or 10)),
        }


def fmt_ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"


def fmt_bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{count} B"


def format_summary(summary: dict[str, Any], hub_url: str) -> str:
    """The human summary printed at the end of a run."""
    req, lat, files = summary["requests"], summary["latency_ms"], summary["files"]
    commands = summary["commands"]
    run = ", ".join(f"{k} {v}" for k, v in sorted(commands["run"].items())) or "none"
    faults = summary["faults"]
    injected = ", ".join(
        f"{k} {v}" + (f" ({faults['caught'][k]} caught)" if k in faults["caught"] else "")
        for k, v in sorted(faults["injected"].items())) or "none"
    spread = summary["spread"]
    if spread["spread_after_s"] is None:
        spread_text = "not spread evenly within the run (see docs/operators/simulator.md)"
    else:
        spread_text = (f"spread evenly after {spread['spread_after_s']} s (last "
                       f"{spread['window_s']} s: busiest second "
                       f"{spread['last_window_busiest_second']} polls, mean "
                       f"{spread['last_window_mean_per_s']}/s)")
    errors = summary["errors"]
    lines = [
        f"DropSync simulator: {summary['devices']} devices for {summary['duration_s']} s "
        f"against {hub_url}",
        f"  requests  {req['total']} ({req['per_s']}/s), p50 {fmt_ms(lat['p50'])}, "
        f"p99 {fmt_ms(lat['p99'])}, max {fmt_ms(lat['max'])}; in "
        f"{fmt_bytes(summary['bytes']['in'])}, out {fmt_bytes(summary['bytes']['out'])}",
        f"  devices   {summary['online_at_end']} of {summary['devices']} online at the end; "
        f"{summary['heartbeats']} heartbeats, {summary['messages']} messages, "
        f"{summary['reconnects']} reconnects",
        f"  commands  {run}; {commands['duplicates_ignored']} duplicate deliveries ignored",
        f"  files     {files['verified']} verified ({files['chunks']} chunks), "
        f"{files['restarts_on_new_version']} restarts on a new version; "
        f"{summary['uploads']} logs uploaded",
        f"  faults    {injected}; failures they explain: "
        f"{sum(faults['explained_failures'].values())}",
        f"  polls     {spread_text}",
        f"  errors    {errors['unexplained']} unexplained"
        + (": " + ", ".join(f"{k} {v}" for k, v in errors["by_reason"].items())
           if errors["unexplained"] else ""),
    ]
    lines += [f"    {sample}" for sample in errors["samples"][:5]]
    return "\n".join(lines)


def progress_printer(quiet: bool, every_s: float | None) -> tuple[Any, float]:
    """Where the live line goes: rewritten in place on a terminal, a line per interval
    otherwise (logs, CI)."""
    if quiet:
        return None, 0.0
    live = sys.stderr.isatty()

    def show(line: str) -> None:
        if live:
            sys.stderr.write("\r\x1b[2K" + line)
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    return show, every_s or (1.0 if live else 10.0)
