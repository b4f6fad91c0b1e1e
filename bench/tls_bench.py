"""What TLS costs the hub per poll, against plain HTTP to the same hub in the same run.

Two real hubs (``dropsync serve``, one worker each) on loopback: one plain, one serving
HTTPS with a ``dropsync tls init`` certificate (RSA-2048, as the hub makes it). Each is
polled as one device, the way a node can connect:

- **keep-alive**: one connection for every poll (an ESP32's HTTPClient with reuse);
- **new connection**: a connection per poll, as the firmware's HTTP/1.0 transport makes;
- **resumed** (HTTPS): a connection per poll that resumes the last TLS session, as a node
  keeping a ``BearSSL::Session`` does.

It reports the hub's CPU per poll (user + system time of the hub's processes, from
/proc) and the client's median time per poll, each as a ratio to plain keep-alive,
alternating the modes over ``--rounds`` rounds and taking medians.

    python bench/tls_bench.py [--polls 400] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from support import ADMIN_TOKEN, HubProcess  # noqa: E402


def process_cpu_s(pid: int) -> float:
    """User + system seconds of ``pid`` and every process below it."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    children = subprocess.run(["pgrep", "-g", str(os.getpgid(pid))], capture_output=True,
                              text=True).stdout.split()
    for child in {pid, *map(int, children)}:
        try:
            fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def poll_request(device: str, token: str) -> bytes:
    return (f"GET /api/v1/device/commands/{device} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {token}\r\n\r\n").encode()


def read_answer(sock) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += sock.recv(65536)
    assert head.startswith(b"HTTP/1.1 200"), head


def measure(hub, mode: str, context: ssl.SSLContext | None, device: str, token: str,
            polls: int) -> tuple[float, float]:
    request = poll_request(device, token)
    times = []
    session = None
    cpu_before = process_cpu_s(hub.process.pid)
    kept = None
    for _ in range(polls):
        started = time.perf_counter()
        if mode == "keep-alive" and kept is not None:
            sock = kept
        else:
            raw = socket.create_connection(("127.0.0.1", hub.port), timeout=10)
            if context is None:
                sock = raw
            else:
                sock = context.wrap_socket(raw, server_hostname="localhost",
                                           session=session if mode == "resumed" else None)
        sock.sendall(request)
        read_answer(sock)
        times.append(time.perf_counter() - started)
        if mode == "keep-alive":
            kept = sock
        else:
            if context is not None:
                session = sock.session
            sock.close()
    if kept is not None:
        kept.close()
    return (process_cpu_s(hub.process.pid) - cpu_before) / polls, statistics.median(times)


def start_hub(folder: Path, tls: bool) -> tuple[HubProcess, str]:
    folder.mkdir()
    hub = HubProcess(folder, {"DROPSYNC_ADMIN_TOKEN": ADMIN_TOKEN,
                              "DROPSYNC_REQUEST_LOG": "false",
                              "DROPSYNC_RATE_LIMITS_ENABLED": "false"})
    if tls:
        hub.cli("tls", "init", "--name", "localhost", "--address", "127.0.0.1")
        hub.url = f"https://127.0.0.1:{hub.port}"
        os.environ["REQUESTS_CA_BUNDLE"] = str(hub.data_dir / "tls" / "hub.crt")
    hub.start()
    token = requests.post(f"{hub.url}/api/v1/admin/devices/register", timeout=10,
                          headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                          json={"id": "bench"}).json()["token"]
    return hub, token


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--polls", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        plain, plain_token = start_hub(Path(scratch) / "plain", tls=False)
        secure, secure_token = start_hub(Path(scratch) / "tls", tls=True)
        context = ssl.create_default_context(cafile=str(secure.data_dir / "tls" / "hub.crt"))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        modes = [("http keep-alive", plain, None, "keep-alive", plain_token),
                 ("http new connection", plain, None, "new", plain_token),
                 ("https keep-alive", secure, context, "keep-alive", secure_token),
                 ("https new connection, full handshake", secure, context, "new",
                  secure_token),
                 ("https new connection, resumed session", secure, context, "resumed",
                  secure_token)]
        results: dict[str, list[tuple[float, float]]] = {name: [] for name, *_ in modes}
        try:
            for _ in range(args.rounds):
                for name, hub, ctx, mode, token in modes:
                    results[name].append(measure(hub, mode, ctx, "bench", token, args.polls))
        finally:
            plain.stop()
            secure.stop()
    base_cpu = statistics.median(r[0] for r in results["http keep-alive"])
    base_time = statistics.median(r[1] for r in results["http keep-alive"])
    print(f"{args.polls} polls x {args.rounds} rounds, medians; load {os.getloadavg()[0]:.2f}")
    print(f"{'mode':40} {'hub CPU/poll':>13} {'ratio':>6} {'client time':>12} {'ratio':>6}")
    for name in results:
        cpu = statistics.median(r[0] for r in results[name])
        took = statistics.median(r[1] for r in results[name])
        print(f"{name:40} {cpu * 1e6:10.0f} us {cpu / base_cpu:6.2f} "
              f"{took * 1e3:9.2f} ms {took / base_time:6.2f}")


if __name__ == "__main__":
    main()
