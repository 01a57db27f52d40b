"""ASGI integration: FastAPI, Starlette, and any other ASGI framework or server.

    import campaign_cart_analytics as cca
    from campaign_cart_analytics.integrations.asgi import AnalyticsMiddleware

    cca.configure(endpoint="https://api.yourapp.com/analytics")
    app = FastAPI()
    app.add_middleware(AnalyticsMiddleware)          # or AnalyticsMiddleware, analytics=client

    @app.post("/cart")
    async def add_to_cart():
        cca.track("dl_add_to_cart", {"ecommerce": {...}})

A pure ASGI middleware (no ``BaseHTTPMiddleware``), so streaming responses,
websockets and background tasks work as without it. Every event tracked
while a request is handled, in the endpoint, in a sync endpoint's thread, in
tasks it starts and in its background tasks, carries:

- ``user_properties.session_id``: with Starlette's ``SessionMiddleware``, an
  id kept in the session (the app's own ``session["session_id"]`` if it has
  one, else ``cca_session_id``, made at the first tracked event); without
  it, the ``cca_session_id`` cookie of this middleware, made at a new
  visitor's first tracked event and set on that response only;
- ``user_properties.user_id``: ``scope["user"].identity`` when the user is
  authenticated (Starlette's ``AuthenticationMiddleware``);
- ``attribution`` from ``utm_source``, ``utm_medium`` and ``utm_campaign``.

The event's own values win. The values are worked out at the request's first
tracked event: a request that tracks nothing reads no cookie, session or user
and gets no cookie. Middleware order does not matter: the session and user
are read from the scope when the first event is tracked, after every
middleware has run.

Under uvicorn a SIGTERM ends the process by re-raising the signal once the
server has stopped, so ``atexit`` (the SDK's exit-time flush) never runs.
The middleware therefore flushes the client when the app's lifespan shuts
down, bounded by ``shutdown_timeout_ms``; ``lifespan()`` and
``shutting_down()`` also shut the client down, for apps that want it explicit.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, MutableMapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Callable, Optional
from urllib.parse import parse_qsl

import campaign_cart_analytics as cca

from .._logging import RateLimitedLog, logger
from ..client import Analytics
from ._request import request_properties

__all__ = ["AnalyticsMiddleware", "lifespan", "shutting_down"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: The key this integration keeps a session id under, in Starlette's session.
SESSION_KEY = "cca_session_id"
#: The cookie's name and lifetime when there is no session: Starlette's session defaults.
COOKIE_NAME = "cca_session_id"
COOKIE_MAX_AGE = 14 * 24 * 60 * 60
#: The only session ids a cookie is trusted for: the ones this middleware makes.
_SESSION_ID = re.compile(r"[0-9a-f]{32}")
#: Where a request's visit is kept in its scope, for a middleware on a mounted sub-app.
_VISIT_KEY = "campaign_cart_analytics.visit"
#: RFC 6265 cookie-name characters (an HTTP token).
_COOKIE_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")

#: How often a middleware may warn that the module-level client is not configured, in seconds.
UNCONFIGURED_WARNING_INTERVAL = 60.0


class AnalyticsMiddleware:
    """Gives every event tracked during an HTTP request that request's context.

    ``analytics``: the client to use; None (the default) uses the module-level
    client of ``cca.configure(...)``, looked up per request so it may be
    configured after the app is built. ``cookie_name`` and ``cookie_max_age``
    (seconds; None for a cookie that ends with the browser session) shape the
    cookie used when Starlette's ``SessionMiddleware`` is not installed.
    """

    def __init__(
        self,
        app: ASGIApp,
        analytics: Optional[Analytics] = None,
        *,
        cookie_name: str = COOKIE_NAME,
        cookie_max_age: Optional[int] = COOKIE_MAX_AGE,
    ) -> None:
        if analytics is not None and not isinstance(analytics, Analytics):
            raise TypeError(
                "AnalyticsMiddleware: analytics must be a campaign_cart_analytics.Analytics "
                f"or None (the module-level client); got {type(analytics).__name__}"
            )
        if not isinstance(cookie_name, str) or not _COOKIE_NAME.fullmatch(cookie_name):
            raise ValueError(
                "AnalyticsMiddleware: cookie_name must be a non-empty str of cookie-name "
                f"characters (letters, digits, !#$%&'*+-.^_`|~); got {cookie_name!r}"
            )
        if cookie_max_age is not None and (type(cookie_max_age) is not int or cookie_max_age <= 0):
            raise ValueError(
                "AnalyticsMiddleware: cookie_max_age must be an int > 0 (seconds) or None; "
                f"got {cookie_max_age!r}"
            )
        self.app = app
        self._analytics = analytics
        self._cookie = _CookieRules(cookie_name, cookie_max_age)
        self._unconfigured_log = RateLimitedLog(UNCONFIGURED_WARNING_INTERVAL)
        self._saw_lifespan = False
        self._warned_no_lifespan = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            self._saw_lifespan = True
            await self.app(scope, receive, self._flushing_at_shutdown(send))
        else:  # websocket, and whatever later ASGI versions add
            await self.app(scope, receive, send)

    def _client(self) -> Optional[Analytics]:
        """The client this middleware serves; None while the module-level one is not configured."""
        if self._analytics is not None:
            return self._analytics
        try:
            return cca.get_client()
        except RuntimeError:
            self._unconfigured_log.log(
                logging.WARNING,
                "AnalyticsMiddleware: campaign_cart_analytics.configure(...) was not called; "
                "requests go on without analytics context",
            )
            return None

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = self._client()
        if client is None:
            await self.app(scope, receive, send)
            return
        outer = scope.get(_VISIT_KEY)
        if isinstance(outer, _Visit):  # on an app and on a sub-app mounted in it: one visit,
            with client.context(outer.properties):  # one session id, one cookie (the outer's)
                await self.app(scope, receive, send)
            return
        self._warn_if_no_lifespan()
        scope[_VISIT_KEY] = visit = _Visit(scope, self._cookie)

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = visit.with_cookie(message)
            await send(message)

        with client.context(visit.properties):
            await self.app(scope, receive, send_with_cookie)

    def _warn_if_no_lifespan(self) -> None:
        """Once: without the lifespan, nothing here flushes the client at shutdown."""
        if self._saw_lifespan or self._warned_no_lifespan:
            return
        self._warned_no_lifespan = True
        logger.warning(
            "AnalyticsMiddleware has seen no lifespan: it is on a mounted sub-app (Starlette "
            "sends the lifespan to the root app only) or the server runs without one "
            "(uvicorn --lifespan off). Nothing flushes analytics at shutdown, and uvicorn skips "
            "atexit: add the middleware to the root app, or shut the client down in a lifespan"
        )

    def _flushing_at_shutdown(self, send: Send) -> Send:
        """``send`` that flushes the client before the app reports its shutdown done."""

        async def send_after_flushing(message: Message) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await self._flush_for_shutdown()
            await send(message)

        return send_after_flushing

    async def _flush_for_shutdown(self) -> None:
        # A flush, not a shutdown: a test suite may run the same app's lifespan
        # many times (``with TestClient(app)``) and still needs the client after.
        client = self._client()
        if client is None:
            return
        timeout = client.config.shutdown_timeout_ms / 1000
        try:
            delivered = await client.flush_async(timeout)
        except Exception:  # the server's shutdown must go on whatever happens here
            logger.exception("Flushing analytics at application shutdown failed")
            return
        if not delivered:
            stats = client.stats()
            logger.error(
                "Application shutdown: %d analytics events were not delivered within "
                "shutdown_timeout_ms (%d ms); should the server end the process now (uvicorn "
                "re-raises SIGTERM, skipping atexit), they are lost without reaching on_error. "
                "lifespan() or shutting_down() shut the client down and report them. %s",
                stats.queued,
                client.config.shutdown_timeout_ms,
                stats,
            )


class _CookieRules:
    """The middleware's own session cookie: its name and how a new one is set."""

    def __init__(self, name: str, max_age: Optional[int]) -> None:
        self.name = name
        self.max_age = max_age

    def read(self, scope: Scope) -> Optional[str]:
        """The session id the request's cookie carries, if it is one this middleware made."""
        for name, value in scope.get("headers", ()):
            if name.lower() != b"cookie":
                continue
            text: str = value.decode("latin-1")
            for pair in text.split(";"):
                key, _, candidate = pair.strip(" \t").partition("=")
                candidate = candidate.strip('"')  # RFC 6265 allows a quoted value
                # Not of our making (too long, control characters): skipped, and without
                # another the visitor gets a new id. A cookie of the same name set for a
                # parent domain or another path may come first: keep looking.
                if key == self.name and _SESSION_ID.fullmatch(candidate):
                    return candidate
        return None

    def header(self, session_id: str, scope: Scope) -> tuple[bytes, bytes]:
        attributes = [f"{self.name}={session_id}", "Path=/"]
        if self.max_age is not None:
            attributes.append(f"Max-Age={self.max_age}")
        attributes += ["HttpOnly", "SameSite=Lax"]
        if scope.get("scheme") == "https":
            attributes.append("Secure")
        return b"set-cookie", "; ".join(attributes).encode("latin-1")


class _Visit:
    """One HTTP request's context values, worked out at its first tracked event, if any."""

    def __init__(self, scope: Scope, cookie: _CookieRules) -> None:
        self._scope = scope
        self._cookie = cookie
        self._new_cookie: Optional[tuple[bytes, bytes]] = None
        self._properties: Optional[dict[str, Any]] = None

    def properties(self) -> dict[str, Any]:
        """The context provider, worked out at the request's first ``track()`` (once, also
        where two clients or two middleware layers ask)."""
        if self._properties is None:
            self._properties = request_properties(
                session_id=self._session_id(), user_id=self._user_id(), query=self._query()
            )
        return self._properties

    def with_cookie(self, start: Message) -> Message:
        """The response's start message, with this visit's new cookie when it made one.

        A new message: the app's own is not changed, and its cookies are kept.
        """
        if self._new_cookie is None:
            return start
        return {**start, "headers": [*start.get("headers", ()), self._new_cookie]}

    def _session_id(self) -> str:
        session = self._scope.get("session")
        if isinstance(session, MutableMapping):
            return self._session_id_in(session)
        existing = self._cookie.read(self._scope)
        if existing is not None:
            return existing
        created = uuid.uuid4().hex
        # Set on this response if it has not started yet: a track() after the
        # response began (in a streamed body, a background task) cannot set a
        # cookie, and that visit's next request gets another id.
        self._new_cookie = self._cookie.header(created, self._scope)
        return created

    @staticmethod
    def _session_id_in(session: MutableMapping[str, Any]) -> str:
        """Starlette's session has no id of its own: keep one in it (its cookie is signed)."""
        existing = session.get("session_id") or session.get(SESSION_KEY)
        if existing:
            return str(existing)
        session[SESSION_KEY] = created = uuid.uuid4().hex  # SessionMiddleware sets the cookie
        return created

    def _user_id(self) -> Optional[str]:
        """``scope["user"].identity`` for an authenticated user; None without one."""
        user = self._scope.get("user")  # absent without AuthenticationMiddleware
        if user is None:
            return None
        try:
            if not user.is_authenticated:
                return None
            identity = user.identity
        except Exception:  # a user class without them (BaseUser raises NotImplementedError)
            logger.debug("scope['user'] has no is_authenticated/identity; no user_id")
            return None
        return str(identity) if identity not in (None, "") else None

    def _query(self) -> dict[str, str]:
        raw = self._scope.get("query_string", b"")
        query: dict[str, str] = {}
        for name, value in parse_qsl(raw.decode("latin-1")):
            query.setdefault(name, value)  # the first of repeated parameters, as Starlette
        return query


@asynccontextmanager
async def shutting_down(
    analytics: Optional[Analytics] = None, *, timeout: Optional[float] = None
) -> AsyncIterator[None]:
    """Shuts the client down (flushing it first) when the block ends, without blocking the loop.

    For an app's own lifespan::

        @asynccontextmanager
        async def lifespan(app):
            async with shutting_down():
                yield

    ``analytics``: None for the module-level client. ``timeout`` (seconds):
    None for the client's ``shutdown_timeout_ms``.
    """
    try:
        yield
    finally:
        client = analytics
        if client is None:
            try:
                client = cca.get_client()
            except RuntimeError:
                client = None  # never configured: nothing was tracked, nothing to send
        if client is not None:
            await client.shutdown_async(
                client.config.shutdown_timeout_ms / 1000 if timeout is None else timeout
            )


def lifespan(
    analytics: Optional[Analytics] = None, *, timeout: Optional[float] = None
) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    """A lifespan that shuts the client down at application shutdown.

    ``FastAPI(lifespan=lifespan())``; arguments as for ``shutting_down``.
    """

    def app_lifespan(app: Any) -> AbstractAsyncContextManager[None]:
        return shutting_down(analytics, timeout=timeout)

    return app_lifespan
