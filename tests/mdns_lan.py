"""A hub on its defaults, found over mDNS: run inside a private network namespace.

``tests/test_ops_discovery.py`` runs this as ``unshare --net --fork python mdns_lan.py DIR``.
The namespace holds loopback and one end of a veth pair with an address, standing in for
the LAN, so the hub can listen on its default ``0.0.0.0:8000`` and no packet leaves the
machine. It starts ``dropsync serve`` in DIR with no HOST or PORT set, browses for
``_dropsync._tcp`` on loopback, stops the hub and prints what it found as one JSON line.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from support import BIN, browse_mdns  # noqa: E402

LAN_ADDRESS = "198.51.100.7"  # documentation range, and only inside the namespace


def main(workdir: Path) -> None:
    for command in (["ip", "link", "set", "lo", "up"],
                    ["ip", "link", "add", "lan0", "type", "veth", "peer", "name", "lan1"],
                    ["ip", "addr", "add", f"{LAN_ADDRESS}/24", "dev", "lan0"],
                    ["ip", "link", "set", "lan0", "up"],
                    ["ip", "link", "set", "lan1", "up"]):
        subprocess.run(command, check=True)
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("DROPSYNC_") and key not in ("HOST", "PORT")}
    with open(workdir / "hub.log", "wb") as log:
        hub = subprocess.Popen([str(BIN / "dropsync"), "serve"], cwd=workdir, env=env,
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            info = browse_mdns(timeout=25, port=8000)
        finally:
            os.killpg(hub.pid, signal.SIGTERM)  # granian's worker too
            try:
                hub.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(hub.pid, signal.SIGKILL)
                hub.wait()
    print(json.dumps(None if info is None else {
        "port": info.port,
        "addresses": [socket.inet_ntoa(a) for a in info.addresses],
        "properties": {k.decode(): (v or b"").decode() for k, v in info.properties.items()},
    }))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
