"""One HTTP GET of a feed (or of an item's page), done like a good citizen.

`fetch` never raises for what the network or the server does: every outcome is a `Fetched`,
and every failure is one line in `Fetched.error`. What holds, and why:

* No request holds a worker longer than `Limits.total_timeout`, redirects included. httpx
  has no such timeout (its timeouts are per socket operation), so the client runs on
  mailer.feeds.deadline's transport: every connect, TLS handshake, read and write gets at
  most what is left of the whole request's time. That module says what escapes it, and why.
* No body holds more than `Limits.max_bytes` in memory, counted after decompression. A
  Content-Length over the cap is refused before a byte is read; otherwise reading stops at
  the first byte past it. httpx's own gzip decoder inflates a whole network read at once
  (64 KiB of a gzip bomb is 64 MiB), so the raw bytes are inflated here by `_Decoder`,
  which never produces more than the room left under the cap. We ask for gzip and deflate
  only; any other Content-Encoding is reported (httpx would pass an unknown one on as is).
* Redirects are followed by hand, so each hop is seen: a loop, a missing or non-http(s)
  Location and one hop too many are reported, and `moved_to` is set only when every hop
  was permanent (301 or 308) and the new URL answered 200 or 304. The conditional headers
  go with every hop.
* `etag` and `last_modified` come only with a body read whole, or with a 304 (which keeps
  the validators sent when the server does not repeat them). A poller that stores what it
  gets can therefore never be answered 304 for content it never had.
* `wait` is the server's wish (Cache-Control max-age minus Age on 200 and 304, Retry-After
  on 429 and 5xx), capped at `Limits.max_wait`: a year's max-age on a feed is a
  misconfiguration, not a request to stop polling it.
"""

from __future__ import annotations

import re
import socket
import ssl
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from http.cookiejar import CookieJar, DefaultCookiePolicy
from importlib.metadata import PackageNotFoundError, version
from urllib.parse import urlsplit

import httpx

from mailer.errors import InputError
from mailer.feeds.deadline import DeadlineTransport, deadline_after

ACCEPT_FEEDS = (
    "application/rss+xml, application/atom+xml, application/rdf+xml, application/xml;q=0.9, "
    "text/xml;q=0.9, */*;q=0.8"
)
REDIRECTS = frozenset({301, 302, 303, 307, 308})
PERMANENT = frozenset({301, 308})
MB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    connect_timeout: float = 10.0  # seconds
    read_timeout: float = 30.0  # seconds between bytes
    total_timeout: float = 60.0  # the whole request, redirects included
    max_bytes: int = 10 * MB  # of the decoded body: a gzip bomb counts by what it expands to
    max_redirects: int = 5
    max_wait: float = 86400.0  # seconds: the most a server's max-age or Retry-After can delay a poll


@dataclass
class Fetched:
    url: str  # the URL that finally answered (after redirects)
    status: int | None  # final HTTP status; None when nothing usable answered (timeout, refused, too big...)
    body: bytes = b""  # the decoded body of a 200; b"" otherwise
    content_type: str = ""  # Content-Type as sent, charset included
    etag: str | None = None  # from the final response (200 or 304)
    last_modified: str | None = None
    moved_to: str | None = None  # every hop was permanent: the URL to store from now on
    wait: timedelta | None = None  # how long the server asks us to wait before the next request
    error: str = ""  # "" for a 200 or 304; else one line naming the problem

    @property
    def ok(self) -> bool:
        return self.status == 200 and not self.error

    @property
    def not_modified(self) -> bool:
        return self.status == 304


def user_agent(contact: str | None = None) -> str:
    try:
        ours = version("mailer")
    except PackageNotFoundError:
        ours = "0"
    return f"mailer/{ours} (+{contact})" if contact else f"mailer/{ours}"


def new_client(limits: Limits, *, contact: str | None = None) -> httpx.Client:
    """One client per poll, shared by its worker threads (httpx.Client is thread-safe).

    `contact` (the site's address, say) goes in the User-Agent, so a feed's owner can see
    who polls them."""
    return httpx.Client(
        timeout=httpx.Timeout(
            connect=limits.connect_timeout,
            read=limits.read_timeout,
            write=limits.read_timeout,
            pool=limits.total_timeout,
        ),
        follow_redirects=False,  # followed by hand in fetch, to see each hop
        headers={
            "User-Agent": user_agent(contact),
            "Accept": ACCEPT_FEEDS,
            "Accept-Encoding": "gzip, deflate",
        },
        # Nothing we fetch needs a session, and without cookies each fetch is the same
        # whatever was fetched before it in the poll.
        cookies=CookieJar(DefaultCookiePolicy(allowed_domains=[])),
        # What a poll reaches and which certificates it trusts are the configuration's
        # business, not that of the shell that started the service (an HTTPS_PROXY set there
        # for something else would route every feed through it; SSL_CERT_FILE would change
        # what is trusted). httpx ignores proxy variables with a transport of our own anyway.
        trust_env=False,
        transport=DeadlineTransport(),
    )


def fetch(
    client: httpx.Client,
    url: str,
    *,
    etag: str | None = None,
    last_modified: str | None = None,
    limits: Limits = Limits(),
    accept: str | None = None,
) -> Fetched:
    """GET `url`, conditionally when a validator is given, following redirects by hand."""
    # Bytes, not str: httpx encodes str header values as ASCII, and a validator the server
    # sent in UTF-8 must go back as it came rather than raise.
    headers: dict[bytes, bytes] = {}
    if etag:
        headers[b"If-None-Match"] = etag.encode()
    if last_modified:
        headers[b"If-Modified-Since"] = last_modified.encode()
    if accept:
        headers[b"Accept"] = accept.encode()
    current = url
    with deadline_after(limits.total_timeout) as deadline:
        try:
            seen = {url}
            permanent = True
            for hops in range(limits.max_redirects + 1):
                with client.stream("GET", current, headers=headers) as response:
                    status = response.status_code
                    if status not in REDIRECTS:
                        got = _answer(response, limits, etag, last_modified)
                        if hops and permanent and (got.ok or got.not_modified):
                            got.moved_to = got.url
                        return got
                    location = response.headers.get("location", "").strip()
                    here = response.url
                if not location:
                    return Fetched(current, status, error="redirect without a Location")
                target = here.join(location)
                if target.scheme not in ("http", "https") or not target.host:
                    return Fetched(current, status, error=f"redirect to a non-http(s) URL: {location}")
                current = str(target)
                if current in seen:
                    return Fetched(current, status, error=f"redirect loop at {current}")
                seen.add(current)
                permanent = permanent and status in PERMANENT
            return Fetched(current, status, error=f"more than {limits.max_redirects} redirects")
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            return Fetched(current, None, error=_describe(exc, current, limits, deadline))


def _answer(response: httpx.Response, limits: Limits, etag: str | None, last_modified: str | None) -> Fetched:
    """The final (non-redirect) response: a 200's body read under the cap, or why not."""
    url, status, headers = str(response.url), response.status_code, response.headers
    content_type = headers.get("content-type", "")
    if status == 304:
        return Fetched(
            url,
            304,
            content_type=content_type,
            etag=headers.get("etag") or etag,
            last_modified=headers.get("last-modified") or last_modified,
            wait=_fresh_for(headers, limits),
        )
    if status != 200:
        wait = _retry_after(headers, limits) if status == 429 or status >= 500 else None
        return Fetched(url, status, content_type=content_type, wait=wait, error=_status_line(response))
    too_big = f"body larger than {_size(limits.max_bytes)}"
    length = headers.get("content-length", "")
    if length.isdigit() and int(length) > limits.max_bytes:
        return Fetched(url, None, content_type=content_type, error=too_big)
    decoder, problem = _Decoder.for_encoding(headers.get("content-encoding", ""))
    if decoder is None:
        return Fetched(url, None, content_type=content_type, error=problem)
    parts: list[bytes] = []
    size = 0
    try:
        for raw in response.iter_raw():
            part = decoder.decode(raw, limits.max_bytes - size + 1)
            size += len(part)
            if size > limits.max_bytes:
                return Fetched(url, None, content_type=content_type, error=too_big)
            parts.append(part)
    except zlib.error as exc:
        return Fetched(
            url, None, content_type=content_type, error=f"cannot decode the {decoder.coding} body: {exc}"
        )
    if not decoder.complete:
        return Fetched(url, None, content_type=content_type, error=f"the {decoder.coding} body is cut short")
    return Fetched(
        url,
        200,
        body=b"".join(parts),
        content_type=content_type,
        etag=headers.get("etag"),
        last_modified=headers.get("last-modified"),
        wait=_fresh_for(headers, limits),
    )


class _Decoder:
    """Undoes one Content-Encoding, never producing more than it is asked for in one call."""

    def __init__(self, coding: str) -> None:
        self.coding = coding
        wbits = zlib.MAX_WBITS | 16 if coding == "gzip" else zlib.MAX_WBITS
        self._zlib = None if coding == "identity" else zlib.decompressobj(wbits)
        self._started = False

    @classmethod
    def for_encoding(cls, header: str) -> tuple[_Decoder | None, str]:
        codings = [c.strip().lower() for c in header.split(",") if c.strip().lower() not in ("", "identity")]
        codings = ["gzip" if c == "x-gzip" else c for c in codings]
        if not codings:
            return cls("identity"), ""
        if len(codings) == 1 and codings[0] in ("gzip", "deflate"):
            return cls(codings[0]), ""
        return None, f"unsupported Content-Encoding {header.strip()!r} (we ask for gzip or deflate)"

    def decode(self, data: bytes, limit: int) -> bytes:
        """At most `limit` (> 0) bytes: fewer means all of `data` was used; `limit` means the
        caller stops (it asks for one byte more than the room it has)."""
        if self._zlib is None:
            return data
        started, self._started = self._started, True
        try:
            return self._zlib.decompress(data, limit)
        except zlib.error:
            if self.coding != "deflate" or started:
                raise
            # "deflate" is the zlib format, but many servers send raw deflate under that name
            # (httpx's decoder makes the same second attempt).
            self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
            return self._zlib.decompress(data, limit)

    @property
    def complete(self) -> bool:
        return self._zlib is None or self._zlib.eof


def _status_line(response: httpx.Response) -> str:
    try:
        reason = HTTPStatus(response.status_code).phrase
    except ValueError:  # a code of the server's own: its own words
        reason = response.reason_phrase.strip()
    return f"HTTP {response.status_code} {reason}".rstrip()


def _size(n: int) -> str:
    if n % MB == 0:
        return f"{n // MB} MB"
    if n % 1024 == 0:
        return f"{n // 1024} KB"
    return f"{n} bytes"


_MAX_AGE = re.compile(r'(?:^|,)\s*max-age\s*=\s*"?(\d+)', re.IGNORECASE)
_NO_CACHE = re.compile(r"(?:^|,)\s*no-(?:cache|store)\b", re.IGNORECASE)


def _fresh_for(headers: httpx.Headers, limits: Limits) -> timedelta | None:
    """Cache-Control max-age, less the Age a cache has already held the response."""
    control = headers.get("cache-control", "")
    found = _MAX_AGE.search(control)
    if found is None or _NO_CACHE.search(control):
        return None
    age = headers.get("age", "").strip()
    return _wait(int(found.group(1)) - (int(age) if age.isdigit() else 0), limits)


def _retry_after(headers: httpx.Headers, limits: Limits) -> timedelta | None:
    """Retry-After in seconds, or as an HTTP-date (counted from the server's own Date when
    it sent one, so a skewed clock on either side does not matter)."""
    value = headers.get("retry-after", "").strip()
    if value.isdigit():
        return _wait(int(value), limits)
    when = _http_date(value)
    if when is None:
        return None
    now = _http_date(headers.get("date", "")) or datetime.now(UTC)
    return _wait((when - now).total_seconds(), limits)


def _http_date(value: str) -> datetime | None:
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _wait(seconds: float, limits: Limits) -> timedelta | None:
    return timedelta(seconds=min(seconds, limits.max_wait)) if seconds > 0 else None


def _describe(exc: Exception, url: str, limits: Limits, deadline: float) -> str:
    """One line for an httpx error, from the most telling exception of its chain."""
    if isinstance(exc, httpx.TimeoutException):
        if time.monotonic() >= deadline - 0.01:
            return f"timed out after {limits.total_timeout:g} s in all"
        if isinstance(exc, httpx.ConnectTimeout):
            return f"timed out after {limits.connect_timeout:g} s connecting"
        if isinstance(exc, httpx.PoolTimeout):
            return "timed out waiting for a free connection"
        if isinstance(exc, httpx.WriteTimeout):
            return f"timed out after {limits.read_timeout:g} s sending the request"
        return f"timed out after {limits.read_timeout:g} s (no answer)"
    for cause in _chain(exc):
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"TLS: certificate verify failed: {cause.verify_message}"
        if isinstance(cause, ssl.SSLError):
            return f"TLS: {(cause.reason or str(cause)).replace('_', ' ').lower()}"
        if isinstance(cause, socket.gaierror):
            return f"cannot resolve host {urlsplit(url).hostname}"
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, ConnectionResetError):
            return "connection reset by the server"
    lines = str(exc).strip().splitlines()
    detail = lines[0] if lines else type(exc).__name__
    if isinstance(exc, httpx.InvalidURL):
        return f"invalid URL {url}: {detail}"
    if isinstance(exc, httpx.RemoteProtocolError):
        return f"HTTP protocol error: {detail}"
    if isinstance(exc, httpx.NetworkError):
        return f"network error: {detail}"
    return f"{type(exc).__name__}: {detail}"


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and what caused it: httpx's error wraps httpcore's, which wraps the OSError.
    httpcore's pool re-raises `from None`, so the link is __context__, not __cause__."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def check_feed_url(url: str) -> str:
    """The URL `mailer feeds add` stores: an absolute http(s) URL with a host, or InputError."""
    text = url.strip()
    if not text:
        raise InputError("empty feed URL: give an http:// or https:// URL")
    if any(c.isspace() or not c.isprintable() for c in text):
        raise InputError(f"feed URL {text!r}: spaces and control characters don't belong in a URL")
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme == "file" or text.startswith(("/", "~", ".")) or re.match(r"[A-Za-z]:[\\/]", text):
        raise InputError(f"feed URL {text} is a local file; only http(s) URLs can be polled")
    # "example.com/feed", or "localhost:8080/feed" (which urlsplit reads as scheme "localhost")
    if not scheme or "." in scheme or (not parts.netloc and parts.path[:1].isdigit()):
        raise InputError(f"feed URL {text} is not absolute: write it with http:// or https://")
    if scheme not in ("http", "https"):
        raise InputError(f"feed URL {text}: only http:// and https:// URLs can be polled, not {scheme}:")
    if "@" in parts.netloc:
        shown = text.replace(parts.netloc, "***@" + parts.netloc.rpartition("@")[2], 1)
        raise InputError(
            f"feed URL {shown}: credentials don't belong in the URL (they would be stored and sent in clear)"
        )
    try:
        parts.port  # noqa: B018 (raises for a port out of range)
        normalised = httpx.URL(text)
    except (ValueError, httpx.InvalidURL) as exc:
        raise InputError(f"feed URL {text}: {exc}") from None
    if not parts.hostname or not normalised.host:
        raise InputError(f"feed URL {text} has no host")
    return str(normalised)
