"""The ASGI middleware driven directly: one request, scope and message at a time.

The real-server tests (uvicorn, httpx) are in test_asgi.py; here each edge is
pinned down exactly: what is read from the scope, what is sent, what propagates.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from typing import Any

import pytest

pytest.importorskip("starlette")
pytest.importorskip("fastapi")

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from receiver import Receiver

import campaign_cart_analytics as cca
from campaign_cart_analytics.integrations.asgi import AnalyticsMiddleware

SESSION_ID = re.compile(r"[0-9a-f]{32}")

Scope = dict[str, Any]
#: What a cookie value may hold here: any byte a header carries, but not the pair separator.
COOKIE_CHARACTERS = st.sampled_from([chr(c) for c in range(256) if chr(c) != ";"])


def http_scope(query: bytes = b"", headers: tuple[tuple[bytes, bytes], ...] = ()) -> Scope:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
            "scheme": "http", "path": "/", "raw_path": b"/", "query_string": query,
            "headers": list(headers), "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 80)}  # fmt: skip


async def request(app: Any, scope: Scope) -> list[dict[str, Any]]:
    """One request through ``app``; the messages it sent."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def responding(track: Any = None, headers: tuple[tuple[bytes, bytes], ...] = ()) -> Any:
    """A bare ASGI app: calls ``track()`` (when given), then answers 200 with ``headers``."""

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if track is not None:
            track()
        await send({"type": "http.response.start", "status": 200, "headers": list(headers)})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


@pytest.fixture
def kept(make_client: Any) -> tuple[cca.Analytics, list[dict[str, Any]]]:
    """A client whose events are kept here (its transform keeps each, then filters it)."""
    events: list[dict[str, Any]] = []
    client = make_client(transform_function=lambda event: events.append(event))
    return client, events


def set_cookie_headers(messages: list[dict[str, Any]]) -> list[str]:
    start = messages[0]
    return [v.decode() for k, v in start["headers"] if k.lower() == b"set-cookie"]


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.one_of(
        st.text(COOKIE_CHARACTERS, max_size=300),
        st.just(uuid.uuid4().hex),
        st.builds(lambda tail: uuid.uuid4().hex + tail, st.text(COOKIE_CHARACTERS, min_size=1)),
    )
)
def test_a_cookie_value_is_trusted_only_when_it_is_one_of_ours(
    kept: tuple[cca.Analytics, list[dict[str, Any]]], value: str
) -> None:
    client, events = kept
    events.clear()
    middleware = AnalyticsMiddleware(responding(lambda: client.track("e")), analytics=client)
    header = (b"cookie", b"theme=dark; cca_session_id=" + value.encode("latin-1", "replace"))
    sent = asyncio.run(request(middleware, http_scope(headers=(header,))))
    (event,) = events
    session_id = event["user_properties"]["session_id"]
    assert SESSION_ID.fullmatch(session_id) and event["event_id"].startswith(f"{session_id}_")
    if SESSION_ID.fullmatch(value.rstrip(" \t")):  # trailing blanks end the cookie pair
        assert session_id == value.rstrip(" \t") and set_cookie_headers(sent) == []
    else:  # a new id, in a cookie of plain characters
        assert session_id != value
        assert set_cookie_headers(sent) == [
            f"cca_session_id={session_id}; Path=/; Max-Age=1209600; HttpOnly; SameSite=Lax"
        ]


class WatchedScope(dict):  # type: ignore[type-arg]
    """A scope that notes every key read from it."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.read: list[str] = []

    def __getitem__(self, key: str) -> Any:
        self.read.append(key)
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.read.append(key)
        return super().get(key, default)


def test_a_request_that_tracks_nothing_reads_nothing_and_sends_the_apps_own_messages(
    kept: tuple[cca.Analytics, list[dict[str, Any]]],
) -> None:
    from starlette.middleware.sessions import Session

    client, _ = kept
    scope = WatchedScope(http_scope(b"utm_source=x", ((b"cookie", b"cca_session_id=0"),)))
    scope["session"], scope["user"] = Session({"session_id": "s"}), object()
    start = {"type": "http.response.start", "status": 200, "headers": []}

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await send(start)
        await send({"type": "http.response.body", "body": b"ok"})

    sent = asyncio.run(request(AnalyticsMiddleware(app, analytics=client), scope))
    # No cookie, session, user or query string looked at (only the middleware's own mark).
    assert scope.read == ["type", "campaign_cart_analytics.visit"]
    assert sent[0] is start and start["headers"] == []
    assert not scope["session"].accessed and not scope["session"].modified


@pytest.mark.parametrize("ours_outermost", [True, False])
def test_starlette_sessions_in_either_middleware_order(
    kept: tuple[cca.Analytics, list[dict[str, Any]]], ours_outermost: bool
) -> None:
    from starlette.middleware.sessions import SessionMiddleware

    client, events = kept

    def stack(app: Any) -> Any:
        if ours_outermost:
            return AnalyticsMiddleware(SessionMiddleware(app, secret_key="k"), analytics=client)
        return SessionMiddleware(AnalyticsMiddleware(app, analytics=client), secret_key="k")

    sent = asyncio.run(request(stack(responding(lambda: client.track("e"))), http_scope()))
    (cookie,) = set_cookie_headers(sent)
    assert cookie.startswith("session=")  # Starlette's, which now keeps the id; none of ours
    cookie_value = cookie.split(";")[0].split("=", 1)[1]
    scope = http_scope(headers=((b"cookie", f"session={cookie_value}".encode()),))
    sent = asyncio.run(request(stack(responding(lambda: client.track("e"))), scope))
    assert set_cookie_headers(sent) == []  # the session did not change: nothing to set
    first, second = (event["user_properties"] for event in events)
    assert first == second and SESSION_ID.fullmatch(first["session_id"])


class UserWithoutIdentity:
    is_authenticated = True

    @property
    def identity(self) -> str:
        raise NotImplementedError


@pytest.mark.parametrize(
    ("user", "user_id"),
    [("absent", None), ("anonymous", None), ("ann", "ann"), ("broken", None)],
)
def test_the_user_from_scope(
    kept: tuple[cca.Analytics, list[dict[str, Any]]], user: str, user_id: str | None
) -> None:
    from starlette.authentication import SimpleUser, UnauthenticatedUser

    client, events = kept
    scope = http_scope()
    if user != "absent":  # absent: AuthenticationMiddleware is not installed
        users = {"anonymous": UnauthenticatedUser(), "broken": UserWithoutIdentity()}
        scope["user"] = users.get(user, SimpleUser(user))
    asyncio.run(request(AnalyticsMiddleware(responding(lambda: client.track("e")), client), scope))
    (event,) = events
    assert event["user_properties"].get("user_id") == user_id
    assert SESSION_ID.fullmatch(event["user_properties"]["session_id"])  # kept either way


def test_an_exception_propagates_unchanged_after_the_event_got_its_context(
    kept: tuple[cca.Analytics, list[dict[str, Any]]],
) -> None:
    client, events = kept
    failure = LookupError("the endpoint's own error")

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        client.track("before the error")
        raise failure

    with pytest.raises(LookupError) as raised:
        asyncio.run(
            request(AnalyticsMiddleware(app, analytics=client), http_scope(b"utm_source=a"))
        )
    assert raised.value is failure
    client.track("after the request")
    inside, outside = events
    assert inside["attribution"] == {"source": "a"} and "user_properties" in inside
    assert "attribution" not in outside and "user_properties" not in outside  # no leak


def test_a_task_started_by_the_request_tracks_with_its_context_after_it_ended(
    kept: tuple[cca.Analytics, list[dict[str, Any]]],
) -> None:
    client, events = kept
    later = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []

    async def follow_up() -> None:
        await later.wait()
        client.track("after the response")

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        tasks.append(asyncio.create_task(follow_up()))
        await responding(lambda: client.track("in the request"))(scope, receive, send)

    async def main() -> list[dict[str, Any]]:
        scope = http_scope(b"utm_medium=cpc&utm_medium=other")  # the first of repeated ones
        sent = await request(AnalyticsMiddleware(app, analytics=client), scope)
        later.set()
        await tasks[0]
        return sent

    sent = asyncio.run(main())
    in_request, after = events
    assert in_request["attribution"] == after["attribution"] == {"medium": "cpc"}
    assert in_request["user_properties"] == after["user_properties"]
    assert set_cookie_headers(sent)[0].startswith(
        f"cca_session_id={after['user_properties']['session_id']};"
    )


@pytest.mark.parametrize("kind", ["websocket", "lifespan-startup"])
def test_other_scopes_pass_through_untouched(
    kept: tuple[cca.Analytics, list[dict[str, Any]]], kind: str
) -> None:
    client, events = kept
    scope = {"type": kind.split("-")[0], "asgi": {"version": "3.0"}}
    message = (
        {"type": "websocket.accept"}
        if kind == "websocket"
        else {"type": "lifespan.startup.complete"}
    )
    seen: list[Any] = []
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: Any) -> None:
        sent.append(message)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.extend([scope, receive, send])
        client.track("outside any request")
        await send(message)

    asyncio.run(AnalyticsMiddleware(app, analytics=client)(scope, receive, send))
    assert seen[0] is scope and seen[1] is receive and sent == [message] and sent[0] is message
    if kind == "websocket":
        assert seen[2] is send
    assert scope == {"type": kind.split("-")[0], "asgi": {"version": "3.0"}}
    assert "user_properties" not in events[0]


def test_the_lifespan_shutdown_is_reported_after_the_events_are_delivered(
    make_client: Any, receiver: Receiver
) -> None:
    client = make_client(batch_interval_ms=60_000)
    delivered_when_reported: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        client.track("in a shutdown handler")
        await send({"type": "lifespan.shutdown.complete"})

    async def main() -> None:
        messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

        async def receive() -> dict[str, str]:
            return next(messages)

        async def send(message: dict[str, str]) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                delivered_when_reported.append(len(receiver.delivered_events()))

        await AnalyticsMiddleware(app, analytics=client)({"type": "lifespan"}, receive, send)

    asyncio.run(main())
    assert delivered_when_reported == [1]
    assert client.track("still usable: a test suite may start the app again") is not None


def test_cookie_options_and_https(kept: tuple[cca.Analytics, list[dict[str, Any]]]) -> None:
    client, events = kept
    app = responding(lambda: client.track("e"), headers=((b"set-cookie", b"theme=dark"),))
    middleware = AnalyticsMiddleware(app, client, cookie_name="visit", cookie_max_age=None)
    sent = asyncio.run(request(middleware, {**http_scope(), "scheme": "https"}))
    session_id = events[0]["user_properties"]["session_id"]
    assert set_cookie_headers(sent) == [
        "theme=dark",
        f"visit={session_id}; Path=/; HttpOnly; SameSite=Lax; Secure",
    ]


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        (
            {"analytics": "http://127.0.0.1/a"},
            TypeError,
            "analytics must be a campaign_cart_analytics.Analytics",
        ),
        ({"cookie_name": "my cookie"}, ValueError, "cookie_name must be a non-empty str"),
        ({"cookie_name": ""}, ValueError, "cookie_name must be"),
        ({"cookie_max_age": True}, ValueError, "cookie_max_age must be an int > 0"),
        ({"cookie_max_age": 0}, ValueError, "cookie_max_age must be an int > 0"),
    ],
)
def test_bad_options_are_refused_naming_the_option(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=f"^AnalyticsMiddleware: {message}"):
        AnalyticsMiddleware(responding(), **options)


def test_add_middleware_uses_the_module_level_client_configured_at_any_time(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from fastapi import FastAPI

    monkeypatch.setattr(cca, "_default_client", None)  # restored after the test
    app = FastAPI()
    app.add_middleware(AnalyticsMiddleware)

    @app.get("/")
    async def endpoint() -> str:
        return "ok"

    with caplog.at_level(logging.WARNING, logger="campaign_cart_analytics"):
        sent = asyncio.run(request(app, http_scope()))
    assert sent[0]["status"] == 200  # not configured: the request goes on without context
    assert "configure(...) was not called" in caplog.text

    client = cca.configure(endpoint=receiver.url, batch_interval_ms=60_000)
    try:
        endpoint_tracks = responding(lambda: cca.track("e"))
        app.router.routes.clear()
        app.router.mount("/", endpoint_tracks)
        sent = asyncio.run(request(app, http_scope(b"utm_source=module")))
        assert set_cookie_headers(sent)
        assert client.flush(timeout=5)
        assert receiver.delivered_events()[0]["attribution"] == {"source": "module"}
    finally:
        client.shutdown(timeout=1)


async def run_lifespan(app: Any, while_running: Any) -> list[str]:
    """Start ``app``'s lifespan, call ``while_running()``, shut it down; the messages it sent."""
    sent: list[str] = []
    messages = iter(["lifespan.startup", "lifespan.shutdown"])

    async def receive() -> dict[str, str]:
        message = next(messages)
        if message == "lifespan.shutdown":
            while_running()
        return {"type": message}

    async def send(message: dict[str, str]) -> None:
        sent.append(message["type"])

    await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
    return sent


def test_the_lifespan_helpers_shut_the_client_down(
    receiver: Receiver, make_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi import FastAPI

    from campaign_cart_analytics.integrations.asgi import lifespan, shutting_down

    own = make_client(batch_interval_ms=60_000)
    app = FastAPI(lifespan=lifespan(own))
    sent = asyncio.run(run_lifespan(app, lambda: own.track("own client")))
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert own.track("after shutdown") is None and own.stats().delivered == 1

    monkeypatch.setattr(cca, "_default_client", None)

    async def main() -> None:
        async with shutting_down(timeout=2):  # not configured yet: nothing to shut down
            pass
        module_level = cca.configure(endpoint=receiver.url, batch_interval_ms=60_000)
        async with shutting_down(timeout=2):
            cca.track("module-level client")
        assert module_level.track("after shutdown") is None

    asyncio.run(main())
    assert [e["event"] for e in receiver.delivered_events()] == [
        "own client",
        "module-level client",
    ]


def test_on_an_app_and_a_sub_app_mounted_in_it_a_new_visitor_gets_one_session(
    kept: tuple[cca.Analytics, list[dict[str, Any]]],
) -> None:
    client, events = kept
    inner = AnalyticsMiddleware(responding(lambda: client.track("e")), analytics=client)
    outer = AnalyticsMiddleware(inner, analytics=client)
    sent = asyncio.run(request(outer, http_scope()))
    (event,) = events
    session_id = event["user_properties"]["session_id"]
    assert set_cookie_headers(sent) == [
        f"cca_session_id={session_id}; Path=/; Max-Age=1209600; HttpOnly; SameSite=Lax"
    ]


@pytest.mark.parametrize(
    "cookies",
    ["cca_session_id=junk; cca_session_id={id}", 'cca_session_id="{id}"'],
    ids=["another-domains-cookie-first", "quoted"],
)
def test_the_visitors_id_is_found_among_cookies_of_the_same_name_or_quoted(
    kept: tuple[cca.Analytics, list[dict[str, Any]]], cookies: str
) -> None:
    client, events = kept
    known = uuid.uuid4().hex
    header = (b"cookie", cookies.format(id=known).encode())
    middleware = AnalyticsMiddleware(responding(lambda: client.track("e")), analytics=client)
    sent = asyncio.run(request(middleware, http_scope(headers=(header,))))
    assert events[0]["user_properties"]["session_id"] == known
    assert set_cookie_headers(sent) == []


def test_a_middleware_that_sees_no_lifespan_says_nothing_will_flush_at_shutdown(
    kept: tuple[cca.Analytics, list[dict[str, Any]]], caplog: pytest.LogCaptureFixture
) -> None:
    client, _ = kept
    middleware = AnalyticsMiddleware(responding(lambda: client.track("e")), analytics=client)
    with caplog.at_level(logging.WARNING, logger="campaign_cart_analytics"):
        for _ in range(3):
            asyncio.run(request(middleware, http_scope()))
    warnings = [r.getMessage() for r in caplog.records if "has seen no lifespan" in r.getMessage()]
    assert len(warnings) == 1 and "add the middleware to the root app" in warnings[0]
