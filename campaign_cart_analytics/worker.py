"""The background thread: sends whatever is due and gives each batch its fate.

One thread, one loop. What is due is either a new batch (``PendingEvents``
hands one over when it is full, its interval has passed, or a flush asks)
or a parked batch whose retry wait is over. A batch that fails in a way worth
retrying is parked with its urllib3 ``Retry`` state (``transport``) until its
retry is due, and other batches go out meanwhile: one batch in backoff never
holds back the rest. The loop ends when the queue is closed and drained and
nothing is parked.

Delivery policy lives here, HTTP in ``transport``:

- a 413 splits the batch in two halves sent on their own, down to one event;
- once a shutdown has begun, a retry due after its deadline is not waited
  for: the batch gets one last attempt at once, and what fails then is
  counted as ``dropped_shutdown``;
- a dropped batch is logged with its id, size, attempts and last problem,
  counted, and handed to ``on_error``.

No exception escapes the loop: a bug here is logged, the batch at hand is
counted as dropped (never lost silently), and the loop goes on.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable, Optional

import attrs

from ._logging import logger
from .config import Config
from .errors import DeliveryError, ShutdownDropError
from .events import batch_body, new_batch_id
from .pending import PendingEvents, TakenBatch
from .transport import DeliveryRetry, Outcome, ShutdownClock, Transport

#: Seconds the loop pauses after an unexpected error of its own, before going on.
ERROR_PAUSE = 0.1


@attrs.define(eq=False)
class _Parked:
    """A batch waiting for its next retry."""

    due: float
    parked_at: float
    batch: TakenBatch
    batch_id: str
    sent_at_ms: int  # with the texts and the id, rebuilds the body byte for byte
    retry: DeliveryRetry
    problem: str


class Worker:
    """Delivers what ``pending`` hands it through ``transport``; run it in a daemon thread."""

    def __init__(
        self,
        config: Config,
        pending: PendingEvents,
        transport: Transport,
        clock: ShutdownClock,
    ) -> None:
        self._config = config
        self._pending = pending
        self._transport = transport
        self._clock = clock
        self._parked: list[_Parked] = []

    def run(self) -> None:
        while True:
            try:
                due = self._next_retry_due()
                batch = self._pending.take_batch(until=due)
            except Exception:
                logger.exception("Unexpected error in the delivery thread; it goes on")
                time.sleep(ERROR_PAUSE)  # a bug that repeats must not spin a core
                continue
            if batch is not None:
                batch_id = new_batch_id()
                self._guarded(batch, batch_id, self._send_new, batch, batch_id)
            elif due is None and self._pending.drained():
                return
            for parked in self._take_due_retries():
                self._guarded(parked.batch, parked.batch_id, self._resend, parked)

    # ------------------------------------------------------------ sending

    def _send_new(self, batch: TakenBatch, batch_id: str) -> None:
        sent_at_ms = time.time_ns() // 1_000_000
        body = batch_body(batch.texts, batch_id, sent_at_ms)
        self._settle(batch, batch_id, sent_at_ms, self._transport.send(body, batch_id))

    def _resend(self, parked: _Parked) -> None:
        last_chance = self._clock.cuts_short(parked.due)
        attempt = len(parked.retry.history) + 1
        self._pending.count_retry(parked.problem)
        logger.info(
            "Batch %s: retrying (attempt %d) after %s, waited %.3g s%s",
            parked.batch_id, attempt, parked.problem, time.monotonic() - parked.parked_at,
            "; last attempt before shutdown" if last_chance else "",
        )  # fmt: skip
        # The same body as the first attempt: same batch_id, same batch_info.timestamp.
        body = batch_body(parked.batch.texts, parked.batch_id, parked.sent_at_ms)
        outcome = self._transport.send(body, parked.batch_id, parked.retry, final=last_chance)
        self._settle(
            parked.batch, parked.batch_id, parked.sent_at_ms, outcome, last_chance=last_chance
        )

    def _settle(
        self,
        batch: TakenBatch,
        batch_id: str,
        sent_at_ms: int,
        outcome: Outcome,
        *,
        last_chance: bool = False,
    ) -> None:
        if outcome.kind == "delivered":
            self._pending.settle(batch, "delivered")
            logger.debug(
                "Batch %s delivered: %d events, HTTP %s, %d attempt(s)",
                batch_id, len(batch.texts), outcome.status, outcome.attempts,
            )  # fmt: skip
        elif outcome.kind == "too_large" and len(batch.texts) > 1:
            first, second = self._pending.split(batch)
            logger.warning(
                "Batch %s (%d events) is too large for the endpoint (HTTP 413); "
                "sending it as two batches of %d and %d",
                batch_id, len(batch.texts), len(first.texts), len(second.texts),
            )  # fmt: skip
            self._send_new(first, f"{batch_id}-1")
            self._send_new(second, f"{batch_id}-2")
        elif outcome.kind == "retry_later" and outcome.retry is not None:
            now = time.monotonic()
            due = now + outcome.delay
            if self._clock.cuts_short(due):  # sent during shutdown: no wait past its deadline
                self._give_up(batch, batch_id, outcome, at_shutdown=True)
            else:
                self._parked.append(
                    _Parked(due, now, batch, batch_id, sent_at_ms, outcome.retry, outcome.problem)
                )
        else:
            self._give_up(batch, batch_id, outcome, at_shutdown=last_chance)

    def _guarded(
        self, batch: TakenBatch, batch_id: str, send: Callable[..., None], *args: Any
    ) -> None:
        try:
            send(*args)
        except Exception as exc:
            logger.exception("Unexpected error while delivering batch %s; it is dropped", batch_id)
            error = DeliveryError(
                f"Batch {batch_id} dropped: internal error {type(exc).__name__}: {exc}",
                batch_id=batch_id,
                attempts=0,
            )
            self._drop(batch, "dropped_delivery", error)

    # ------------------------------------------------------------ parked retries

    def _next_retry_due(self) -> Optional[float]:
        """When the next parked retry is due: now, for one a shutdown will not wait for."""
        if not self._parked:
            return None
        now = time.monotonic()
        return min(now if self._clock.cuts_short(p.due) else p.due for p in self._parked)

    def _take_due_retries(self) -> list[_Parked]:
        now = time.monotonic()
        due: list[_Parked] = []
        waiting: list[_Parked] = []
        for parked in self._parked:
            is_due = parked.due <= now or self._clock.cuts_short(parked.due)
            (due if is_due else waiting).append(parked)
        self._parked = waiting
        return sorted(due, key=lambda parked: parked.due)

    # ------------------------------------------------------------ giving up

    def _give_up(
        self, batch: TakenBatch, batch_id: str, outcome: Outcome, *, at_shutdown: bool
    ) -> None:
        kind: type[DeliveryError]
        if at_shutdown or outcome.kind == "cut_short":
            counter, kind, why = "dropped_shutdown", ShutdownDropError, "shutdown deadline reached"
        elif outcome.kind == "failed" and outcome.attempts > 1:
            counter, kind, why = "dropped_delivery", DeliveryError, "retries exhausted"
        else:
            counter, kind, why = "dropped_delivery", DeliveryError, "not retried"
        message = (
            f"Batch {batch_id} dropped: {len(batch.texts)} events, {outcome.attempts} attempt(s), "
            f"last problem: {outcome.problem} ({why})"
        )
        # Shutdown drops are summed up once by shutdown itself (SPEC: "logged once").
        level = logging.DEBUG if counter == "dropped_shutdown" else logging.ERROR
        logger.log(level, "%s", message)
        error = kind(message, batch_id=batch_id, attempts=outcome.attempts, status=outcome.status)
        self._drop(batch, counter, error)

    def _drop(self, batch: TakenBatch, counter: str, error: DeliveryError) -> None:
        if not self._pending.count(batch, counter, problem=str(error)):
            return  # a shutdown counted these and told on_error already
        try:
            report_error(self._config, [json.loads(text) for text in batch.texts], error)
        finally:
            self._pending.release(batch)


def report_error(config: Config, events: list[dict[str, Any]], error: BaseException) -> None:
    """Call the user's ``on_error``; its own failure is logged and goes no further."""
    if config.on_error is None:
        return
    try:
        config.on_error(events, error)
    except Exception:
        logger.exception("on_error callback raised; delivery goes on")
