"""How the CLI reaches the hub's admin API, whether or not a hub is running.

A running hub keeps its stores in memory, so the CLI must never write its files behind its
back. When a hub holds the data directory, the CLI calls that hub over loopback with the
local CLI token the hub published in its 0600 lock file. When none does, the CLI opens the
stores itself (taking the same exclusive lock) and calls the very same admin API in-process.
Either way every change goes through one code path.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import click

from .config import load_config
from .errors import DataDirBusy, StartupError
from .store import current_holder

#: How long to wait for a hub that holds the data directory but is still starting.
CONNECT_PATIENCE_S = 10.0
#: Bytes read at a time from a streamed answer (a backup).
STREAM_READ = 256 * 1024


class HubError(Exception):
    """The hub answered with an error (the API's JSON error shape)."""

    def __init__(self, status: int, code: str, message: str, details: Any = None):
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details


def _raise_for_error(status: int, body: Any) -> Any:
    if status >= 400:
        error = body.get("error", {}) if isinstance(body, dict) else {}
        raise HubError(status, error.get("code", "error"),
                       error.get("message", f"HTTP {status}"), error.get("details"))
    return body


class ProgressReader:
    """A file wrapper that reports how many bytes have been read (for a progress bar)."""

    def __init__(self, source: BinaryIO, on_progress: Callable[[int], None] | None):
        self.source = source
        self.on_progress = on_progress

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size)
        if data and self.on_progress is not None:
            self.on_progress(len(data))
        return data

    def __getattr__(self, name: str) -> Any:  # tell, seek, fileno... of the source
        return getattr(self.source, name)


class HttpHub:
    """The admin API of a hub process, over HTTP."""

    def __init__(self, url: str, token: str, tls_cert: str | None = None):
        self.url = url.rstrip("/")
        self.token = token
        self.context = None
        if tls_cert:  # trust exactly the hub's own certificate, whatever names it holds
            self.context = ssl.create_default_context(cafile=tls_cert)
            self.context.check_hostname = False

    def request(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        return self._send(method, path, data, {"Content-Type": "application/json"})

    def upload(self, method: str, path: str, source: BinaryIO, size: int,
               on_progress: Callable[[int], None] | None = None) -> Any:
        """Send ``size`` bytes of ``source`` as the raw body, streamed, not loaded."""
        return self._send(method, path, ProgressReader(source, on_progress),
                          {"Content-Type": "application/octet-stream",
                           "Content-Length": str(size)})

    @contextmanager
    def stream(self, method: str, path: str) -> Iterator[tuple[Mapping[str, str],
                                                               Iterator[bytes]]]:
        """A response too large to hold: its headers and its body in pieces."""
        req = urllib.request.Request(self.url + path, method=method, headers={
            "Authorization": f"Bearer {self.token}"})
        try:
            response = urllib.request.urlopen(req, timeout=60, context=self.context)
        except urllib.error.HTTPError as exc:
            try:
                payload = json.loads(exc.read() or b"null")
            except ValueError:
                payload = None
            _raise_for_error(exc.code, payload)
            raise
        except urllib.error.URLError as exc:
            raise StartupError(f"the hub holding the data directory does not answer at "
                               f"{self.url}: {exc.reason}") from None
        with response:
            yield response.headers, iter(lambda: response.read(STREAM_READ), b"")

    def _send(self, method: str, path: str, data: Any, headers: dict[str, str]) -> Any:
        req = urllib.request.Request(
            self.url + path, data=data, method=method,
            headers={"Authorization": f"Bearer {self.token}", "Accept": "application/json",
                     **headers})
        deadline = time.monotonic() + CONNECT_PATIENCE_S
        while True:
            try:
                with urllib.request.urlopen(req, timeout=30, context=self.context) as response:
                    return json.loads(response.read() or b"null")
            except urllib.error.HTTPError as exc:
                try:
                    payload = json.loads(exc.read() or b"null")
                except ValueError:
                    payload = None
                return _raise_for_error(exc.code, payload)
            except urllib.error.URLError as exc:
                # Only a refused connection is safe to retry: the request never arrived
                # (the hub is still starting). Anything else might have been applied.
                if not isinstance(exc.reason, ConnectionRefusedError) or \
                        time.monotonic() > deadline:
                    raise StartupError(f"the hub holding the data directory does not answer "
                                       f"at {self.url}: {exc.reason}") from None
                time.sleep(0.2)


class InProcessHub:
    """The admin API of an app this process opened itself, called without a socket."""

    def __init__(self, app):
        self.client = app.test_client()
        self.token = app.extensions["dropsync"].cli_token

    def request(self, method: str, path: str, body: Any = None) -> Any:
        response = self.client.open(path, method=method, json=body,
                                    headers={"Authorization": f"Bearer {self.token}"})
        return _raise_for_error(response.status_code, response.get_json(silent=True))

    @contextmanager
    def stream(self, method: str, path: str) -> Iterator[tuple[Mapping[str, str],
                                                               Iterator[bytes]]]:
        response = self.client.open(path, method=method, buffered=False,
                                    headers={"Authorization": f"Bearer {self.token}"})
        try:
            if response.status_code >= 400:
                _raise_for_error(response.status_code, response.get_json(silent=True))
            yield response.headers, response.iter_encoded()
        finally:
            response.close()

    def upload(self, method: str, path: str, source: BinaryIO, size: int,
               on_progress: Callable[[int], None] | None = None) -> Any:
        response = self.client.open(path, method=method,
                                    input_stream=ProgressReader(source, on_progress),
                                    content_length=size,
                                    headers={"Authorization": f"Bearer {self.token}",
                                             "Content-Type": "application/octet-stream"})
        return _raise_for_error(response.status_code, response.get_json(silent=True))


@contextmanager
def connect(overrides: Mapping[str, Any]) -> Iterator[HttpHub | InProcessHub]:
    """The admin API for the data directory the settings name."""
    from . import create_app

    settings = load_config(overrides, config_file=overrides.get("CONFIG_FILE"))
    data_dir = Path(settings["DATA_DIR"]).resolve()
    for _ in range(3):
        holder = current_holder(data_dir)
        if holder is not None:
            yield _hub_from_holder(data_dir, holder)
            return
        try:
            # Quiet: a CLI command should print its answer, not the hub's start-up notes.
            app = create_app({"LOG_LEVEL": "WARNING", **overrides, "SERVING": False})
        except DataDirBusy:
            continue  # a hub started between our look and our claim: go through it
        try:
            yield InProcessHub(app)
        finally:
            app.extensions["dropsync"].close()
        return
    raise StartupError(f"could not claim or reach the holder of {data_dir}; try again")


def _hub_from_holder(data_dir: Path, holder: dict[str, Any]) -> HttpHub:
    if not holder.get("url") or not holder.get("cli_token"):
        pid = holder.get("pid", "?")
        raise StartupError(f"data directory {data_dir} is in use by another DropSync command "
                           f"(process {pid}); try again when it has finished")
    return HttpHub(holder["url"], holder["cli_token"], holder.get("tls_cert"))


def call_hub(ctx: click.Context, call: Callable[[Any], Any]) -> Any:
    """``call(hub)`` on the admin API of this invocation's data directory; a hub error
    ends the command with its message."""
    try:
        with connect(ctx.obj) as hub:
            return call(hub)
    except HubError as exc:
        detail = f"\n  details: {json.dumps(exc.details)}" if exc.details else ""
        raise click.ClickException(f"{exc.message} ({exc.code}){detail}") from None
    except StartupError as exc:
        raise click.ClickException(exc.message) from None
