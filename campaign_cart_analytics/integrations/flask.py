"""Flask integration.

    from campaign_cart_analytics.integrations.flask import CampaignCartAnalytics

    app.config["CAMPAIGN_CART_ANALYTICS"] = {"endpoint": "https://api.yourapp.com/analytics"}
    analytics = CampaignCartAnalytics(app)      # or CampaignCartAnalytics() + init_app(app)

    @app.post("/cart")
    def add_to_cart():
        analytics.track("dl_add_to_cart", {"ecommerce": {...}})

The client, built from ``app.config["CAMPAIGN_CART_ANALYTICS"]`` (either
spelling of option names), is at ``app.extensions["campaign_cart_analytics"]``.
Every event tracked during a request carries ``user_properties.session_id``,
``user_properties.user_id`` (Flask-Login's current user, when installed) and
``attribution`` from ``utm_source``/``utm_medium``/``utm_campaign``.

Flask's cookie session has no id of its own: one is made and kept in the
session (``cca_session_id``) the first time a request tracks an event, so
requests that track nothing set no cookie. A ``session_id`` your app already
keeps in the session, or a server-side session's ``sid``, is used instead.
"""

from __future__ import annotations

import uuid
from typing import Any, Optional

from flask import Flask, current_app, g, request, session

from ..client import Analytics
from ._request import request_properties

EXTENSION = "campaign_cart_analytics"
SESSION_KEY = "cca_session_id"


def _session_id() -> Optional[str]:
    existing = (
        getattr(session, "sid", None) or session.get("session_id") or session.get(SESSION_KEY)
    )
    if existing:
        return str(existing)
    if not current_app.secret_key:
        return None  # no signed session to keep one in
    session[SESSION_KEY] = created = uuid.uuid4().hex
    return created


def _user_id() -> Optional[str]:
    try:
        from flask_login import current_user
    except ImportError:
        return None
    if current_user and current_user.is_authenticated:
        return str(current_user.get_id())
    return None


def _properties() -> dict[str, Any]:
    return request_properties(session_id=_session_id(), user_id=_user_id(), query=request.args)


class CampaignCartAnalytics:
    """Adds a client and the request context to one or more Flask apps."""

    def __init__(self, app: Optional[Flask] = None) -> None:
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        options = app.config.get("CAMPAIGN_CART_ANALYTICS")
        if not isinstance(options, dict):
            raise RuntimeError(
                'app.config["CAMPAIGN_CART_ANALYTICS"] must be a dict of options, e.g. '
                "{'endpoint': 'https://api.yourapp.com/analytics'}"
            )
        app.extensions[EXTENSION] = Analytics.from_settings(options)
        app.before_request(_enter_context)
        app.teardown_request(_exit_context)

    @property
    def client(self) -> Analytics:
        """The current app's client."""
        client: Analytics = current_app.extensions[EXTENSION]
        return client

    def track(self, event: str, properties: Optional[dict[str, Any]] = None) -> Optional[str]:
        """``track`` on the current app's client."""
        return self.client.track(event, properties)


def _enter_context() -> None:
    scope = current_app.extensions[EXTENSION].context(_properties)
    scope.__enter__()
    g._campaign_cart_analytics_scope = scope


def _exit_context(_error: Optional[BaseException]) -> None:
    scope = g.pop("_campaign_cart_analytics_scope", None)
    if scope is not None:
        scope.__exit__(None, None, None)
