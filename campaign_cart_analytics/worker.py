"""The background thread: takes batches off the queue and gives each its fate.

The loop is: take a due batch (``PendingEvents.take_batch`` blocks until one
is), deliver it, settle it, repeat; ``take_batch`` returning None is the only
way out. Delivery policy lives here, HTTP in ``transport``:

- a 413 splits the batch in two halves sent on their own, down to one event;
- a batch caught mid-backoff by shutdown gets one last immediate attempt;
- a dropped batch is logged at ERROR with its id, size, attempts and last
  problem, counted, and handed to ``on_error``.

No exception escapes the loop: a bug here is logged and the batch at hand is
counted as dropped, never lost silently, and the loop goes on.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from ._logging import logger
from .config import Config
from .errors import DeliveryError, ShutdownDropError
from .events import batch_body, new_batch_id
from .pending import PendingEvents, TakenBatch
from .transport import Outcome, ShutdownClock, Transport

#: Seconds the loop pauses after an unexpected error of its own, before going on.
ERROR_PAUSE = 0.1


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

    def run(self) -> None:
        while True:
            try:
                batch = self._pending.take_batch()
            except Exception:
                logger.exception("Unexpected error in the delivery thread; it goes on")
                time.sleep(ERROR_PAUSE)  # a bug that repeats must not spin a core
                continue
            if batch is None:
                return
            batch_id = new_batch_id()
            try:
                self._deliver(batch, batch_id)
            except Exception as exc:
                logger.exception(
                    "Unexpected error while delivering batch %s; it is dropped", batch_id
                )
                error = DeliveryError(
                    f"Batch {batch_id} dropped: internal error {type(exc).__name__}: {exc}",
                    batch_id=batch_id,
                    attempts=0,
                )
                self._drop(batch, "dropped_delivery", error)

    def _deliver(self, batch: TakenBatch, batch_id: str) -> None:
        body = batch_body(batch.texts, batch_id, time.time_ns() // 1_000_000)
        shutdown_began_before = self._clock.running
        outcome = self._transport.send(body, batch_id)
        if outcome.kind == "cut_short" and not shutdown_began_before and outcome.attempts:
            # Caught mid-backoff by shutdown: the seed's page unload, one last try now.
            logger.info("Batch %s: shutting down, one last attempt without waiting", batch_id)
            last_try = self._transport.send(body, batch_id)
            outcome = Outcome(
                last_try.kind, outcome.attempts + last_try.attempts, last_try.status,
                last_try.problem or outcome.problem,
            )  # fmt: skip

        if outcome.kind == "delivered":
            self._pending.settle(batch, "delivered")
            logger.debug(
                "Batch %s delivered: %d events, HTTP %s, %d attempt(s)",
                batch_id, len(batch.texts), outcome.status, outcome.attempts,
            )  # fmt: skip
        elif outcome.kind == "too_large" and len(batch.texts) > 1:
            first, second = batch.split()
            logger.warning(
                "Batch %s (%d events) is too large for the endpoint (HTTP 413); "
                "sending it as two batches of %d and %d",
                batch_id, len(batch.texts), len(first.texts), len(second.texts),
            )  # fmt: skip
            self._deliver(first, f"{batch_id}-1")
            self._deliver(second, f"{batch_id}-2")
        else:
            self._give_up(batch, batch_id, outcome)

    def _give_up(self, batch: TakenBatch, batch_id: str, outcome: Outcome) -> None:
        kind: type[DeliveryError]
        if outcome.kind == "cut_short":
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
        self._pending.note_error(str(error))
        if self._pending.settle(batch, counter):
            report_error(self._config, [json.loads(text) for text in batch.texts], error)


def report_error(config: Config, events: list[dict[str, Any]], error: BaseException) -> None:
    """Call the user's ``on_error``; its own failure is logged and goes no further."""
    if config.on_error is None:
        return
    try:
        config.on_error(events, error)
    except Exception:
        logger.exception("on_error callback raised; delivery goes on")
