"""A stateful test (Hypothesis): interleaved calls and endpoint answers keep the books exact.

The machine tracks events, flushes with and without a timeout, shuts down,
and changes what a real receiver on 127.0.0.1 answers (2xx, 400, 413, 500,
slow, a 2xx whose body breaks off, and a few 429s: an endpoint overloaded
for good holds its batches, by design, so a flush without a timeout would
wait for ever). After every step:

- ``tracked == queued + delivered + filtered + dropped`` (SPEC section 8);

and at every point where the client has settled everything (a flush that
completed, a shutdown):

- every dropped event reached ``on_error``, exactly once;
- every event counted delivered was answered 2xx by the receiver, and every
  event the receiver answered 2xx for was counted delivered, or was cut off in
  flight by a shutdown and handed to ``on_error``;
- an event arrives in two 2xx requests only as a retry of the same batch;
- each loss made exactly one completed flush or shutdown return False.
"""

from __future__ import annotations

import collections
import time
from typing import Any, Optional

import pytest
from helpers import assert_balanced
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from receiver import Receiver, Reply

import campaign_cart_analytics as cca

pytestmark = pytest.mark.timeout(150)

OVERLOADED = Reply(429, headers={"Retry-After": "0"})
ANSWERS = {
    "ok": Reply(202),
    "rejected": Reply(400, body=b'{"error": "bad"}'),
    "too large": Reply(413),
    "error": Reply(500),
    "slow": Reply(202, delay=0.08),
    "broken body": Reply(202, body=b'{"success": tr', cut_body=True),
}


class DeliveryMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.receiver = Receiver()
        self.answer = ANSWERS["ok"]
        self.receiver.respond = lambda request: self.answer
        self.dropped: list[tuple[dict[str, Any], BaseException]] = []
        self.client = cca.Analytics(
            self.receiver.url,
            batch_size=3,
            batch_interval_ms=40,
            max_retries=2,
            retry_delay_ms=10,
            request_timeout_ms=2000,
            max_queue_size=12,
            on_error=lambda events, error: self.dropped.extend((e, error) for e in events),
        )
        self.accepted: set[str] = set()
        self.reported_losses = 0  # losses some completed flush or shutdown returned False for
        self.unsure = False  # a timed flush returned False: it may have reported a loss
        self.is_shut_down = False

    def teardown(self) -> None:
        self.client.shutdown(timeout=1)
        self.receiver.close()

    # ------------------------------------------------------------ rules

    @rule(answer=st.sampled_from(sorted(ANSWERS)))
    def endpoint_answers(self, answer: str) -> None:
        self.answer = ANSWERS[answer]

    @rule(times=st.integers(1, 3))
    def endpoint_is_overloaded(self, times: int) -> None:
        """For the next few requests: an overload lasts, a client that waits gets through."""
        self.receiver.script(*[OVERLOADED] * times)

    @rule(count=st.integers(1, 7))
    def track(self, count: int) -> None:
        for n in range(count):
            event_id = self.client.track("dl_step", {"n": n})
            if event_id is not None:
                self.accepted.add(event_id)
        if self.is_shut_down:
            assert event_id is None

    @rule()
    def flush(self) -> None:
        result = self.client.flush()
        self.check_reporting(result)

    @rule(timeout=st.sampled_from([0.0, 0.01, 0.05]))
    def flush_briefly(self, timeout: float) -> None:
        if self.client.flush(timeout=timeout):
            self.check_reporting(True)
        else:
            self.unsure = True

    @precondition(lambda self: not self.is_shut_down)
    @rule(timeout=st.sampled_from([0.02, 0.3, None]))
    def shutdown(self, timeout: Optional[float]) -> None:
        result = self.client.shutdown(timeout=timeout)
        self.is_shut_down = True
        self.check_reporting(result)
        requests_then = len(self.receiver.requests)
        time.sleep(0.03)
        assert len(self.receiver.requests) == requests_then  # nothing sent after it returned
        self.check_books()

    # ------------------------------------------------------------ checks

    @invariant()
    def balanced(self) -> None:
        assert_balanced(self.client.stats())

    def check_reporting(self, returned: bool) -> None:
        """A completed flush returns False exactly when a loss was left unreported."""
        stats = self.client.stats()
        assert stats.queued == 0 or not returned
        if stats.queued:  # timed out (a shutdown then wrote the rest off; see check_books)
            self.unsure = True
            return
        unreported = stats.dropped > self.reported_losses
        if not self.unsure:
            assert returned is not unreported, (returned, stats, self.reported_losses)
        self.reported_losses = stats.dropped
        self.unsure = False
        self.check_books()

    def check_books(self) -> None:
        stats = self.client.stats()
        assert stats.queued == 0
        dropped_ids = [event["event_id"] for event, _ in self.dropped]
        assert len(dropped_ids) == len(set(dropped_ids)) == stats.dropped
        answered_ok = collections.defaultdict(set)  # event_id -> batch ids of 2xx requests
        for request in self.receiver.requests:
            if request.ok:
                for event in request.events:
                    answered_ok[event["event_id"]].add(request.headers["idempotency-key"])
        delivered = self.accepted - set(dropped_ids)
        assert len(delivered) == stats.delivered
        assert delivered <= set(answered_ok)
        cut_in_flight = {
            event["event_id"]
            for event, error in self.dropped
            if isinstance(error, cca.ShutdownDropError)
        }
        assert set(answered_ok) - delivered <= cut_in_flight
        assert set(answered_ok) <= self.accepted
        assert all(len(batches) == 1 for batches in answered_ok.values()), answered_ok


# Derandomized: the same 50 programs every run. Random ones take 3 s to 60 s (a run of
# scripted 429s can slow the pace to its floor, a request every 10 s), and the suite has
# a 3-minute budget. Drop `derandomize` for a while to explore others.
DeliveryMachine.TestCase.settings = settings(
    max_examples=50, stateful_step_count=25, deadline=None, derandomize=True
)
TestDeliveryMachine = DeliveryMachine.TestCase
