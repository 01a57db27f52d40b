"""Attempts: HTTP requests whose whole life is bounded, and which a shutdown can cut off.

A socket timeout bounds each read, not a request: a server that trickles a
byte every few hundred milliseconds keeps a request alive for ever, and with
it the thread that sends. And a request in flight when ``shutdown(timeout)``
runs out of time must stop sending there and then, not finish later.

``AttemptGuard`` does both. Each request runs inside ``guard.attempt(timeout)``,
which records an ``Attempt``: its deadline, and the connection it uses (the
connection classes below tell it, from the sending thread, as they connect
and send). The guard's watchdog thread sleeps until the earliest deadline
and cuts off an attempt that reaches it; ``stop()`` cuts off every attempt
in flight and refuses new ones. Cutting off shuts the socket down, so the
blocked read returns at once and no further byte goes out; the sender then
sees an ordinary connection error and asks ``attempt.cut_off`` why.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Optional

from requests.adapters import HTTPAdapter
from urllib3 import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.connection import HTTPConnection, HTTPSConnection

from ._logging import logger

#: ``Attempt.cut_off`` values: why an attempt was cut off.
TIMED_OUT = "timed out"
STOPPED = "stopped"


class SendingStopped(Exception):
    """``AttemptGuard.stop()`` was called: no request may start any more."""


class Attempt:
    """One request in flight: when it must end, and the connection it runs on."""

    __slots__ = ("_guard", "connection", "cut_off", "deadline")

    def __init__(self, guard: AttemptGuard, deadline: float) -> None:
        self._guard = guard
        self.deadline = deadline
        self.connection: Optional[HTTPConnection] = None
        self.cut_off: Optional[str] = None  # TIMED_OUT or STOPPED, once cut off

    def bind(self, connection: HTTPConnection) -> None:
        """Note the connection in use; shut it at once if this attempt was already cut off."""
        with self._guard._lock:
            self.connection = connection
            if self.cut_off is not None:
                _shut_socket(connection)
                raise ConnectionAbortedError(f"request {self.cut_off}")


class AttemptGuard:
    """Bounds the attempts of one transport and cuts them all off at ``stop()``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._in_flight: set[Attempt] = set()
        self._stopped = False
        self._watchdog: Optional[threading.Thread] = None
        self._wakes_at: Optional[float] = None  # when the watchdog looks next; None: not planned

    @contextmanager
    def attempt(self, timeout: float) -> Iterator[Attempt]:
        """Run one request in the block; it is cut off ``timeout`` seconds from now.

        Raises ``SendingStopped`` at once if ``stop()`` was called.
        """
        attempt = Attempt(self, time.monotonic() + timeout)
        with self._lock:
            if self._stopped:
                raise SendingStopped("the client is shut down")
            self._in_flight.add(attempt)
            self._start_watchdog()
            if self._wakes_at is None or attempt.deadline < self._wakes_at:
                self._changed.notify()
        _current.attempt = attempt
        try:
            yield attempt
        finally:
            _current.attempt = None
            with self._lock:
                self._in_flight.discard(attempt)

    def stop(self) -> None:
        """Cut off every attempt in flight and refuse new ones; the watchdog ends."""
        with self._lock:
            self._stopped = True
            for attempt in self._in_flight:
                _cut(attempt, STOPPED)
            self._changed.notify()

    # ------------------------------------------------------------ the watchdog

    def _start_watchdog(self) -> None:
        if self._watchdog is not None:
            return
        watchdog = threading.Thread(
            target=self._watch, name="campaign-cart-analytics-deadlines", daemon=True
        )
        try:
            watchdog.start()
        except RuntimeError:  # interpreter shutdown: socket timeouts still bound each read
            logger.debug("No deadline thread could be started", exc_info=True)
            return
        self._watchdog = watchdog

    def _watch(self) -> None:
        with self._changed:
            while not self._stopped:
                now = time.monotonic()
                next_deadline: Optional[float] = None
                for attempt in self._in_flight:
                    if attempt.cut_off is not None:
                        continue
                    if attempt.deadline <= now:
                        _cut(attempt, TIMED_OUT)
                    elif next_deadline is None or attempt.deadline < next_deadline:
                        next_deadline = attempt.deadline
                # Idle, look again in a minute rather than be woken by every request.
                self._wakes_at = now + 60.0 if next_deadline is None else next_deadline
                self._changed.wait(self._wakes_at - now)


def _cut(attempt: Attempt, why: str) -> None:
    attempt.cut_off = why
    if attempt.connection is not None:
        _shut_socket(attempt.connection)


def _shut_socket(connection: HTTPConnection) -> None:
    sock = connection.sock
    if sock is None:
        return  # still connecting: GuardedConnection.connect checks once it has a socket
    try:
        # The plain socket's shutdown, also for TLS sockets: SSLSocket.shutdown would
        # unwrap the TLS object under the feet of the thread reading from it.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass  # already closed by the other side or by the sender
    except Exception:  # pragma: no cover - a socket type we do not know
        logger.debug("could not shut a socket down", exc_info=True)


_current = threading.local()  # the sending thread's Attempt, while it runs one


class _GuardedConnectionMixin:
    """Tells the sending thread's ``Attempt`` which connection it runs on, and sends the
    request's head and body in one write.

    One write, not two: each socket call lets go of the GIL, and a sender that wants it
    back while ``track()`` runs in a loop waits for the interpreter's switch interval,
    two context switches each time. (It also spares the server a packet.)
    """

    sock: Any
    _held_head: Optional[bytes] = None  # the request's head, sent with its body

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        self._bind()

    def request(self, *args: Any, **kwargs: Any) -> None:
        self._bind()  # a kept-alive connection is not connected again
        self._held_head = None
        super().request(*args, **kwargs)  # type: ignore[misc]
        self._send_held_head()  # a request without a body

    def endheaders(self, *args: Any, **kwargs: Any) -> None:
        self._held_head = b""  # http.client's next send() is the head: hold it
        super().endheaders(*args, **kwargs)  # type: ignore[misc]

    def send(self, data: Any) -> None:
        head, self._held_head = self._held_head, None
        if head == b"":  # the head itself
            self._held_head = bytes(data)
            return
        if head and isinstance(data, (bytes, bytearray, memoryview)):
            data = head + bytes(data)
        elif head:
            super().send(head)  # type: ignore[misc]
        super().send(data)  # type: ignore[misc]

    def _send_held_head(self) -> None:
        head, self._held_head = self._held_head, None
        if head:
            super().send(head)  # type: ignore[misc]

    def _bind(self) -> None:
        attempt: Optional[Attempt] = getattr(_current, "attempt", None)
        if attempt is not None:
            attempt.bind(self)  # type: ignore[arg-type]


class GuardedHTTPConnection(_GuardedConnectionMixin, HTTPConnection):
    pass


class GuardedHTTPSConnection(_GuardedConnectionMixin, HTTPSConnection):
    pass


class _GuardedHTTPPool(HTTPConnectionPool):
    ConnectionCls = GuardedHTTPConnection


class _GuardedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = GuardedHTTPSConnection


_GUARDED_POOLS = {"http": _GuardedHTTPPool, "https": _GuardedHTTPSPool}


class GuardedAdapter(HTTPAdapter):
    """requests' adapter, with connections that report to the sending thread's attempt."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _GUARDED_POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):  # SOCKS has pool classes of its own
            manager.pool_classes_by_scheme = _GUARDED_POOLS
        return manager
