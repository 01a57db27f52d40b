"""The Django app and middleware, driven by Django's test client against a local receiver."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

django = pytest.importorskip("django")

from django.conf import settings  # noqa: E402
from django.http import HttpRequest, HttpResponse  # noqa: E402
from django.urls import path  # noqa: E402
from helpers import wait_until  # noqa: E402
from receiver import Receiver  # noqa: E402

import campaign_cart_analytics as cca  # noqa: E402


def track_view(request: HttpRequest) -> HttpResponse:
    cca.track(
        "dl_view_item",
        {"user_properties": {"country": "US"}, "attribution": {"source": "newsletter"}}
        if "own" in request.GET
        else {"ecommerce": {"value": 1}},
    )
    return HttpResponse("tracked")


def quiet_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse("nothing tracked")


async def async_track_view(request: HttpRequest) -> HttpResponse:
    cca.track("dl_async_view")
    return HttpResponse("tracked")


async def async_view_tracking_in_the_sync_thread(request: HttpRequest) -> HttpResponse:
    from asgiref.sync import sync_to_async

    await sync_to_async(cca.track)("dl_async_view_sync_track")
    return HttpResponse("tracked")


urlpatterns = [
    path("track", track_view),
    path("quiet", quiet_view),
    path("async-track", async_track_view),
    path("async-sync-track", async_view_tracking_in_the_sync_thread),
]


@pytest.fixture(scope="module")
def django_receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Receiver]:
    server = Receiver()
    database = tmp_path_factory.mktemp("django") / "db.sqlite3"  # shared by async threads
    settings.configure(
        SECRET_KEY="test-only",
        ROOT_URLCONF=__name__,
        ALLOWED_HOSTS=["testserver"],
        USE_TZ=True,
        INSTALLED_APPS=[
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "django.contrib.sessions",
            "campaign_cart_analytics.integrations.django",
        ],
        MIDDLEWARE=[
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
            "campaign_cart_analytics.integrations.django.AnalyticsMiddleware",
        ],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(database)}},
        PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],  # fast, tests only
        CAMPAIGN_CART_ANALYTICS={"endpoint": server.url, "batchSize": 1, "maxRetries": 0},
    )
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    yield server
    cca.get_client().shutdown(timeout=1)
    server.close()


def events_after(receiver: Receiver, count: int) -> list[dict[str, Any]]:
    assert cca.flush(timeout=5)
    assert wait_until(lambda: len(receiver.delivered_events()) >= count)
    return receiver.delivered_events()


def test_the_app_configures_the_module_level_client(django_receiver: Receiver) -> None:
    client = cca.get_client()
    assert client.config.endpoint == django_receiver.url
    assert (client.config.batch_size, client.config.max_retries) == (1, 0)


def test_anonymous_request_carries_utm_attribution(django_receiver: Receiver) -> None:
    from django.test import Client

    seen = len(django_receiver.delivered_events())
    response = Client().get("/track?utm_source=google&utm_medium=cpc&utm_campaign=summer_sale&x=1")
    assert response.status_code == 200
    event = events_after(django_receiver, seen + 1)[-1]
    assert event["attribution"] == {"source": "google", "medium": "cpc", "campaign": "summer_sale"}
    assert event["ecommerce"] == {"value": 1}
    # A new visitor: the session was created for the event, and its cookie set.
    session_id = event["user_properties"]["session_id"]
    assert list(event["user_properties"]) == ["session_id"]  # no user
    assert response.cookies["sessionid"].value == session_id


def test_a_visitors_events_share_the_session_created_at_the_first(
    django_receiver: Receiver,
) -> None:
    from django.test import Client

    browser = Client()
    seen = len(django_receiver.delivered_events())
    browser.get("/track")
    browser.get("/track")
    first, second = events_after(django_receiver, seen + 2)[-2:]
    assert first["user_properties"]["session_id"] == second["user_properties"]["session_id"]


def test_logged_in_request_carries_session_and_user_the_events_own_values_win(
    django_receiver: Receiver,
) -> None:
    from django.contrib.auth.models import User
    from django.test import Client

    user = User.objects.create_user("shopper", password="pw")
    browser = Client()
    browser.force_login(user)
    seen = len(django_receiver.delivered_events())
    browser.get("/track?own=1&utm_source=google&utm_medium=cpc")
    event = events_after(django_receiver, seen + 1)[-1]
    session_key = browser.session.session_key
    assert event["user_properties"] == {
        "session_id": session_key,
        "user_id": str(user.pk),
        "country": "US",
    }
    assert event["attribution"] == {"source": "newsletter", "medium": "cpc"}
    assert event["event_id"].startswith(f"{session_key}_")


def test_a_request_that_tracks_nothing_costs_no_query(django_receiver: Receiver) -> None:
    from django.contrib.auth.models import User
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    browser = Client()
    browser.force_login(User.objects.create_user("quiet", password="pw"))
    with CaptureQueriesContext(connection) as quiet:
        browser.get("/quiet?utm_source=google")
    with CaptureQueriesContext(connection) as tracking:
        browser.get("/track")
    assert len(quiet.captured_queries) == 0
    assert len(tracking.captured_queries) > 0  # the session and user are read for the event


class DatabaseUse:
    """The SQL run, and the connections opened, by any thread while ``database_use()`` is open."""

    def __init__(self) -> None:
        self.statements: list[str] = []
        self.opened: list[tuple[threading.Thread, Any]] = []  # (thread, its connection)

    def count(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        self.statements.append(sql)
        return execute(sql, params, many, context)

    def watch(self, sender: Any, connection: Any, **kwargs: Any) -> None:
        self.opened.append((threading.current_thread(), connection))
        connection.execute_wrappers.append(self.count)

    def finished_threads_connections(self) -> list[Any]:
        return [connection for thread, connection in self.opened if not thread.is_alive()]


@contextmanager
def database_use() -> Iterator[DatabaseUse]:
    """Watch every connection opened meanwhile, in any thread.

    Django's connections are per thread, so ``CaptureQueriesContext(connection)``
    sees only the test thread's; under ASGI the queries run in Django's sync
    thread and wherever else. ``over_asgi`` closes the sync thread's connection
    first, so every query meanwhile runs on a connection opened (and watched) here.
    """
    from django.db.backends.signals import connection_created

    use = DatabaseUse()
    connection_created.connect(use.watch)
    try:
        yield use
    finally:
        connection_created.disconnect(use.watch)
        for _, connection in use.opened:
            connection.execute_wrappers.remove(use.count)


def over_asgi(browser: Any, *paths: str) -> tuple[list[Any], DatabaseUse]:
    """GET each path in turn through Django's async handler (as under uvicorn or daphne)."""
    from asgiref.sync import sync_to_async
    from django.db import connections

    async def visit() -> list[Any]:
        await sync_to_async(connections.close_all)()  # Django's sync thread starts afresh
        return [await browser.get(path) for path in paths]

    with database_use() as use:
        responses = asyncio.run(visit())
    assert [response.status_code for response in responses] == [200] * len(paths)
    return responses, use


def logged_in_async_browser(username: str) -> tuple[Any, Any]:
    from django.contrib.auth.models import User
    from django.test import AsyncClient

    user = User.objects.create_user(username, password="pw")
    browser = AsyncClient()
    browser.force_login(user)  # sync, before the loop runs: Django 4.2 has no aforce_login
    return browser, user


@pytest.mark.parametrize("logged_in", [False, True], ids=["anonymous", "logged-in"])
def test_asgi_a_request_that_tracks_nothing_looks_nothing_up(
    django_receiver: Receiver, logged_in: bool
) -> None:
    from django.test import AsyncClient

    browser = logged_in_async_browser(f"asgi-quiet-{logged_in}")[0] if logged_in else AsyncClient()
    (response,), use = over_asgi(browser, "/quiet?utm_source=google")
    assert use.statements == []
    assert "sessionid" not in response.cookies


@pytest.mark.parametrize("view", ["/track", "/async-track"], ids=["sync-view", "async-view"])
@pytest.mark.parametrize("logged_in", [False, True], ids=["anonymous", "logged-in"])
def test_asgi_events_carry_the_session_user_and_attribution(
    django_receiver: Receiver, view: str, logged_in: bool
) -> None:
    from django.test import AsyncClient

    browser, user = (
        logged_in_async_browser(f"asgi-{view[1:]}-{logged_in}")
        if logged_in
        else (AsyncClient(), None)
    )
    seen = len(django_receiver.delivered_events())
    (first, _), use = over_asgi(browser, f"{view}?utm_source=google&utm_campaign=launch", view)
    event, next_event = events_after(django_receiver, seen + 2)[-2:]
    session_id = event["user_properties"]["session_id"]
    if not logged_in:  # a new visitor: the session made for the event is the one kept
        assert first.cookies["sessionid"].value == session_id
    assert browser.cookies["sessionid"].value == session_id
    assert next_event["user_properties"]["session_id"] == session_id
    assert event["user_properties"].get("user_id") == (str(user.pk) if user else None)
    assert event["attribution"] == {"source": "google", "campaign": "launch"}
    assert "attribution" not in next_event
    assert use.statements  # the lookup ran, on some thread


def test_an_async_views_lookup_leaves_no_connection_open(django_receiver: Receiver) -> None:
    from django.test import AsyncClient

    _, use = over_asgi(AsyncClient(), "/async-track")
    finished = use.finished_threads_connections()
    assert finished, "the async view's lookup ran on a thread of its own"
    assert all(connection.connection is None for connection in finished)


def test_an_async_view_tracking_through_sync_to_async_holds_no_loop(
    django_receiver: Receiver,
) -> None:
    from django.test import AsyncClient

    seen = len(django_receiver.delivered_events())
    (response,), use = over_asgi(AsyncClient(), "/async-sync-track")
    event = events_after(django_receiver, seen + 1)[-1]
    assert response.cookies["sessionid"].value == event["user_properties"]["session_id"]
    assert use.opened, "the lookup ran"
    assert use.finished_threads_connections() == []  # in Django's sync thread, no helper


def expired_session_key() -> str:
    """The key of a session that has expired in the store (its row is still there)."""
    from django.contrib.sessions.backends.db import SessionStore

    session = SessionStore()
    session.set_expiry(-60)
    session.save()
    assert session.session_key is not None
    return session.session_key


@pytest.mark.parametrize("asgi", [False, True], ids=["wsgi-sync-view", "asgi-async-view"])
def test_a_cookie_naming_an_expired_session_makes_a_new_visitor(
    django_receiver: Receiver, asgi: bool
) -> None:
    from django.test import AsyncClient, Client

    expired = expired_session_key()
    browser = AsyncClient() if asgi else Client()
    browser.cookies["sessionid"] = expired
    seen = len(django_receiver.delivered_events())
    path = "/async-track" if asgi else "/track"
    if asgi:
        over_asgi(browser, path, path)  # each answered 200
    else:
        browser.get(path)
        browser.get(path)
    event, next_event = events_after(django_receiver, seen + 2)[-2:]
    session_id = event["user_properties"]["session_id"]
    assert session_id != expired  # Django drops that cookie: a dead key would be a visit of one
    assert browser.cookies["sessionid"].value == session_id
    assert next_event["user_properties"]["session_id"] == session_id


def through_asgi_handler(path: str, query: str = "", cookie: str = "") -> dict[str, str]:
    """GET through Django's own ASGI application, as uvicorn would; the response's headers.

    Unlike ``AsyncClient``, the handler gives each request its own sync thread
    (``ThreadSensitiveContext``) and closes old connections at its end.
    """
    from django.core.handlers.asgi import ASGIHandler

    headers = [(b"host", b"testserver")] + ([(b"cookie", cookie.encode())] if cookie else [])
    scope = {"type": "http", "method": "GET", "path": path, "query_string": query.encode()}
    scope |= {"headers": headers, "asgi": {"version": "3.0"}, "http_version": "1.1"}
    sent: list[dict[str, Any]] = []

    async def visit() -> None:
        body_read = asyncio.Event()

        async def receive() -> dict[str, Any]:
            if body_read.is_set():  # the handler listens for a disconnect: none comes
                await asyncio.Event().wait()
            body_read.set()
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await ASGIHandler()(scope, receive, send)

    asyncio.run(visit())
    assert sent[0]["status"] == 200
    return {name.decode().lower(): value.decode() for name, value in sent[0]["headers"]}


def test_asgi_handler_an_async_views_new_visitor_keeps_its_events_session(
    django_receiver: Receiver,
) -> None:
    seen = len(django_receiver.delivered_events())
    assert "set-cookie" not in through_asgi_handler("/quiet")
    cookie = through_asgi_handler("/async-track", "utm_medium=cpc")["set-cookie"].split(";")[0]
    through_asgi_handler("/async-track", cookie=cookie)
    event, next_event = events_after(django_receiver, seen + 2)[-2:]
    assert cookie == f"sessionid={event['user_properties']['session_id']}"
    assert next_event["user_properties"] == event["user_properties"]
    assert event["attribution"] == {"medium": "cpc"}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (None, "settings.CAMPAIGN_CART_ANALYTICS must be a dict"),
        ({"endpoint": "http://127.0.0.1:9/a", "batchsize": 5}, "did you mean 'batchSize'"),
    ],
)
def test_bad_settings_fail_at_startup_with_the_setting_named(
    django_receiver: Receiver, options: Any, message: str
) -> None:
    from django.apps import apps
    from django.core.exceptions import ImproperlyConfigured
    from django.test import override_settings

    before = cca.get_client()
    with (
        override_settings(CAMPAIGN_CART_ANALYTICS=options),
        pytest.raises(ImproperlyConfigured, match=message),
    ):
        apps.get_app_config("campaign_cart_analytics").ready()
    assert cca.get_client() is before  # the running client is left alone
