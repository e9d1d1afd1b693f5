"""A total time for one HTTP request, redirects included, which httpx does not have.

httpx's timeouts are per socket operation: a server that sends a byte every few seconds, of
the body or of the headers, is never timed out. Here, inside `deadline_after(seconds)`, every
connect, TLS handshake, read and write that `DeadlineTransport` does gets at most what is left
of those seconds (its own timeout when that is less); once none is left, the next operation
raises the matching timeout (httpcore's ConnectTimeout, ReadTimeout or WriteTimeout, which
httpx turns into its own) rather than wait: never a 0 timeout, which for a socket means
non-blocking. Outside `deadline_after`, operations keep the timeouts they are given.

The deadline lives in a context variable, so it is the current thread's own: one client (and
its pool of connections) is shared by a poll's worker threads, each fetching under its own
deadline. It is checked when an operation starts, so it bounds waiting on the network, not the
work done between two operations (decoding what was read).

What escapes it, and why:
* Name resolution: getaddrinfo cannot be interrupted; the resolver's own timeouts bound it.
* A connect to a name with several addresses: the socket library tries them in turn, each
  with the bounded timeout, so each unreachable address but the last can add that much again.
* The wait for a free connection when all 100 of the pool's are busy: that happens before
  any socket operation; httpx's pool timeout bounds it (mailer.feeds.fetch.new_client sets it
  to the total timeout).
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import httpcore
import httpx

# The end of the current thread's request (time.monotonic()), for _DeadlineBackend.
_DEADLINE: ContextVar[float | None] = ContextVar("feed_fetch_deadline", default=None)


@contextmanager
def deadline_after(seconds: float) -> Iterator[float]:
    """Bounds the current thread's requests through a `DeadlineTransport` to `seconds` in all,
    from now; gives the deadline (a time.monotonic() value)."""
    deadline = time.monotonic() + seconds
    token = _DEADLINE.set(deadline)
    try:
        yield deadline
    finally:
        _DEADLINE.reset(token)


def _bounded(timeout: float | None, timed_out: type[Exception]) -> float | None:
    """`timeout`, or what is left of the current fetch's time when that is less."""
    deadline = _DEADLINE.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:  # not a 0 timeout: for a socket, that means non-blocking
        raise timed_out("the whole request's time is up")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _bounded(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _bounded(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname, bounded))

    def get_extra_info(self, info: str) -> object:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's own sockets, each operation bounded by the current fetch's deadline."""

    def __init__(self) -> None:
        self._backend = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._backend.connect_tcp(host, port, bounded, local_address, socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class DeadlineTransport(httpx.HTTPTransport):
    """httpx's transport (TLS verified, httpx's pool sizes) on a pool of deadline-bound sockets.

    httpx offers no way to give its pool a network backend, so the pool it built is replaced
    by the same one with ours (nothing has been opened yet)."""

    def __init__(self) -> None:
        tls = httpx.create_ssl_context(trust_env=False)  # loads certifi's CAs: about 50 ms, so once
        super().__init__(verify=tls, trust_env=False)
        defaults = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=5.0)
        self._pool = httpcore.ConnectionPool(
            ssl_context=tls,
            max_connections=defaults.max_connections,
            max_keepalive_connections=defaults.max_keepalive_connections,
            keepalive_expiry=defaults.keepalive_expiry,
            network_backend=_DeadlineBackend(),
        )
