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

Under ASGI (uvicorn, daphne) the same holds, for sync and async views alike;
see ``_request_properties`` for what an async view's first event costs.
"""

from __future__ import annotations

import asyncio
import contextvars
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.db import connections

import campaign_cart_analytics as cca

from .._request import request_properties

__all__ = ["AnalyticsMiddleware"]


#: Kept in a new visitor's session so that Django persists it (and sets its cookie).
SESSION_MARKER = "cca_session"


def _session_key(request: Any) -> Optional[str]:
    """The request's session key; a new visitor's session is saved now to have one.

    The session is read from its store first: a cookie naming an expired or
    unknown session leaves no key once read (and Django drops that cookie), so
    its visitor is new too. With AuthenticationMiddleware this costs nothing:
    the user lookup reads the session anyway, and Django keeps what it read.
    """
    session = getattr(request, "session", None)
    if session is None:
        return None
    session.keys()  # reads the stored session, once per request
    if session.session_key is None:
        # A new visitor: Django would make the key only when saving the response,
        # after this event. Make it now, so every event of the visit shares it.
        session[SESSION_MARKER] = True
        session.save()
    key: Optional[str] = session.session_key
    return key


def _user_id(request: Any) -> Optional[str]:
    """The authenticated user's primary key as a str; None for anonymous visitors."""
    user = getattr(request, "user", None)
    return str(user.pk) if user is not None and user.is_authenticated else None


def _properties(request: Any) -> dict[str, Any]:
    """The request's context values. Sync database work: never call it in an event loop."""
    return request_properties(
        session_id=_session_key(request), user_id=_user_id(request), query=request.GET
    )


def _request_properties(request: Any) -> dict[str, Any]:
    """The request's context values, computed at its first tracked event, wherever that is.

    Under WSGI, and in a sync view under ASGI (Django runs those in its sync
    thread), ``track()`` is called outside any event loop and the lookup runs
    right there, on the request's own database connection.

    An async view calls ``track()`` inside the event loop, where Django forbids
    sync database work (``SynchronousOnlyOperation``), and ``track()`` is a plain
    function that cannot await. The choices were:

    - resolve everything before the view with Django's async API: every request
      would pay for the session and user lookups, and a new visitor would get a
      session row, even when nothing is tracked;
    - use only what needs no database: a new visitor has no session key until
      its session is saved, so its events could not carry the key its next
      request (with the cookie set on this response) will carry;
    - run the lookup on a short-lived helper thread and wait for it there.

    The last is what happens: the event loop is held for one or two indexed
    reads (and a new visitor's session write) on a fresh connection, once per
    request that tracks from an async view, never for one that tracks nothing.
    An async view that must never hold its loop can make its first call
    ``await sync_to_async(cca.track)(...)``: the lookup then runs in Django's
    sync thread, as for a sync view.
    """
    if _in_an_event_loop():
        return _properties_from_a_helper_thread(request)
    return _properties(request)


def _in_an_event_loop() -> bool:
    """Whether this thread is running an event loop (where Django refuses sync queries)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _properties_from_a_helper_thread(request: Any) -> dict[str, Any]:
    """``_properties(request)`` run on a new thread (with this context), waited for here.

    The thread's database connections are its own (Django keeps one per
    thread); they are closed when it is done, so none is left open.
    """
    context = contextvars.copy_context()
    with ThreadPoolExecutor(1, thread_name_prefix="campaign-cart-analytics-lookup") as thread:
        return thread.submit(context.run, _properties_closing_connections, request).result()


def _properties_closing_connections(request: Any) -> dict[str, Any]:
    try:
        return _properties(request)
    finally:
        connections.close_all()  # this thread's only


class AnalyticsMiddleware:
    """Sets the request context of the module-level client for each request (sync or async).

    The context is lazy: ``_request_properties`` runs at the request's first
    tracked event, and not at all for a request that tracks nothing.
    """

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
        with cca.get_client().context(lambda: _request_properties(request)):
            return self.get_response(request)

    async def _acall(self, request: Any) -> Any:
        with cca.get_client().context(lambda: _request_properties(request)):
            return await self.get_response(request)
