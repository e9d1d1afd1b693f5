"""Getting a digest out: one row per (digest, subscriber), delivered over reused SMTP
connections, resumable after any crash.

* `queue`: the rows' state machine, the runs and their heartbeats (the database side;
  why a dead run is always taken over); `fastpath`: its two per-message statements.
* `engine`: the workers, and why a crash repeats at most one message per connection.
* `pacing`: the relay's rate limits and connection limit, shared by the workers.
* `status`: `digest status`, `digest retry` and test copies.
"""

from mailer.delivery.engine import Deliverer, RunSummary, deliver, unsubscribe_url
from mailer.delivery.status import DigestReport, TestCopy, retry_failed, send_test, send_test_copy, status_of

__all__ = [
    "Deliverer",
    "DigestReport",
    "RunSummary",
    "TestCopy",
    "deliver",
    "retry_failed",
    "send_test",
    "send_test_copy",
    "status_of",
    "unsubscribe_url",
]
