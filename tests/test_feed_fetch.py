"""mailer.feeds.fetch against a real server on loopback (tests/feed_server.py), through the
very client the poller uses. Small Limits keep the timeout tests to a fraction of a second."""

from __future__ import annotations

import gzip
import socket
import ssl
import threading
import time
import tracemalloc
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from email.utils import formatdate
from importlib.metadata import version

import httpx
import pytest
import trustme

from mailer.errors import InputError
from mailer.feeds.fetch import Fetched, Limits, check_feed_url, fetch, new_client
from tests.feed_server import FeedServer, free_port

RSS = b'<?xml version="1.0"?><rss version="2.0"><channel><title>T</title></channel></rss>'
LIMITS = Limits(connect_timeout=1.0, read_timeout=0.5, total_timeout=1.0, max_bytes=1024 * 1024)
HTTP_DATE = "Wed, 21 Oct 2015 07:28:00 GMT"


@pytest.fixture
def server() -> Iterator[FeedServer]:
    with FeedServer() as running:
        yield running


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with new_client(LIMITS) as shared:
        yield shared


def get(client: httpx.Client, url: str, etag: str | None = None, last_modified: str | None = None) -> Fetched:
    return fetch(client, url, etag=etag, last_modified=last_modified, limits=LIMITS)


def timed(client: httpx.Client, url: str) -> tuple[Fetched, float]:
    start = time.monotonic()
    got = get(client, url)
    return got, time.monotonic() - start


# --- answers -------------------------------------------------------------------------------


def test_a_200_gives_the_body_its_content_type_and_validators(
    server: FeedServer, client: httpx.Client
) -> None:
    url = server.route(
        "/feed.xml",
        body=RSS,
        etag='"v1"',
        last_modified=HTTP_DATE,
        headers={"Content-Type": "application/rss+xml; charset=utf-8"},
    )
    got = get(client, url)
    assert got == Fetched(
        url,
        200,
        body=RSS,
        content_type="application/rss+xml; charset=utf-8",
        etag='"v1"',
        last_modified=HTTP_DATE,
    )
    assert got.ok and not got.not_modified


def test_a_conditional_get_sends_both_validators_and_a_304_has_no_body(
    server: FeedServer, client: httpx.Client
) -> None:
    url = server.route("/feed.xml", body=RSS, etag='"v1"', last_modified=HTTP_DATE)
    got = get(client, url, etag='"v1"', last_modified=HTTP_DATE)
    assert got.not_modified and not got.ok and got.error == ""
    assert got.body == b"" and got.etag == '"v1"' and got.last_modified == HTTP_DATE
    sent = server.requests("/feed.xml")[0].headers
    assert sent["if-none-match"] == '"v1"' and sent["if-modified-since"] == HTTP_DATE


def test_a_304_that_repeats_no_validator_keeps_the_ones_sent(
    server: FeedServer, client: httpx.Client
) -> None:
    url = server.route("/feed.xml", status=304)
    got = get(client, url, etag='"v1"', last_modified=HTTP_DATE)
    assert got.not_modified and (got.etag, got.last_modified) == ('"v1"', HTTP_DATE)


def test_a_changed_feed_answers_200_with_the_new_validator(server: FeedServer, client: httpx.Client) -> None:
    url = server.route("/feed.xml", body=RSS, etag='"v2"')
    got = get(client, url, etag='"v1"')
    assert got.ok and got.body == RSS and got.etag == '"v2"'


def test_a_gzipped_body_is_decoded(server: FeedServer, client: httpx.Client) -> None:
    got = get(client, server.route("/feed.xml", body=RSS * 100, gzip=True))
    assert got.ok and got.body == RSS * 100
    assert "gzip" in server.requests("/feed.xml")[0].headers["accept-encoding"]


@pytest.mark.parametrize("wbits", [zlib.MAX_WBITS, -zlib.MAX_WBITS], ids=["zlib", "raw"])
def test_a_deflated_body_is_decoded_in_either_deflate_format(
    server: FeedServer, client: httpx.Client, wbits: int
) -> None:
    packer = zlib.compressobj(wbits=wbits)
    body = packer.compress(RSS) + packer.flush()
    got = get(client, server.route("/feed.xml", body=body, headers={"Content-Encoding": "deflate"}))
    assert got.ok and got.body == RSS


def test_a_content_encoding_we_did_not_ask_for_is_reported(server: FeedServer, client: httpx.Client) -> None:
    got = get(client, server.route("/feed.xml", body=b"\x1b\x00", headers={"Content-Encoding": "br"}))
    assert (
        got.status is None and got.error == "unsupported Content-Encoding 'br' (we ask for gzip or deflate)"
    )


def test_a_corrupt_or_cut_gzip_body_is_an_error(server: FeedServer, client: httpx.Client) -> None:
    packed = gzip.compress(RSS * 100)
    corrupt = get(
        client, server.route("/bad", body=packed[:10] + b"x" * 50, headers={"Content-Encoding": "gzip"})
    )
    assert corrupt.status is None and corrupt.error.startswith("cannot decode the gzip body: ")
    cut = get(client, server.route("/cut", body=packed[:-20], headers={"Content-Encoding": "gzip"}))
    assert (cut.status, cut.error, cut.etag) == (None, "the gzip body is cut short", None)


def test_the_request_names_mailer_and_its_version_and_asks_for_feeds(
    server: FeedServer, client: httpx.Client
) -> None:
    get(client, server.route("/feed.xml", body=RSS))
    headers = server.requests("/feed.xml")[0].headers
    assert headers["user-agent"] == f"mailer/{version('mailer')}"
    assert headers["accept"].startswith("application/rss+xml, application/atom+xml")
    assert "cookie" not in headers


def test_the_user_agent_carries_a_contact_and_accept_can_be_replaced(server: FeedServer) -> None:
    url = server.route("/page.html", body=b"<p>hi</p>")
    with new_client(LIMITS, contact="https://news.example.org/") as client:
        assert fetch(client, url, accept="text/html").ok
    headers = server.requests("/page.html")[0].headers
    assert headers["user-agent"] == f"mailer/{version('mailer')} (+https://news.example.org/)"
    assert headers["accept"] == "text/html"


def test_one_client_serves_many_threads_at_once(server: FeedServer, client: httpx.Client) -> None:
    urls = [server.route(f"/feed/{n}.xml", body=RSS + str(n).encode(), delay=0.05) for n in range(40)]
    with ThreadPoolExecutor(max_workers=20) as pool:
        bodies = list(pool.map(lambda url: get(client, url).body, urls))
    assert bodies == [RSS + str(n).encode() for n in range(40)]


# --- redirects -----------------------------------------------------------------------------


@pytest.mark.parametrize("hops", [[301], [308], [301, 308, 301]])
def test_permanent_redirects_all_the_way_set_moved_to(
    server: FeedServer, client: httpx.Client, hops: list[int]
) -> None:
    final = server.route("/new.xml", body=RSS)
    for n, status in enumerate(hops):
        server.redirect(f"/hop{n}", f"/hop{n + 1}" if n + 1 < len(hops) else "/new.xml", status)
    got = get(client, server.url("/hop0"))
    assert got.ok and got.url == final and got.moved_to == final and got.body == RSS


@pytest.mark.parametrize("hops", [[302], [307], [303], [301, 302], [302, 301]])
def test_a_temporary_hop_anywhere_leaves_moved_to_unset(
    server: FeedServer, client: httpx.Client, hops: list[int]
) -> None:
    final = server.route("/new.xml", body=RSS)
    for n, status in enumerate(hops):
        server.redirect(f"/hop{n}", f"/hop{n + 1}" if n + 1 < len(hops) else "/new.xml", status)
    got = get(client, server.url("/hop0"))
    assert got.ok and got.url == final and got.moved_to is None


def test_a_permanent_redirect_to_an_error_does_not_move_the_feed(
    server: FeedServer, client: httpx.Client
) -> None:
    server.redirect("/old", "/gone")
    got = get(client, server.url("/old"))
    assert (got.status, got.moved_to, got.error) == (404, None, "HTTP 404 Not Found")


def test_a_permanent_redirect_answered_304_moves_the_feed(server: FeedServer, client: httpx.Client) -> None:
    final = server.route("/new.xml", body=RSS, etag='"v1"')
    server.redirect("/old", final)
    got = get(client, server.url("/old"), etag='"v1"')
    assert got.not_modified and got.moved_to == final


def test_a_relative_location_is_resolved_and_validators_go_with_every_hop(
    server: FeedServer, client: httpx.Client
) -> None:
    server.route("/a/feed.xml", body=RSS)
    server.redirect("/a/b/old", "../feed.xml", 302)
    got = get(client, server.url("/a/b/old"), etag='"v1"', last_modified=HTTP_DATE)
    assert got.ok and got.url == server.url("/a/feed.xml")
    for request in server.requests():
        assert request.headers["if-none-match"] == '"v1"'
        assert request.headers["if-modified-since"] == HTTP_DATE


def test_a_redirect_loop_is_one_line(server: FeedServer, client: httpx.Client) -> None:
    server.redirect("/a", "/b")
    server.redirect("/b", "/a")
    got = get(client, server.url("/a"))
    assert (got.status, got.error, got.moved_to) == (301, f"redirect loop at {server.url('/a')}", None)


def test_more_redirects_than_the_limit_is_one_line(server: FeedServer, client: httpx.Client) -> None:
    for n in range(7):
        server.redirect(f"/{n}", f"/{n + 1}", 302)
    server.route("/7", body=RSS)
    got = get(client, server.url("/0"))
    assert got.error == "more than 5 redirects" and not got.ok
    assert len(server.requests()) == 6  # the first request and five hops: the sixth is not taken
    assert get(client, server.url("/2")).ok  # five hops exactly are fine


def test_a_redirect_without_a_location_is_one_line(server: FeedServer, client: httpx.Client) -> None:
    got = get(client, server.route("/old", status=302))
    assert (got.status, got.error) == (302, "redirect without a Location")


def test_a_redirect_out_of_http_is_refused(server: FeedServer, client: httpx.Client) -> None:
    got = get(client, server.redirect("/old", "file:///etc/passwd"))
    assert got.error == "redirect to a non-http(s) URL: file:///etc/passwd" and got.body == b""


# --- errors and waits ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error"),
    [(404, "HTTP 404 Not Found"), (410, "HTTP 410 Gone"), (500, "HTTP 500 Internal Server Error")],
)
def test_an_http_error_gives_its_status_and_one_line(
    server: FeedServer, client: httpx.Client, status: int, error: str
) -> None:
    got = get(client, server.route("/feed.xml", status=status, body=b"oops", etag='"v1"'))
    assert (got.status, got.error, got.body, got.etag, got.wait) == (status, error, b"", None, None)
    assert not got.ok


def test_an_unknown_path_answers_404(server: FeedServer, client: httpx.Client) -> None:
    assert get(client, server.url("/nothing")).error == "HTTP 404 Not Found"


@pytest.mark.parametrize("status", [429, 503, 502])
def test_retry_after_in_seconds_gives_wait(server: FeedServer, client: httpx.Client, status: int) -> None:
    got = get(client, server.route("/feed.xml", status=status, headers={"Retry-After": "120"}))
    assert got.status == status and got.wait == timedelta(seconds=120)


def test_retry_after_as_an_http_date_counts_from_the_servers_date(
    server: FeedServer, client: httpx.Client
) -> None:
    now = time.time()
    # The server's clock is an hour behind ours: the wait is still the two minutes it meant.
    headers = {
        "Retry-After": formatdate(now - 3600 + 120, usegmt=True),
        "Date": formatdate(now - 3600, usegmt=True),
    }
    got = get(client, server.route("/feed.xml", status=503, headers=headers))
    assert got.error == "HTTP 503 Service Unavailable"
    assert got.wait is not None and 119 <= got.wait.total_seconds() <= 121


def test_retry_after_in_the_past_or_unreadable_gives_no_wait(
    server: FeedServer, client: httpx.Client
) -> None:
    past = get(client, server.route("/past", status=429, headers={"Retry-After": formatdate(0, usegmt=True)}))
    junk = get(client, server.route("/junk", status=429, headers={"Retry-After": "soon"}))
    assert (past.wait, junk.wait) == (None, None)


@pytest.mark.parametrize("status", [200, 304])
def test_cache_control_max_age_gives_wait(server: FeedServer, client: httpx.Client, status: int) -> None:
    url = server.route("/feed.xml", body=RSS, etag='"v1"', headers={"Cache-Control": "public, max-age=1800"})
    got = get(client, url, etag='"v1"' if status == 304 else None)
    assert got.status == status and got.wait == timedelta(minutes=30)


@pytest.mark.parametrize(
    ("cache_control", "age", "wait"),
    [
        ("max-age=0", None, None),
        ("no-cache, max-age=600", None, None),
        ("s-maxage=600", None, None),
        ('max-age="600"', "100", timedelta(seconds=500)),  # a cache already held it 100 s
        ("max-age=31536000", None, timedelta(days=1)),  # a year is capped at Limits.max_wait
    ],
)
def test_cache_control_is_read_with_care(
    server: FeedServer, client: httpx.Client, cache_control: str, age: str | None, wait: timedelta | None
) -> None:
    headers = {"Cache-Control": cache_control} | ({"Age": age} if age else {})
    assert get(client, server.route("/feed.xml", body=RSS, headers=headers)).wait == wait


# --- time and size -------------------------------------------------------------------------


def test_a_server_slower_than_the_read_timeout_times_out_quickly(
    server: FeedServer, client: httpx.Client
) -> None:
    got, took = timed(client, server.route("/feed.xml", body=RSS, delay=3.0))
    assert (got.status, got.error) == (None, "timed out after 0.5 s (no answer)")
    assert took < 1.0


def test_an_endless_trickling_body_hits_the_total_timeout(server: FeedServer, client: httpx.Client) -> None:
    got, took = timed(client, server.route("/feed.xml", body=RSS, stream_forever=True, trickle=0.05))
    assert (got.status, got.error, got.body, got.etag) == (None, "timed out after 1 s in all", b"", None)
    assert 0.9 < took < 1.5


def test_headers_trickled_a_byte_at_a_time_hit_the_total_timeout(client: httpx.Client) -> None:
    # httpx's own timeouts are per read: only the deadline stops a server that never finishes its headers.
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def trickle() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            connection.sendall(b"HTTP/1.1 200 OK\r\n")
            while not stop.wait(0.05):
                try:
                    connection.sendall(b"X")
                except OSError:
                    return

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        got, took = timed(client, f"http://127.0.0.1:{listener.getsockname()[1]}/feed.xml")
    finally:
        stop.set()
        thread.join()
        listener.close()
    assert (got.status, got.error) == (None, "timed out after 1 s in all")
    assert took < 1.5


def test_a_content_length_over_the_cap_is_refused_before_reading(
    server: FeedServer, client: httpx.Client
) -> None:
    # It claims a gigabyte and sends 4 bytes: reading any of it would wait for the read timeout.
    url = server.route("/feed.xml", body=b"<rss", headers={"Content-Length": str(10**9)})
    got, took = timed(client, url)
    assert (got.status, got.error, got.body) == (None, "body larger than 1 MB", b"")
    assert took < 0.4


def test_a_chunked_body_over_the_cap_is_refused(server: FeedServer, client: httpx.Client) -> None:
    got = get(client, server.route("/feed.xml", body=b"x" * (LIMITS.max_bytes + 1), chunked=True))
    assert (got.status, got.error) == (None, "body larger than 1 MB")
    exact = get(client, server.route("/exact.xml", body=b"x" * LIMITS.max_bytes, chunked=True))
    assert exact.ok and len(exact.body) == LIMITS.max_bytes


def test_an_endless_fast_body_is_cut_at_the_cap(server: FeedServer, client: httpx.Client) -> None:
    got, took = timed(client, server.route("/feed.xml", body=b"x" * 4096, stream_forever=True))
    assert (got.status, got.error) == (None, "body larger than 1 MB")
    assert took < 1.0


def test_a_gzip_bomb_is_refused_holding_no_more_than_the_cap(
    server: FeedServer, client: httpx.Client
) -> None:
    packer = zlib.compressobj(9, wbits=zlib.MAX_WBITS | 16)
    zeros = bytes(1024 * 1024)
    bomb = b"".join(packer.compress(zeros) for _ in range(100)) + packer.flush()  # 100 MB in 100 KB
    url = server.route("/feed.xml", body=bomb, headers={"Content-Encoding": "gzip"})
    tracemalloc.start()
    try:
        got = get(client, url)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (got.status, got.error) == (None, "body larger than 1 MB")
    # httpx's own decoder would inflate a whole 64 KiB read of it at once: about 64 MB.
    assert peak < 8 * 1024 * 1024


# --- no answer -----------------------------------------------------------------------------


def test_a_closed_port_is_connection_refused(client: httpx.Client) -> None:
    url = f"http://127.0.0.1:{free_port()}/feed.xml"
    assert get(client, url) == Fetched(url, None, error="connection refused")


def test_an_unresolvable_host_is_named(client: httpx.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_such_host(*args: object, **kw: object) -> list[object]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)
    got = get(client, "http://feeds.example.invalid/rss")
    assert (got.status, got.error) == (None, "cannot resolve host feeds.example.invalid")


def test_an_untrusted_certificate_is_a_tls_error(client: httpx.Client) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("127.0.0.1").configure_cert(context)
    with FeedServer(tls=context) as server:
        got = get(client, server.route("/feed.xml", body=RSS))
    assert got.status is None
    assert got.error.startswith("TLS: certificate verify failed: "), got.error


def test_plain_http_to_a_tls_port_is_a_one_line_error(client: httpx.Client) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("127.0.0.1").configure_cert(context)
    with FeedServer(tls=context) as server:
        got = get(client, server.route("/feed.xml", body=RSS).replace("https:", "http:"))
    assert got.status is None and got.error and "\n" not in got.error


# --- check_feed_url ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["http://example.com", "https://example.com/feed.xml", "https://example.com:8443/rss?format=atom"],
)
def test_check_feed_url_keeps_a_plain_http_url_as_is(url: str) -> None:
    assert check_feed_url(url) == url
    assert check_feed_url(f"  {url}\n") == url


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        (
            "file:///etc/passwd",
            "feed URL file:///etc/passwd is a local file; only http(s) URLs can be polled",
        ),
        ("/etc/passwd", "feed URL /etc/passwd is a local file; only http(s) URLs can be polled"),
        ("~/feed.xml", "feed URL ~/feed.xml is a local file; only http(s) URLs can be polled"),
        (
            "ftp://example.com/feed",
            "feed URL ftp://example.com/feed: only http:// and https:// URLs can be polled, not ftp:",
        ),
        (
            "javascript:alert(1)",
            "feed URL javascript:alert(1): only http:// and https:// URLs can be polled, not javascript:",
        ),
        (
            "data:text/xml,<rss/>",
            "feed URL data:text/xml,<rss/>: only http:// and https:// URLs can be polled, not data:",
        ),
        ("example.com/feed", "feed URL example.com/feed is not absolute: write it with http:// or https://"),
        ("https://", "feed URL https:// has no host"),
        ("", "empty feed URL: give an http:// or https:// URL"),
        (
            "http://exa mple.com/",
            "feed URL 'http://exa mple.com/': spaces and control characters don't belong in a URL",
        ),
        (
            "http://example.com/\x00",
            "feed URL 'http://example.com/\\x00': spaces and control characters don't belong in a URL",
        ),
        ("http://host:99999/", "feed URL http://host:99999/: Port out of range 0-65535"),
    ],
)
def test_check_feed_url_refuses_with_one_line(url: str, problem: str) -> None:
    with pytest.raises(InputError) as refused:
        check_feed_url(url)
    assert str(refused.value) == problem


def test_check_feed_url_refuses_credentials_without_repeating_them() -> None:
    with pytest.raises(InputError) as refused:
        check_feed_url("https://ada:s3cret@example.com/feed")
    message = str(refused.value)
    assert (
        "credentials don't belong in the URL" in message and "s3cret" not in message and "ada" not in message
    )
    assert message.startswith("feed URL https://***@example.com/feed")
