"""Pacing shared by every connection of one run: the relay's rate limits and its
connection limit.

* `RateLimiter`: smtp.max_per_second is paced evenly (one message every 1/limit s, 2% to
  spare), because a burst-then-wait window lets completion jitter put more than the limit
  into some one-second window as the relay sees it.
* `ConnectionSlots`: a relay may refuse connections beyond its own limit with a 4xx
  greeting ("421 4.7.0 too many connections"). The run goes on with the connections it
  has, learns the relay's limit (how many were open or opening when it refused) and keeps
  to it for the rest of the run; a refused connection is tried again with back-off only
  when fewer than that limit are open. Only a relay that refuses every connection stops
  the run (as temporary: the service retries it later).
"""

from __future__ import annotations

import threading
import time

# Seconds between attempts of a connection the relay refused.
BUSY_BACKOFF = [2.0, 5.0, 10.0, 20.0, 30.0]
# How long a run keeps trying when the relay refuses every connection.
BUSY_PATIENCE = 60.0


class RateLimiter:
    """smtp.max_per_second, paced evenly across this run's connections, at this run's
    share of it when several runs deliver at once. (smtp.max_per_hour is enforced where
    rows are claimed, in the database, for every run together: see engine._claim.)"""

    def __init__(self, per_second: int) -> None:
        self.per_second = per_second
        self.interval = 1.02 / per_second if per_second else 0.0
        self.next_at = 0.0
        self.lock = threading.Lock()

    def share(self, runs: int) -> None:
        """`runs` runs deliver at once (other processes too): max_per_second belongs to the
        relay, so each paces at its share of it."""
        if self.per_second:
            self.interval = 1.02 * max(runs, 1) / self.per_second

    def acquire(self, halt: threading.Event) -> bool:
        """Block until a message may go out; False if the run is halted meanwhile."""
        if not self.interval:
            return not halt.is_set()
        with self.lock:
            now = time.monotonic()
            at = max(now, self.next_at)
            self.next_at = at + self.interval
        return not halt.wait(at - now) if at > now else not halt.is_set()


class ConnectionSlots:
    """How many connections are open (or opening), and the relay's learned limit."""

    def __init__(self, wanted: int) -> None:
        self.lock = threading.Lock()
        self.live = 0
        self.wanted = wanted
        self.limit = wanted
        self.last_refusal = ""
        self._alone_since: float | None = None  # first refusal while none were live

    def opening(self) -> bool:
        """Reserve a slot before connecting; False when the learned limit is reached."""
        with self.lock:
            if self.live >= self.limit:
                return False
            self.live += 1
            return True

    def closed(self) -> None:
        with self.lock:
            self.live -= 1

    def refused(self, reply: str) -> bool:
        """A connection (whose slot was reserved) got a 4xx greeting. Returns False when
        the run should stop: nobody is connected and the relay kept refusing."""
        with self.lock:
            self.live -= 1
            self.last_refusal = reply
            if self.live > 0:
                # The others that are open or opening are what the relay allows.
                self.limit = min(self.limit, self.live)
                return True
            # Refused with nobody connected: that says nothing about its limit.
            self.limit = self.wanted
            now = time.monotonic()
            if self._alone_since is None:
                self._alone_since = now
            return now - self._alone_since < BUSY_PATIENCE

    def delay(self, attempt: int) -> float:
        """Seconds before the `attempt`th retry (0-based) of a refused connection."""
        return BUSY_BACKOFF[min(attempt, len(BUSY_BACKOFF) - 1)]

    def connected(self) -> None:
        with self.lock:
            self._alone_since = None
