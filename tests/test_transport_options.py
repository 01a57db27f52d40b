"""Transport options users expect (issue 9): gzip, a proxy per client, mutual TLS, and no
spans of ours in the application's OpenTelemetry traces."""

from __future__ import annotations

import gzip
import http.client
import os
import socket
import ssl
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import Errors, RawServer
from receiver import Receiver, refused_url

import campaign_cart_analytics as cca
from campaign_cart_analytics.attempts import GuardedHTTPConnection
from campaign_cart_analytics.receiver import create_app, serve


def test_gzip_bodies_carry_content_encoding(make_client: Any, receiver: Receiver) -> None:
    client = make_client(compression="gzip", batch_size=50, batch_interval_ms=60_000)
    for n in range(50):
        client.track("dl_view_item", {"n": n, "ecommerce": {"items": [{"item_id": "SKU"}] * 5}})
    assert client.flush(timeout=5) is True
    (request,) = receiver.requests
    assert request.headers["content-encoding"] == "gzip"
    batch = __import__("json").loads(gzip.decompress(request.body))
    assert [e["n"] for e in batch["events"]] == list(range(50))
    assert len(request.body) < len(gzip.decompress(request.body)) / 5


def test_the_reference_receiver_takes_gzip_and_refuses_bombs_and_unknown_encodings() -> None:
    server = serve(create_app(max_body_bytes=10_000), port=0)
    try:
        client = cca.Analytics(server.url, compression="gzip")
        client.track("e", {"note": "zipped"})
        assert client.flush(timeout=5) is True
        assert server.app.store.stats()["events"] == 1
        client.shutdown(timeout=1)

        def post(body: bytes, encoding: str) -> int:
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
            connection.request(
                "POST", "/analytics", body, {"Content-Encoding": encoding,
                                             "Content-Type": "application/json"},
            )  # fmt: skip
            status = connection.getresponse().status
            connection.close()
            return status

        assert post(gzip.compress(b" " * 1_000_000), "gzip") == 413  # 1 MB from 1 kB
        assert post(b"not gzip", "gzip") == 400
        assert post(gzip.compress(b"{}")[:-6], "gzip") == 400  # cut short
        assert post(b"{}", "br") == 415
    finally:
        server.stop()


def test_check_and_send_take_compression(receiver: Receiver, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "campaign_cart_analytics"]
    server = serve(create_app(), port=0)
    try:
        checked = subprocess.run(
            [*command, "check", "--endpoint", server.url, "--compression", "gzip"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert checked.returncode == 0, checked.stdout + checked.stderr
    finally:
        server.stop()
    lines = tmp_path / "events.jsonl"
    lines.write_text("".join(f'{{"event": "e", "n": {n}}}\n' for n in range(30)))
    sent = subprocess.run(
        [*command, "send", str(lines), "--endpoint", receiver.url, "--compression", "gzip",
         "--max-concurrent-requests", "8", "--batch-size", "10"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    assert {r.headers["content-encoding"] for r in receiver.requests} == {"gzip"}
    assert len(receiver.requests) == 3


def test_a_proxy_per_client_wins_over_the_environment(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = Receiver()  # answers as a proxy would, and records the absolute-form request
    monkeypatch.setenv("HTTP_PROXY", refused_url())  # the environment's proxy is down
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    try:
        client = cca.Analytics(receiver.url, proxy=proxy.url.rsplit("/", 1)[0])
        client.track("e")
        assert client.flush(timeout=5) is True
        assert receiver.requests == [] and proxy.requests[0].path == receiver.url
        client.shutdown(timeout=1)
    finally:
        proxy.close()


class _ProxyWantingCredentials(RawServer):
    """A proxy that answers every request, CONNECT or not, 407."""

    def handle(self, conn: socket.socket) -> None:
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                head += chunk
            conn.sendall(
                b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                b"Proxy-Authenticate: Basic\r\nContent-Length: 0\r\n\r\n"
            )


@pytest.mark.parametrize("scheme", ["https", "http"])  # a CONNECT tunnel, or a forwarded POST
def test_a_proxy_wanting_credentials_is_named_in_the_error_without_secrets(scheme: str) -> None:
    proxy, errors = _ProxyWantingCredentials(), Errors()
    proxy_url = proxy.url.rsplit("/", 1)[0].replace("://", "://user:SECRETPW@")
    try:
        client = cca.Analytics(
            f"{scheme}://endpoint.invalid/a?token=SECRETTOKEN",
            proxy=proxy_url, max_retries=0, on_error=errors,
        )  # fmt: skip
        client.track("e")
        assert client.flush(timeout=5) is False
        problem = str(client.stats().last_error)
        assert "407" in problem and "the proxy wants credentials" in problem, problem
        assert "407" in str(errors.calls[0][1])
        assert "SECRET" not in problem + str(errors.calls[0][1]) + repr(client)
        client.shutdown(timeout=1)
    finally:
        proxy.close()


def test_a_proxy_that_cannot_be_reached_is_named_in_the_error() -> None:
    client = cca.Analytics(
        "https://endpoint.invalid/a", proxy=refused_url().rsplit("/", 1)[0], max_retries=0
    )
    client.track("e")
    assert client.flush(timeout=5) is False
    assert "at the proxy: connection refused" in str(client.stats().last_error)
    client.shutdown(timeout=1)


def test_a_proxy_whose_host_does_not_resolve_is_named_not_the_endpoint() -> None:
    client = cca.Analytics(
        "https://endpoint.invalid/a", proxy="http://proxy.invalid:3128", max_retries=0
    )
    client.track("e")
    assert client.flush(timeout=10) is False
    assert "at the proxy: DNS lookup failed for the proxy's host" in str(client.stats().last_error)
    client.shutdown(timeout=1)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("max_concurrent_requests", 0, "an int from 1 to 64"),
        ("max_concurrent_requests", 65, "an int from 1 to 64"),
        ("compression", "br", "None or 'gzip'"),
        ("client_cert", "/no/such.pem", "no such file"),
        ("client_cert", ("a", "b", "c"), r"a \(cert, key\) pair"),
        ("proxy", "socks5://127.0.0.1:1080", "the scheme is not http or https"),
        ("proxy", "http://user:pw@proxy.example:99999", "a bad port"),
    ],
)
def test_transport_options_are_checked(option: str, value: Any, message: str) -> None:
    with pytest.raises(cca.ConfigError, match=message) as caught:
        cca.Analytics("https://example.com/a", **{option: value})
    assert "pw@" not in str(caught.value)


# ---------------------------------------------------------------- mutual TLS


@pytest.fixture
def mtls_receiver(self_signed: tuple[str, str]) -> Iterator[Receiver]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*self_signed)
    context.verify_mode = ssl.CERT_REQUIRED  # no client certificate, no handshake
    context.load_verify_locations(self_signed[0])
    server = Receiver(tls=context)
    yield server
    server.close()


def test_client_cert_opens_an_endpoint_that_wants_one(
    mtls_receiver: Receiver, self_signed: tuple[str, str]
) -> None:
    cert, key = self_signed
    with cca.Analytics(mtls_receiver.url, verify=cert, client_cert=(cert, key)) as client:
        client.track("e")
        assert client.flush(timeout=10) is True
    without = cca.Analytics(mtls_receiver.url, verify=cert, max_retries=0)
    without.track("e")
    assert without.flush(timeout=10) is False
    assert "TLS" in str(without.stats().last_error) or "closed" in str(without.stats().last_error)
    without.shutdown(timeout=1)
    assert len(mtls_receiver.delivered_events()) == 1


# ---------------------------------------------------------------- OpenTelemetry


def test_the_sdks_requests_make_no_spans_in_the_applications_traces(receiver: Receiver) -> None:
    pytest.importorskip("opentelemetry.instrumentation.requests")
    script = textwrap.dedent(
        f"""
        import requests
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from opentelemetry.instrumentation.requests import RequestsInstrumentor
        import campaign_cart_analytics as cca

        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        RequestsInstrumentor().instrument()

        requests.post({receiver.url!r}, json={{"app": "own request"}})  # the app's: traced
        client = cca.Analytics({receiver.url!r}, batch_size=1)
        with trace.get_tracer("app").start_as_current_span("checkout"):
            for n in range(5):
                client.track("dl_purchase", {{"n": n}})
            assert client.flush(timeout=5)
        print(sorted(span.name for span in exporter.get_finished_spans()))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
        env={**os.environ, "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": ""},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['POST', 'checkout']"  # the app's two, none of ours
    assert len(receiver.requests) == 6


class _RecordingSocket:
    """A socket that records what each sendall() carried."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self.writes: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self._sock.sendall(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


@pytest.mark.parametrize("body", [b'{"events":[]}', None])
def test_a_request_goes_out_in_one_write(receiver: Receiver, body: Any) -> None:
    # Each write lets go of the GIL: head and body leave together. A request without a
    # body still sends its head.
    host, port = receiver.url.split("/")[2].split(":")
    connection = GuardedHTTPConnection(host, int(port), timeout=5)
    connection.connect()
    recording = _RecordingSocket(connection.sock)
    connection.sock = recording
    connection.request("POST", "/analytics", body=body, headers={"Content-Type": "text/plain"})
    response = connection.getresponse()
    assert response.status == 202
    (write,) = recording.writes
    assert write.startswith(b"POST /analytics HTTP/1.1\r\n")
    assert write.endswith(b"\r\n\r\n" + (body or b""))
    assert receiver.requests[0].body == (body or b"")
    connection.close()


def test_proxy_credentials_from_the_environment_beyond_latin_1_are_named_not_shown(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://user:SECRETĀ@127.0.0.1:9")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    client = cca.Analytics(receiver.url, batch_size=1)
    client.track("e")
    assert client.flush(timeout=5) is False  # not retried: it cannot heal by itself
    stats = client.stats()
    assert stats.dropped_delivery == 1 and stats.retries == 0
    assert "beyond Latin-1" in str(stats.last_error) and "SECRET" not in str(stats.last_error)
    client.shutdown(timeout=1)


def test_netrc_credentials_beyond_latin_1_are_a_config_error_that_shows_none(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login user password pw€SECRET\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    with pytest.raises(cca.ConfigError, match="netrc") as caught:
        cca.Analytics(receiver.url)
    assert "SECRET" not in str(caught.value) and "beyond Latin-1" in str(caught.value)


@pytest.mark.parametrize("callable_header", [False, True])
def test_an_authorization_header_is_sent_as_set_whatever_netrc_holds(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, callable_header: bool
) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login netrc-user password netrc-pw\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    token = "Bearer header-token"
    header = (lambda: token) if callable_header else token
    with_header = cca.Analytics(receiver.url, headers={"authorization": header})
    without = cca.Analytics(receiver.url)  # .netrc is how it authenticates: Basic auth
    for client in (with_header, without):
        client.track("e")
        assert client.flush(timeout=5) is True
        client.shutdown(timeout=1)
    sent = [request.headers["authorization"] for request in receiver.requests]
    assert sent == [token, "Basic bmV0cmMtdXNlcjpuZXRyYy1wdw=="]  # netrc-user:netrc-pw


def test_credentials_in_the_endpoint_and_an_authorization_header_are_refused() -> None:
    with pytest.raises(cca.ConfigError, match="keep one") as caught:
        cca.Analytics(
            "https://user:SECRETPW@example.com/a", headers={"Authorization": "Bearer SECRETTOKEN"}
        )
    assert "SECRET" not in str(caught.value)
