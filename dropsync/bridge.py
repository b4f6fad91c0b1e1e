"""The hub's WSGI app served over granian's RSGI interface, so slow clients cost no thread.

granian parses HTTP in Rust and hands each request to this bridge on one asyncio loop:

- A request with no body to a view marked ``@on_loop`` (``dropsync.api.serving``: device
  polls, status and ping, manifests, chunk, whole-file and Range downloads, ``/health``)
  runs the Flask app right there on the loop: no hand-off to a thread, no GIL contention
  between threads (the peer's "tuned" mode, for WSGI); a marked POST (the heartbeat, which
  only changes memory) runs there once its body has arrived. Which views may is said on
  the views and read here through the app's URL map (``serving.MarkedRoutes``).
- Any other request runs in a pool of ``THREADS`` threads (writes fsync; admin pages read
  history from disk) once its whole body has arrived. The body is received on the loop,
  so a client that sends it slowly holds a coroutine, never a thread; one that stops
  (``REQUEST_BODY_TIMEOUT_S`` without a byte, or slower than ``MIN_BODY_BYTES_PER_S`` on
  the whole) gets 408 and its connection is closed. The app never sees a partial body,
  so a partial upload is never stored.
- A whole file (``send_file`` without ``Range``) is sent by granian itself from the path,
  and so is a byte range an app hands over as a ``FileRange`` (a chunk; see
  ``dropsync.api.lanes``), which the environ offers as ``dropsync.file_range``.

Headers are granian's: it cuts a client that does not finish them within
``REQUEST_HEADER_TIMEOUT_S`` before any Python runs.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import tempfile
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .api.admission import Admitted

log = logging.getLogger("dropsync")

#: Request bodies up to this size are kept in memory; larger ones are spooled to a file.
SPOOL_IN_MEMORY_BYTES = 1 << 20
#: A body must arrive at least this fast on average (after its first timeout window).
MIN_BODY_BYTES_PER_S = 1024
#: Answers larger than this are streamed rather than sent as one piece.
STREAM_ABOVE_BYTES = 1 << 20

#: A request line longer than this gets 414, a header section larger than this 431, both
#: in the JSON error shape. granian's own limits are higher (a 64 KiB URI, 100 headers,
#: ~400 KiB of headers): past them, and for bytes that are not HTTP at all, granian answers
#: the same statuses (or 400) itself, with an empty body.
MAX_URI_BYTES = 8192
MAX_HEADER_BYTES = 32768

JSON_HEADERS = [("content-type", "application/json")]
CLOSE_JSON_HEADERS = [*JSON_HEADERS, ("connection", "close")]


def error_body(code: str, message: str) -> bytes:
    """The one JSON error shape, for answers given before (or instead of) the app."""
    return json.dumps({"error": {"code": code, "message": message, "details": None}},
                      separators=(",", ":")).encode()


class ServerFile:
    """``wsgi.file_wrapper``: remembers the file so granian can send it (or the range
    werkzeug cut from it) by path. Seekable, so werkzeug seeks to a range's start."""

    def __init__(self, file: Any, block_size: int = 65536):
        self.file = file
        self.block_size = block_size

    def __iter__(self) -> ServerFile:
        return self

    def __next__(self) -> bytes:
        block = self.file.read(self.block_size)
        if not block:
            raise StopIteration
        return block

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.file.seek(offset, whence)

    def tell(self) -> int:
        return self.file.tell()

    def read(self, size: int = -1) -> bytes:
        return self.file.read(size)

    def close(self) -> None:
        self.file.close()


class FileRange:
    """A byte range of a file, answered by the server from the path (``dropsync.file_range``
    in the environ): the app reads nothing. Iterating it reads the bytes, for a caller that
    does not know it."""

    __slots__ = ("path", "start", "end")

    def __init__(self, path: str, start: int, end: int):
        self.path, self.start, self.end = path, start, end  # end: exclusive

    def __iter__(self):
        with open(self.path, "rb") as file:
            file.seek(self.start)
            yield file.read(self.end - self.start)


class StartResponse:
    __slots__ = ("status", "headers")

    def __init__(self):
        self.status = 500
        self.headers: list[tuple[str, str]] = []

    def __call__(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None):
        self.status = int(status[:3])
        self.headers = headers
        return self.write

    def write(self, data: bytes) -> None:  # pragma: no cover - Flask never calls it
        raise RuntimeError("the legacy WSGI write() callable is not supported")


class BodyTimeout(Exception):
    pass


class BodyTooLarge(Exception):
    pass


class BodyNoRoom(Exception):
    """The body does not fit the spool budget, or the disk is full."""


class SpooledBody(tempfile.SpooledTemporaryFile):
    """A request body: in memory up to ``SPOOL_IN_MEMORY_BYTES``, then in a file in the
    data folder, every byte of which is held from the hub-wide ``SpoolBudget`` (given back
    when the app is done with the body). A full disk is ``BodyNoRoom`` (507), never a 500."""

    def __init__(self, spool_dir, budget=None, prepaid: int = 0):
        super().__init__(SPOOL_IN_MEMORY_BYTES, dir=spool_dir)
        self.budget = budget
        self.held = prepaid

    def write(self, data: bytes) -> int:
        if self.budget is not None:
            on_disk = self.tell() + len(data)  # all of it goes to the file at roll-over
            if on_disk > SPOOL_IN_MEMORY_BYTES and on_disk > self.held:
                if not self.budget.take(on_disk - self.held):
                    raise BodyNoRoom
                self.held = on_disk
        try:
            return super().write(data)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise BodyNoRoom from None
            raise

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.budget is not None and self.held:
                self.budget.give_back(self.held)
                self.held = 0


class RSGIBridge:
    """An RSGI application (``__rsgi__``) serving a WSGI app."""

    def __init__(self, wsgi_app: Callable, *, threads: int, body_timeout_s: float,
                 max_body_bytes: int, spool_dir: str | Path | None = None,
                 on_close: Callable[[], None] | None = None,
                 runs_on_loop: Callable[[str, str], bool] = lambda method, path: False,
                 admission: Any = None, spool_budget: Any = None):
        self.wsgi_app = wsgi_app
        self.spool_dir = spool_dir
        #: ``api.admission.BodyAdmission``: whether to read a body at all, and how much.
        self.admission = admission
        #: ``api.admission.SpoolBudget``: bytes of bodies on disk at once, hub-wide.
        self.spool_budget = spool_budget
        self.on_close = on_close
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="dropsync-request")
        self.body_timeout_s = body_timeout_s
        self.max_body_bytes = max_body_bytes
        #: ``runs_on_loop(method, path)``: the view it reaches is marked ``@on_loop``.
        self.runs_on_loop = runs_on_loop
        self.base_environ = {
            "SCRIPT_NAME": "", "wsgi.version": (1, 0), "wsgi.errors": _Errors(),
            "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False,
            "wsgi.input_terminated": True, "wsgi.file_wrapper": ServerFile,
            "dropsync.file_range": FileRange,
            "SERVER_SOFTWARE": "granian (dropsync bridge)",
        }

    def __rsgi_init__(self, loop) -> None:
        self.loop = loop

    def close(self) -> None:
        """Let requests in the threads finish, then close the app (``on_close``)."""
        self.pool.shutdown(wait=True)
        if self.on_close is not None:
            self.on_close()

    # -- the request ---------------------------------------------------------------------
    async def __rsgi__(self, scope, proto) -> None:
        if scope.proto != "http":  # websockets: not served
            return
        environ = self.environ(scope, proto)
        if environ is None:
            return
        has_body = environ.get("CONTENT_LENGTH", "0") not in ("", "0") \
            or "HTTP_TRANSFER_ENCODING" in environ
        if not has_body and scope.method in ("GET", "HEAD") \
                and self.runs_on_loop(scope.method, environ["PATH_INFO"]):
            environ["wsgi.input"] = _EMPTY
            await self.respond(proto, *self.call_app(environ))
            return
        if has_body:
            limit = self.admit_body(proto, environ)
            if limit is None:
                return
            try:
                environ["wsgi.input"] = await self.receive_body(proto, environ, limit)
            except BodyNoRoom:
                proto.response_bytes(507, CLOSE_JSON_HEADERS, error_body(
                    "storage_full", "the hub has no room for this request body now; "
                                    "try again later"))
                return
            except BodyTimeout:
                proto.response_bytes(408, CLOSE_JSON_HEADERS, error_body(
                    "request_timeout", "the request body did not arrive in time"))
                return
            except BodyTooLarge:
                proto.response_bytes(413, CLOSE_JSON_HEADERS, error_body(
                    "payload_too_large", "the request body is larger than the hub accepts"))
                return
            if scope.method == "POST" and self.runs_on_loop("POST", environ["PATH_INFO"]):
                status, headers, result = self.call_app_buffered(environ)
                await self.respond(proto, status, headers, result)
                return
        else:
            environ["wsgi.input"] = _EMPTY
        status, headers, result = await self.loop.run_in_executor(
            self.pool, self.call_app_buffered, environ)
        await self.respond(proto, status, headers, result)

    def environ(self, scope, proto) -> dict[str, Any] | None:
        """The WSGI environ, or None after answering a request line or headers too large."""
        path = scope.path
        if len(path) + len(scope.query_string) > MAX_URI_BYTES:
            proto.response_bytes(414, CLOSE_JSON_HEADERS, error_body(
                "uri_too_long", f"the request target is longer than {MAX_URI_BYTES} bytes"))
            return None
        environ = dict(self.base_environ)
        environ["REQUEST_METHOD"] = scope.method
        # granian gives the path percent-decoded, as text; WSGI wants its bytes as latin-1
        environ["PATH_INFO"] = path if path.isascii() else path.encode().decode("latin-1")
        environ["QUERY_STRING"] = scope.query_string
        environ["SERVER_PROTOCOL"] = "HTTP/" + scope.http_version
        environ["wsgi.url_scheme"] = scope.scheme
        host, _, port = scope.server.rpartition(":")
        environ["SERVER_NAME"], environ["SERVER_PORT"] = host, port
        client, _, client_port = scope.client.rpartition(":")
        environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = client, client_port
        header_bytes = 0
        for name, value in scope.headers.items():
            header_bytes += len(name) + len(value) + 4
            if name == "content-type":
                environ["CONTENT_TYPE"] = value
            elif name == "content-length":
                environ["CONTENT_LENGTH"] = value
            else:
                key = "HTTP_" + name.upper().replace("-", "_")
                environ[key] = f"{environ[key]},{value}" if key in environ else value
        if header_bytes > MAX_HEADER_BYTES:
            proto.response_bytes(431, CLOSE_JSON_HEADERS, error_body(
                "request_header_fields_too_large",
                f"the request headers are larger than {MAX_HEADER_BYTES} bytes"))
            return None
        return environ

    def admit_body(self, proto, environ: dict[str, Any]) -> int | None:
        """How many body bytes to read at most, or None after answering instead: the
        route, the caller and the declared length are checked before any of the body
        (``dropsync.api.admission``)."""
        if self.admission is None:
            return self.max_body_bytes
        decided = self.admission.decide(environ)
        if isinstance(decided, Admitted):
            return min(decided.limit, self.max_body_bytes)
        proto.response_bytes(decided.status, CLOSE_JSON_HEADERS,
                             error_body(decided.code, decided.message))
        return None

    async def receive_body(self, proto, environ: dict[str, Any], limit: int | None = None):
        """The whole body, within the deadlines and ``limit``; a file-like object for
        ``wsgi.input``."""
        limit = self.max_body_bytes if limit is None else limit
        declared = environ.get("CONTENT_LENGTH")
        try:
            expected = int(declared) if declared else None
        except ValueError:
            expected = None
        if expected is not None and expected > limit:
            raise BodyTooLarge
        prepaid = 0
        if self.spool_budget is not None and expected is not None \
                and expected > SPOOL_IN_MEMORY_BYTES:
            if not self.spool_budget.take(expected):  # before a byte is read
                raise BodyNoRoom
            prepaid = expected
        loop = self.loop
        started = loop.time()
        received = 0
        # closed on failure here, else by call_app_buffered once the app has read it
        spool = SpooledBody(self.spool_dir, self.spool_budget, prepaid)
        chunks = proto.__aiter__()
        try:
            while True:
                budget = self.body_timeout_s + received / MIN_BODY_BYTES_PER_S \
                    - (loop.time() - started)
                wait = min(self.body_timeout_s, budget)
                if wait <= 0:
                    raise BodyTimeout
                try:
                    chunk = await asyncio.wait_for(chunks.__anext__(), wait)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    raise BodyTimeout from None
                received += len(chunk)
                if received > limit:
                    raise BodyTooLarge
                spool.write(chunk)
            if expected is not None and received < expected:
                raise BodyTimeout  # the client went away mid-body
        except BaseException:
            spool.close()
            raise
        spool.seek(0)
        environ["CONTENT_LENGTH"] = str(received)
        return spool

    # -- running the app -----------------------------------------------------------------
    def call_app(self, environ: dict[str, Any]) -> tuple[int, list, Any]:
        start = StartResponse()
        result = self.wsgi_app(environ, start)
        return start.status, start.headers, result

    def call_app_buffered(self, environ: dict[str, Any]) -> tuple[int, list, Any]:
        """In a pool thread: run the app and read a small answer while still here."""
        try:
            status, headers, result = self.call_app(environ)
            if isinstance(result, (list, FileRange)) or file_path(result) is not None:
                return status, headers, result
            length = content_length(headers)
            if length is not None and length <= STREAM_ABOVE_BYTES:
                try:
                    return status, headers, [b"".join(result)]
                finally:
                    close_result(result)
            return status, headers, result
        finally:
            input_stream = environ.get("wsgi.input")
            if input_stream is not None and input_stream is not _EMPTY:
                input_stream.close()

    async def respond(self, proto, status: int, headers: list, result: Any) -> None:
        if isinstance(result, list):
            proto.response_bytes(status, headers, result[0] if len(result) == 1
                                 else b"".join(result))
            return
        if isinstance(result, FileRange):
            proto.response_file_range(status, headers, result.path, result.start, result.end)
            return
        path = file_path(result)
        if path is not None:
            if isinstance(result, ServerFile):
                proto.response_file(status, headers, path)
            else:  # werkzeug's range of a ServerFile: start and end (exclusive) bytes
                proto.response_file_range(status, headers, path, result.start_byte,
                                          result.end_byte)
            close_result(result)
            return
        try:
            length = content_length(headers)
            if length is not None and length <= STREAM_ABOVE_BYTES:
                proto.response_bytes(status, headers, b"".join(result))
                return
            transport = proto.response_stream(status, headers)
            for block in result:
                if block:
                    await transport.send_bytes(block)
        finally:
            close_result(result)


def file_path(result: Any) -> str | None:
    """The path granian can send for a whole ``ServerFile`` or werkzeug's range of one."""
    found = result if isinstance(result, ServerFile) else getattr(result, "iterable", None)
    if not isinstance(found, ServerFile):
        return None
    if found is not result and getattr(result, "end_byte", None) is None:
        return None
    name = getattr(found.file, "name", None)
    return name if isinstance(name, str) else None


def content_length(headers: list[tuple[str, str]]) -> int | None:
    for name, value in headers:
        if name.lower() == "content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def close_result(result: Iterable) -> None:
    close = getattr(result, "close", None)
    if close is not None:
        close()


class _Empty:
    def read(self, size: int = -1) -> bytes:
        return b""

    def readline(self, size: int = -1) -> bytes:
        return b""

    def __iter__(self):
        return iter(())


_EMPTY = _Empty()


class _Errors:
    def write(self, text: str) -> None:
        log.error("%s", text.rstrip())

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        pass
