"""The delivery thread: decides what goes out when, and gives each batch its fate.

One thread makes every decision; sender threads (``senders``) only carry
requests out and bring the answers back. Each turn of the loop:

1. settle the answers that came back (delivered, retry later, pause, split,
   drop);
2. start what is due, as long as the ``OverloadGate`` lets a request start:
   parked batches whose wait is over first, then new batches from
   ``PendingEvents`` (full, their interval over, flushed, or closing). While
   senders go on alone from batch to batch (``_follow_on``) and their requests
   are quick (``QUICK_WAIT``), new batches get slots of their own only once
   every request in flight has been out ``SLOW_REQUEST`` (``_new_slots``): a
   fast endpoint next door is served by one thread; an endpoint that makes
   requests wait, by as many side by side as there are slots;
3. wait until something changes: an answer, a batch or a wait coming due,
   a shutdown.

A batch's retry path, read top to bottom in ``_judge``: the worker keeps
each batch's ``DeliveryRetry`` (a ``urllib3.Retry``) in its ``Job``; after a
failure ``retry.next_attempt`` counts it (``Retry.increment``) and gives the
wait (``get_backoff_time``), or says the budget is spent. A 429 or 503 pauses
the whole client instead (``overload``) and costs the batch nothing.

Delivery policy lives here, HTTP in ``transport``:

- a 413 splits the batch in two halves sent on their own, down to one event;
- once a shutdown has begun, a wait (retry or pause) that would end after
  its deadline is skipped: the batch gets one last attempt at once, and
  what fails then is counted as ``dropped_shutdown``;
- a dropped batch is logged with its id, size, attempts and last problem,
  counted, and handed to ``on_error``;
- before a batch is dropped, the store is asked whether it keeps it
  (``PendingEvents.keep``): memory keeps nothing, the durable spool keeps on
  disk what was not rejected for good (``spool``).

No exception escapes the loop: a bug here is logged, the batch at hand is
counted as dropped (never lost silently), and the loop goes on.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any, Optional

from ._logging import RateLimitedLog, logger
from ._threads import in_delivery_thread, mark_as_delivery_thread
from .config import Config
from .errors import DeliveryError, ShutdownDropError
from .events import decode_for_report, new_batch_id
from .overload import OverloadGate
from .pending import PendingEvents, TakenBatch
from .retry import DeliveryRetry
from .senders import Job, SenderPool
from .shutdown_clock import ShutdownClock
from .transport import Answer, Transport
from .urls import redact_url

#: Seconds the loop pauses after an unexpected error of its own, before going on.
ERROR_PAUSE = 0.1

#: The shortest overload pause, whatever Retry-After says: a hot loop helps nobody.
MIN_PAUSE = 0.01

#: Seconds a request may wait (its time less its thread's CPU time) and still count as
#: quick. Requests side by side pay off while they wait on the endpoint; a request that
#: is all CPU (a fast endpoint next door) gains nothing from company but turns taken
#: with the GIL, a context switch each. So while senders go on alone (``_follow_on``),
#: more slots open after a request that waited, and a quick sender hands its slot back
#: while another is busy: one thread then carries a fast endpoint's backlog.
QUICK_WAIT = 0.0005

#: A request still out after this many seconds has waited, whatever its CPU time: more
#: slots open (the first requests to a slow endpoint, or a stalled one).
SLOW_REQUEST = 0.005

#: Seconds a sender whose batch was delivered waits for the next batch to be ready
#: before it hands its slot back to the worker: while events keep coming, one thread
#: sends batch after batch, woken by ``track()`` itself when a batch is full.
FOLLOW_ON_WAIT = 0.005

#: Seconds a batch may be answered 429/503 without it costing its retries. Past this an
#: overload counts as a failed attempt, so that an endpoint refusing for good cannot
#: hold a flush() or a shutdown() without a timeout for ever.
OVERLOAD_PATIENCE = 60.0


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
        self._clock = clock
        self._gate = OverloadGate(config.max_concurrent_requests)
        self._senders = SenderPool(
            transport, config.max_concurrent_requests, self._answered, self._follow_on
        )
        self._follow_on_lock = threading.Lock()
        self._may_follow_on = False  # published by this thread, read by senders (see _follow_on)
        self._sending: set[Job] = set()  # requests out now (see started_at); that lock
        self._endpoint_waits = False  # the last request answered waited (QUICK_WAIT); that lock
        self._answers: collections.deque[tuple[Job, Answer]] = collections.deque()
        self._parked: list[Job] = []
        self._in_flight = 0
        self._overload_log = RateLimitedLog(10.0)
        self._shown_endpoint = redact_url(config.endpoint)  # urllib3 logs what Retry is given

    def run(self) -> None:
        mark_as_delivery_thread()
        while True:
            try:
                since = self._pending.interrupts()
                self._settle_answers()
                if self._finished():
                    self._senders.stop()
                    return
                self._start_what_is_due()
                self._wait_for_change(since)
            except Exception:
                logger.exception("Unexpected error in the delivery thread; it goes on")
                time.sleep(ERROR_PAUSE)  # a bug that repeats must not spin a core

    def _answered(self, job: Job, answer: Answer) -> None:
        """Called by a sender thread: queue the answer and wake the loop."""
        with self._follow_on_lock:
            self._no_longer_sending(job)
            if answer.kind != "delivered":  # an overload or failure: senders stop going on alone
                self._may_follow_on = False
        self._answers.append((job, answer))
        self._pending.interrupt()

    def _follow_on(self, job: Job, answer: Answer) -> Optional[Job]:
        """Called by a sender thread with a delivered batch: settle it, and hand back the
        next batch to send on the same slot, waiting up to ``FOLLOW_ON_WAIT`` for one to be
        ready; None where the loop must decide (an overload in force, batches waiting for
        a retry, a shutdown under way, nothing ready)."""
        self._settle_delivered(job, answer)
        following = self._take_following(job)
        if following is not None or not self._may_follow_on or self._sending:
            return following  # another sender busy: it takes what comes next
        if not self._pending.wait_for_batch(FOLLOW_ON_WAIT):
            return None
        return self._take_following(job)

    def _take_following(self, job: Job) -> Optional[Job]:
        now = time.monotonic()
        with self._follow_on_lock:
            self._no_longer_sending(job)
            if not self._may_follow_on or self._clock.waits_until is not None:
                return None
            if self._sending and not self._endpoint_waits:
                return None  # a quick request and another sender busy: one is enough
            batch = self._pending.take_ready()
            if batch is None:
                return None
            self._gate.started(now)
            following = self._new_job(batch, now)
            following.started_at = now
            self._sending.add(following)
        return following

    def _no_longer_sending(self, job: Job) -> None:
        """With ``_follow_on_lock`` held: ``job``'s request is answered; did it wait?"""
        self._sending.discard(job)
        self._endpoint_waits = job.waited >= QUICK_WAIT

    def _settle_delivered(self, job: Job, answer: Answer) -> None:
        if not self._pending.settle_delivered(job.batch):
            return  # settled already by its sender (see _follow_on), or written off
        logger.debug(
            "Batch %s delivered: %d events, HTTP %s, %d attempt(s)",
            job.batch_id, len(job.batch.texts), answer.status, job.retry.attempts + 1,
        )  # fmt: skip

    def _publish_follow_on(self, now: float) -> None:
        with self._follow_on_lock:
            self._may_follow_on = (
                not self._parked
                and not self._answers
                and self._gate.wide_open(now)
                and self._clock.waits_until is None
            )

    def _finished(self) -> bool:
        return (
            not self._parked
            and self._in_flight == 0
            and not self._answers
            and self._pending.drained()
        )

    # ------------------------------------------------------------ starting

    def _start_what_is_due(self) -> None:
        now = time.monotonic()
        self._publish_follow_on(now)
        new_slots = self._new_slots(now)
        while True:
            now = time.monotonic()
            opens = self._opens_at(now)
            if opens is None or opens > now:
                return
            job = self._take_due_parked(now)
            if job is None and new_slots > 0:
                job = self._take_new(now)
                new_slots -= 1
            if job is None:
                return
            self._start(job, now)

    def _take_due_parked(self, now: float) -> Optional[Job]:
        due = [job for job in self._parked if job.due <= now or self._clock.cuts_short(job.due)]
        if not due:
            return None
        job = min(due, key=lambda parked: parked.due)
        self._parked.remove(job)
        if self._clock.cuts_short(job.due):
            job.last_chance = True  # a shutdown does not wait for it: one last attempt, now
        return job

    def _take_new(self, now: float) -> Optional[Job]:
        batch = self._pending.take_ready()
        return None if batch is None else self._new_job(batch, now)

    def _new_slots(self, now: float) -> int:
        """How many new batches may start now, each on a slot of its own.

        While senders go on alone from batch to batch (``_follow_on``), what comes next
        is left to them after quick requests (``QUICK_WAIT``): with none sending, one
        batch starts; once every request in flight has been out ``SLOW_REQUEST``, as many
        more as are in flight (1, 2, 4..., as TCP's slow start); else none. Otherwise
        (the last request waited on the endpoint, or an overload, retries or a shutdown
        under way) as many as the gate lets through."""
        with self._follow_on_lock:
            sending = len(self._sending)
            endpoint_waits = self._endpoint_waits
        if not self._may_follow_on or endpoint_waits:
            return self._config.max_concurrent_requests
        if not sending:
            return 1
        return 0 if self._wait_for_senders(now) is not None else sending

    def _wait_for_senders(self, now: float) -> Optional[float]:
        """Until when new batches are left to the senders in flight (``_new_slots``: until
        the youngest request has been out ``SLOW_REQUEST``); None: no such wait."""
        with self._follow_on_lock:
            youngest = max((job.started_at for job in self._sending), default=None)
            if not self._may_follow_on or self._endpoint_waits:
                return None
        if youngest is None or now - youngest >= SLOW_REQUEST:
            return None
        return youngest + SLOW_REQUEST

    def _new_job(self, batch: TakenBatch, now: float) -> Job:
        retry = DeliveryRetry.first(self._config.max_retries, self._config.retry_delay_ms / 1000)
        return Job(batch, new_batch_id(), time.time_ns() // 1_000_000, retry, due=now)

    def _start(self, job: Job, now: float) -> None:
        if job.is_retry:
            self._pending.count_retry(job.problem)
            logger.info(
                "Batch %s: retrying (attempt %d) after %s, waited %.3g s%s",
                job.batch_id, job.retry.attempts + 1, job.problem, now - job.waiting_since,
                "; last attempt before shutdown" if job.last_chance else "",
            )  # fmt: skip
        self._in_flight += 1
        job.started_at = now
        self._gate.started(now)
        with self._follow_on_lock:
            self._sending.add(job)
        self._senders.submit(job)

    def _opens_at(self, now: float) -> Optional[float]:
        """When the gate lets the next request start. Once a shutdown has begun, the pace
        no longer holds requests back, nor a pause that would end after its deadline."""
        shutting_down = self._clock.waits_until is not None
        pause = not self._clock.cuts_short(max(now, self._gate.paused_until))
        return self._gate.opens_at(self._in_flight, now, pause=pause, pace=not shutting_down)

    def _wait_for_change(self, since: int) -> None:
        now = time.monotonic()
        self._publish_follow_on(now)
        opens = self._opens_at(now)
        if opens is None:  # every slot taken: only an answer changes that
            self._pending.wait(None, for_batch=False, since=since)
            return
        wakes = [job.due for job in self._parked]
        if opens > now:  # paused or paced: nothing starts before then
            wakes = [max(opens, due) for due in wakes] + [opens]
        senders_until = self._wait_for_senders(now) if opens <= now else None
        if senders_until is not None:  # look again then; a full batch need not wake us
            wakes.append(senders_until)
        for_batch = opens <= now and senders_until is None
        self._pending.wait(min(wakes, default=None), for_batch=for_batch, since=since)

    # ------------------------------------------------------------ answers

    def _settle_answers(self) -> None:
        while self._answers:
            job, answer = self._answers.popleft()
            self._in_flight -= 1
            try:
                self._judge(job, answer)
            except Exception as exc:
                logger.exception("Unexpected error judging batch %s; it is dropped", job.batch_id)
                error = DeliveryError(
                    f"Batch {job.batch_id} dropped: internal error {type(exc).__name__}: {exc}",
                    batch_id=job.batch_id,
                    attempts=job.retry.attempts + 1,
                )
                self._drop(job.batch, "dropped_delivery", error)

    def _judge(self, job: Job, answer: Answer) -> None:
        now = time.monotonic()
        if answer.kind == "delivered":
            self._gate.succeeded(job.started_at)
            self._settle_delivered(job, answer)
        elif answer.kind == "too_large" and len(job.batch.texts) > 1:
            self._split(job, now)
        elif job.last_chance or answer.kind == "cut_short":
            self._give_up(job, answer, "shutdown deadline reached")
        elif answer.kind == "overloaded":
            self._pause(job, answer, now)
            since = job.overloaded_since
            if since is not None and now - since > OVERLOAD_PATIENCE:
                self._parked.remove(job)  # overloaded for too long: now each answer counts
                self._retry_later(job, answer, now)
        elif answer.kind == "failed":
            self._retry_later(job, answer, now)
        else:  # rejected, fatal, a single event too large
            self._give_up(job, answer, "not retried")

    def _retry_later(self, job: Job, answer: Answer, now: float) -> None:
        following = job.retry.next_attempt(
            self._shown_endpoint, response=answer.response, error=answer.error
        )
        if following is None:
            why = "retries exhausted" if self._config.max_retries else "not retried"
            self._give_up(job, answer, why)
            return
        job.retry, wait = following
        self._park(job, now + wait, answer.problem, is_retry=True)

    def _pause(self, job: Job, answer: Answer, now: float) -> None:
        if job.overloaded_since is None:
            job.overloaded_since = now
        pause = job.retry.wait_if_counted() if answer.retry_after is None else answer.retry_after
        pause = max(pause, MIN_PAUSE)
        self._gate.overloaded(now, pause, job.started_at)
        self._overload_log.log(
            logging.WARNING,
            "The endpoint is overloaded (%s): all sending pauses for %.3g s, then resumes "
            "one request at a time",
            answer.problem, pause,
        )  # fmt: skip
        self._pending.note_problem(f"{answer.problem} (overloaded: sending paused)")
        self._park(job, now + pause, answer.problem, is_retry=False)

    def _park(self, job: Job, due: float, problem: str, *, is_retry: bool) -> None:
        job.due, job.waiting_since, job.problem, job.is_retry = (
            due,
            time.monotonic(),
            problem,
            is_retry,
        )
        self._parked.append(job)

    def _split(self, job: Job, now: float) -> None:
        first, second = self._pending.split(job.batch)
        logger.warning(
            "Batch %s (%d events) is too large for the endpoint (HTTP 413); "
            "sending it as two batches of %d and %d",
            job.batch_id, len(job.batch.texts), len(first.texts), len(second.texts),
        )  # fmt: skip
        for half, suffix in ((first, "-1"), (second, "-2")):
            retry = DeliveryRetry.first(
                self._config.max_retries, self._config.retry_delay_ms / 1000
            )
            self._parked.append(
                Job(
                    half,
                    job.batch_id + suffix,
                    job.sent_at_ms,
                    retry,
                    due=now,
                    last_chance=job.last_chance,
                )
            )

    # ------------------------------------------------------------ giving up

    def _give_up(self, job: Job, answer: Answer, why: str) -> None:
        kept = self._pending.keep(
            job.batch, answer.kind, batch_id=job.batch_id, status=answer.status,
            problem=f"{answer.problem} ({why})",
        )  # fmt: skip
        if kept:  # a durable store holds the events for a later attempt
            return
        at_shutdown = why == "shutdown deadline reached"
        kind: type[DeliveryError] = ShutdownDropError if at_shutdown else DeliveryError
        counter = "dropped_shutdown" if at_shutdown else "dropped_delivery"
        attempts = job.retry.attempts + (0 if answer.kind == "cut_short" else 1)
        message = (
            f"Batch {job.batch_id} dropped: {len(job.batch.texts)} events, {attempts} "
            f"attempt(s), last problem: {answer.problem} ({why})"
        )
        # Shutdown drops are summed up once by shutdown itself (SPEC: "logged once").
        logger.log(logging.DEBUG if at_shutdown else logging.ERROR, "%s", message)
        error = kind(message, batch_id=job.batch_id, attempts=attempts, status=answer.status)
        self._drop(job.batch, counter, error)

    def _drop(self, batch: TakenBatch, counter: str, error: DeliveryError) -> None:
        if not self._pending.count(batch, counter, problem=str(error)):
            return  # a shutdown counted these and told on_error already
        try:
            report_error(self._config, decode_for_report(batch.texts), error)
        finally:
            self._pending.release(batch, reported=True)


def report_error(config: Config, events: list[dict[str, Any]], error: BaseException) -> None:
    """Call the user's ``on_error``; its own failure is logged and goes no further."""
    if config.on_error is None:
        return
    try:
        config.on_error(events, error)
    except BaseException as exc:
        if not isinstance(exc, Exception) and not in_delivery_thread():
            raise  # SystemExit or KeyboardInterrupt in the application's own thread: its own
        # In the delivery thread even SystemExit goes no further: it would end the thread,
        # and a flush() waiting on it, silently.
        logger.exception("on_error callback raised %s; delivery goes on", type(exc).__name__)
