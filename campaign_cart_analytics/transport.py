"""One batch, one request: the ``requests`` session and what the endpoint answered.

``Transport.post`` makes exactly one attempt and says what came of it in an
``Answer``; whether and when to try again is the worker's decision
(``retry``, ``overload``). Several sender threads may post at once: they
share one session, whose connection pool holds ``max_concurrent_requests``
kept-alive connections.

- Each request is an ``attempts.Attempt``: ``request_timeout_ms`` bounds it
  whole, from connecting to the last byte of the response, and a shutdown
  that runs out of time cuts it off (``stop_sending``).
- The status line is the verdict: a 2xx whose body then breaks off is
  delivered.
- Redirects are never followed, so no token travels to another host.
- A TLS certificate that fails verification is ``fatal``: it cannot heal.
- The SDK's own requests are hidden from the application's OpenTelemetry
  traces (``_otel``), as OpenTelemetry's exporters hide theirs.
"""

from __future__ import annotations

import errno
import gzip
import logging
import platform
import re
import ssl
import threading
import urllib.parse
from typing import Any, Optional

import attrs
import requests
import urllib3
from requests.cookies import extract_cookies_to_jar
from requests.utils import urldefragauth
from urllib3.exceptions import (
    ConnectTimeoutError,
    NewConnectionError,
    ProtocolError,
    ProxyError,
    ReadTimeoutError,
    SSLError,
)

from . import _otel
from ._logging import logger
from ._version import __version__
from .attempts import STOPPED, TIMED_OUT, Attempt, AttemptGuard, GuardedAdapter, SendingStopped
from .config import Config, check_header_value
from .errors import ConfigError
from .retry import OVERLOAD_STATUSES, RETRYABLE_STATUSES, retry_after_seconds
from .shutdown_clock import ShutdownClock
from .urls import redact_url

USER_AGENT = f"campaign-cart-analytics-python/{__version__} (Python {platform.python_version()})"


@attrs.frozen
class Answer:
    """What one attempt came to.

    ``kind`` is one of: ``delivered`` (2xx); ``too_large`` (413);
    ``overloaded`` (429 or 503, with ``retry_after`` in seconds when given);
    ``failed`` (worth retrying: 5xx, 408, network errors, timeouts);
    ``rejected`` (3xx and other 4xx: not retried); ``fatal`` (no request could
    be made, or one that cannot heal: a header callable failed, a TLS
    certificate failed verification); ``cut_short`` (a shutdown ran out of time).
    ``response`` (the urllib3 response) and ``error`` are what ``Retry`` counts.
    """

    kind: str
    status: Optional[int] = None
    problem: str = ""
    retry_after: Optional[float] = None
    response: Any = attrs.field(default=None, eq=False, repr=False)
    error: Optional[Exception] = attrs.field(default=None, eq=False, repr=False)


class Transport:
    """Posts batch bodies to the endpoint through one keep-alive session."""

    def __init__(self, config: Config, clock: ShutdownClock) -> None:
        self._config = config
        self._clock = clock
        self._guard = AttemptGuard()
        self._session = requests.Session()
        size = config.max_concurrent_requests
        self._adapter = GuardedAdapter(max_retries=0, pool_connections=1, pool_maxsize=size)
        self._session.mount("http://", self._adapter)
        self._session.mount("https://", self._adapter)
        self._session.headers.update(
            {"User-Agent": USER_AGENT, "Content-Type": "application/json", "Accept": "*/*"}
        )
        if config.compression == "gzip":
            self._session.headers["Content-Encoding"] = "gzip"
        self._static_headers = {
            name: value for name, value in config.headers.items() if isinstance(value, str)
        }
        self._session.headers.update(self._static_headers)
        self._secrets = secrets_of(config.endpoint, self._static_headers.values())
        if config.client_cert is not None:
            self._session.cert = config.client_cert
        # All but the body and per-batch headers is the same for every batch: prepare it
        # once (session headers, URL credentials, .netrc, proxy and TLS settings from the
        # environment). session.post() would read the environment again for each batch.
        self._template = self._prepare_template()
        _hide_in_urllib3_logs(self._template)
        # An explicit verify wins over REQUESTS_CA_BUNDLE; True leaves the environment's.
        # So does this client's proxy over HTTPS_PROXY; without one, the environment's.
        self._settings: dict[str, Any] = dict(
            self._session.merge_environment_settings(
                config.endpoint,
                {} if config.proxy is None else {"http": config.proxy, "https": config.proxy},
                None,
                None if config.verify is True else config.verify,
                config.client_cert,
            )
        )
        self._route_lock = threading.Lock()
        self._route: Optional[tuple[Any, str]] = None  # see _pool_and_url

    def close(self) -> None:
        self._guard.stop()
        with self._route_lock:
            route, self._route = self._route, None
        if route is not None:
            route[0].close()  # its kept-alive connections (urllib3 2.7 leaves them to GC)
        self._session.close()

    def stop_sending(self) -> None:
        """Cut off every request in flight and start none any more (a shutdown's deadline)."""
        self._guard.stop()

    def _prepare_template(self) -> requests.PreparedRequest:
        # An Authorization header the user set is sent as set: an auth that changes nothing
        # keeps requests from putting a .netrc entry's Basic auth in its place.
        auth = keep_authorization if self._config.sets_authorization else None
        try:
            return self._session.prepare_request(
                requests.Request("POST", self._config.endpoint, auth=auth)
            )
        except UnicodeEncodeError:  # config checked the URL's own; .netrc's come in here
            raise ConfigError(
                "endpoint: the credentials .netrc holds for its host have characters beyond "
                "Latin-1, which HTTP Basic auth cannot carry"
            ) from None

    def post(self, body: bytes, batch_id: str) -> Answer:
        """POST one batch body, once; never raises for HTTP or network trouble."""
        # Cookies the endpoint set (load balancer stickiness) go back on later batches:
        # once there are any, prepare each request afresh so the session adds them.
        template = self._template if not self._session.cookies else self._prepare_template()
        request = template.copy()
        try:
            headers = self._headers_for(batch_id)
        except Exception as exc:  # a header callable failed: no request can be made
            return Answer("fatal", problem=str(exc))
        request.headers.update(headers)
        secrets = self._secrets
        if len(headers) > 1:  # values header callables produced for this request
            secrets = secrets + secrets_of("", list(headers.values())[1:])
        if self._config.compression == "gzip":
            body = gzip.compress(body, compresslevel=5)
        request.prepare_body(body, None)
        timeout = self._clock.attempt_timeout(self._config.request_timeout_ms / 1000)
        if timeout <= 0:
            return Answer("cut_short", problem="shutdown deadline passed")
        try:
            with self._guard.attempt(timeout) as attempt, _otel.suppressed():
                answer = self._exchange(request, timeout, secrets)
        except SendingStopped:
            return Answer("cut_short", problem="shutdown deadline passed")
        return _explain_cut(answer, attempt, timeout, self._clock.gave_up())

    def _exchange(
        self, request: requests.PreparedRequest, timeout: float, secrets: tuple[str, ...]
    ) -> Answer:
        try:
            pool, url = self._pool_and_url()
            response = pool.urlopen(
                "POST", url, body=request.body, headers=request.headers,
                timeout=urllib3.Timeout(connect=timeout, read=timeout),
                retries=False,  # the worker decides (retry.py)
                redirect=False,  # no token travels to another host
                assert_same_host=False,  # a URL for a proxy names the endpoint's host
                preload_content=False,  # the status is the verdict: the body is read after
                decode_content=True,
            )  # fmt: skip
        except UnicodeEncodeError:  # config checks the endpoint's and proxy=, not HTTPS_PROXY's
            return Answer(
                "fatal",
                problem="the proxy's credentials from the environment (HTTP_PROXY, HTTPS_PROXY, "
                "ALL_PROXY or their lower-case forms) hold characters beyond Latin-1, which "
                "HTTP Basic auth cannot carry",
            )
        except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as exc:
            problem = describe_error(exc, timeout)
            if _find_cause(exc, ssl.SSLCertVerificationError) is not None:
                return Answer("fatal", problem=problem)
            return Answer("failed", problem=problem, error=exc)
        try:
            if "Set-Cookie" in response.headers:  # load balancer stickiness: sent back later
                extract_cookies_to_jar(self._session.cookies, request, response)  # type: ignore[no-untyped-call]
            return _judge(response, secrets)
        finally:
            response.release_conn()

    def _pool_and_url(self) -> tuple[Any, str]:
        """The urllib3 connection pool for the endpoint (through its proxy, with its TLS
        settings) and the URL to ask it for, found once as requests' adapter finds them.

        Requests go to the pool directly, not through ``Session.send``: for a batch, the
        session's hooks, per-request environment and response wrapping cost more CPU than
        the HTTP exchange itself, while the session still prepares every request (headers,
        credentials, cookies) and owns the pools."""
        with self._route_lock:
            if self._route is None:
                proxies, verify = self._settings["proxies"], self._settings["verify"]
                if self._config.endpoint.startswith("http:") and not any(proxies.values()):
                    verify = True  # no TLS on the way: no CA bundle to look up each time
                cert = self._settings["cert"]
                pool = self._adapter.get_connection_with_tls_context(
                    self._template, verify, proxies=proxies, cert=cert
                )
                self._adapter.cert_verify(pool, self._config.endpoint, verify, cert)  # type: ignore[no-untyped-call]
                self._route = pool, self._adapter.request_url(self._template, proxies)
            return self._route

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


def _judge(response: urllib3.BaseHTTPResponse, secrets: tuple[str, ...]) -> Answer:
    status = response.status
    body = _read_body(response)
    if 200 <= status < 300:
        return Answer("delivered", status)
    if status == 413:
        return Answer("too_large", status, "HTTP 413 Payload Too Large")
    if status in OVERLOAD_STATUSES:
        wait = retry_after_seconds(response.headers.get("Retry-After"))
        return Answer("overloaded", status, f"HTTP {status}{_hint(status)}", wait, response)
    if 300 <= status < 400:
        location = response.headers.get("Location", "")
        where = redact_url(location) if location else "no Location header"
        return Answer(
            "rejected",
            status,
            f"HTTP {status} redirect to {where}; redirects are not followed: "
            "set endpoint to the final URL",
        )
    if status in RETRYABLE_STATUSES:
        return Answer("failed", status, f"HTTP {status}{_hint(status)}", response=response)
    excerpt = _without(secrets, _body_start(body))  # an endpoint may echo the token back
    return Answer("rejected", status, f"HTTP {status}{_hint(status)}: {excerpt}")


class _HideOurQueries(logging.Filter):
    """urllib3 logs each request line at DEBUG, query string included: for the URLs this
    SDK posts to, the query values are replaced by ``***`` (other requests are left alone)."""

    def __init__(self) -> None:
        super().__init__()
        self.shown: dict[str, str] = {}  # path?query as urllib3 logs it -> redacted

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and self.shown:
            record.args = tuple(
                self.shown.get(arg, arg) if isinstance(arg, str) else arg for arg in record.args
            )
        return True


_urllib3_filter = _HideOurQueries()


def _hide_in_urllib3_logs(prepared: requests.PreparedRequest) -> None:
    """urllib3 logs the URL it is given, as requests prepared it (its path and query, or
    through a proxy the whole URL without credentials): hide that one's query values."""
    url = prepared.url or ""
    if "?" not in url:
        return
    for logged in (prepared.path_url, urldefragauth(url)):
        _urllib3_filter.shown[logged] = redact_url(logged)
    urllib3_log = logging.getLogger("urllib3.connectionpool")
    if _urllib3_filter not in urllib3_log.filters:
        urllib3_log.addFilter(_urllib3_filter)


def secrets_of(url: str, header_values: Any) -> tuple[str, ...]:
    """What must not be shown of a request: header values and their tokens, and the
    URL's credentials and query values, longest first."""
    found: set[str] = set()
    for value in header_values:
        found.add(value)
        found.update(word for word in value.split() if len(word) >= 6)
    parts = urllib.parse.urlsplit(url) if url else None
    if parts is not None:
        found.update(item for item in (parts.username, parts.password) if item)
        found.update(v for _, v in urllib.parse.parse_qsl(parts.query) if len(v) >= 4)
    return tuple(sorted((s for s in found if len(s) >= 4), key=len, reverse=True))


def _without(secrets: tuple[str, ...], text: str) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def _explain_cut(answer: Answer, attempt: Attempt, timeout: float, gave_up: bool) -> Answer:
    """An answer that says why its attempt was cut off, where it was. ``gave_up``: the
    shutdown's deadline has passed, so a timeout was the deadline's (it shortens them)."""
    if answer.kind == "delivered" or attempt.cut_off is None:
        return answer
    if attempt.cut_off == STOPPED or gave_up:
        return Answer("cut_short", problem="cut off in flight by the shutdown deadline")
    assert attempt.cut_off == TIMED_OUT
    problem = f"no complete response within {timeout:g} s (request_timeout_ms)"
    return attrs.evolve(answer, problem=problem)


def _hint(status: int) -> str:
    hints = {
        401: " (check the Authorization header or token)",
        403: " (check the token's permissions)",
        429: " Too Many Requests",
        503: " Service Unavailable",
        404: " (check the endpoint's path)",
        405: " (the endpoint does not accept POST)",
        407: " (the proxy wants credentials: check proxy= or HTTP(S)_PROXY)",
    }
    return hints.get(status, "")


def _read_body(response: urllib3.BaseHTTPResponse) -> bytes:
    """The body, or what arrived of it: a body that breaks off does not change the verdict."""
    try:
        return response.read()
    except Exception as exc:  # whatever the connection did: the status line was the answer
        logger.debug("HTTP %s: the body broke off (%s)", response.status, exc)
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


def describe_error(
    exc: BaseException, timeout: Optional[float] = None, where: str = "the endpoint"
) -> str:
    """A network error in plain words, without URLs (they may carry secrets). ``where``:
    whose host and certificate (the endpoint's, or a proxy's)."""
    proxy = _find_cause(exc, ProxyError)
    if isinstance(proxy, ProxyError):
        return _proxy_problem(proxy, timeout)
    if _find_cause(exc, ReadTimeoutError) or isinstance(exc, requests.ReadTimeout):
        return f"no response within {timeout:g} s" if timeout else "read timed out"
    connect_failure = _find_cause(exc, NewConnectionError)
    if connect_failure is not None:
        cause = _find_cause(connect_failure, OSError)
        if isinstance(cause, OSError) and cause.errno == errno.ECONNREFUSED:
            return "connection refused"
        if "resolve" in str(connect_failure) or "Name or service" in str(connect_failure):
            return f"DNS lookup failed for {where}'s host"
        return "could not connect"
    if _find_cause(exc, ConnectTimeoutError):
        return "connection timed out"
    certificate = _find_cause(exc, ssl.SSLCertVerificationError)
    if isinstance(certificate, ssl.SSLCertVerificationError):
        return (
            f"TLS certificate verification failed ({_verify_message(certificate)}); "
            f"not retried: fix {where}'s certificate, or set verify to the CA bundle "
            "that signed it"
        )
    if _find_cause(exc, SSLError) or isinstance(exc, requests.exceptions.SSLError):
        return "TLS error (protocol or handshake)"
    if _find_cause(exc, ProtocolError):
        return "connection closed before a response"
    return type(exc).__name__


def keep_authorization(request: requests.PreparedRequest) -> requests.PreparedRequest:
    """A requests ``auth`` that changes nothing: given where the user set Authorization,
    it keeps requests from putting credentials from the URL or .netrc in its place."""
    return request


def _proxy_problem(error: ProxyError, timeout: Optional[float]) -> str:
    """What went wrong at the proxy: its refusal of the CONNECT tunnel, or reaching it."""
    tunnel = re.search(r"Tunnel connection failed: ([0-9]{3})", str(error))
    if tunnel is not None:
        status = int(tunnel.group(1))
        return f"the proxy refused the tunnel to the endpoint: HTTP {status}{_hint(status)}"
    inner = getattr(error, "original_error", None)
    if isinstance(inner, BaseException) and not isinstance(inner, ProxyError):
        return f"at the proxy: {describe_error(inner, timeout, where='the proxy')}"
    return "the proxy failed"


def _verify_message(error: ssl.SSLCertVerificationError) -> str:
    message = getattr(error, "verify_message", None)
    return str(message) if message else str(error)
