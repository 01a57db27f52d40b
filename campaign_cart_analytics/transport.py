"""One batch over HTTP: a ``requests.Session`` whose adapter retries on the seed's schedule.

The schedule (SPEC section 6) is driven by ``DeliveryRetry``, a
``urllib3.Retry`` mounted through ``requests``' ``HTTPAdapter`` for both
``http://`` and ``https://``:

- attempt 1 at once; retry k starts ``retry_delay * 2**(k-1)`` after attempt
  k failed (urllib3's own ``backoff_factor`` would give 0, 2f, 4f);
- retried: 5xx, 408, 429, connection errors and timeouts, for ``POST`` too
  (read errors included: the receiver drops duplicates by ``Idempotency-Key``);
- ``Retry-After`` on 429/503 replaces the computed wait; no wait exceeds 60 s;
- redirects are never followed, so no token travels to another host;
- a TLS certificate that fails verification is not retried: it cannot heal.

Each request is an ``attempts.Attempt``: ``request_timeout_ms`` bounds it
whole, from connecting to the last byte of the response, and a shutdown that
runs out of time cuts it off (``stop_sending``). The status line is the
verdict: a 2xx whose body then breaks off is delivered.

The wait before a retry does not happen inside the request: ``DeliveryRetry``
raises ``RetryLater`` with the updated ``Retry`` and the delay, and the
worker re-sends the batch with that ``Retry`` when it is due, delivering other
batches meanwhile. So a batch in backoff never holds back the ones behind it,
and shutdown can give it its last attempt at once instead of waiting.
"""

from __future__ import annotations

import errno
import platform
import ssl
import threading
import time
from typing import TYPE_CHECKING, Any, Optional

import attrs
import requests
from urllib3.exceptions import (
    ConnectTimeoutError,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)
from urllib3.util.retry import Retry

from ._logging import logger
from ._version import __version__
from .attempts import STOPPED, TIMED_OUT, Attempt, AttemptGuard, GuardedAdapter, SendingStopped
from .config import Config, check_header_value, redact_url

if TYPE_CHECKING:
    from urllib3.response import BaseHTTPResponse

#: No single wait between attempts is longer than this, whatever the schedule or Retry-After say.
MAX_WAIT_SECONDS = 60.0

RETRYABLE_STATUSES = frozenset({408, 429, *range(500, 600)})

USER_AGENT = f"campaign-cart-analytics-python/{__version__} (Python {platform.python_version()})"


class RetryLater(Exception):
    """Raised from ``DeliveryRetry.sleep``: re-send with ``retry`` after ``delay`` seconds."""

    def __init__(self, retry: DeliveryRetry, delay: float, problem: str) -> None:
        super().__init__(problem)
        self.retry = retry
        self.delay = delay
        self.problem = problem


class ShutdownClock:
    """The deadlines a shutdown imposes on delivery; none until ``begin`` is called.

    ``waits_until``: a retry due later than this is not waited for; the batch
    gets one last attempt at once (at interpreter exit it is "now": the seed's
    page unload does not back off). ``gives_up_at``: no attempt may run past
    this; it bounds request timeouts.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.waits_until: Optional[float] = None
        self._gives_up_at: Optional[float] = None

    def begin(self, *, waits_until: float, gives_up_at: Optional[float]) -> None:
        with self._lock:
            if self.waits_until is None or waits_until < self.waits_until:
                self.waits_until = waits_until
            if gives_up_at is not None and (
                self._gives_up_at is None or gives_up_at < self._gives_up_at
            ):
                self._gives_up_at = gives_up_at

    def cuts_short(self, due: float) -> bool:
        """True when a retry due at ``due`` would end after the shutdown's deadline."""
        waits_until = self.waits_until
        return waits_until is not None and due > waits_until

    def attempt_timeout(self, timeout: float) -> float:
        """``timeout``, shortened so that an attempt ends by the shutdown's give-up time."""
        if self._gives_up_at is None:
            return timeout
        return max(0.0, min(timeout, self._gives_up_at - time.monotonic()))


class DeliveryRetry(Retry):
    """``urllib3.Retry`` with the seed's schedule and interruptible waits (see module doc)."""

    RETRY_AFTER_STATUS_CODES = frozenset({429, 503})

    retry_delay: float = 1.0

    @classmethod
    def for_config(cls, config: Config) -> DeliveryRetry:
        retry = cls(
            total=config.max_retries,
            connect=None,
            read=None,
            status=None,
            other=None,
            redirect=False,
            allowed_methods=frozenset({"POST"}),
            status_forcelist=RETRYABLE_STATUSES,
            raise_on_status=False,
            respect_retry_after_header=True,
        )
        retry.retry_delay = config.retry_delay_ms / 1000
        return retry

    def new(self, **kw: Any) -> DeliveryRetry:
        retry = super().new(**kw)
        retry.retry_delay = self.retry_delay
        return retry

    def increment(
        self,
        method: Optional[str] = None,
        url: Optional[str] = None,
        response: Optional[BaseHTTPResponse] = None,
        error: Optional[Exception] = None,
        _pool: Any = None,
        _stacktrace: Any = None,
    ) -> DeliveryRetry:
        if error is not None and _find_cause(error, ssl.SSLCertVerificationError) is not None:
            raise MaxRetryError(_pool, url, error)  # a certificate does not heal by retrying
        return super().increment(method, url, response, error, _pool, _stacktrace)

    def get_backoff_time(self) -> float:
        failed_attempts = len(self.history)
        if failed_attempts == 0:
            return 0.0
        return float(min(MAX_WAIT_SECONDS, self.retry_delay * 2 ** (failed_attempts - 1)))

    def retry_after_seconds(self, response: Optional[BaseHTTPResponse]) -> Optional[float]:
        """``Retry-After`` in seconds on a 429/503, capped at 60; None if absent or bad."""
        if response is None or response.status not in self.RETRY_AFTER_STATUS_CODES:
            return None
        value = response.headers.get("Retry-After")
        if value is None:
            return None
        try:
            seconds = float(self.parse_retry_after(value))
        except Exception:  # an unparsable header falls back to the schedule
            return None
        return min(MAX_WAIT_SECONDS, seconds)

    def sleep(self, response: Optional[BaseHTTPResponse] = None) -> None:
        """Hand the wait to the caller instead of sleeping (see the module doc)."""
        if self.history and self.history[-1].error is not None:
            # A parked batch keeps this Retry: its history must not keep the failed
            # attempt's stack alive, and with it that attempt's request body.
            _drop_tracebacks(self.history[-1].error)
        problem = describe_history_entry(self.history[-1]) if self.history else "unknown error"
        delay = self.retry_after_seconds(response)
        raise RetryLater(self, self.get_backoff_time() if delay is None else delay, problem)

    def final(self) -> DeliveryRetry:
        """The same retry state allowing no further retries: for a last attempt."""
        return self.new(total=0)


@attrs.frozen
class Outcome:
    """What became of one batch's requests.

    ``kind`` is one of: ``delivered`` (2xx); ``too_large`` (413); ``rejected``
    (a status that is not retried: 3xx, other 4xx); ``failed`` (retries used
    up, or no request could be made); ``retry_later`` (re-send with ``retry``
    after ``delay`` seconds); ``cut_short`` (the shutdown gave up before it).
    """

    kind: str
    attempts: int
    status: Optional[int] = None
    problem: str = ""
    retry: Optional[DeliveryRetry] = None
    delay: float = 0.0


class Transport:
    """Posts batch bodies to the endpoint through one keep-alive session."""

    def __init__(self, config: Config, clock: ShutdownClock) -> None:
        self._config = config
        self._clock = clock
        self._guard = AttemptGuard()
        self._session = requests.Session()
        self._first_attempt = DeliveryRetry.for_config(config)
        self._adapter = GuardedAdapter(
            max_retries=self._first_attempt, pool_connections=1, pool_maxsize=1
        )
        self._session.mount("http://", self._adapter)
        self._session.mount("https://", self._adapter)
        self._session.headers.update(
            {"User-Agent": USER_AGENT, "Content-Type": "application/json", "Accept": "*/*"}
        )
        self._static_headers = {
            name: value for name, value in config.headers.items() if isinstance(value, str)
        }
        self._session.headers.update(self._static_headers)
        # All but the body and per-batch headers is the same for every batch: prepare it
        # once (session headers, URL credentials, .netrc, proxy and TLS settings from the
        # environment). session.post() would read the environment again for each batch.
        self._template = self._prepare_template()
        self._send_options: dict[str, Any] = {
            # An explicit verify wins over REQUESTS_CA_BUNDLE; True leaves the environment's.
            **self._session.merge_environment_settings(
                config.endpoint, {}, None, None if config.verify is True else config.verify, None
            ),
            "stream": True,  # the status is the verdict: the body is read after it, on our terms
        }

    def close(self) -> None:
        self._session.close()

    def stop_sending(self) -> None:
        """Cut off every request in flight and start none any more (a shutdown's deadline)."""
        self._guard.stop()

    def _prepare_template(self) -> requests.PreparedRequest:
        return self._session.prepare_request(requests.Request("POST", self._config.endpoint))

    def send(
        self,
        body: bytes,
        batch_id: str,
        retry: Optional[DeliveryRetry] = None,
        *,
        final: bool = False,
    ) -> Outcome:
        """POST one batch body; never raises for HTTP or network trouble.

        ``retry`` resumes a batch's retry state (from a ``retry_later``
        outcome); ``final`` makes this its last attempt, whatever happens.
        Only the client's one worker thread sends, so setting the adapter's
        retry policy for the length of one call is safe.
        """
        # Cookies the endpoint set (load balancer stickiness) go back on later batches:
        # once there are any, prepare each request afresh so the session adds them.
        template = self._template if not self._session.cookies else self._prepare_template()
        request = template.copy()
        try:
            request.headers.update(self._headers_for(batch_id))
        except Exception as exc:  # a header callable failed: no request can be made
            return Outcome("failed", attempts=0, problem=str(exc))
        request.prepare_body(body, None)
        timeout = self._clock.attempt_timeout(self._config.request_timeout_ms / 1000)
        if timeout <= 0:
            return Outcome("cut_short", attempts=0, problem="shutdown deadline passed")
        policy = retry or self._first_attempt
        self._adapter.max_retries = policy.final() if final else policy
        try:
            with self._guard.attempt(timeout) as attempt:
                outcome = self._post(request, policy, timeout)
        except SendingStopped:
            return Outcome("cut_short", attempts=0, problem="shutdown deadline passed")
        finally:
            self._adapter.max_retries = self._first_attempt
        return _explain_cut(outcome, attempt, timeout)

    def _post(
        self, request: requests.PreparedRequest, policy: DeliveryRetry, timeout: float
    ) -> Outcome:
        try:
            response = self._session.send(
                request,
                timeout=(timeout, timeout),
                allow_redirects=False,
                **self._send_options,
            )
        except RetryLater as later:
            return Outcome(
                "retry_later",
                attempts=len(later.retry.history),
                problem=later.problem,
                retry=later.retry,
                delay=later.delay,
            )
        except requests.RequestException as exc:
            exhausted = _find_cause(exc, MaxRetryError) is not None
            attempts = len(policy.history) + 1 if exhausted else 1
            return Outcome("failed", attempts=attempts, problem=describe_error(exc, timeout))
        with response:
            return self._outcome_of(response)

    def _outcome_of(self, response: requests.Response) -> Outcome:
        status = response.status_code
        retries = getattr(response.raw, "retries", None)
        attempts = len(retries.history) + 1 if retries is not None else 1
        body = _read_body(response)
        if 200 <= status < 300:
            return Outcome("delivered", attempts, status)
        if status == 413:
            return Outcome("too_large", attempts, status, "HTTP 413 Payload Too Large")
        if 300 <= status < 400:
            location = response.headers.get("Location", "")
            where = redact_url(location) if location else "no Location header"
            return Outcome(
                "rejected",
                attempts,
                status,
                f"HTTP {status} redirect to {where}; redirects are not followed: "
                "set endpoint to the final URL",
            )
        if status in RETRYABLE_STATUSES:
            return Outcome("failed", attempts, status, f"HTTP {status}{_hint(status)}")
        return Outcome(
            "rejected", attempts, status, f"HTTP {status}{_hint(status)}: {_body_start(body)}"
        )

    def _headers_for(self, batch_id: str) -> dict[str, str]:
        headers = {"Idempotency-Key": batch_id}
        for name, value in self._config.headers.items():
            if name in self._static_headers:
                continue
            try:
                produced = value()  # type: ignore[operator]
            except Exception as exc:
                raise RuntimeError(
                    f"headers[{name!r}] callable raised {type(exc).__name__}"
                ) from exc
            headers[name] = check_header_value(name, produced)
        return headers


def _drop_tracebacks(error: BaseException) -> None:
    seen: set[int] = set()
    pending: list[Optional[BaseException]] = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        current.__traceback__ = None
        pending.extend((current.__cause__, current.__context__))


def _hint(status: int) -> str:
    hints = {
        401: " (check the Authorization header or token)",
        403: " (check the token's permissions)",
        404: " (check the endpoint's path)",
        405: " (the endpoint does not accept POST)",
    }
    return hints.get(status, "")


def _explain_cut(outcome: Outcome, attempt: Attempt, timeout: float) -> Outcome:
    """An outcome that says why its attempt was cut off, where it was."""
    if outcome.kind == "delivered" or attempt.cut_off is None:
        return outcome
    if attempt.cut_off == STOPPED:
        return Outcome(
            "cut_short", outcome.attempts, problem="cut off in flight by the shutdown deadline"
        )
    assert attempt.cut_off == TIMED_OUT
    problem = f"no complete response within {timeout:g} s (request_timeout_ms)"
    return attrs.evolve(outcome, problem=problem)


def _read_body(response: requests.Response) -> bytes:
    """The body, or what arrived of it: a body that breaks off does not change the verdict."""
    try:
        return response.content
    except Exception as exc:  # whatever the connection did: the status line was the answer
        logger.debug("HTTP %s: the body broke off (%s)", response.status_code, exc)
        return b""


def _body_start(body: bytes, limit: int = 200) -> str:
    text = body[: limit * 4].decode("utf-8", "replace").strip().replace("\n", " ")
    if not text:
        return "(empty body)"
    return repr(text[:limit] + ("..." if len(text) > limit else ""))


def _find_cause(exc: BaseException, kind: type[BaseException]) -> Optional[BaseException]:
    """The first exception of ``kind`` in ``exc``, its args, reasons and causes."""
    seen: set[int] = set()
    todo: list[Any] = [exc]
    while todo:
        current = todo.pop()
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, kind):
            return current
        todo.extend(current.args)
        todo.extend((getattr(current, "reason", None), current.__cause__, current.__context__))
    return None


def describe_error(exc: BaseException, timeout: Optional[float] = None) -> str:
    """A network error in plain words, without URLs (they may carry secrets)."""
    if _find_cause(exc, ReadTimeoutError) or isinstance(exc, requests.ReadTimeout):
        return f"no response within {timeout:g} s" if timeout else "read timed out"
    connect_failure = _find_cause(exc, NewConnectionError)
    if connect_failure is not None:
        cause = _find_cause(connect_failure, OSError)
        if isinstance(cause, OSError) and cause.errno == errno.ECONNREFUSED:
            return "connection refused"
        if "resolve" in str(connect_failure) or "Name or service" in str(connect_failure):
            return "DNS lookup failed for the endpoint's host"
        return "could not connect"
    if _find_cause(exc, ConnectTimeoutError):
        return "connection timed out"
    certificate = _find_cause(exc, ssl.SSLCertVerificationError)
    if isinstance(certificate, ssl.SSLCertVerificationError):
        return (
            f"TLS certificate verification failed ({_verify_message(certificate)}); "
            "not retried: fix the endpoint's certificate, or set verify to the CA bundle "
            "that signed it"
        )
    if _find_cause(exc, SSLError) or isinstance(exc, requests.exceptions.SSLError):
        return "TLS error (protocol or handshake)"
    if _find_cause(exc, ProtocolError):
        return "connection closed before a response"
    return type(exc).__name__


def _verify_message(error: ssl.SSLCertVerificationError) -> str:
    message = getattr(error, "verify_message", None)
    return str(message) if message else str(error)


def describe_history_entry(entry: Any) -> str:
    """One failed attempt recorded in ``Retry.history``, in plain words."""
    if entry.status is not None:
        return f"HTTP {entry.status}"
    if entry.error is not None:
        return describe_error(entry.error)
    return "unknown error"
