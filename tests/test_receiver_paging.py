"""``GET /events`` paging, filters, ``/stats`` and ``/healthz``: one contract, both stores.

Each test runs against SQLite and against a real PostgreSQL server (see
``postgres.py``), through a real local server on 127.0.0.1.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest
from helpers import http_json
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from postgres import database_url_fixture, postgres_server_fixture  # noqa: F401

from campaign_cart_analytics.receiver import LocalServer, Position, create_app, serve


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'events.sqlite3'}"
    return str(request.getfixturevalue("database_url"))


@pytest.fixture
def server(database: str) -> Iterator[LocalServer]:
    local = serve(create_app(database))
    yield local
    local.stop()


def call(
    server: LocalServer, path: str, body: Optional[bytes] = None, method: str = "GET"
) -> tuple[int, dict[str, str], Any]:
    return http_json(f"http://127.0.0.1:{server.port}{path}", body, method)


def event(event_id: str, name: str = "dl_view_item", **more: Any) -> dict[str, Any]:
    return {"event": name, "event_id": event_id, "event_time": "2025-01-12T10:30:00Z", **more}


def post(server: LocalServer, *events: dict[str, Any]) -> dict[str, Any]:
    batch = {"events": list(events), "batch_info": {"size": len(events), "batch_id": "b"}}
    status, _, answer = call(server, "/analytics", json.dumps(batch).encode(), "POST")
    assert status == 202, answer
    return dict(answer)


def page_all(
    server: LocalServer, after: str = "0", limit: int = 2, *, expect: int, **filters: str
) -> tuple[list[str], str]:
    """Every event id from ``after`` on, a page of ``limit`` at a time; and the last cursor.

    Waits (5 s at most) for ``expect`` events: PostgreSQL hands out an event once
    every older write transaction has ended, a moment after its own commit.
    """
    ids: list[str] = []
    query = "".join(f"&{name}={value}" for name, value in filters.items())
    deadline = time.monotonic() + 5
    while True:
        status, _, answer = call(server, f"/events?after={after}&limit={limit}{query}")
        assert status == 200, answer
        ids += [e["event_id"] for e in answer["events"]]
        if not answer["events"]:
            assert answer["next"] == after  # nothing new: the cursor stays
            if len(ids) >= expect or time.monotonic() > deadline:
                return ids, after
            time.sleep(0.01)
        after = answer["next"]


def test_paging_from_the_beginning_returns_each_event_once_in_the_order_received(
    server: LocalServer,
) -> None:
    assert post(server, event("a"), event("b"), event("c"))["duplicates"] == 0
    assert post(server, event("b"), event("d"))["duplicates"] == 1  # a retry overlapping
    post(server, event("e"))
    ids, cursor = page_all(server, expect=5)
    assert ids == ["a", "b", "c", "d", "e"]
    post(server, event("f"), event("g"))
    assert page_all(server, after=cursor, limit=1000, expect=2)[0] == ["f", "g"]


def test_events_read_back_as_sent_big_numbers_and_any_text_included(server: LocalServer) -> None:
    # An integer beyond 64 bits, floats, non-ASCII text and escapes: what is stored and read
    # back is the event sent (the PostgreSQL store writes JSON by orjson where it can).
    sent = [
        event("big", count=2**70, negative=-(2**65), price=29.99, tiny=1e-300),
        event("text", name="dl_vue_é", note='Grüße \u2028 "quoted" 🛒', empty=""),
    ]
    post(server, *sent)
    status, _, answer = call(server, "/events?limit=10")
    assert status == 200
    assert [
        {k: v for k, v in e.items() if k in sent[0] or k in sent[1]} for e in answer["events"]
    ] == sent


def test_the_latest_events_come_oldest_first_with_a_cursor_for_what_follows(
    server: LocalServer,
) -> None:
    status, _, empty = call(server, "/events")
    assert status == 200 and empty == {"events": [], "next": "0"}
    post(server, *(event(f"e{n}") for n in range(5)))
    _, _, latest = call(server, "/events?limit=2")
    assert [e["event_id"] for e in latest["events"]] == ["e3", "e4"]
    post(server, event("e5"))
    assert page_all(server, after=latest["next"], expect=1)[0] == ["e5"]


def test_events_filter_by_name_and_by_time_received(server: LocalServer) -> None:
    post(server, event("early-1", "dl_purchase"), event("early-2"))
    time.sleep(0.05)
    between = dt.datetime.now(dt.timezone.utc)
    time.sleep(0.05)
    post(server, event("late-1", "dl_purchase"), event("late-2"))
    stamp = between.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert page_all(server, event="dl_purchase", expect=2)[0] == ["early-1", "late-1"]
    assert page_all(server, since=stamp, expect=2)[0] == ["late-1", "late-2"]
    assert page_all(server, until=stamp, expect=2)[0] == ["early-1", "early-2"]
    offset = between.astimezone(dt.timezone(dt.timedelta(hours=-5))).isoformat()
    since_offset = page_all(server, since=offset, event="dl_purchase", expect=1)[0]
    assert since_offset == ["late-1"]
    _, _, latest = call(server, f"/events?limit=1&until={stamp}")
    assert [e["event_id"] for e in latest["events"]] == ["early-2"]


BAD_QUERIES = [
    ("after=abc", "after must be 0 or the 'next' of an earlier answer"),
    ("after=-1", "after must be 0"),
    ("after=1.2.3", "after must be 0"),
    ("after=01", "after must be 0"),
    ("after=99999999999999999999", "after must be 0"),
    ("after=9223372036854775808", "after must be 0"),  # past SQLite's integers
    ("after=1.2147483648", "after must be 0"),
    ("event=a%00b&after=0", "event must not contain a NUL character"),
    ("since=yesterday", "since must be an ISO 8601 date-time"),
    ("until=2025-13-01T00:00:00Z", "until must be an ISO 8601 date-time"),
    ("limit=10001&after=0", "limit must be a whole number from 0 to 10000"),
    ("limit=-5&after=0", "limit must be a whole number"),
]


def test_a_bad_cursor_time_or_limit_is_a_400_naming_it(server: LocalServer) -> None:
    for query, words in BAD_QUERIES:
        status, headers, answer = call(server, f"/events?{query}")
        assert status == 400 and headers["Content-Type"] == "application/json", query
        assert answer["success"] is False and words in answer["error"], query


def test_a_page_holds_up_to_a_thousand_events_and_more(server: LocalServer) -> None:
    for start in range(0, 1500, 100):
        post(server, *(event(f"e{n:04}") for n in range(start, start + 100)))
    _, _, first = call(server, "/events?after=0&limit=1000")
    assert [e["event_id"] for e in first["events"]] == [f"e{n:04}" for n in range(1000)]
    rest, _ = page_all(server, after=first["next"], limit=10000, expect=500)
    assert rest == [f"e{n:04}" for n in range(1000, 1500)]


def test_healthz_answers_while_the_database_does(server: LocalServer) -> None:
    status, headers, answer = call(server, "/healthz")
    assert (status, answer) == (200, {"status": "ok"}) and headers["Cache-Control"] == "no-store"
    assert call(server, "/healthz", b"{}", "POST")[0] == 405


def test_stats_and_rejections_live_in_the_database_shared_by_every_replica(
    database: str,
) -> None:
    replica = LocalServer(create_app(database), "127.0.0.1", 0)
    with replica as one, LocalServer(create_app(database), "127.0.0.1", 0) as two:
        post(one, event("a"), event("b"))
        post(two, event("b"), event("c", "dl_purchase"))
        assert call(one, "/analytics", b"{}", "POST")[0] == 400
        assert call(two, "/analytics", b"[]", "POST")[0] == 400
        stats = call(one, "/stats")[2]
        assert stats == call(two, "/stats")[2]
        assert stats == {
            "events": 3,
            "batches": 2,
            "duplicates": 1,
            "rejected_requests": 2,
            "by_event": {"dl_purchase": 1, "dl_view_item": 2},
        }
        assert page_all(two, expect=3)[0] == ["a", "b", "c"]


batches = st.lists(st.lists(st.integers(0, 30), min_size=1, max_size=8), min_size=1, max_size=8)


@settings(
    max_examples=12, deadline=None, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)  # fmt: skip
@given(sent=batches, limit=st.integers(1, 7))
def test_any_batches_page_back_once_each_in_the_order_first_received(
    server: LocalServer, sent: list[list[int]], limit: int
) -> None:
    prefix = uuid.uuid4().hex[:8]  # the server outlives one example: a name of its own
    first_seen: list[str] = []
    for numbers in sent:
        ids = [f"{prefix}-{n}" for n in numbers]
        expected_duplicates = sum(i in first_seen or i in ids[:k] for k, i in enumerate(ids))
        answer = post(server, *(event(i, prefix) for i in ids))
        assert answer["duplicates"] == expected_duplicates
        first_seen += [i for k, i in enumerate(ids) if i not in first_seen and i not in ids[:k]]
    got, _ = page_all(server, limit=limit, expect=len(first_seen), event=prefix)
    assert got == first_seen


@pytest.fixture(scope="module")
def sqlite_server() -> Iterator[LocalServer]:
    local = serve(create_app())
    post(local, event("a"), event("b"))
    yield local
    local.stop()


query_values = st.one_of(
    st.text(max_size=30),
    st.integers(-5, 2**70).map(str),
    st.builds(lambda a, b: f"{a}.{b}", st.integers(0, 2**64), st.integers(0, 2**40)),
    st.integers(2**62, 10**19).map(str),  # around the largest cursor a database can take
    st.datetimes(timezones=st.just(dt.timezone.utc)).map(lambda d: d.isoformat()),
)


@settings(max_examples=150, deadline=None, database=None)
@given(
    parameters=st.dictionaries(
        st.sampled_from(["after", "limit", "since", "until", "event", "other"]),
        query_values,
        max_size=4,
    )
)
def test_any_events_query_is_answered_200_or_a_400_naming_the_parameter(
    sqlite_server: LocalServer, parameters: dict[str, str]
) -> None:
    status, _, answer = call(sqlite_server, "/events?" + urllib.parse.urlencode(parameters))
    assert status in (200, 400), answer
    if status == 400:
        named = answer["error"].split(" ", 1)[0]
        assert named in parameters and named in ("after", "limit", "since", "until", "event")
    else:
        assert isinstance(answer["events"], list) and isinstance(answer["next"], str)
        assert call(sqlite_server, f"/events?after={answer['next']}&limit=1")[0] == 200


@given(major=st.integers(0, 2**63 - 1), minor=st.integers(0, 2**31 - 1))
def test_a_cursor_reads_back_as_the_position_it_was_made_from(major: int, minor: int) -> None:
    position = Position(major, minor)
    assert Position.parse(str(position)) == position
