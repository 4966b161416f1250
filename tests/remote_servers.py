"""Servers for the remote-checkpoint tests, on 127.0.0.1, each counting what it serves.

- :class:`RangeHTTPServer`: a static file server with byte ranges (``Range:
  bytes=a-b`` answered ``206 Partial Content``), which Python's ``http.server``
  does not have.
- :class:`S3Server`: moto's S3-compatible server (the WSGI app of ``moto_server``)
  behind a counting middleware, in a thread.

Both record every request as a :class:`Served` (method, path, range asked for,
body bytes sent) in ``served``; ``bytes_sent()`` sums the bodies.
"""

from __future__ import annotations

import http.server
import os
import re
import shutil
import threading
from dataclasses import dataclass
from typing import Any

__all__ = ["Served", "RangeHTTPServer", "S3Server", "S3_CREDENTIALS"]

#: Dummy credentials moto accepts (any are accepted; these are the conventional ones).
S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class Served:
    method: str
    path: str
    range: str | None
    nbytes: int


class _Counter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.served: list[Served] = []

    def record(self, item: Served) -> None:
        with self._lock:
            self.served.append(item)

    def add_bytes(self, item: Served, n: int) -> None:
        with self._lock:
            item.nbytes += n

    def reset(self) -> None:
        with self._lock:
            self.served.clear()

    def bytes_sent(self, method: str | None = None) -> int:
        with self._lock:
            return sum(s.nbytes for s in self.served if method is None or s.method == method)

    def requests(self, method: str | None = None) -> list[Served]:
        with self._lock:
            return [Served(s.method, s.path, s.range, s.nbytes) for s in self.served
                    if method is None or s.method == method]


_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    """GET and HEAD of the files under the server's folder, with single byte ranges."""

    protocol_version = "HTTP/1.1"
    server: "_ThreadingServer"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _file(self) -> str | None:
        relative = self.path.split("?", 1)[0].lstrip("/")
        path = os.path.realpath(os.path.join(self.server.folder, relative))
        if not path.startswith(os.path.realpath(self.server.folder) + os.sep) or not os.path.isfile(path):
            return None
        return path

    def _not_found(self) -> None:
        body = b"not found"
        self.send_response(404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(body)
        self.server.counter.record(Served(self.command, self.path, self.headers.get("Range"), 0))

    def do_HEAD(self) -> None:
        path = self._file()
        if path is None:
            return self._not_found()
        self.send_response(200)
        self.send_header("Content-Length", str(os.path.getsize(path)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        self.server.counter.record(Served("HEAD", self.path, None, 0))

    def do_GET(self) -> None:
        path = self._file()
        if path is None:
            return self._not_found()
        size = os.path.getsize(path)
        asked = self.headers.get("Range")
        start, end = 0, size  # end exclusive
        match = _RANGE.match(asked.strip()) if asked else None
        if asked and not match:
            self.send_response(416)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if match:
            first, last = match.groups()
            if first:
                start = int(first)
                end = min(size, int(last) + 1) if last else size
            else:  # "bytes=-n": the last n bytes
                start = max(0, size - int(last))
            if start >= size or start >= end:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(end - start))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        # Counted before it is sent: a client that has every byte finds them counted.
        self.server.counter.record(Served("GET", self.path, asked, end - start))
        sent = 0
        with open(path, "rb") as f:
            f.seek(start)
            while sent < end - start:
                chunk = f.read(min(1 << 20, end - start - sent))
                if not chunk:
                    break
                self.wfile.write(chunk)
                sent += len(chunk)


class _ThreadingServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, folder: str) -> None:
        super().__init__(("127.0.0.1", 0), _RangeHandler)
        self.folder = folder
        self.counter = _Counter()


class RangeHTTPServer:
    """Serves the files of ``folder`` at ``url``; ``start()``, then ``stop()``."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self._server = _ThreadingServer(folder)
        self._thread = threading.Thread(target=self._server.serve_forever, name="range-http", daemon=True)
        host, port = self._server.server_address[:2]
        self.url = f"http://{host}:{port}"
        self.counter = self._server.counter

    def start(self) -> "RangeHTTPServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


class _CountingApp:
    """WSGI middleware: records each request and the body bytes of its response."""

    def __init__(self, app: Any, counter: _Counter) -> None:
        self.app = app
        self.counter = counter

    def __call__(self, environ: dict, start_response: Any) -> Any:
        method = environ["REQUEST_METHOD"]
        path = environ.get("PATH_INFO", "")
        asked = environ.get("HTTP_RANGE")
        body = self.app(environ, start_response)
        served = Served(method, path, asked, 0)
        self.counter.record(served)
        try:
            for chunk in body:
                # Counted before it is sent: a client that has every byte finds them counted.
                self.counter.add_bytes(served, len(chunk))
                yield chunk
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()


class S3Server:
    """moto's S3 server on 127.0.0.1 (a free port), in a thread; ``url`` is its endpoint."""

    def __init__(self) -> None:
        from moto.moto_server.werkzeug_app import (  # noqa: PLC0415 - only the S3 tests need moto
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server  # noqa: PLC0415

        class QuietHandler(MotoRequestHandler):
            def log_request(self, *args: Any) -> None:
                pass

        self.counter = _Counter()
        app = _CountingApp(DomainDispatcherApplication(create_backend_app), self.counter)
        self._server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=QuietHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="moto-s3", daemon=True)
        host, port = self._server.server_address[:2]
        self.url = f"http://{host}:{port}"

    def storage_options(self) -> dict:
        """What nbckpt needs to reach this server through s3fs."""
        return {"client_kwargs": {"endpoint_url": self.url}}

    def start(self) -> "S3Server":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


def copy_into(folder: str, source: str, name: str) -> str:
    """Copy ``source`` to ``folder/name`` (what the HTTP server serves); the new path."""
    target = os.path.join(folder, name)
    shutil.copyfile(source, target)
    return target
