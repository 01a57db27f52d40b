"""Bounded attempts and TLS (issue 8): request_timeout_ms bounds an attempt whole, a
certificate that fails verification is not retried, ``verify`` takes a CA bundle."""

from __future__ import annotations

import os
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
from helpers import Errors, RawServer
from receiver import Receiver

import campaign_cart_analytics as cca

# ---------------------------------------------------------------- 7. the whole attempt is bounded


class TricklingServer(RawServer):
    """Sends ``head`` at once, then ``tail`` one byte every 0.3 s (15 s in all)."""

    def __init__(self, head: bytes, tail: bytes) -> None:
        self.head, self.tail = head, tail
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(65536)
                conn.sendall(self.head)
                for byte in self.tail:
                    if self.stop.wait(0.3):
                        return
                    conn.sendall(bytes([byte]))
            except OSError:
                return


@pytest.fixture
def trickling() -> Iterator[Callable[[bytes, bytes], TricklingServer]]:
    servers: list[TricklingServer] = []

    def start(head: bytes, tail: bytes) -> TricklingServer:
        servers.append(TricklingServer(head, tail))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def test_request_timeout_bounds_the_whole_attempt(make_client: Any, trickling: Any) -> None:
    server = trickling(b"", b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n")
    errors = Errors()
    client = make_client(
        endpoint=server.url, request_timeout_ms=1000, max_retries=0, on_error=errors
    )
    client.track("e")
    started = time.monotonic()
    assert client.flush(timeout=10) is False
    assert 0.9 <= time.monotonic() - started < 2.0
    assert "no complete response within 1 s (request_timeout_ms)" in str(errors.calls[0][1])
    assert client.stats().dropped_delivery == 1


def test_a_status_line_then_trickling_headers_is_bounded_and_the_status_is_the_verdict(
    make_client: Any, trickling: Any
) -> None:
    server = trickling(b"HTTP/1.1 202 Accepted\r\n", b"X-Slow: " + b"a" * 50)
    client = make_client(endpoint=server.url, request_timeout_ms=1000, max_retries=0)
    client.track("e")
    started = time.monotonic()
    assert client.flush(timeout=10) is True
    assert 0.9 <= time.monotonic() - started < 2.0


def test_a_timed_out_attempt_is_retried_on_the_schedule(make_client: Any, trickling: Any) -> None:
    server = trickling(b"", b"HTTP/1.1 202 Accepted\r\n\r\n")
    client = make_client(
        endpoint=server.url, request_timeout_ms=300, max_retries=1, retry_delay_ms=50
    )
    client.track("e")
    started = time.monotonic()
    assert client.flush(timeout=10) is False
    assert 0.6 <= time.monotonic() - started < 1.5  # two attempts of 0.3 s and a wait of 0.05 s
    assert client.stats().retries == 1


# ---------------------------------------------------------------- TLS certificates


@pytest.fixture
def tls_receiver(self_signed: tuple[str, str]) -> Iterator[Receiver]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*self_signed)
    server = Receiver(tls=context)
    yield server
    server.close()


def test_a_certificate_that_fails_verification_is_not_retried(
    make_client: Any, tls_receiver: Receiver
) -> None:
    errors = Errors()
    client = make_client(endpoint=tls_receiver.url, on_error=errors, retry_delay_ms=2000)
    client.track("e")
    started = time.monotonic()
    assert client.flush(timeout=10) is False
    assert time.monotonic() - started < 1.5  # no retry waits
    error = errors.calls[0][1]
    assert isinstance(error, cca.DeliveryError) and error.attempts == 1
    assert "certificate verification failed" in str(error) and "verify" in str(error)
    assert "not retried" in str(error)


def test_verify_takes_the_ca_bundle_that_signed_the_certificate(
    make_client: Any, tls_receiver: Receiver, self_signed: tuple[str, str]
) -> None:
    client = make_client(endpoint=tls_receiver.url, verify=self_signed[0])
    client.track("e")
    assert client.flush(timeout=10) is True
    with pytest.raises(cca.ConfigError, match="verify must be True, False, or the path"):
        cca.Analytics(tls_receiver.url, verify="/no/such/bundle.pem")


def test_a_relative_verify_path_still_holds_after_a_chdir(
    make_client: Any, tls_receiver: Receiver, self_signed: tuple[str, str], tmp_path: Path
) -> None:
    here = os.getcwd()
    os.chdir(Path(self_signed[0]).parent)
    try:
        client = make_client(endpoint=tls_receiver.url, verify="cert.pem")
        os.chdir(tmp_path)  # the working directory of a later part of the program
        client.track("e")
        assert client.flush(timeout=10) is True
    finally:
        os.chdir(here)
