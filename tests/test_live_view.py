"""The receiver's live view (``GET /``) in a real headless Chromium, against real servers.

One browser serves the module; each test opens its pages in a fresh context (its own
sessionStorage). Batches are posted over HTTP to the receiver, in a thread
(``serve``) or as the ``receive`` command in a subprocess, while the page is open, and
the test waits for them to show up without a reload. The page polls every
``INTERVAL_MS`` here (``?interval_ms=``), so each wait is a few hundred milliseconds.

The reference receiver pages ``/events`` by cursor. ``PagedReceiver`` (tests/live_receivers.py)
speaks the same contract without a cursor, as an older receiver does, so the page's other
way of asking for new events is tested too; and with one, failing or emptied on demand.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from live_page import (
    ROWS,
    events_queries,
    json_view,
    set_hidden,
    shown_names,
    wait_rows,
    wait_state,
    wait_text,
)
from live_receivers import PagedReceiver, ReceiveCommand, event, post

from campaign_cart_analytics.receiver import LocalServer, create_app, live, serve

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright (the test extra)")
expect = playwright_api.expect

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
INTERVAL_MS = 100
WAIT_MS = 5000  # for anything the page should show within a few polls; generous for 2 busy cores
TOKEN = "s3cret-Token_42"
HOSTILE_NAME = '<img src=x onerror="window.__pwned=1">'
HOSTILE_NOTE = "</script><script>window.__pwned=2</script>"
HOSTILE_USER = "<svg onload=window.__pwned=3>"


# ---------------------------------------------------------------- browser and servers


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is not installed (Debian's chromium package; .ci/run installs it)")
    with playwright_api.sync_playwright() as playwright:
        try:  # Playwright starts it with a fresh temporary user-data-dir of its own
            launched = playwright.chromium.launch(
                executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30_000
            )
        except playwright_api.Error as exc:
            first_line = str(exc).strip().splitlines()[0]
            pytest.skip(f"{CHROMIUM} cannot be launched: {first_line}")
        yield launched
        launched.close()


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    fresh = browser.new_context()
    fresh.set_default_timeout(WAIT_MS)
    yield fresh
    fresh.close()


@pytest.fixture
def receiver() -> Iterator[LocalServer]:
    local = serve(create_app())
    yield local
    local.stop()


@pytest.fixture
def uncursored() -> Iterator[PagedReceiver]:
    """A receiver whose ``/events`` gives no ``next``: the page de-duplicates by event_id."""
    server = PagedReceiver(cursor=False).start()
    yield server
    server.stop()


@pytest.fixture
def failing() -> Iterator[PagedReceiver]:
    """A receiver that pages by cursor and can be made to fail or lose its events."""
    server = PagedReceiver(cursor=True).start()
    yield server
    server.stop()


def base_of(server: LocalServer) -> str:
    return f"http://{server.host}:{server.port}"


def open_live(context: Any, base: str) -> tuple[Any, list[Any]]:
    """The live view in a new tab, and the list of requests it makes (kept up to date)."""
    page = context.new_page()
    requests: list[Any] = []
    page.on("request", lambda request: requests.append(request))
    page.goto(f"{base}/?interval_ms={INTERVAL_MS}")
    return page, requests


# ---------------------------------------------------------------- the files, over plain HTTP


def fetch(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_the_page_is_static_files_under_a_strict_content_security_policy(
    receiver: LocalServer,
) -> None:
    base = base_of(receiver)
    status, headers, html = fetch(base + "/")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    policy = dict(
        part.strip().split(" ", 1) for part in headers["Content-Security-Policy"].split(";")
    )
    assert policy["default-src"] == "'none'"
    assert policy["script-src"] == policy["style-src"] == policy["connect-src"] == "'self'"
    assert policy["frame-ancestors"] == policy["form-action"] == policy["base-uri"] == "'none'"
    assert headers["X-Content-Type-Options"] == "nosniff"
    text = html.decode()
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", text, re.S)
    assert scripts == [(' src="live.js" defer', "")]  # no inline script for the policy to allow
    assert not re.search(r"<style|\sstyle=|\son[a-z]+=", text)  # no inline style or handlers
    for path, kind in (("/live.js", "text/javascript"), ("/live.css", "text/css")):
        status, headers, body = fetch(base + path)
        assert status == 200 and headers["Content-Type"].startswith(kind) and body
        assert headers["Content-Security-Policy"] == live.CONTENT_SECURITY_POLICY
    script = re.sub(r"^\s*//.*$", "", fetch(base + "/live.js")[2].decode(), flags=re.M)
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(", script)
    status, headers, body = fetch(base + "/", method="HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) == len(html)
    status, headers, body = fetch(base + "/", method="POST")
    assert status == 405 and headers["Allow"] == "GET, HEAD" and json.loads(body)["error"]
    status, _, body = fetch(base + "/live.js/x")
    assert status == 404 and "no such path" in json.loads(body)["error"]


def test_demo_prints_the_live_view_address() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "campaign_cart_analytics", "demo"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    listening = re.search(r"http://127\.0\.0\.1:([0-9]+)/analytics", result.stdout)
    assert listening, result.stdout
    assert f"Live view on http://127.0.0.1:{listening.group(1)}/ " in result.stdout


# ---------------------------------------------------------------- in the browser


def test_events_appear_without_a_reload_with_the_counters(
    context: Any, receiver: LocalServer
) -> None:
    base = base_of(receiver)
    page, requests = open_live(context, base)
    wait_state(page, "live")
    expect(page.locator("#empty")).to_be_visible()
    expect(page.locator("#token-form")).to_be_hidden()  # this receiver wants no token
    page.evaluate("window.__same_document = true")
    user = {"user_id": "user_123", "session_id": "sess_123"}
    sent = [event("dl_view_item", user_properties=user, ecommerce={"value": 99.99}),
            event("dl_add_to_cart", user_properties=user), event("dl_purchase")]  # fmt: skip
    assert post(base, sent) == 202
    wait_rows(page, 3)
    assert shown_names(page) == ["dl_purchase", "dl_add_to_cart", "dl_view_item"]  # newest first
    queries = events_queries(requests)  # the reference receiver pages by cursor
    assert "after" not in queries[0] and all(query.get("after") for query in queries[1:])
    assert page.evaluate("window.__same_document") is True  # no reload happened
    first = page.locator(ROWS).last
    assert first.locator(".id").text_content() == sent[0]["event_id"]
    assert first.locator(".who").text_content() == "user_123 \u00b7 sess_123"
    assert page.locator(ROWS).first.locator(".who").text_content() == ""
    expect(page.locator("#stat-events")).to_have_text("3")
    expect(page.locator("#stat-batches")).to_have_text("1")
    assert post(base, sent[:1]) == 202  # a retried event: a duplicate, no second row
    wait_text(page, "#stat-duplicates", "1")
    expect(page.locator("#stat-batches")).to_have_text("2")
    expect(page.locator("#by-event button")).to_have_count(3)
    assert page.locator(ROWS).count() == 3
    assert json_view(first) == sent[0]


def test_the_filter_asks_the_receiver_and_survives_a_reload(
    context: Any, receiver: LocalServer
) -> None:
    base = base_of(receiver)
    post(base, [event("dl_view_item"), event("dl_purchase"), event("dl_view_item")])
    page, requests = open_live(context, base)
    wait_rows(page, 3)
    page.fill("#filter", "dl_purchase")
    page.press("#filter", "Enter")
    wait_rows(page, 1)
    assert page.url.endswith("#event=dl_purchase")
    post(base, [event("dl_view_item"), event("dl_purchase")])
    wait_rows(page, 2)
    assert shown_names(page) == ["dl_purchase", "dl_purchase"]
    assert events_queries(requests)[-1]["event"] == "dl_purchase"  # filtered by the receiver
    page.reload()
    expect(page.locator("#filter")).to_have_value("dl_purchase")
    wait_rows(page, 2)
    page.locator("#by-event button", has_text="dl_view_item").click()  # a name's count filters
    wait_rows(page, 3)
    assert set(shown_names(page)) == {"dl_view_item"} and page.url.endswith("#event=dl_view_item")
    page.click("#clear-filter")
    wait_rows(page, 5)
    assert "#" not in page.url


def test_hostile_event_data_is_shown_as_text_and_never_runs(
    context: Any, receiver: LocalServer
) -> None:
    base = base_of(receiver)
    context.add_init_script(
        "window.__violations = [];"
        "document.addEventListener('securitypolicyviolation', e => __violations.push(e.violatedDirective));"
    )
    page, requests = open_live(context, base)
    hostile = event(HOSTILE_NAME, note=HOSTILE_NOTE, user_properties={"user_id": HOSTILE_USER})
    hostile["event_id"] = '"><img src=x onerror=window.__pwned=4>'
    assert post(base, [hostile]) == 202
    wait_rows(page, 1)
    row = page.locator(ROWS).first
    assert row.locator(".name").text_content() == HOSTILE_NAME
    assert row.locator(".id").text_content() == hostile["event_id"]
    assert row.locator(".who").text_content() == HOSTILE_USER
    expect(page.locator("#by-event button")).to_have_text(f"{HOSTILE_NAME} 1")
    assert json_view(row) == hostile
    page.wait_for_timeout(2 * INTERVAL_MS)  # time for an image to fail and its handler to run
    assert page.evaluate("document.querySelectorAll('img, svg, body script').length") == 0
    assert page.evaluate("document.scripts.length") == 1  # live.js alone
    assert page.evaluate("window.__pwned") is None
    assert page.evaluate("window.__violations") == []  # nothing hostile even got to be refused
    assert not [r.url for r in requests if r.url.endswith("/x")]


def test_any_event_name_and_properties_are_shown_exactly_as_sent(
    context: Any, receiver: LocalServer
) -> None:
    base = base_of(receiver)
    page, _ = open_live(context, base)
    wait_state(page, "live")
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
        max_leaves=8,
    )

    @settings(max_examples=5, deadline=None, database=None)
    @given(names=st.lists(st.text(min_size=1, max_size=60), min_size=1, max_size=6),
           value=json_values)  # fmt: skip
    def shown_as_sent(names: list[str], value: Any) -> None:
        before = page.locator(ROWS).count()  # the earlier examples' events
        sent = [event(name, note=value) for name in names]
        assert post(base, sent) == 202
        wait_rows(page, before + len(sent))
        assert shown_names(page)[: len(sent)] == [e["event"] for e in reversed(sent)]
        assert json_view(page.locator(ROWS).first) == sent[-1]

    shown_as_sent()
    assert page.evaluate("window.__pwned") is None


def test_a_token_is_asked_for_kept_in_the_tab_and_never_put_in_a_url(
    context: Any, tmp_path: Path
) -> None:
    command = ReceiveCommand(tmp_path / "receive.log", "--db", ":memory:", "--token", TOKEN)
    try:
        assert post(command.base, [event("dl_purchase")], token=TOKEN) == 202
        page, requests = open_live(context, command.base)  # the page itself is public
        wait_state(page, "unauthorized")
        expect(page.locator("#token")).to_be_visible()
        expect(page.locator("#token")).to_be_focused()
        page.fill("#token", "wrong-token")
        page.press("#token", "Enter")
        wait_text(page, "#status", "refused this token")
        assert page.locator(ROWS).count() == 0
        page.fill("#token", TOKEN)
        page.click("#token-form button[type=submit]")
        wait_rows(page, 1)
        wait_state(page, "live")
        expect(page.locator("#stat-events")).to_have_text("1")
        assert page.evaluate("Object.values(sessionStorage)") == [TOKEN]
        assert page.input_value("#token") == ""  # not left in the field either
        page.reload()  # the tab keeps it
        wait_rows(page, 1)
        authorized = [r for r in requests if r.headers.get("authorization") == f"Bearer {TOKEN}"]
        assert {r.url.split("?")[0].rsplit("/", 1)[1] for r in authorized} == {"events", "stats"}
        assert not [r.url for r in requests if TOKEN in r.url] and TOKEN not in page.url
        other, _ = open_live(context, command.base)  # another tab: asked again
        wait_state(other, "unauthorized")
        page.click("#forget-token")
        wait_state(page, "unauthorized")
    finally:
        command.stop()
    assert TOKEN not in command.log.read_text()


def test_polling_goes_on_through_a_receiver_restart_and_says_when_it_is_down(
    context: Any, tmp_path: Path
) -> None:
    database = str(tmp_path / "events.sqlite3")
    command = ReceiveCommand(tmp_path / "receive.log", "--db", database)
    try:
        page, _ = open_live(context, command.base)
        before = event("dl_view_item")
        post(command.base, [before])
        wait_rows(page, 1)
    finally:
        command.stop()
    status = page.locator("#status")
    wait_state(page, "unreachable")
    expect(status).to_contain_text("Retrying in")
    command = ReceiveCommand(tmp_path / "receive.log", "--db", database, port=command.port)
    try:
        post(command.base, [event("dl_purchase")])
        wait_rows(page, 2)
        wait_state(page, "live")
        assert shown_names(page) == ["dl_purchase", "dl_view_item"]  # no row twice
    finally:
        command.stop()


def test_without_a_cursor_rows_are_matched_by_event_id_and_stop_at_300(
    context: Any, uncursored: PagedReceiver
) -> None:
    sent = [event(f"e{n}") for n in range(450)]
    uncursored.add(*sent[:3])
    page, _ = open_live(context, uncursored.base)
    wait_rows(page, 3)
    for start, end in ((3, 150), (150, 300), (300, 450)):  # fewer than a page (200) a time
        uncursored.add(*sent[start:end])
        page.wait_for_selector(f"{ROWS}[data-event-id={sent[end - 1]['event_id']}]")
    wait_rows(page, 300)
    assert shown_names(page) == [f"e{n}" for n in range(449, 149, -1)]  # no gap, no repeat
    assert not [query for query in uncursored.queries if "after" in query]  # none to give


def test_after_a_failing_or_emptied_receiver_the_page_catches_up(
    context: Any, failing: PagedReceiver
) -> None:
    page, _ = open_live(context, failing.base)
    status = page.locator("#status")
    wait_state(page, "live")
    failing.fail_with = 503
    wait_state(page, "error")
    assert status.text_content().startswith(
        "The receiver answered 503: the store is down. Retrying"
    )
    failing.add(*(event(f"during_{n}") for n in range(250)))  # more than a page while it failed
    failing.fail_with = None
    wait_state(page, "live")
    wait_rows(page, 200)  # the latest page, not 250 in dribs
    assert shown_names(page)[0] == "during_249"
    failing.add(event("after"))
    wait_rows(page, 201)
    failing.reset()  # restarted on an empty store between two polls: no error to tell
    failing.add(event("fresh_0"), event("fresh_1"))  # its cursors start again from 0
    wait_rows(page, 203, timeout=15_000)  # seen by the counters, asked every 30 polls at most
    assert shown_names(page)[:3] == ["fresh_1", "fresh_0", "after"]


def test_counters_overtaken_by_a_failure_are_asked_again_on_recovery(
    context: Any, failing: PagedReceiver
) -> None:
    failing.stats_take = 0.05  # asked at most once a second: 20 times what they take
    failing.failing_paths = ("/events",)  # the counters still answer, after the poll failed
    page, _ = open_live(context, failing.base)
    wait_state(page, "live")  # counted 0 events
    failing.fail_with = 503
    wait_state(page, "error")
    failing.add(*(event(f"during_{n}") for n in range(3)))
    asked, deadline = failing.stats_asked, time.monotonic() + 5
    while failing.stats_asked == asked:  # a failing poll's counters are out: they will answer
        assert time.monotonic() < deadline, "the counters were not asked while polls failed"
        time.sleep(0.002)
    asked = failing.stats_asked
    failing.fail_with = None
    wait_rows(page, 3)
    assert failing.stats_asked > asked  # the poll that recovered counted again: 3, not 0
    failing.reset()  # so that a restart on an empty store, refilled at once, is still seen
    failing.add(*(event(f"fresh_{n}") for n in range(2)))
    wait_rows(page, 5, timeout=5_000)
    assert shown_names(page)[:2] == ["fresh_1", "fresh_0"]


def test_slow_counters_are_asked_for_less_often(context: Any, failing: PagedReceiver) -> None:
    failing.stats_take = 0.05  # 20 times that is a second: about one in ten polls asks
    page, requests = open_live(context, failing.base)
    wait_state(page, "live")
    page.wait_for_timeout(1000)
    polls = len(events_queries(requests))
    assert 1 <= failing.stats_asked <= 2 < polls, (failing.stats_asked, polls)  # not every poll


def test_a_hidden_tab_stops_polling_until_it_is_shown(context: Any, receiver: LocalServer) -> None:
    page, requests = open_live(context, base_of(receiver))
    answered: list[Any] = []
    page.on("requestfinished", lambda request: answered.append(request))
    page.on("requestfailed", lambda request: answered.append(request))
    watched = len(requests)  # from here on, each request's end is seen
    wait_state(page, "live")

    set_hidden(page, True)
    wait_state(page, "paused")
    for _ in range(500):  # a poll in flight when hidden still lands: wait for its answers
        if all(request in answered for request in requests[watched:]):
            break
        page.wait_for_timeout(10)
    asked = len(requests)
    post(base_of(receiver), [event("while_hidden")])
    page.wait_for_timeout(5 * INTERVAL_MS)
    assert len(requests) == asked and page.locator(ROWS).count() == 0
    set_hidden(page, False)
    wait_rows(page, 1)
    wait_state(page, "live")


# ---------------------------------------------------------------- counters that fail, stores that refill


def test_failing_counters_do_not_hold_back_the_events(context: Any, failing: PagedReceiver) -> None:
    page, _ = open_live(context, failing.base)
    wait_state(page, "live")
    failing.failing_paths = ("/stats",)  # a count past PostgreSQL's statement timeout: 503
    failing.fail_with = 503  # while /events, an indexed read, answers
    wait_text(page, "#status", "503: the store is down")  # a count was refused
    failing.add(event("while_counting_fails"))
    wait_rows(page, 1)  # the events answered: shown, whatever the counters said
    wait_state(page, "live")
    expect(page.locator("#status")).to_contain_text("the counters failed (503: the store is down)")
    assert page.locator("#stat-events").text_content() == "0"  # the counters shown are kept
    failing.fail_with = None  # counted again within 30 polls, and said so
    wait_text(page, "#stat-events", "1")
    expect(page.locator("#status")).to_have_text(f"Live: polling every {INTERVAL_MS / 1000} s.")


def test_a_restart_refilled_to_the_old_count_before_the_counters_looked_is_caught_up(
    context: Any, failing: PagedReceiver
) -> None:
    failing.stats_take = 0.05  # counters asked about once a second, as on a big store
    page, _ = open_live(context, failing.base)
    failing.add(*(event(f"old_{n}") for n in range(5)))
    wait_rows(page, 5)
    wait_text(page, "#stat-events", "5")  # the page compares with 5 from here on
    failing.restart_with(*(event(f"fresh_{n}") for n in range(5)))  # between two polls
    wait_rows(page, 10, timeout=10_000)
    assert shown_names(page)[:5] == [f"fresh_{n}" for n in range(4, -1, -1)]


def test_a_tab_shown_again_after_a_restart_that_refilled_past_the_old_count(
    context: Any, failing: PagedReceiver
) -> None:
    page, _ = open_live(context, failing.base)
    failing.add(*(event(f"old_{n}") for n in range(5)))
    wait_rows(page, 5)
    wait_text(page, "#stat-events", "5")

    set_hidden(page, True)
    wait_state(page, "paused")
    page.wait_for_timeout(3 * INTERVAL_MS)  # any poll in flight has landed
    failing.restart_with(*(event(f"fresh_{n}") for n in range(8)))  # hours later: more than before
    set_hidden(page, False)
    wait_rows(page, 13)
    assert shown_names(page)[:8] == [f"fresh_{n}" for n in range(7, -1, -1)]
