"""A relay's connection limit: extra connections refused with a 421 greeting cost only
those connections, never the run (issue: Postfix's smtpd_client_connection_count_limit)."""

from __future__ import annotations

import collections
import contextlib
import socket
import threading
from datetime import UTC, datetime

import pytest

from mailer import campaign
from mailer.config import load_config
from mailer.delivery import pacing
from mailer.subscribers import SubscriberStore
from tests.conftest import write_config

T0 = datetime(2026, 11, 30, 7, 0, tzinfo=UTC)
REPLY = "421 4.7.0 mx.example: too many connections from 127.0.0.1"


class LimitingFront:
    """A TCP front for the test SMTP server that, like Postfix, answers a connection
    beyond `limit` open ones with a 421 greeting and hangs up."""

    def __init__(self, upstream: int, limit: int) -> None:
        self.upstream, self.limit = upstream, limit
        self.lock = threading.Lock()
        self.open = self.peak = self.refused = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                admitted = self.open < self.limit
                if admitted:
                    self.open += 1
                    self.peak = max(self.peak, self.open)
                else:
                    self.refused += 1
            if not admitted:
                client.sendall(f"{REPLY}\r\n".encode())
                client.close()
                continue
            server = socket.create_connection(("127.0.0.1", self.upstream))
            done = threading.Event()
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b, done), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, done: threading.Event) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            with self.lock:  # the first of the two pumps to end counts the close
                if not done.is_set():
                    done.set()
                    self.open -= 1

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def front(smtp_server):
    f = LimitingFront(smtp_server.port, limit=2)
    yield f
    f.close()


def test_connections_beyond_the_relays_limit_are_refused_and_the_run_goes_on(
    seeded, tmp_path, smtp_server, front, monkeypatch
):
    monkeypatch.setattr(pacing, "BUSY_BACKOFF", [0.2])
    for i in range(40):
        SubscriberStore(seeded).add(f"reader{i:02d}@example.com")
    cfg = load_config(str(write_config(tmp_path, front.port, smtp={"connections": 4})))
    [summary] = campaign.send_now(seeded, cfg, T0)
    assert summary.finished and not summary.stopped, summary.stopped
    counts = collections.Counter(r.recipients[0] for r in smtp_server.received)
    assert len(counts) == 43 and set(counts.values()) == {1}
    assert front.peak == 2
    # The limit is learned from the first refusal (a connection still opening may be
    # refused too), and refused connections are not tried again for every message.
    assert 1 <= front.refused <= 6


def test_a_relay_that_refuses_every_connection_stops_the_run_with_its_reply_as_text(
    seeded, tmp_path, smtp_server, front, monkeypatch
):
    front.limit = 0
    monkeypatch.setattr(pacing, "BUSY_BACKOFF", [0.1])
    monkeypatch.setattr(pacing, "BUSY_PATIENCE", 1.0)
    cfg = load_config(str(write_config(tmp_path, front.port)))
    [summary] = campaign.send_now(seeded, cfg, T0)
    assert not summary.finished and smtp_server.received == []
    assert summary.stopped == f"the relay refused every connection: {REPLY}"
    assert summary.counts == {"queued": 3}
