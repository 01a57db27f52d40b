"""The Flask extension, driven by Flask's test client against a local receiver."""

from __future__ import annotations

from typing import Any

import pytest

flask = pytest.importorskip("flask")

from receiver import Receiver  # noqa: E402

from campaign_cart_analytics.integrations.flask import CampaignCartAnalytics  # noqa: E402


def make_app(receiver: Receiver, *, secret_key: str | None = "test-only", **options: Any) -> Any:
    app = flask.Flask(__name__)
    app.secret_key = secret_key
    app.config["CAMPAIGN_CART_ANALYTICS"] = {"endpoint": receiver.url, "batchSize": 1, **options}
    analytics = CampaignCartAnalytics()
    analytics.init_app(app)

    @app.get("/track")
    def track() -> str:
        own = {"attribution": {"source": "newsletter"}} if "own" in flask.request.args else {}
        analytics.track("dl_view_item", own)
        return "tracked"

    @app.get("/quiet")
    def quiet() -> str:
        return "nothing tracked"

    return app


@pytest.fixture
def flask_app(receiver: Receiver) -> Any:
    app = make_app(receiver)
    yield app
    app.extensions["campaign_cart_analytics"].shutdown(timeout=1)


def test_the_client_is_built_from_app_config(flask_app: Any, receiver: Receiver) -> None:
    client = flask_app.extensions["campaign_cart_analytics"]
    assert client.config.endpoint == receiver.url and client.config.batch_size == 1


def test_requests_carry_session_and_attribution(flask_app: Any, receiver: Receiver) -> None:
    browser = flask_app.test_client()
    browser.get("/track?utm_source=google&utm_medium=cpc&utm_campaign=summer_sale")
    browser.get("/track?own=1&utm_medium=email")
    client = flask_app.extensions["campaign_cart_analytics"]
    assert client.flush(timeout=5)
    first, second = receiver.delivered_in_tracking_order()
    assert first["attribution"] == {"source": "google", "medium": "cpc", "campaign": "summer_sale"}
    assert second["attribution"] == {"source": "newsletter", "medium": "email"}  # own value wins
    session_id = first["user_properties"]["session_id"]
    assert len(session_id) == 32 and second["user_properties"]["session_id"] == session_id
    assert first["event_id"].startswith(f"{session_id}_")


def test_a_request_that_tracks_nothing_sets_no_cookie(flask_app: Any) -> None:
    browser = flask_app.test_client()
    assert "Set-Cookie" not in browser.get("/quiet").headers
    assert "Set-Cookie" in browser.get("/track").headers


def test_an_app_session_id_is_used_when_the_app_keeps_one(
    flask_app: Any, receiver: Receiver
) -> None:
    browser = flask_app.test_client()
    with browser.session_transaction() as session:
        session["session_id"] = "sess_from_app"
    browser.get("/track")
    assert flask_app.extensions["campaign_cart_analytics"].flush(timeout=5)
    assert receiver.delivered_events()[0]["user_properties"] == {"session_id": "sess_from_app"}


def test_without_a_secret_key_there_is_no_session_id(receiver: Receiver) -> None:
    app = make_app(receiver, secret_key=None)
    app.test_client().get("/track?utm_source=x")
    client = app.extensions["campaign_cart_analytics"]
    assert client.flush(timeout=5)
    (event,) = receiver.delivered_events()
    assert "user_properties" not in event and event["attribution"] == {"source": "x"}
    client.shutdown(timeout=1)


def test_the_context_does_not_leak_between_requests(flask_app: Any, receiver: Receiver) -> None:
    flask_app.test_client().get("/track?utm_source=first")
    client = flask_app.extensions["campaign_cart_analytics"]
    client.track("outside any request")
    assert client.flush(timeout=5)
    inside, outside = receiver.delivered_in_tracking_order()
    assert inside["attribution"] == {"source": "first"}
    assert "attribution" not in outside and "user_properties" not in outside


def test_constructor_form_and_missing_config(receiver: Receiver) -> None:
    app = flask.Flask(__name__)
    with pytest.raises(
        RuntimeError, match=r'app.config\["CAMPAIGN_CART_ANALYTICS"\] must be a dict'
    ):
        CampaignCartAnalytics(app)
    app.config["CAMPAIGN_CART_ANALYTICS"] = {"endpoint": receiver.url, "maxRetries": 0}
    CampaignCartAnalytics(app)
    client = app.extensions["campaign_cart_analytics"]
    assert client.config.max_retries == 0
    client.shutdown(timeout=1)
