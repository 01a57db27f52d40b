"""The reference receiver against hostile or broken input, over real sockets on 127.0.0.1.

The rule under test: every request gets a 2xx, or a 4xx with a JSON error body;
never a 5xx, never a hang, never a traceback. Raw sockets send the exact bytes;
a property test (Hypothesis) posts generated bodies over HTTP.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, Protocol

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from campaign_cart_analytics.receiver import LocalServer, create_app, serve

ANSWER_WITHIN = 3.0  # seconds: generous for a noisy 2-core machine, far below a hang


@pytest.fixture
def server() -> Iterator[LocalServer]:
    local = serve(create_app())
    yield local
    local.stop()


class Address(Protocol):
    """Where a server listens: a ``LocalServer``, or the ``receive`` command's port."""

    host: str
    port: int


class Answer:
    """An HTTP answer read off a raw socket, with how long it took."""

    def __init__(self, raw: bytes, elapsed: float) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1]) if lines[0] else 0
        self.headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines[1:])
        }
        self.elapsed = elapsed

    @property
    def error(self) -> str:
        """The JSON error message; fails the test if the body is not one."""
        assert self.headers.get("content-type") == "application/json", self.headers
        document = json.loads(self.body)
        assert document["success"] is False and isinstance(document["error"], str)
        return str(document["error"])


def exchange(
    server: Address, data: bytes, *, half_close: bool = False, wait: float = ANSWER_WITHIN
) -> Answer:
    """Send ``data`` as is, then read until the server closes (or ``wait`` passes: a hang)."""
    started = time.monotonic()
    with socket.create_connection((server.host, server.port), timeout=wait) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
                if time.monotonic() - started > wait:
                    raise socket.timeout
        except socket.timeout:
            pytest.fail(f"no complete answer within {wait} s; got {received[:200]!r}")
    return Answer(received, time.monotonic() - started)


def post(server: Address, body: bytes) -> Answer:
    head = f"POST /analytics HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
    return exchange(server, head.encode() + body)


def get(server: Address, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(server.host, server.port, timeout=ANSWER_WITHIN)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def get_json(server: Address, path: str) -> tuple[int, Any]:
    status, body = get(server, path)
    return status, json.loads(body)


def event(n: int = 1, **overrides: Any) -> dict[str, Any]:
    return {
        "event": "dl_view_item",
        "event_id": f"sess_1_{n}_1736677800000",
        "event_time": "2025-01-12T10:30:00.000Z",
        **overrides,
    }


def batch_text(*events: Any, size: Any = None) -> str:
    info = {"size": len(events) if size is None else size, "batch_id": "b_edge"}
    return json.dumps({"events": list(events), "batch_info": info})


def with_raw_note(note: str) -> bytes:
    """A valid one-event batch whose ``note`` is the JSON text ``note``, verbatim."""
    return batch_text(event(note="@NOTE@")).replace('"@NOTE@"', note).encode()


def nested(depth: int, kind: str) -> str:
    """JSON arrays or objects nested ``depth`` deep."""
    if kind == "arrays":
        return "[" * depth + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


def assert_nothing_stored(server: Address) -> None:
    assert get_json(server, "/stats")[1]["events"] == 0


# ---------------------------------------------------------------- framing


@pytest.mark.parametrize("length", ["-1", "abc", "1_0", "+10", "0x0a", "10, 10"])
def test_a_content_length_that_is_not_a_plain_number_is_a_400_at_once(
    server: LocalServer, length: str
) -> None:
    head = f"POST /analytics HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n"
    answer = exchange(server, head.encode() + batch_text(event()).encode()[:10])
    assert answer.status == 400 and "Content-Length" in answer.error
    assert answer.elapsed < ANSWER_WITHIN
    assert_nothing_stored(server)


def test_a_chunked_body_without_content_length_is_a_411(server: LocalServer) -> None:
    body = batch_text(event()).encode()
    chunked = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    head = b"POST /analytics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    answer = exchange(server, head + chunked)
    assert answer.status == 411 and "Content-Length" in answer.error
    smuggled = head.replace(b"\r\n\r\n", f"\r\nContent-Length: {len(chunked)}\r\n\r\n".encode())
    answer = exchange(server, smuggled + chunked)
    assert answer.status == 411 and "Transfer-Encoding" in answer.error
    assert_nothing_stored(server)


def test_a_body_cut_short_by_the_client_is_a_400(server: LocalServer) -> None:
    head = b"POST /analytics HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
    answer = exchange(server, head + b'{"events": [', half_close=True)
    assert answer.status == 400 and "ended after 12 of 100 bytes" in answer.error


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"POST /analytics HTTP/1.1\r\n" + b"X-Long: " + b"a" * 70_000 + b"\r\n\r\n",
        b"POST /analytics HTTP/1.1\r\n" + b"X-Many: 1\r\n" * 150 + b"\r\n",
        b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n",
    ],
    ids=["garbage", "long-header", "many-headers", "long-request-line"],
)
def test_a_malformed_request_gets_a_json_4xx(server: LocalServer, request_bytes: bytes) -> None:
    answer = exchange(server, request_bytes)
    assert 400 <= answer.status < 500 and answer.error


# ---------------------------------------------------------------- timeouts


@pytest.fixture
def impatient() -> Iterator[LocalServer]:
    local = serve(create_app(), read_timeout=0.2)
    yield local
    local.stop()


def test_a_client_that_stops_mid_body_is_answered_408_and_cut_off(
    impatient: LocalServer, capfd: pytest.CaptureFixture[str]
) -> None:
    head = b"POST /analytics HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
    answer = exchange(impatient, head + b'{"events": [')
    assert answer.status == 408 and "0.2 s" in answer.error
    assert 0.15 < answer.elapsed < ANSWER_WITHIN
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.parametrize(
    "request_bytes", [b"", b"POST /analytics HTT", b"POST /analytics HTTP/1.1\r\nHost: x\r\n"]
)
def test_a_client_that_stops_before_the_body_is_cut_off(
    impatient: LocalServer, capfd: pytest.CaptureFixture[str], request_bytes: bytes
) -> None:
    answer = exchange(impatient, request_bytes)
    if answer.status:  # nothing at all is an answer too: the server just closed
        assert answer.status == 408 and answer.error
    assert answer.elapsed < ANSWER_WITHIN
    assert "Traceback" not in capfd.readouterr().err


def test_the_read_timeout_is_a_parameter_of_create_app_and_local_server() -> None:
    assert create_app().read_timeout == 10.0
    by_app = LocalServer(create_app(read_timeout=0.3), "127.0.0.1", 0)
    by_server = LocalServer(create_app(), "127.0.0.1", 0, read_timeout=1.5)
    with by_app, by_server:
        assert (by_app.read_timeout, by_server.read_timeout) == (0.3, 1.5)


# ---------------------------------------------------------------- JSON that is not JSON


def test_json_nested_100000_deep_is_a_400(server: LocalServer) -> None:
    too_deep = [nested(100_000, "arrays").encode(), with_raw_note(nested(100_000, "objects"))]
    for body in [*too_deep, with_raw_note(nested(101, "arrays"))]:  # the receiver keeps 100
        answer = post(server, body)
        assert answer.status == 400 and "nested" in answer.error
    assert post(server, with_raw_note(nested(60, "objects"))).status == 202


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999", "-1e999"])
def test_nan_and_infinity_are_not_json(server: LocalServer, number: str) -> None:
    answer = post(server, with_raw_note(number))
    assert answer.status == 400 and "not JSON" in answer.error
    assert_nothing_stored(server)


@pytest.mark.parametrize(
    ("body", "path"),
    [
        (with_raw_note('"\\ud800"'), "events[0].note"),
        (with_raw_note('["x", "\\uDBFF"]'), "events[0].note[1]"),  # hex digits in capitals
        (with_raw_note('{"items": [{"name": "a\\udfffb"}]}'), "events[0].note.items[0].name"),
        (with_raw_note('{"\\udc00": 1}'), "events[0].note"),
        (batch_text(event(event_id="id\ud800")).encode(), "events[0].event_id"),
        (batch_text(event()).replace("b_edge", "b\\ud83d").encode(), "batch_info.batch_id"),
    ],
)
def test_lone_surrogates_are_refused_with_their_path(
    server: LocalServer, body: bytes, path: str
) -> None:
    answer = post(server, body)
    assert answer.status == 400
    assert f"{path} " in answer.error and "surrogate" in answer.error
    assert_nothing_stored(server)


def test_a_surrogate_pair_is_one_character_and_is_stored(server: LocalServer) -> None:
    assert post(server, with_raw_note('"\\ud83d\\ude00"')).status == 202
    assert get_json(server, "/events")[1]["events"][0]["note"] == "\U0001f600"


@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xfe{}",
        b'{"events": [], "batch_info": {"size": 0, "batch_id": "b_\xe9"}}',
        batch_text(event()).encode("utf-16"),
        batch_text(event()).encode("utf-32"),
    ],
    ids=["garbage", "latin-1", "utf-16", "utf-32"],
)
def test_a_body_that_is_not_utf8_is_a_400(server: LocalServer, body: bytes) -> None:
    answer = post(server, body)
    assert answer.status == 400 and "UTF-8" in answer.error
    assert_nothing_stored(server)


def test_a_utf8_bom_is_accepted(server: LocalServer) -> None:
    assert post(server, b"\xef\xbb\xbf" + batch_text(event()).encode()).status == 202


# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    ("body", "words"),
    [
        *((body, "must be a JSON object") for body in ("[]", "12", '"batch"', "null")),
        ("", "not JSON"),
        (batch_text("x"), "events[0] must be an object"),
        (batch_text(event(event=5)), "events[0].event is missing or not"),
        (batch_text(event(event_id=[])), "events[0].event_id is missing or not"),
        (batch_text(event(event_time={})), "events[0].event_time is missing or not"),
        (batch_text(event(event=None)), "events[0].event is missing or not"),
        (batch_text(event(event_time="2025-13-01T00:00:00Z")), "is not ISO 8601"),
        (batch_text(event(event_time="2025-01-01T00:00:00+99:00")), "is not ISO 8601"),
        (batch_text(event(), size=True), "batch_info.size"),
        (batch_text(event(), size=1.0), "batch_info.size"),
        (batch_text(event(), size="1"), "batch_info.size"),
        (json.dumps({"events": [], "batch_info": []}), "'batch_info' must be an object"),
        (json.dumps({"events": "x" * 10_000, "batch_info": {}}), "'events' must be a list"),
    ],
)
def test_a_batch_of_the_wrong_shape_is_a_400(server: LocalServer, body: str, words: str) -> None:
    answer = post(server, body.encode())
    assert answer.status == 400 and words in answer.error
    assert len(answer.error) < 300  # the error quotes the input, but never all of it
    assert_nothing_stored(server)


@pytest.mark.parametrize("limit", ["-1", "abc", "1e3", "99999999999999999999", "10001"])
def test_a_limit_on_events_out_of_range_is_a_400(server: LocalServer, limit: str) -> None:
    status, answer = get_json(server, f"/events?limit={limit}")
    assert status == 400 and "limit must be a whole number from 0 to 10000" in answer["error"]
    assert get_json(server, "/events?limit=10000")[0] == 200


def test_the_receive_command_answers_hostile_requests_without_a_traceback() -> None:
    command = [sys.executable, "-m", "campaign_cart_analytics", "receive", "--port", "0"]
    process = subprocess.Popen(
        [*command, "--db", ":memory:"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()  # Listening on http://127.0.0.1:PORT/analytics
        local = SimpleNamespace(host="127.0.0.1", port=int(url.split(":")[-1].split("/")[0]))
        minus_one = b"POST /analytics HTTP/1.1\r\nContent-Length: -1\r\n\r\n{}"
        assert exchange(local, minus_one).status == 400
        assert post(local, with_raw_note('"\\ud800"')).status == 400
        assert post(local, batch_text(event(event_id="\ud800")).encode()).status == 400
        assert post(local, with_raw_note("NaN")).status == 400
        assert post(local, ("[" * 100_000).encode()).status == 400
        assert get_json(local, "/events?limit=99999999999999999999")[0] == 400
        assert exchange(local, b"GARBAGE\r\n\r\n").status == 400
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0
    assert "Traceback" not in stderr and " 500 " not in stderr
    assert "POST /analytics 400 events[0].event_id holds a lone surrogate" in stderr


# ---------------------------------------------------------------- properties (Hypothesis)

WIRE_FIELDS = ("event", "event_id", "event_time")
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
event_dicts = st.builds(
    lambda name, at, extra: {
        "event": name,
        "event_id": "set by the test",
        "event_time": at.isoformat(timespec="milliseconds") + "Z",
        **extra,
    },
    st.text(min_size=1, max_size=20),
    st.datetimes(dt.datetime(1970, 1, 1), dt.datetime(2100, 1, 1)),
    st.dictionaries(
        st.text(max_size=8).filter(lambda k: k not in WIRE_FIELDS), json_values, max_size=4
    ),
)


def as_batch(listed: list[dict[str, Any]]) -> dict[str, Any]:
    """A batch of ``listed``, each event given an id no other example uses."""
    ided = [{**item, "event_id": f"prop_{uuid.uuid4().hex}"} for item in listed]
    return {"events": ided, "batch_info": {"size": len(ided), "batch_id": "b_prop"}}


@st.composite
def near_valid(draw: st.DrawFn) -> bytes:
    """A valid batch with one field replaced by any JSON value, or removed."""
    batch = as_batch(draw(st.lists(event_dicts, min_size=1, max_size=3)))
    index = draw(st.integers(0, len(batch["events"]) - 1))
    parent, key = draw(
        st.sampled_from(
            [(batch, "events"), (batch, "batch_info"), (batch["batch_info"], "size")]
            + [(batch["events"][index], field) for field in WIRE_FIELDS]
            + [(batch["events"], index)]
        )
    )
    if isinstance(parent, dict) and draw(st.booleans()):
        del parent[key]
    else:
        parent[key] = draw(json_values)
    return json.dumps(batch).encode()


lone_surrogates = st.builds(
    lambda before, code, after: f'"{before}\\u{code:04x}{after}"',
    st.text("abc xyz", max_size=5),
    st.integers(0xD800, 0xDFFF),
    st.text("abc xyz", max_size=5),
)
not_json_numbers = st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e400", "[1e309]"])


kinds = st.sampled_from(["arrays", "objects"])
deep = st.builds(nested, st.integers(1, 100_000), kinds)
too_deep = st.builds(nested, st.integers(101, 100_000), kinds)  # the receiver keeps 100 levels
refused_bodies = (lone_surrogates | not_json_numbers | too_deep).map(with_raw_note)
any_bodies = (
    st.binary(max_size=512)
    | json_values.map(lambda value: json.dumps(value).encode())
    | near_valid()
    | deep.map(str.encode)
    | deep.map(with_raw_note)
    | refused_bodies
)


def post_http(server: Address, body: bytes) -> tuple[int, bytes]:
    """POST ``body`` with an ordinary HTTP client; the status and body, checked for the rule."""
    started = time.monotonic()
    connection = http.client.HTTPConnection(server.host, server.port, timeout=ANSWER_WITHIN)
    try:
        connection.request("POST", "/analytics", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        status, answer = response.status, response.read()
    finally:
        connection.close()
    assert time.monotonic() - started < ANSWER_WITHIN
    assert 200 <= status < 300 or 400 <= status < 500, (status, answer[:300])
    if status >= 400:
        document = json.loads(answer)
        assert document["success"] is False and isinstance(document["error"], str)
    return status, answer


@pytest.fixture(scope="module")
def shared() -> Iterator[LocalServer]:
    local = serve(create_app(), read_timeout=2.0)
    yield local
    local.stop()


@settings(max_examples=200, deadline=None, database=None)
@given(body=any_bodies)
def test_any_body_gets_a_2xx_or_a_json_4xx_in_time(shared: LocalServer, body: bytes) -> None:
    post_http(shared, body)


@settings(max_examples=80, deadline=None, database=None)
@given(body=refused_bodies)
def test_non_json_numbers_lone_surrogates_and_deep_nesting_are_400(
    shared: LocalServer, body: bytes
) -> None:
    assert post_http(shared, body)[0] == 400


@settings(max_examples=80, deadline=None, database=None)
@given(listed=st.lists(event_dicts, max_size=5))
def test_a_valid_batch_is_accepted_and_stored_byte_exact(
    shared: LocalServer, listed: list[dict[str, Any]]
) -> None:
    batch = as_batch(listed)
    sent = batch["events"]
    status, answer = post_http(shared, json.dumps(batch).encode())
    assert status == 202 and json.loads(answer)["events_processed"] == len(sent)
    _, stored = get(shared, f"/events?limit={len(sent)}")
    assert [json.dumps(e) for e in json.loads(stored)["events"]] == [json.dumps(e) for e in sent]
    for text in (json.dumps(e).encode() for e in sent):  # as sent, byte for byte
        assert text in stored
