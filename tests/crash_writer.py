"""Child process for the crash test: acknowledged store writes in a loop until killed.

After each write is acknowledged (the store call returned) it prints one line to stdout,
so the parent knows exactly which writes the store promised to keep:
``dev <n>`` (device counter set to n), ``add <id>`` (device inserted), ``hist <n>``,
``live <n>`` (liveness checkpointed with last_seen n).
"""

import sys

from dropsync.store import Stores


def main(data_dir: str, start: int) -> None:
    stores = Stores(data_dir, history_segment_records=200, history_retention=1_000_000)
    if "counter" not in stores.devices:
        stores.devices.insert({"id": "counter", "token_hash": "h-counter", "count": 0})
    print("ready", flush=True)
    n = start
    while True:
        stores.devices.update("counter", {"count": n})
        print(f"dev {n}", flush=True)
        stores.history["events"].append({"n": n, "pad": "x" * 120})
        print(f"hist {n}", flush=True)
        if n % 7 == 0:
            stores.devices.insert({"id": f"d{n}", "token_hash": f"h{n}", "groups": []})
            print(f"add d{n}", flush=True)
        stores.liveness.update("counter", last_seen=n)
        if n % 5 == 0:
            stores.liveness.checkpoint()
            print(f"live {n}", flush=True)
        n += 1


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
