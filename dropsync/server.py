"""Serving the hub: granian by default, gunicorn as the design card names it.

Either way one worker process holds the data directory and its stores; the app is created
in that worker, never in a parent process, and closed (liveness checkpoint, lock released)
when the worker stops.

- granian (``SERVER=granian``, what ``dropsync serve`` runs): granian parses HTTP in Rust
  and calls the hub through ``bridge.RSGIBridge`` on one asyncio loop, so an idle, slow or
  stalled client costs no thread. It measured faster than gunicorn and than the seed's
  FastAPI stack (docs/admin/serving.md).
- gunicorn (``SERVER=gunicorn``, or ``gunicorn -c python:dropsync.gunicorn_conf wsgi:app``):
  one gthread worker with ``THREADS`` threads. More workers are refused: the config forces
  one, and under a bare ``gunicorn -w N wsgi:app`` the extra workers wait as standbys.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

from gunicorn import util as gunicorn_util
from gunicorn.app.base import BaseApplication
from gunicorn.workers.gthread import ThreadWorker

from .errors import DataDirBusy, StartupError

log = logging.getLogger("dropsync")

#: gunicorn's exit code for "worker failed to boot": the master stops instead of respawning.
WORKER_BOOT_ERROR = 3


def bind_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listening_message(host: str, port: int, scheme: str = "http") -> str:
    everywhere = host in ("0.0.0.0", "::", "")
    lan = f" (ESP nodes on the LAN: {scheme}://{socket.gethostname()}:{port})" \
        if everywhere else ""
    return f"DropSync hub listening on {scheme}://{bind_address(host, port)}{lan}"


def announce_address(host: str, port: int, scheme: str = "http"):
    """A gunicorn ``when_ready`` hook that says where the hub listens."""
    def when_ready(server) -> None:
        server.log.info("%s", listening_message(host, port, scheme))
    return when_ready


def one_worker_only(server) -> None:
    """gunicorn ``on_starting`` hook: ``-w N`` on the command line beats the config file,
    so the worker count is put back to one here, and the log says why."""
    if server.num_workers > 1:
        server.log.warning("DropSync runs one worker (its stores live in that process); "
                           "asked for %d, starting 1", server.num_workers)
        server.num_workers = 1


def worker_exit(server, worker) -> None:
    """Checkpoint liveness and release the data directory as the worker stops."""
    app = getattr(worker, "wsgi", None)
    hub = getattr(app, "extensions", {}).get("dropsync") if app is not None else None
    if hub is not None:
        hub.close()


def gunicorn_options(settings: Mapping[str, Any]) -> dict[str, Any]:
    from .ops.tls import tls_files

    tls = tls_files(settings)  # HTTPS when `dropsync tls init` made a certificate
    return {
        **({"certfile": str(tls[0]), "keyfile": str(tls[1])} if tls else {}),
        "bind": [bind_address(settings["HOST"], settings["PORT"])],
        "workers": 1,
        "worker_class": "dropsync.server.JSONErrorThreadWorker",
        "threads": settings["THREADS"],
        "timeout": 60,
        "graceful_timeout": 10,
        "keepalive": 5,
        "preload_app": False,
        # gunicornc could add workers at run time, and a shared default socket path would
        # clash between two hubs on one machine; the hub must stay one worker.
        "control_socket_disable": True,
        "errorlog": "-",
        "loglevel": settings["LOG_LEVEL"].lower(),
        "when_ready": announce_address(settings["HOST"], settings["PORT"],
                                       "https" if tls else "http"),
        "on_starting": one_worker_only,
        "worker_exit": worker_exit,
    }


class JSONErrorThreadWorker(ThreadWorker):
    """gthread, answering the errors gunicorn raises itself (a request line too long: 414,
    headers too large: 431, a malformed request: 400) in the hub's JSON error shape."""

    def handle_error(self, req, client, addr, exc) -> None:
        captured = _CapturedSocket(client)
        super().handle_error(req, captured, addr, exc)  # logs, and writes its HTML to us
        status_line = captured.data.split(b"\r\n", 1)[0].decode("latin-1")
        _, status, reason = (status_line.split(" ", 2) + ["", ""])[:3]
        if not status.isdigit():
            return
        from .bridge import error_body

        code = reason.lower().replace(" ", "_").replace("-", "_") or "error"
        body = error_body(code, reason)
        head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
        try:
            gunicorn_util.write_nonblock(client, head.encode("latin-1") + body)
        except OSError:
            self.log.debug("Failed to send error message.")


class _CapturedSocket:
    """Stands in for the client socket while gunicorn writes its HTML error page."""

    def __init__(self, client):
        self.client = client
        self.data = b""

    def gettimeout(self) -> float:
        return 0.0

    def sendall(self, data: bytes) -> None:
        self.data += data

    def __getattr__(self, name: str):
        return getattr(self.client, name)


class HubServer(BaseApplication):
    def __init__(self, overrides: Mapping[str, Any], settings: Mapping[str, Any]):
        self.overrides = dict(overrides)
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        for key, value in gunicorn_options(self.settings).items():
            self.cfg.set(key, value)

    def load(self):
        return create_app_or_exit(self.overrides)


def create_app_or_exit(overrides: Mapping[str, Any] | None = None):
    """The app, or a clear message and gunicorn's boot-error exit instead of a traceback.

    Under a bare ``gunicorn -w N wsgi:app`` (no config file, so no hook could force one
    worker) the sibling workers find the directory held by the first one; instead of
    failing to boot, which makes the master stop the whole hub, they wait as standbys
    (see ``wait_as_standby``).
    """
    from . import create_app

    while True:
        try:
            return create_app(overrides)
        except DataDirBusy as exc:
            worker = current_gunicorn_worker()
            if worker is None or not is_sibling(exc.pid):
                log.error("%s", exc.message)
                sys.exit(WORKER_BOOT_ERROR)
            wait_as_standby(worker, exc)
        except StartupError as exc:
            log.error("%s", exc.message)
            sys.exit(WORKER_BOOT_ERROR)


def current_gunicorn_worker():
    """The gunicorn worker loading this app, found on the call stack (None elsewhere)."""
    try:
        from gunicorn.workers.base import Worker
    except ImportError:  # pragma: no cover - gunicorn is a dependency
        return None
    frame = sys._getframe()
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, Worker):
            return candidate
        frame = frame.f_back
    return None


def is_sibling(pid: int | None) -> bool:
    """Whether ``pid`` is another child of this process's parent (a sibling worker)."""
    if not pid or pid == os.getpid():
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return int(stat.rsplit(")", 1)[1].split()[1]) == os.getppid()


#: How often a standby worker checks whether the serving worker has gone.
STANDBY_POLL_S = 0.5


def wait_as_standby(worker, busy: DataDirBusy) -> None:
    """Keep a surplus gunicorn worker alive, serving nothing, until the directory is free.

    It accepts no connection (gunicorn accepts only after the app is loaded) and tells
    the master it is alive, so the master neither stops the hub nor restarts it; if the
    serving worker dies, a standby takes the directory over. On the master's stop signal
    it leaves.
    """
    from .store import current_holder

    log.warning("DropSync runs one worker: worker %s serves %s; worker %s waits as a "
                "standby and takes over if it stops (run gunicorn with -w 1, or with "
                "-c python:dropsync.gunicorn_conf)", busy.pid, busy.data_dir, os.getpid())
    while worker.alive:
        worker.notify()
        if current_holder(Path(busy.data_dir)) is None:
            return
        time.sleep(STANDBY_POLL_S)
    sys.exit(0)


# -- granian -----------------------------------------------------------------------------

def largest_body(settings: Mapping[str, Any]) -> int:
    """The largest request body any route accepts: the bridge refuses more at once."""
    from .api.admission import body_limits

    return max(settings["MAX_REQUEST_BYTES"], *body_limits(settings).values())


def load_hub_bridge(overrides: Mapping[str, Any]):
    """In granian's worker: create the hub (it takes the data directory here) and wrap it."""
    from .api.admission import SpoolBudget, body_admission
    from .api.serving import MarkedRoutes
    from .bridge import RSGIBridge
    from .store import LOW_DISK_BYTES

    stop_with_parent()
    app = create_app_or_exit(overrides)
    settings = app.config
    hub = app.extensions["dropsync"]
    bridge = RSGIBridge(app, threads=settings["THREADS"],
                        body_timeout_s=settings["REQUEST_BODY_TIMEOUT_S"],
                        max_body_bytes=largest_body(settings),
                        spool_dir=hub.stores.data_dir, on_close=hub.close,
                        runs_on_loop=MarkedRoutes(app).runs_on_loop,
                        admission=body_admission(app),
                        spool_budget=SpoolBudget(hub.stores.data_dir,
                                                 settings["REQUEST_SPOOL_MAX_BYTES"],
                                                 LOW_DISK_BYTES))
    from .ops.tls import tls_files

    scheme = "https" if tls_files(settings) else "http"
    log.info("%s", listening_message(settings["HOST"], settings["PORT"], scheme))
    warn_if_polls_outlive_keep_alive(settings)
    # What the hub loaded (devices, stores, code) lives as long as it does: keep it out of
    # the garbage collector's full passes, which walked it all (~100 ms with 10,000
    # devices) and held every request meanwhile. Refcounting still frees it.
    import gc

    gc.collect()
    gc.freeze()
    return bridge


#: Connections waiting to be accepted (Linux caps it at net.core.somaxconn, 4096).
LISTEN_BACKLOG = 4096
#: Files the worker needs besides its sockets (stores, history segments, blobs, logs).
FILES_BESIDES_SOCKETS = 256


def room_for_connections(wanted: int) -> int:
    """Raise the open-files limit so ``wanted`` connections fit (a service manager's
    default soft limit is often 1,024); the connections that fit, if fewer."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = wanted + FILES_BESIDES_SOCKETS
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    fits = wanted if soft == resource.RLIM_INFINITY else \
        max(1, min(wanted, soft - FILES_BESIDES_SOCKETS))
    if fits < wanted:
        log.warning("the open-files limit (%d) leaves room for %d connections, not "
                    "MAX_CONNECTIONS=%d: raise LimitNOFILE (systemd) or ulimit -n", soft,
                    fits, wanted)
    return fits


def warn_if_polls_outlive_keep_alive(settings: Mapping[str, Any]) -> bool:
    """granian's header deadline also ends idle keep-alive connections: one shorter than
    the longest poll interval cuts every node's connection between its polls."""
    longest_poll = settings["POLL_INTERVAL_S"] * (1 + settings["POLL_JITTER"])
    if settings["REQUEST_HEADER_TIMEOUT_S"] > longest_poll:
        return False
    log.warning("REQUEST_HEADER_TIMEOUT_S (%g s) also ends idle keep-alive connections, and "
                "nodes poll every %g s (up to %g s with the jitter): each poll will open a "
                "new connection. Set REQUEST_HEADER_TIMEOUT_S above %g.",
                settings["REQUEST_HEADER_TIMEOUT_S"], settings["POLL_INTERVAL_S"],
                longest_poll, longest_poll)
    return True


def stop_with_parent() -> None:
    """Ask Linux to SIGTERM this worker when granian's main process dies, however it dies,
    so an orphaned worker never keeps the data directory (SIGTERM closes the hub)."""
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM))
    except (OSError, AttributeError):  # not Linux: systemd or the shell stops both anyway
        pass


def run_granian(overrides: Mapping[str, Any], settings: Mapping[str, Any]) -> None:
    """granian with one worker process; the hub is created in it, never in this process."""
    from granian.constants import HTTPModes, Interfaces, SSLProtocols
    from granian.http import HTTP1Settings
    from granian.log import LogLevels
    from granian.server import MPServer

    from .ops.tls import tls_files

    tls = tls_files(settings)  # HTTPS when `dropsync tls init` made a certificate
    connections = room_for_connections(settings["MAX_CONNECTIONS"])
    server = MPServer(
        "dropsync", address=settings["HOST"], port=settings["PORT"],
        interface=Interfaces.RSGI, workers=1, http=HTTPModes.http1, websockets=False,
        # granian holds a permit per open connection (its default: 1,024): every node
        # keeps one open between polls, so the fleet's size is the number to allow
        backlog=LISTEN_BACKLOG, backpressure=connections,
        http1_settings=HTTP1Settings(
            header_read_timeout=int(settings["REQUEST_HEADER_TIMEOUT_S"] * 1000)),
        log_level=LogLevels(settings["LOG_LEVEL"].lower()),
        respawn_failed_workers=False,
        # TLS 1.2 too: an ESP8266's BearSSL speaks nothing newer
        **({"ssl_cert": Path(tls[0]), "ssl_key": Path(tls[1]),
            "ssl_protocol_min": SSLProtocols.tls12} if tls else {}))
    from granian.server.mp import WorkerProcess

    server.serve(spawn_target=WorkerProcess.wrap_target(serve_hub_worker), wrap_loader=False,
                 target_loader=partial(load_hub_bridge, dict(overrides)))


def serve_hub_worker(worker_id, bridge, *args) -> None:
    """granian's RSGI worker, then the hub closed however the worker's loop ended."""
    from granian.server import MPServer

    try:
        MPServer._spawn_rsgi_worker.__wrapped__(worker_id, bridge, *args)
    finally:
        bridge.close()


def serve(overrides: Mapping[str, Any], settings: Mapping[str, Any]) -> None:
    """Run the hub with the server ``SERVER`` names (``dropsync serve``)."""
    if settings["SERVER"] == "gunicorn":
        HubServer(overrides, settings).run()
    else:
        run_granian(overrides, settings)
