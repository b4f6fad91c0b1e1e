"""What the request log and the metrics add to a poll, in process.

One app (a real data directory on disk) with one device; ``--polls`` polls through
Flask's test client per run, alternating three kinds of run: with the ops hooks (request
timer, metrics update, one log line formatted and written to a stream, as to journald's
pipe; here /dev/null, so a busy disk does not blur it), with the hooks but the log line
off (metrics only), and without the hooks (taken out of the app); ``--rounds`` rounds.
Reports the median microseconds per poll of each and the differences.

    .venv/bin/python bench/ops_overhead_bench.py
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))

from dropsync import create_app  # noqa: E402

TOKEN = "bench-admin-token-" + "0" * 24


def run(client, headers: dict, polls: int) -> float:
    started = time.perf_counter()
    for _ in range(polls):
        response = client.get("/api/v1/device/commands/bench01", headers=headers)
        assert response.status_code == 200
    return (time.perf_counter() - started) / polls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--polls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        app = create_app({"DATA_DIR": f"{work}/data", "STAGING_DIR": f"{work}/staging",
                          "ADMIN_TOKEN": TOKEN, "SERVING": False, "LOG_LEVEL": "INFO",
                          "RATE_LIMITS_ENABLED": False})
        logger = logging.getLogger("dropsync")
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        sink = open(os.devnull, "w")  # noqa: SIM115 (closed below)
        logger.addHandler(logging.StreamHandler(sink))
        client = app.test_client()
        token = client.post("/api/v1/admin/devices/register", json={"id": "bench01"},
                            headers={"Authorization": f"Bearer {TOKEN}"}).get_json()["token"]
        headers = {"Authorization": f"Bearer {token}"}
        observer_hooks = [f for f in app.before_request_funcs[None]
                          if getattr(f, "__name__", "") == "start"]
        finish = [f for f in app.after_request_funcs[None]
                  if getattr(f, "__name__", "") == "finish"]
        assert len(observer_hooks) == 1 and len(finish) == 1

        def hooks(on: bool) -> None:
            for funcs, hook in ((app.before_request_funcs[None], observer_hooks[0]),
                                (app.after_request_funcs[None], finish[0])):
                if on and hook not in funcs:
                    funcs.insert(0, hook)
                elif not on and hook in funcs:
                    funcs.remove(hook)

        observer = observer_hooks[0].__self__
        run(client, headers, 300)  # warm up
        with_ops, metrics_only, without = [], [], []
        for _ in range(args.rounds):
            hooks(True)
            with_ops.append(run(client, headers, args.polls))
            observer.log_requests = False
            metrics_only.append(run(client, headers, args.polls))
            observer.log_requests = True
            hooks(False)
            without.append(run(client, headers, args.polls))
        hooks(True)
        app.extensions["dropsync"].close()
        sink.close()
    on, counted, off = (statistics.median(x) for x in (with_ops, metrics_only, without))
    print(f"poll through the test client, median of {args.rounds} alternating rounds of "
          f"{args.polls}:")
    print(f"  with request log + metrics: {on:7.1f} us/poll")
    print(f"  metrics only:               {counted:7.1f} us/poll")
    print(f"  without:                    {off:7.1f} us/poll")
    print(f"  cost of counting: {counted - off:+.1f} us/poll ({(counted - off) / off:+.1%}); "
          f"of logging and counting: {on - off:+.1f} us/poll ({(on - off) / off:+.1%})")


if __name__ == "__main__":
    main()
