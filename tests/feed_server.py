"""A real HTTP server on loopback that plays feed publishers, for the feed tests and benchmark.

Each path answers what its `Route` says: a status, a body, headers, optionally gzipped,
delayed, chunked, answered 304 to a matching validator, or an endless body trickled until
the client hangs up. Unknown paths answer 404. Every request is recorded.

    with FeedServer() as server:
        url = server.route("/feed.xml", body=RSS, etag='"v1"', gzip=True)
        server.redirect("/old", "/feed.xml")  # a 301
        server.route("/slow.xml", body=RSS, delay=5.0)
        ...
        assert server.requests("/feed.xml")[0].headers["if-none-match"] == '"v1"'

It speaks HTTP/1.1 with keep-alive (so clients reuse connections as they would in the
wild), serves each connection on its own thread, has a listen backlog for hundreds of
clients connecting at once, and stays quiet when a client hangs up mid-answer (a timeout
or a size cap being the very thing under test). `FeedServer(tls=context)` serves HTTPS.
"""

from __future__ import annotations

import dataclasses
import gzip as gzip_module
import socket
import ssl
import sys
import threading
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

CHUNK = 64 * 1024


@dataclass
class Route:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)  # sent as given; they win over Date and Server
    gzip: bool = False  # gzip the body and send Content-Encoding: gzip
    delay: float = 0.0  # seconds before answering (a slow server)
    etag: str | None = None  # sends ETag, and answers 304 (no body) to a matching If-None-Match
    last_modified: str | None = None  # likewise with If-Modified-Since (exact string match)
    stream_forever: bool = False  # headers, then the body over and over (chunked) until the client hangs up
    trickle: float = 0.0  # seconds between chunks of a chunked or endless body (a byte each when > 0)
    chunked: bool = False  # Transfer-Encoding: chunked, no Content-Length
    # Answer only once this is set (at most a minute): a server as slow as the test wants,
    # with no timing in the test.
    wait_for: threading.Event | None = None


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # as sent, query included
    headers: dict[str, str]  # lower-case names


class FeedServer:
    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self._routes: dict[str, Route] = {}
        self._requests: list[Request] = []
        self._lock = threading.Lock()
        self._tls = tls
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.feeds = self
        self._thread: threading.Thread | None = None
        port = self._httpd.server_address[1]
        self.base = f"{'https' if tls else 'http'}://127.0.0.1:{port}"

    def start(self) -> FeedServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.02,), name="feed-server", daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> FeedServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def url(self, path: str) -> str:
        return self.base + path

    def route(self, path: str, route: Route | None = None, **kw: Any) -> str:
        """Set (or replace) what `path` answers: `route`, with `kw` changing its fields, or a
        Route(**kw). Returns the full URL."""
        answer = dataclasses.replace(route, **kw) if route is not None else Route(**kw)
        with self._lock:
            self._routes[path] = answer
        return self.url(path)

    def redirect(self, path: str, to: str, status: int = 301) -> str:
        """`path` redirects to `to` (a path or any URL, sent as is)."""
        return self.route(path, status=status, headers={"Location": to})

    def requests(self, path: str | None = None) -> list[Request]:
        """Every request seen so far (of `path` only, query or not, when given), oldest first."""
        with self._lock:
            seen = list(self._requests)
        if path is None:
            return seen
        return [r for r in seen if r.path == path or urlsplit(r.path).path == path]

    def _answer_for(self, method: str, path: str, headers: dict[str, str]) -> Route | None:
        with self._lock:
            self._requests.append(Request(method, path, headers))
            return self._routes.get(path) or self._routes.get(urlsplit(path).path)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # a benchmark connects hundreds of clients at once
    feeds: FeedServer

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake happens here, on the connection's own thread, not in accept().
        if self.feeds._tls is not None:
            try:
                request = self.feeds._tls.wrap_socket(request, server_side=True)
            except (OSError, ssl.SSLError):
                return  # the client refused our certificate: a test about exactly that
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError, ssl.SSLError)):
            return  # a client hung up: what timeouts and size caps do
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _answer(self, body: bool) -> None:
        headers = {name.lower(): value for name, value in self.headers.items()}
        route = self.server.feeds._answer_for(self.command, self.path, headers)
        if route is None:
            route = Route(status=404, body=b"not found\n", headers={"Content-Type": "text/plain"})
        if route.delay:
            time.sleep(route.delay)
        if route.wait_for is not None:
            route.wait_for.wait(60)
        try:
            self._send(route, headers, body)
        except (ConnectionError, TimeoutError, ssl.SSLError):
            self.close_connection = True  # the client hung up

    def _send(self, route: Route, request: dict[str, str], with_body: bool) -> None:
        status = route.status
        if _fresh(route, request):
            status = 304
        payload = b"" if status in (204, 304) or status < 200 else route.body
        if route.gzip and payload:
            payload = gzip_module.compress(payload)
        chunked = route.chunked or route.stream_forever
        self.send_response_only(status)
        headers = {"Date": formatdate(usegmt=True), "Server": "feed-server"}
        if route.etag is not None:
            headers["ETag"] = route.etag
        if route.last_modified is not None:
            headers["Last-Modified"] = route.last_modified
        if route.gzip:
            headers["Content-Encoding"] = "gzip"
        if chunked:
            headers["Transfer-Encoding"] = "chunked"
        elif status not in (204, 304) and status >= 200:
            headers["Content-Length"] = str(len(payload))
        headers.update(route.headers)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if not with_body or status in (204, 304):
            return
        if not chunked:
            self.wfile.write(payload)
            return
        payload = payload or (b" " if route.stream_forever else b"")
        step = 1 if route.trickle > 0 else CHUNK
        while True:
            for start in range(0, len(payload), step):
                self._chunk(payload[start : start + step])
                if route.trickle:
                    time.sleep(route.trickle)
            if not route.stream_forever or not payload:
                break
        self._chunk(b"")

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()


def _fresh(route: Route, request: dict[str, str]) -> bool:
    """The client's copy is current: If-None-Match first (it wins when both are sent)."""
    if route.status != 200:
        return False
    if route.etag is not None and "if-none-match" in request:
        tags = [tag.strip() for tag in request["if-none-match"].split(",")]
        return route.etag in tags or "*" in tags
    if route.last_modified is not None and "if-modified-since" in request:
        return request["if-modified-since"] == route.last_modified
    return False


def free_port() -> int:
    """A loopback port nothing listens on (for "connection refused")."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
