"""Serving: real server processes on loopback, spoken to over raw sockets where the bytes
matter (ESP clients, stalled clients, errors the HTTP layer answers itself)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests
from support import ADMIN_TOKEN, BIN, ROOT, assert_error, free_port

pytestmark = pytest.mark.slow

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
#: Every wait on a socket is bounded by this, so a broken server fails the test, never hangs it.
SOCKET_SAFETY_S = 30


def start_hub(hub_process, **settings) -> object:
    env = {"DROPSYNC_ADMIN_TOKEN": ADMIN_TOKEN, "DROPSYNC_STAGING_WATCH": "false",
           **{f"DROPSYNC_{k}": str(v) for k, v in settings.items()}}
    return hub_process(env)


def register(hub, device_id: str = "esp001") -> str:
    answer = requests.post(hub.url + "/api/v1/admin/devices/register", headers=ADMIN,
                           json={"device_id": device_id}, timeout=10)
    assert answer.status_code == 201, answer.text
    return answer.json()["token"]


def connect(hub) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", hub.port), timeout=SOCKET_SAFETY_S)
    return sock


def read_response(sock: socket.socket, buffered: bytearray) -> tuple[str, dict, bytes]:
    """One response from a connection, by its Content-Length (what an ESP client does)."""
    while b"\r\n\r\n" not in buffered:
        data = sock.recv(65536)
        assert data, f"connection closed before a whole response: {bytes(buffered)!r}"
        buffered += data
    head, _, rest = bytes(buffered).partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    assert "transfer-encoding" not in headers, headers  # small clients handle chunked badly
    length = int(headers["content-length"])
    body = bytearray(rest)
    while len(body) < length:
        data = sock.recv(65536)
        assert data, "connection closed mid-body"
        body += data
    buffered[:] = body[length:]
    return status_line, headers, bytes(body[:length])


def read_until_closed(sock: socket.socket) -> bytes:
    data = bytearray()
    while chunk := sock.recv(65536):
        data += chunk
    return bytes(data)


def json_error(raw: bytes, status: int) -> dict:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.split(b"\r\n", 1)[0].split(b" ")[1] == str(status).encode(), raw[:300]
    assert b"content-type: application/json" in head.lower(), head
    error = json.loads(body)["error"]
    assert set(error) == {"code", "message", "details"}
    return error


# -- slow and dead clients -------------------------------------------------------------------

def test_stalled_clients_hold_nothing_and_are_cut_at_the_deadline(hub_process):
    """3x THREADS connections stall mid-headers and mid-body; polls are still answered,
    the stalled ones are cut by the deadline, and the partial upload is never stored."""
    threads = 2
    hub = start_hub(hub_process, THREADS=threads, REQUEST_HEADER_TIMEOUT_S=4,
                    REQUEST_BODY_TIMEOUT_S=4)
    token = register(hub)
    auth = f"Authorization: Bearer {token}\r\n".encode()

    mid_headers, mid_body = [], []
    for _ in range(3 * threads):
        sock = connect(hub)
        sock.sendall(b"GET /api/v1/device/commands/esp001 HTTP/1.1\r\nHost: hub\r\n" + auth)
        mid_headers.append(sock)
        sock = connect(hub)
        sock.sendall(b"POST /api/v1/files/upload/esp001?filename=partial.log HTTP/1.1\r\n"
                     b"Host: hub\r\n" + auth + b"Content-Type: application/octet-stream\r\n"
                     b"Content-Length: 100000\r\n\r\n" + b"x" * 1000)
        mid_body.append(sock)

    # Under gunicorn gthread these 12 connections hold both threads: the polls would wait
    # for them (here: fail at the safety timeout). Here each is answered at once.
    for _ in range(10):
        poll = requests.get(hub.url + "/api/v1/device/commands/esp001", timeout=10,
                            headers={"Authorization": f"Bearer {token}"})
        assert poll.status_code == 200 and poll.json()["commands"] == []
    assert requests.get(hub.url + "/health", timeout=10).status_code == 200

    for sock in mid_body:  # 408 in the JSON shape, then the connection is closed
        error = json_error(read_until_closed(sock), 408)
        assert error["code"] == "request_timeout"
        sock.close()
    for sock in mid_headers:  # cut by the HTTP layer before any Python ran
        assert b"200 OK" not in read_until_closed(sock)
        sock.close()

    listed = requests.get(hub.url + "/api/v1/files/list/esp001", timeout=10,
                          headers={"Authorization": f"Bearer {token}"}).json()
    assert listed["uploads"] == []
    uploads = hub.data_dir / "uploads"
    assert not uploads.exists() or not [p for p in uploads.rglob("*") if p.is_file()]
    # and a whole upload still goes through
    stored = requests.post(hub.url + "/api/v1/files/upload/esp001?filename=whole.log",
                           data=b"y" * 1000, timeout=10,
                           headers={"Authorization": f"Bearer {token}",
                                    "Content-Type": "application/octet-stream"})
    assert stored.status_code == 201, stored.text
    assert stored.json()["sha256"] == hashlib.sha256(b"y" * 1000).hexdigest()


# -- what ESP clients depend on --------------------------------------------------------------

def stage_file(hub, token: str, data: bytes) -> dict:
    staged = requests.put(hub.url + "/api/v1/admin/staging/esp001/data/blob.bin",
                          data=data, headers=ADMIN, timeout=30)
    assert staged.status_code in (200, 201), staged.text
    manifest = requests.get(hub.url + "/api/v1/files/manifest/esp001", timeout=10,
                            headers={"Authorization": f"Bearer {token}"}).json()
    return manifest["files"][0]


def test_esp_http10_download_and_http11_keep_alive_polls(hub_process):
    hub = start_hub(hub_process)
    token = register(hub)
    data = os.urandom(50_000)
    entry = stage_file(hub, token, data)
    auth = f"Authorization: Bearer {token}\r\n".encode()

    # ESP8266httpUpdate: HTTP/1.0, needs Content-Length, reads to the end of the body
    with connect(hub) as sock:
        sock.sendall(f"GET {entry['url']} HTTP/1.0\r\nHost: hub\r\n".encode() + auth
                     + b"User-Agent: ESP8266-http-Update\r\nx-ESP8266-STA-MAC: AA:BB\r\n"
                     b"x-ESP8266-sketch-md5: 00\r\n\r\n")
        raw = read_until_closed(sock)  # an HTTP/1.0 answer ends with the connection
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    assert lines[0].startswith("HTTP/1.0 200")
    assert int(headers["content-length"]) == len(data) and body == data
    assert headers["x-md5"] == hashlib.md5(data).hexdigest()

    # a resumed download (Range) and a chunk, also over HTTP/1.0
    with connect(hub) as sock:
        sock.sendall(f"GET {entry['url']} HTTP/1.0\r\n".encode() + auth
                     + b"Range: bytes=40000-\r\n\r\n")
        raw = read_until_closed(sock)
    assert raw.startswith(b"HTTP/1.0 206") and raw.endswith(data[40000:])
    assert b"content-length: 10000\r\n" in raw.lower()

    # an HTTP/1.1 node keeps one connection for its polls, reports and chunk fetches
    with connect(hub) as sock:
        buffered = bytearray()
        heartbeat = b'{"rssi": -60, "free_heap": 30000}'
        requests_sent = [
            b"GET /api/v1/device/commands/esp001 HTTP/1.1\r\nHost: hub\r\n" + auth + b"\r\n",
            b"POST /api/v1/device/heartbeat/esp001 HTTP/1.1\r\nHost: hub\r\n" + auth
            + b"Content-Type: application/json\r\nContent-Length: "
            + str(len(heartbeat)).encode() + b"\r\n\r\n" + heartbeat,
            f"GET {entry['url']}/1 HTTP/1.1\r\nHost: hub\r\n".encode() + auth + b"\r\n",
            b"GET /api/v1/device/commands/esp001 HTTP/1.1\r\nHost: hub\r\n" + auth + b"\r\n",
        ]
        answers = []
        for request in requests_sent:
            sock.sendall(request)
            answers.append(read_response(sock, buffered))
    assert [a[0].split(" ", 2)[:2] for a in answers] == [["HTTP/1.1", "200"]] * 4
    assert all(a[1].get("connection") != "close" for a in answers)
    assert answers[2][2] == data[entry["chunk_size"]:2 * entry["chunk_size"]]
    assert answers[2][1]["x-chunk-sha256"] == hashlib.sha256(answers[2][2]).hexdigest()

    # the path is percent-decoded exactly once, as every WSGI server does
    ping = hub.url + "/api/v1/device/ping/"
    device = {"Authorization": f"Bearer {token}"}
    assert requests.get(ping + "%65sp001", headers=device, timeout=10).status_code == 200
    twice = requests.get(ping + "esp%2530%2530%2531", headers=device, timeout=10)
    assert twice.status_code != 200  # "esp%30%30%31", not esp001
    assert_error(twice, twice.status_code)


# -- errors the HTTP layer answers -----------------------------------------------------------

@pytest.mark.parametrize("server", ["granian", "gunicorn"])
def test_oversized_request_line_and_headers_answer_in_the_json_shape(hub_process, server):
    hub = start_hub(hub_process, SERVER=server)
    cases = [
        (b"GET /health?" + b"a" * 9000 + b" HTTP/1.1\r\nHost: hub\r\n\r\n", 414),
        (b"GET /health HTTP/1.1\r\nHost: hub\r\nX-Big: " + b"b" * 40000 + b"\r\n\r\n", 431),
    ]
    for request, status in cases:
        with connect(hub) as sock:
            sock.sendall(request)
            json_error(read_until_closed(sock), status)
    with connect(hub) as sock:  # not HTTP at all
        sock.sendall(b"HELLO THERE\r\n\r\n")
        raw = read_until_closed(sock)
    assert raw.split(b"\r\n", 1)[0].split(b" ")[1] == b"400"
    if server == "gunicorn":  # granian answers this one itself, with an empty body
        json_error(raw, 400)
    assert requests.get(hub.url + "/health", timeout=10).status_code == 200


# -- one process owns the data directory, on either server ----------------------------------

def gunicorn_process(args: list[str], data_dir: Path, port: int, log_path: Path):
    env = {**os.environ, "DROPSYNC_DATA_DIR": str(data_dir), "DROPSYNC_HOST": "127.0.0.1",
           "DROPSYNC_PORT": str(port), "DROPSYNC_STAGING_WATCH": "false",
           "DROPSYNC_ADMIN_TOKEN": ADMIN_TOKEN}
    log = open(log_path, "ab")  # noqa: SIM115 (closed by the caller's stop)
    process = subprocess.Popen([str(BIN / "gunicorn"), *args, "wsgi:app"], cwd=ROOT, env=env,
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return process, log


def wait_for_health(port: int, process: subprocess.Popen, log_path: Path) -> dict:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, log_path.read_text()
        try:
            answer = requests.get(f"http://127.0.0.1:{port}/health", timeout=5)
            if answer.status_code == 200:
                return answer.json()
        except (requests.ConnectionError, requests.Timeout):
            pass  # still booting; on a loaded machine the first answer can be slow
        time.sleep(0.2)
    raise AssertionError(f"no /health within 60 s:\n{log_path.read_text()}")


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def lock_holder(data_dir: Path) -> int | None:
    text = (data_dir / "hub.lock").read_text()
    return json.loads(text)["pid"] if text else None


def stop(process: subprocess.Popen, log) -> int:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    log.close()
    return process.returncode


def test_gunicorn_config_runs_one_worker_whatever_w_says(tmp_path):
    port, data_dir, log_path = free_port(), tmp_path / "data", tmp_path / "gunicorn.log"
    process, log = gunicorn_process(["-c", "python:dropsync.gunicorn_conf", "-w", "3"],
                                    data_dir, port, log_path)
    try:
        wait_for_health(port, process, log_path)
        assert len(children(process.pid)) == 1
        assert "DropSync runs one worker" in log_path.read_text()
        assert lock_holder(data_dir) == children(process.pid)[0]
    finally:
        assert stop(process, log) == 0
    assert lock_holder(data_dir) is None


def test_bare_gunicorn_with_four_workers_serves_with_one_and_keeps_standbys(tmp_path):
    """The seed's ``gunicorn -w 4 wsgi:app`` (no config file): one worker serves, the
    others wait as standbys instead of failing to boot (which made the master stop)."""
    port, data_dir, log_path = free_port(), tmp_path / "data", tmp_path / "gunicorn.log"
    process, log = gunicorn_process(["-w", "4", "-b", f"127.0.0.1:{port}"], data_dir, port,
                                    log_path)
    try:
        wait_for_health(port, process, log_path)
        serving = lock_holder(data_dir)
        workers = children(process.pid)
        assert len(workers) == 4 and serving in workers
        deadline = time.monotonic() + 60
        while log_path.read_text().count("waits as a standby") < 3:
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        for _ in range(20):  # every answer comes from the one serving worker
            assert requests.get(f"http://127.0.0.1:{port}/health", timeout=10).ok

        os.kill(serving, signal.SIGKILL)  # a standby takes the data directory over
        deadline = time.monotonic() + 60
        while lock_holder(data_dir) in (None, serving):
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        wait_for_health(port, process, log_path)
        assert process.poll() is None
    finally:
        assert stop(process, log) == 0
    assert lock_holder(data_dir) is None
    assert "Traceback" not in log_path.read_text()


def test_killed_hub_keeps_every_acknowledged_write_and_frees_the_directory(hub_process,
                                                                            tmp_path):
    """SIGKILL the whole served hub mid-writes: what it acknowledged is there after a
    restart. SIGKILL only granian's main process: its worker closes the hub cleanly."""
    hub = start_hub(hub_process, LIVENESS_CHECKPOINT_S=3600)
    token = register(hub)
    acknowledged = []
    for index in range(3):
        kill_at = time.monotonic() + 0.5 + index * 0.3
        session = requests.Session()
        round_started = len(acknowledged)
        while time.monotonic() < kill_at and len(acknowledged) - round_started < 150:
            answer = session.post(hub.url + "/api/v1/admin/devices/esp001/command",
                                  headers=ADMIN, json={"command": f"c{len(acknowledged)}"},
                                  timeout=10)
            assert answer.status_code == 201, answer.text
            acknowledged.append(answer.json()["id"])
        os.killpg(hub.process.pid, signal.SIGKILL)
        hub.process.wait(timeout=30)
        hub.stop()
        hub = start_hub(hub_process, LIVENESS_CHECKPOINT_S=3600)
        listed = requests.get(hub.url + "/api/v1/admin/devices/esp001/commands?limit=500",
                              headers=ADMIN, timeout=10).json()
        assert set(acknowledged) <= {c["id"] for c in listed["commands"]}
    assert len(acknowledged) > 10

    requests.get(hub.url + "/api/v1/device/ping/esp001", timeout=10,
                 headers={"Authorization": f"Bearer {token}"}).raise_for_status()
    worker = lock_holder(hub.data_dir)  # the app lives in granian's one worker, not its parent
    assert worker != hub.process.pid and children(hub.process.pid) == [worker]
    os.kill(hub.process.pid, signal.SIGKILL)  # only the main process
    hub.process.wait(timeout=30)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{worker}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{worker}").exists(), "the worker outlived granian's main process"
    assert lock_holder(hub.data_dir) is None
    liveness = json.loads((hub.data_dir / "liveness.json").read_text())
    assert "last_seen" in liveness["esp001"]  # checkpointed as the worker closed the hub


def test_admin_errors_still_come_in_the_json_shape_through_the_bridge(hub_process):
    hub = start_hub(hub_process)
    assert_error(requests.post(hub.url + "/api/v1/admin/devices/register", data=b"{not json",
                               headers={**ADMIN, "Content-Type": "application/json"},
                               timeout=10), 400)


def test_the_header_deadline_outlasts_the_poll_interval_or_the_hub_warns(caplog):
    """granian ends an idle keep-alive connection at the header deadline: by default it
    must outlast a node's longest pause between polls, and a setting that does not is
    named at start-up."""
    from dropsync.config import load_config
    from dropsync.server import warn_if_polls_outlive_keep_alive

    defaults = load_config(environ={})
    assert defaults["REQUEST_HEADER_TIMEOUT_S"] > \
        defaults["POLL_INTERVAL_S"] * (1 + defaults["POLL_JITTER"])
    assert not warn_if_polls_outlive_keep_alive(defaults)
    with caplog.at_level("WARNING", logger="dropsync"):
        assert warn_if_polls_outlive_keep_alive({**defaults, "REQUEST_HEADER_TIMEOUT_S": 10.0,
                                                 "POLL_INTERVAL_S": 10})
    assert "REQUEST_HEADER_TIMEOUT_S above 11" in caplog.text


def test_more_nodes_than_granians_default_keep_their_connections_open(hub_process):
    """Every node holds a keep-alive connection between polls. granian holds a permit per
    open connection (1,024 by default): the 1,025th node waited for ever. The hub allows
    MAX_CONNECTIONS."""
    hub = start_hub(hub_process)
    token = register(hub)
    poll = (f"GET /api/v1/device/commands/esp001 HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {token}\r\n\r\n").encode()
    held: list[socket.socket] = []
    try:
        for _ in range(1100):
            connection = socket.create_connection(("127.0.0.1", hub.port), timeout=20)
            held.append(connection)
            connection.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert connection.recv(65536).startswith(b"HTTP/1.1 200")  # served, kept open
        latest = held[-1]
        latest.sendall(poll)  # the newest keep-alive connection polls again
        assert latest.recv(65536).startswith(b"HTTP/1.1 200")
    finally:
        for connection in held:
            connection.close()
