"""The Django app and middleware, driven by Django's test client against a local receiver."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
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


urlpatterns = [
    path("track", track_view),
    path("quiet", quiet_view),
    path("async-track", async_track_view),
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


def test_async_views_get_the_context_too(django_receiver: Receiver) -> None:
    from django.contrib.auth.models import User
    from django.test import AsyncClient

    user = User.objects.create_user("async-shopper", password="pw")
    browser = AsyncClient()
    seen = len(django_receiver.delivered_events())

    async def visit() -> int:
        await browser.aforce_login(user) if hasattr(browser, "aforce_login") else None
        response = await browser.get("/async-track?utm_campaign=launch")
        return int(response.status_code)

    assert asyncio.run(visit()) == 200
    event = events_after(django_receiver, seen + 1)[-1]
    assert event["event"] == "dl_async_view"
    assert event["attribution"] == {"campaign": "launch"}
    if hasattr(browser, "aforce_login"):
        assert event["user_properties"]["user_id"] == str(user.pk)


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
