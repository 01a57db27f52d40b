"""``Analytics``: the client. ``track()`` queues, a background thread delivers.

The path of an event: ``track()`` validates the call, builds the envelope
(``events``), runs ``transform_function`` on a copy in the caller's thread,
encodes the result to JSON once, and appends that text to ``PendingEvents``.
The worker thread (``worker``) takes batches from there and posts them
(``transport``). ``track()`` never waits on the network and never raises for
runtime trouble: a full queue, a broken transform or a down endpoint are
logged, counted in ``stats()`` and reported to ``on_error``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any, Optional, Union

from . import _lifecycle
from ._logging import RateLimitedLog, logger
from ._threads import in_delivery_thread
from ._uwsgi import warn_if_threads_cannot_run
from .config import (
    Config,
    ErrorCallback,
    HeaderValue,
    TransformFunction,
    normalize_settings,
    settings_from_providers,
    unknown_option,
)
from .context import EventContext, Provider
from .errors import QueueFullError, ShutdownDropError
from .events import (
    EventFactory,
    UnencodableValue,
    decode_for_report,
    encode,
)
from .flushing import Flushing, in_thread
from .process_state import WARNING_INTERVAL, ProcessState
from .stats import Stats
from .worker import report_error
from .write_off import WriteOffReports


class Analytics:
    """Sends Campaign Cart analytics events to your HTTP endpoint, in batches, in the background.

    >>> analytics = Analytics("https://api.yourapp.com/analytics",
    ...                       headers={"Authorization": "Bearer TOKEN"})  # doctest: +SKIP
    >>> analytics.track("dl_add_to_cart", {"ecommerce": {...}})  # doctest: +SKIP
    'py_1f2e..._10004821_1736677800000'

    Options (``ConfigError`` at construction when one breaks its rule):

    - ``endpoint``: absolute ``http://``/``https://`` URL the batches are POSTed to.
    - ``headers``: extra request headers; a value may be a zero-argument
      callable, called for every request, retries included (token refresh). Never logged.
    - ``batch_size`` (1 to 100), ``batch_interval_ms``: a batch is sent when it
      is full, or this long after its first event was queued.
    - ``max_retries``, ``retry_delay_ms``: retry k waits ``retry_delay_ms * 2**(k-1)``.
    - ``transform_function``: called once per event in ``track()``'s thread with
      a copy it may change; return the event to send, or None to drop it.
    - ``request_timeout_ms``: bounds each attempt, from connecting to the response's last byte.
    - ``max_queue_size``: events waiting beyond this are dropped (and counted).
    - ``shutdown_timeout_ms``: the longest the exit-time flush keeps the process alive.
    - ``enabled``: False makes every call a no-op and starts no thread.
    - ``on_error(events, error)``: called with the events whenever some are dropped.
    - ``verify``: TLS certificate checks: True, False, or a CA bundle's path.
    - ``max_concurrent_requests`` (1 to 64): requests in flight at once when batches wait.
    - ``compression``: None or ``"gzip"`` (``Content-Encoding: gzip``).
    - ``client_cert``: a PEM file, or a (cert, key) pair, for mutual TLS.
    - ``proxy``: a proxy URL for this client; None uses the environment's.
    - ``spool_path``: a file where events are kept until delivered (SQLite): an event is
      on disk before ``track()`` returns, survives a crash or restart, and outlasts any
      outage. ``spool_sync``: ``"normal"`` (survives a process crash) or ``"full"`` (also
      a power loss, at an fsync per event). ``spool_max_bytes``: beyond this new events
      are refused. ``spool_max_pause_ms``: the longest pause between tries of events
      whose retries ran out.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        headers: Optional[Mapping[str, HeaderValue]] = None,
        batch_size: int = 10,
        batch_interval_ms: int = 5000,
        max_retries: int = 3,
        retry_delay_ms: int = 1000,
        transform_function: Optional[TransformFunction] = None,
        request_timeout_ms: int = 10000,
        max_queue_size: int = 10000,
        shutdown_timeout_ms: int = 5000,
        enabled: bool = True,
        on_error: Optional[ErrorCallback] = None,
        verify: Union[bool, str] = True,
        max_concurrent_requests: int = 4,
        compression: Optional[str] = None,
        client_cert: Union[str, tuple[str, str], None] = None,
        proxy: Optional[str] = None,
        spool_path: Union[str, os.PathLike[str], None] = None,
        spool_sync: str = "normal",
        spool_max_bytes: int = 256 * 2**20,
        spool_max_pause_ms: int = 300_000,
        **unknown: Any,
    ) -> None:
        if unknown:
            raise unknown_option(next(iter(unknown)), keyword=True)
        self.config = Config(
            endpoint=endpoint,
            headers={} if headers is None else headers,
            batch_size=batch_size,
            batch_interval_ms=batch_interval_ms,
            max_retries=max_retries,
            retry_delay_ms=retry_delay_ms,
            transform_function=transform_function,
            request_timeout_ms=request_timeout_ms,
            max_queue_size=max_queue_size,
            shutdown_timeout_ms=shutdown_timeout_ms,
            enabled=enabled,
            on_error=on_error,
            verify=verify,
            max_concurrent_requests=max_concurrent_requests,
            compression=compression,
            client_cert=client_cert,
            proxy=proxy,
            spool_path=spool_path,
            spool_sync=spool_sync,
            spool_max_bytes=spool_max_bytes,
            spool_max_pause_ms=spool_max_pause_ms,
        )
        self._events = EventFactory()
        self._state = ProcessState(self.config)
        self._context = EventContext()
        self._shut_down = False  # once set, in this process and any forked from it
        self._delivery_thread_log = RateLimitedLog(WARNING_INTERVAL)
        self._warned_closed = False
        _lifecycle.created(self)
        if self.config.enabled:
            warn_if_threads_cannot_run()
            if self._state.pending.open():  # events an earlier run left in the spool
                self._ensure_worker(self._state)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> Analytics:
        """A client from a settings mapping in either spelling (``batchSize`` or ``batch_size``)."""
        return cls(**normalize_settings(settings))

    def __repr__(self) -> str:
        return repr(self.config).replace("Config(", f"{type(self).__name__}(", 1)

    def __enter__(self) -> Analytics:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    # ------------------------------------------------------------ tracking

    def track(self, event: str, properties: Optional[Mapping[str, Any]] = None) -> Optional[str]:
        """Queue one event; return its ``event_id``, or None when it was not queued.

        Raises ``TypeError``/``ValueError`` at once for programming errors: an
        empty or non-str ``event``, ``properties`` that is not a mapping, a
        value JSON cannot carry (the message names its path). Never blocks on
        the network, never raises for a full queue, a failing transform or a
        down endpoint.
        """
        if not isinstance(event, str):
            raise TypeError(f"event must be a str; got {type(event).__name__}")
        if not event:
            raise ValueError("event must be a non-empty str")
        if properties is None:
            properties = {}
        elif type(properties) is not dict and not isinstance(properties, Mapping):
            raise TypeError(
                f"properties must be a mapping or None; got {type(properties).__name__}"
            )
        if not self.config.enabled:
            return None
        state = self._state
        if state.pid != os.getpid():  # a fork that os.register_at_fork did not see
            self._reset_for_new_process()
            state = self._state

        envelope = self._events.envelope(event, self._context.apply(properties))
        final = envelope
        if self.config.transform_function is not None:
            transformed = state.transform.apply(envelope, state.pending)
            if transformed is None:
                return None
            final = transformed
        try:
            text = encode(final)
        except UnencodableValue as problem:
            state.transform.blame_unencodable(event, properties, problem, state.pending, final)
            return None

        refused = state.pending.put(text)
        if refused is not None:
            self._refused(refused, final)
            return None
        self._ensure_worker(state)
        event_id = final.get("event_id")
        return event_id if isinstance(event_id, str) else str(envelope["event_id"])

    def _refused(self, counter: str, event: dict[str, Any]) -> None:
        if counter in ("dropped_queue_full", "dropped_spool_full"):
            message = (
                f"queue full ({self.config.max_queue_size} events waiting): event "
                f"{event.get('event')!r} dropped; is the endpoint slow or down? see stats()"
                if counter == "dropped_queue_full"
                else f"spool full ({self.config.spool_max_bytes} bytes, spool_max_bytes): "
                f"event {event.get('event')!r} dropped; is the endpoint down? see stats()"
            )
            self._state.queue_full_log.log(logging.WARNING, "%s", message)
            report_error(self.config, [event], QueueFullError(message))
            return
        if not self._warned_closed:
            self._warned_closed = True
            logger.warning("track() called after shutdown(); events are dropped")
        error = ShutdownDropError(
            f"event {event.get('event')!r} tracked after shutdown()", batch_id="", attempts=0
        )
        report_error(self.config, [event], error)

    def _ensure_worker(self, state: ProcessState) -> None:
        if not state.thread_running.is_set() and state.start_worker():
            _lifecycle.started(self)

    # ------------------------------------------------------------ context

    def context(
        self, provider: Optional[Provider] = None, /, **values: Any
    ) -> AbstractContextManager[None]:
        """A block whose events carry ``values`` (``user_properties=``, ``attribution=``, ...).

        Events' own properties win; dicts on both sides are merged key by key;
        blocks nest. ``provider``, a zero-argument callable returning such
        values, is called at the first ``track()`` inside the block, if any.
        Built on ``contextvars``: safe across threads and asyncio tasks.
        """
        return self._context.scope(provider, values)

    def flushing(self, timeout: Optional[float] = None) -> Flushing:
        """Flush when a block or function ends: for job handlers, Lambda, Celery tasks.

        ``@analytics.flushing(timeout=2)`` on a handler, or ``with
        analytics.flushing(timeout=2):`` around its body. The flush is bounded
        by ``timeout`` and runs whether the handler returns or raises.
        """
        return Flushing(self, timeout)

    # ------------------------------------------------------------ flush, shutdown, stats

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Send everything queued now, without waiting for the batch interval.

        Blocks until those events are delivered or dropped, or ``timeout``
        seconds pass. True only if it did not time out and no event was lost
        that an earlier ``flush()`` or ``shutdown()`` has not reported: each
        loss (a rejected batch, a full queue, a failing transform; not a
        filtered event) makes exactly one of them return False, the first to
        complete after it, whichever thread called it. A flush that times out
        returns False and reports nothing, so a later one still sees the loss.
        """
        if not self.config.enabled:
            return True
        state = self._state
        if state.pid != os.getpid():
            return True  # nothing of the parent's is ours to send
        if in_delivery_thread():  # on_error or a header callable: it would wait for itself
            self._delivery_thread_log.log(
                logging.WARNING,
                "flush() called from on_error or a header callable does not wait: the "
                "delivery thread cannot wait for itself",
            )
            return False
        if state.pending.stats().queued:
            self._ensure_worker(state)
        settled, no_loss = state.pending.flush(timeout)
        return settled and no_loss

    async def flush_async(self, timeout: Optional[float] = None) -> bool:
        """``flush(timeout)`` from a coroutine, waiting in a thread so the event loop runs on."""
        return await in_thread(self.flush, timeout)

    def shutdown(self, timeout: Optional[float] = None) -> bool:
        """Flush, then stop the background thread; idempotent.

        With a ``timeout``, waits before retries are cut short where they would
        end after it. When the timeout passes, a request still in flight is
        cut off, nothing more is sent, and every event still undelivered is
        counted as ``dropped_shutdown`` and handed to ``on_error``. True if
        everything was delivered and no earlier loss was left unreported.
        """
        if not self.config.enabled:
            return True
        self._shut_down = True
        if in_delivery_thread():  # from on_error: stop taking events; the thread ends itself
            self._state.pending.close()
            return False
        gives_up_at = None if timeout is None else time.monotonic() + timeout
        if gives_up_at is not None:
            self._begin_shutdown(waits_until=gives_up_at, gives_up_at=gives_up_at)
        else:
            self._state.pending.close()
        return self._finish_shutdown(gives_up_at=gives_up_at, reason="shutdown()")

    async def shutdown_async(self, timeout: Optional[float] = None) -> bool:
        """``shutdown(timeout)`` from a coroutine, waiting in a thread so the event loop runs on."""
        return await in_thread(self.shutdown, timeout)

    def _begin_shutdown(self, *, waits_until: float, gives_up_at: Optional[float]) -> None:
        self._shut_down = True
        state = self._state
        state.clock.begin(waits_until=waits_until, gives_up_at=gives_up_at)
        state.pending.close()  # also wakes the worker, to plan with the deadlines

    def _finish_shutdown(
        self,
        *,
        gives_up_at: Optional[float],
        reason: str,
        reports: Optional[WriteOffReports] = None,
    ) -> bool:
        """Wait for the flush a shutdown began; out of time, write off what is left.

        ``reports``: on_error calls a shutdown of several clients at exit waits for at the
        end, all together; without it this one waits for its own (see ``write_off``).
        """
        state = self._state
        dropped_before = state.pending.stats().dropped_shutdown
        settled, no_loss = state.pending.flush(_remaining(gives_up_at))
        if not settled:
            # Out of time: from here on nothing of this client sends, and whatever is
            # still pending (queued, in flight, parked) is counted and handed over here.
            state.transport.stop_sending()
            problem = state.pending.stats().last_error or "the endpoint did not answer in time"
            texts = state.pending.write_off(f"{reason} ran out of time; before: {problem}")
            own = reports is None
            if reports is None:
                reports = WriteOffReports(last_deadline=time.monotonic())
            if texts:
                error = ShutdownDropError(
                    f"{len(texts)} events were still undelivered at {reason}; "
                    f"last problem: {problem}",
                    batch_id="",
                    attempts=0,
                )
                reports.start(self.config, decode_for_report(texts), error)
            reports.include(state.pending)
            if own:
                reports.wait()
        dropped = state.pending.stats().dropped_shutdown - dropped_before
        if dropped:
            logger.warning(
                "%s: %d events could not be delivered in time and were dropped "
                "(stats: dropped_shutdown); last problem: %s",
                reason, dropped, state.pending.stats().last_error,
            )  # fmt: skip
        thread = state.thread
        if thread is not None:
            thread.join(_remaining(gives_up_at))
        state.transport.stop_sending()  # ends its watchdog thread too: no thread outlives this
        if thread is None or not thread.is_alive():
            state.transport.close()
        state.pending.detach()  # a spool leaves what is undelivered on disk for the next run
        _lifecycle.stopped(self)
        return settled and no_loss

    def stats(self) -> Stats:
        """A snapshot of the counters: tracked, queued, delivered, dropped_* and more."""
        return self._state.pending.stats()

    # ------------------------------------------------------------ process life

    def _reset_for_new_process(self) -> None:
        """In a forked child: a fresh queue, thread and session; the parent sends its own.

        A client shut down before the fork stays shut down in the child.
        """
        self._events.reset_for_process()
        self._state = ProcessState(self.config)
        self._warned_closed = False
        if self._shut_down:
            self._state.pending.close()


def _remaining(deadline: Optional[float]) -> Optional[float]:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def use_analytics(config: Mapping[str, Any]) -> Analytics:
    """A client from the browser SDK's configuration shape.

    ``{"providers": {"custom": {"enabled": True, "settings": {...}}}}``, with
    the seed's camelCase option names (ours work too).
    """
    return Analytics.from_settings(settings_from_providers(config))
