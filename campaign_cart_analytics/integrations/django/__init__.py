"""Django integration.

    INSTALLED_APPS = [..., "campaign_cart_analytics.integrations.django"]
    MIDDLEWARE = [
        ...,
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "campaign_cart_analytics.integrations.django.AnalyticsMiddleware",
    ]
    CAMPAIGN_CART_ANALYTICS = {"endpoint": "https://api.yourapp.com/analytics",
                               "headers": {"Authorization": "Bearer TOKEN"}}

The app configures the module-level client (``cca.track`` and friends) from
the settings dict, in either spelling of the option names. The middleware
gives every event tracked during a request ``user_properties.session_id``
(the session key), ``user_properties.user_id`` (the authenticated user's
primary key, as a str) and ``attribution`` from ``utm_source``,
``utm_medium`` and ``utm_campaign``. The event's own values win. Nothing is
looked up for a request that tracks nothing. A new visitor's session is
created at its first tracked event, so all events of a visit share its key.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async

import campaign_cart_analytics as cca

from .._request import request_properties

__all__ = ["AnalyticsMiddleware"]


#: Kept in a new visitor's session so that Django persists it (and sets its cookie).
SESSION_MARKER = "cca_session"


def _session_and_query(request: Any) -> tuple[Optional[str], Any]:
    session = getattr(request, "session", None)
    if session is None:
        return None, request.GET
    if session.session_key is None:
        # A new visitor: Django would make the key only when saving the response,
        # after this event. Make it now, so every event of the visit shares it.
        session[SESSION_MARKER] = True
        session.save()
    return session.session_key, request.GET


def _properties(request: Any) -> dict[str, Any]:
    session_id, query = _session_and_query(request)
    user = getattr(request, "user", None)
    user_id = str(user.pk) if user is not None and user.is_authenticated else None
    return request_properties(session_id=session_id, user_id=user_id, query=query)


async def _properties_async(request: Any) -> dict[str, Any]:
    # The lazy request.user would query the database from async code: resolve it first.
    if hasattr(request, "auser"):  # Django 5.0+
        user = await request.auser()
        user_id = str(user.pk) if user.is_authenticated else None
        session_id, query = _session_and_query(request)
        return request_properties(session_id=session_id, user_id=user_id, query=query)
    return await sync_to_async(_properties)(request)


class AnalyticsMiddleware:
    """Sets the request context of the module-level client for each request (sync or async)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self._is_async = iscoroutinefunction(get_response)
        if self._is_async:
            markcoroutinefunction(self)

    def __call__(self, request: Any) -> Any:
        if self._is_async:
            return self._acall(request)
        with cca.get_client().context(lambda: _properties(request)):
            return self.get_response(request)

    async def _acall(self, request: Any) -> Any:
        values = await _properties_async(request)
        with cca.get_client().context(**values):
            return await self.get_response(request)
