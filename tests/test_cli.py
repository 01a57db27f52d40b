"""The command line, run in subprocesses against real local servers."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest
from receiver import Receiver, Reply, refused_url

import campaign_cart_analytics as cca

COMMAND = [sys.executable, "-m", "campaign_cart_analytics"]


def cli(*args: str, stdin: str = "", timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, *args], input=stdin, capture_output=True, text=True, timeout=timeout
    )


class RunningReceiver:
    """``campaign-cart-analytics receive`` in a subprocess."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [*COMMAND, "receive", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.first_line = self.process.stdout.readline().strip()
        self.url = self.first_line.removeprefix("Listening on ")
        self.base = self.url.rsplit("/", 1)[0]

    def request(
        self,
        method: str,
        path: str,
        body: Optional[bytes] = None,
        headers: Optional[dict[str, str]] = None,
    ) -> tuple[int, dict[str, str], Any]:
        request = urllib.request.Request(
            self.base + path, data=body, method=method, headers=headers or {}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                status, answer_headers, raw = (
                    response.status,
                    dict(response.headers),
                    response.read(),
                )
        except urllib.error.HTTPError as error:
            status, answer_headers, raw = error.code, dict(error.headers), error.read()
        return status, answer_headers, json.loads(raw) if raw else None

    def post(self, batch: Any, **headers: str) -> tuple[int, Any]:
        body = batch if isinstance(batch, bytes) else json.dumps(batch).encode()
        status, _, answer = self.request(
            "POST", "/analytics", body, {"Content-Type": "application/json", **headers}
        )
        return status, answer

    def stop(self) -> subprocess.CompletedProcess[str]:
        self.process.send_signal(signal.SIGTERM)
        stdout, stderr = self.process.communicate(timeout=10)
        return subprocess.CompletedProcess(
            self.process.args, self.process.returncode, stdout, stderr
        )


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Any]:
    started: list[RunningReceiver] = []

    def start(*args: str) -> RunningReceiver:
        server = RunningReceiver("--db", str(tmp_path / "events.sqlite3"), *args)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.process.poll() is None:
            server.stop()


def batch(*events: dict[str, Any], size: Optional[int] = None) -> dict[str, Any]:
    return {
        "events": list(events),
        "batch_info": {
            "size": len(events) if size is None else size,
            "timestamp": "2025-01-12T10:30:05.000Z",
            "source": "next-campaign-cart",
            "batch_id": "b_test",
        },
    }


def event(n: int, **overrides: Any) -> dict[str, Any]:
    return {
        "event": "dl_view_item",
        "event_id": f"sess_1_{n}_1736677800000",
        "event_time": "2025-01-12T10:30:00.000Z",
        **overrides,
    }


# ---------------------------------------------------------------- receive


def test_receive_stores_what_the_sdk_sends_once(running: Any) -> None:
    server = running()
    assert server.first_line.startswith("Listening on http://127.0.0.1:")
    # One request at a time, so that the last stored are the last tracked.
    client = cca.Analytics(server.url, batch_size=10, max_concurrent_requests=1)
    ids = [client.track("dl_add_to_cart", {"ecommerce": {"value": n}}) for n in range(25)]
    assert client.flush(timeout=10)
    client.shutdown(timeout=1)
    status, _, stats = server.request("GET", "/stats")
    assert status == 200
    assert (stats["events"], stats["batches"], stats["duplicates"]) == (25, 3, 0)
    assert stats["by_event"] == {"dl_add_to_cart": 25}
    _, _, listed = server.request("GET", "/events?limit=5")
    assert [e["event_id"] for e in listed["events"]] == ids[-5:]
    _, _, filtered = server.request("GET", "/events?event=dl_purchase")
    assert filtered["events"] == []


def test_receive_answers_with_the_seed_body_and_counts_duplicates(running: Any) -> None:
    server = running()
    status, answer = server.post(batch(event(1), event(2)))
    assert status == 202
    assert answer == {
        "success": True,
        "message": "Analytics events received",
        "batch_id": "b_test",
        "events_processed": 2,
        "duplicates": 0,
    }
    status, answer = server.post(batch(event(2), event(3)))  # a retried event among new ones
    assert (status, answer["events_processed"], answer["duplicates"]) == (202, 2, 1)
    _, _, stats = server.request("GET", "/stats")
    assert (stats["events"], stats["duplicates"]) == (3, 1)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "the body is not JSON"),
        ({"events": {}, "batch_info": {"size": 0}}, "'events' must be a list"),
        (batch(*[event(n) for n in range(101)]), "at most 100"),
        (batch(event(1), size=2), "batch_info.size is 2 but 'events' holds 1"),
        ({"events": []}, "'batch_info' must be an object"),
        (
            batch({"event": "x", "event_time": "2025-01-12T10:30:00Z"}),
            "events[0].event_id is missing",
        ),
        (batch(event(1), event(2, event="")), "events[1].event is missing"),
        (
            batch(event(1, event_time="yesterday")),
            "events[0].event_time 'yesterday' is not ISO 8601",
        ),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_receive_rejects_a_malformed_batch_with_a_clear_error(
    running: Any, body: Any, message: str
) -> None:
    server = running()
    status, answer = server.post(body)
    assert status == 400
    assert answer["success"] is False and message in answer["error"]
    _, _, stats = server.request("GET", "/stats")
    assert (stats["events"], stats["rejected_requests"]) == (0, 1)


def test_receive_checks_the_bearer_token(running: Any) -> None:
    server = running("--token", "s3cret")
    assert server.post(batch(event(1)))[0] == 401
    assert server.post(batch(event(1)), Authorization="Bearer wrong")[0] == 401
    assert server.post(batch(event(1)), Authorization="Bearer s3cret")[0] == 202
    client = cca.Analytics(server.url, headers={"Authorization": "Bearer s3cret"})
    client.track("e")
    assert client.flush(timeout=10)
    client.shutdown(timeout=1)


def test_receive_caps_the_body_size(running: Any) -> None:
    server = running("--max-body-bytes", "300")
    status, answer = server.post(batch(*[event(n) for n in range(5)]))
    assert status == 413 and "at most 300" in answer["error"]
    # the SDK splits what is answered 413, down to batches that fit
    client = cca.Analytics(server.url, batch_size=4, batch_interval_ms=60_000)
    for n in range(4):
        client.track("e", {"n": n})
    assert client.flush(timeout=10)
    client.shutdown(timeout=1)


def test_receive_answers_cors_preflight_and_unknown_routes(running: Any) -> None:
    server = running()
    status, headers, _ = server.request(
        "OPTIONS", "/analytics", headers={"Origin": "https://shop.example"}
    )
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in headers["Access-Control-Allow-Methods"]
    assert "Authorization" in headers["Access-Control-Allow-Headers"]
    assert server.post(batch(event(1)))[0] == 202
    assert server.request("GET", "/nowhere")[0] == 404
    status, headers, _ = server.request("PUT", "/analytics", b"{}")
    assert status == 405 and headers["Allow"] == "POST, OPTIONS"


def test_receive_keeps_events_across_restarts_and_stops_cleanly(running: Any) -> None:
    first = running()
    first.post(batch(event(1), event(2)))
    stopped = first.stop()
    assert stopped.returncode == 0
    assert "POST /analytics 202 2 events, 0 duplicates" in stopped.stderr
    second = running()
    _, _, stats = second.request("GET", "/stats")
    assert stats["events"] == 2


def test_receive_on_a_port_in_use_is_a_one_line_error(running: Any) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli("receive", "--port", str(port), "--db", ":memory:", timeout=10)
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == f"campaign-cart-analytics receive: error: port {port} on 127.0.0.1 is already in use"
    )


# ---------------------------------------------------------------- demo


def test_demo_runs_the_main_job_on_the_embedded_receiver() -> None:
    result = cli("demo")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Receiver listening on http://127.0.0.1:")
    rows = [line for line in lines if line.startswith("dl_")]
    assert [row.split()[0] for row in rows] == ["dl_view_item", "dl_add_to_cart", "dl_purchase"]
    assert all(
        "scrubbed" in row and "99.99" in row and row.split()[1].startswith("sess_123_")
        for row in rows
    )
    assert "delivered 3" in result.stdout and "stored 3, duplicates 0" in result.stdout
    assert "555-0100" not in result.stdout


# ---------------------------------------------------------------- send


def write_lines(path: Path, *lines: str) -> str:
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_send_delivers_json_lines_and_keeps_backfill_ids(
    receiver: Receiver, tmp_path: Path
) -> None:
    events = write_lines(
        tmp_path / "events.jsonl",
        json.dumps(
            {
                "event": "dl_purchase",
                "event_id": "order_1",
                "event_time": "2025-01-12T10:30:00Z",
                "ecommerce": {"value": 10},
            }
        ),
        "",
        json.dumps({"event": "dl_view_item", "user_properties": {"session_id": "s1"}}),
    )
    more = write_lines(tmp_path / "more.jsonl", json.dumps({"event": "dl_add_to_cart"}))
    result = cli("send", events, more, "--endpoint", receiver.url, "--batch-size", "2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("sent: 3 delivered, 0 filtered, 0 invalid lines")
    delivered = {e["event"]: e for e in receiver.delivered_events()}  # batches may overtake
    assert sorted(delivered) == ["dl_add_to_cart", "dl_purchase", "dl_view_item"]
    assert delivered["dl_purchase"]["event_id"] == "order_1"
    assert delivered["dl_purchase"]["event_time"] == "2025-01-12T10:30:00.000Z"
    assert delivered["dl_view_item"]["event_id"].startswith("s1_")


def test_send_reports_malformed_lines_with_file_and_line(
    receiver: Receiver, tmp_path: Path
) -> None:
    path = write_lines(
        tmp_path / "mixed.jsonl",
        json.dumps({"event": "ok_1"}),
        "{broken",
        json.dumps({"no_event": True}),
        json.dumps({"event": "bad_time", "event_time": "yesterday"}),
        json.dumps({"event": "ok_2"}),
    )
    result = cli("send", path, "--endpoint", receiver.url)
    assert result.returncode == 1
    assert f"{path}:2: not JSON" in result.stderr
    assert f"{path}:3: the object has no 'event' name" in result.stderr
    assert f"{path}:4: properties['event_time']" in result.stderr
    assert "2 delivered" in result.stdout and "3 invalid lines" in result.stdout
    assert sorted(e["event"] for e in receiver.delivered_events()) == ["ok_1", "ok_2"]

    strict = cli("send", path, "--endpoint", receiver.url, "--strict")
    assert strict.returncode == 1
    assert "stopped at the first malformed line" in strict.stderr
    assert "1 delivered" in strict.stdout  # ok_1 only: nothing after line 2 was read


def test_send_reads_stdin_with_headers_and_config_and_never_prints_header_values(
    receiver: Receiver, tmp_path: Path
) -> None:
    config = tmp_path / "settings.json"
    config.write_text(
        json.dumps(
            {
                "endpoint": "http://127.0.0.1:9/overridden",
                "batchSize": 50,
                "headers": {"X-Store-ID": "store-123"},
            }
        )
    )
    lines = "".join(json.dumps({"event": "e", "n": n}) + "\n" for n in range(120))
    result = cli(
        "send",
        "-",
        "--config",
        str(config),
        "--endpoint",
        receiver.url,
        "--header",
        "Authorization: Bearer t0ps3cret",
        stdin=lines,
    )
    assert result.returncode == 0, result.stderr
    assert "t0ps3cret" not in result.stdout + result.stderr
    assert sorted(len(r.events) for r in receiver.requests) == [20, 50, 50]
    assert receiver.requests[0].headers["authorization"] == "Bearer t0ps3cret"
    assert receiver.requests[0].headers["x-store-id"] == "store-123"


def test_send_exits_nonzero_when_the_endpoint_loses_events(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "e.jsonl", json.dumps({"event": "e"}))
    result = cli(
        "send", path, "--endpoint", refused_url(), "--max-retries", "1", "--retry-delay-ms", "10"
    )
    assert result.returncode == 1
    assert "0 delivered" in result.stdout and "dropped: 1 by the endpoint" in result.stdout
    assert "connection refused" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["send", "missing.jsonl", "--endpoint", "http://127.0.0.1:9/a"],
            "cannot read missing.jsonl: No such file or directory",
        ),
        (
            ["send", "--endpoint", "not a url"],
            "endpoint must be an absolute http:// or https:// URL",
        ),
        (["send", "-"], "an endpoint is required"),
        (
            ["send", "--endpoint", "http://127.0.0.1:9/a", "--batch-size", "500"],
            "batch_size (batchSize) must be an int from 1 to 100",
        ),
        (
            ["send", "--endpoint", "http://127.0.0.1:9/a", "--header", "no colon here"],
            "--header must look like 'NAME: VALUE'",
        ),
        (["send", "--bogus"], "unrecognized arguments: --bogus"),
        (["check"], "the following arguments are required: --endpoint"),
        (["nonsense"], "invalid choice: 'nonsense'"),
    ],
)
def test_bad_input_is_a_one_line_error(args: list[str], message: str) -> None:
    result = cli(*args)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


# ---------------------------------------------------------------- check


def test_check_passes_against_the_reference_receiver(running: Any) -> None:
    server = running("--token", "s3cret")
    result = cli("check", "--endpoint", server.url, "--header", "Authorization: Bearer s3cret")
    assert result.returncode == 0, result.stdout
    assert (
        "HTTP 202 in" in result.stdout
        and "OK: HTTP 202, the endpoint accepts batches" in result.stdout
    )
    assert "CORS: ok" in result.stdout
    assert "s3cret" not in result.stdout
    unauthorized = cli("check", "--endpoint", server.url)
    assert unauthorized.returncode == 1
    assert (
        "HTTP 401" in unauthorized.stdout
        and "check the Authorization header" in unauthorized.stdout
    )


@pytest.mark.parametrize(
    ("reply", "words"),
    [
        (Reply(404), "check the endpoint's path"),
        (Reply(403), "the token was refused"),
        (
            Reply(301, headers={"Location": "https://api.example/v2/analytics?key=abc"}),
            "redirects to https://api.example/v2/analytics?key=***",
        ),
        (Reply(502), "the endpoint failed; the SDK would retry"),
        (Reply(503), "overloaded or rate-limited; the SDK would pause"),
        (Reply(400, body=b"schema mismatch"), "rejected: schema mismatch"),
    ],
)
def test_check_explains_each_answer_in_plain_words(
    receiver: Receiver, reply: Reply, words: str
) -> None:
    receiver.respond = lambda request: reply
    result = cli("check", "--endpoint", receiver.url)
    assert result.returncode == 1
    assert words in result.stdout
    assert "CORS: missing Access-Control-Allow-Origin" in result.stdout  # this test server has none
    body = receiver.requests[0].json
    assert body["events"] == [] and body["batch_info"]["size"] == 0


def test_check_sends_an_authorization_header_as_the_sdk_does(
    receiver: Receiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login netrc-user password netrc-pw\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))  # the subprocess inherits it
    result = cli("check", "--endpoint", receiver.url, "--header", "Authorization: Bearer TOKEN")
    assert result.returncode == 0, result.stderr
    assert receiver.requests[0].headers["authorization"] == "Bearer TOKEN"  # not .netrc's
    both = cli("check", "--endpoint", receiver.url.replace("://", "://user:SECRETPW@"),
               "--header", "Authorization: Bearer SECRETTOKEN")  # fmt: skip
    assert both.returncode == 2 and "keep one" in both.stderr, both.stderr
    assert "SECRET" not in both.stderr + both.stdout
    assert len(receiver.requests) == 1


@pytest.mark.parametrize(
    ("endpoint", "words"),
    [
        ("refused", "connection refused"),
        ("http://analytics.example.invalid/analytics", "DNS lookup failed"),
        ("tls", "TLS error"),
    ],
)
def test_check_explains_network_failures(receiver: Receiver, endpoint: str, words: str) -> None:
    if endpoint == "refused":
        endpoint = refused_url()
    elif endpoint == "tls":
        endpoint = receiver.url.replace("http://", "https://")  # TLS to a plain HTTP server
    result = cli("check", "--endpoint", endpoint)
    assert result.returncode == 1
    assert words in result.stdout


def test_send_shows_a_progress_bar_on_a_terminal_only(receiver: Receiver, tmp_path: Path) -> None:
    import os
    import pty

    path = write_lines(
        tmp_path / "e.jsonl", *(json.dumps({"event": "e", "n": n}) for n in range(120))
    )
    controller, terminal = pty.openpty()
    try:
        result = subprocess.run(
            [*COMMAND, "send", path, "--endpoint", receiver.url],
            stdout=subprocess.PIPE,
            stderr=terminal,
            text=True,
            timeout=60,
        )
        os.close(terminal)
        shown = b""
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the terminal side is closed: all was read
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(controller)
    assert result.returncode == 0
    assert b"120 events" in shown  # tqdm's counter, on the terminal
    piped = cli("send", path, "--endpoint", receiver.url)
    assert piped.returncode == 0 and piped.stderr == ""  # no bar when stderr is not a terminal
