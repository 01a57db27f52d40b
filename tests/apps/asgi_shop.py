"""A FastAPI app for tests/test_asgi.py, served by uvicorn in a subprocess.

The module-level client is configured from the environment (``CCA_ENDPOINT``,
``CCA_BATCH_SIZE``, ``CCA_BATCH_INTERVAL_MS``, ``CCA_SHUTDOWN_TIMEOUT_MS``).
``Authorization: Bearer <name>`` logs in as ``<name>``; paths under ``/s/``
have Starlette's SessionMiddleware, the others use the middleware's cookie.
Middlewares are added in the order that puts ours outermost: it must not
depend on running after the others.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any, Optional

from fastapi import BackgroundTasks, Depends, FastAPI, Header, Response
from fastapi.responses import StreamingResponse
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import HTTPConnection

import campaign_cart_analytics as cca
from campaign_cart_analytics.integrations.asgi import AnalyticsMiddleware

logging.basicConfig(level=logging.WARNING)  # the SDK's warnings reach stderr
analytics = cca.configure(
    endpoint=os.environ["CCA_ENDPOINT"],
    batch_size=int(os.environ.get("CCA_BATCH_SIZE", "100")),
    batch_interval_ms=int(os.environ.get("CCA_BATCH_INTERVAL_MS", "100")),
    shutdown_timeout_ms=int(os.environ.get("CCA_SHUTDOWN_TIMEOUT_MS", "5000")),
)


class BearerNames(AuthenticationBackend):
    async def authenticate(self, conn: HTTPConnection) -> Optional[tuple[AuthCredentials, Any]]:
        value = conn.headers.get("authorization", "")
        if not value.startswith("Bearer "):
            return None  # Starlette's UnauthenticatedUser
        return AuthCredentials(["authenticated"]), SimpleUser(value[len("Bearer ") :])


class SessionsUnder:
    """Starlette's SessionMiddleware for paths under ``prefix`` only."""

    def __init__(self, app: Any, prefix: str) -> None:
        self.plain = app
        self.with_sessions = SessionMiddleware(app, secret_key="test-only")
        self.prefix = prefix

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        under = scope["type"] == "http" and scope["path"].startswith(self.prefix)
        await (self.with_sessions if under else self.plain)(scope, receive, send)


app = FastAPI()
app.add_middleware(SessionsUnder, prefix="/s/")
app.add_middleware(AuthenticationMiddleware, backend=BearerNames())
app.add_middleware(AnalyticsMiddleware)  # added last: the outermost


async def track_later(n: int, step: str) -> None:
    await asyncio.sleep(0.001)
    cca.track("dl_view_item", {"n": n, "step": step})


@app.get("/visit/{n}")
@app.get("/s/visit/{n}")
async def visit(n: int, background: BackgroundTasks) -> dict[str, int]:
    """Three events: in the endpoint, in a task it starts, in a background task."""
    cca.track("dl_view_item", {"n": n, "step": "endpoint"})
    await asyncio.sleep(0.02)  # the other requests' endpoints run meanwhile
    await asyncio.create_task(track_later(n, "task"))
    background.add_task(track_later, n, "background")
    return {"n": n}


@app.get("/quiet")
@app.get("/s/quiet")
async def quiet() -> dict[str, str]:
    return {"tracked": "nothing"}


@app.get("/sync/{n}")
def sync_visit(n: int) -> dict[str, int]:
    """A sync endpoint: FastAPI runs it in a worker thread."""
    cca.track("dl_view_item", {"n": n, "step": "sync"})
    return {"n": n}


@app.get("/stream/{n}")
async def stream(n: int) -> StreamingResponse:
    cca.track("dl_view_item", {"n": n, "step": "before-body"})

    async def body() -> AsyncIterator[bytes]:
        for part in range(3):
            await asyncio.sleep(0.05)
            cca.track("dl_view_item", {"n": n, "step": f"body-{part}"})
            yield f"part {part}\n".encode()

    return StreamingResponse(body(), media_type="text/plain")


@app.get("/own-cookies/{n}")
async def own_cookies(n: int, response: Response) -> dict[str, int]:
    response.set_cookie("theme", "dark")
    response.set_cookie("cart", "3")
    cca.track("dl_view_item", {"n": n, "step": "own-cookies"})
    return {"n": n}


@app.get("/boom/{n}")
async def boom(n: int) -> None:
    cca.track("dl_view_item", {"n": n, "step": "before-raise"})
    raise RuntimeError("the endpoint failed")


@app.get("/flush-slow/{n}")
@analytics.flushing(timeout=5)
async def flush_slow(n: int) -> dict[str, int]:
    """Delivered before the response: the flush waits, the event loop does not."""
    cca.track("dl_purchase", {"n": n, "step": "flushed"})
    return {"n": n}


async def shopper(x_shopper: Optional[str] = Header(None)) -> AsyncIterator[Optional[str]]:
    """The user as FastAPI apps often know it: from an async dependency, set as context."""
    if x_shopper is None:
        yield None
        return
    with cca.context(user_properties={"user_id": x_shopper}):
        yield x_shopper


@app.get("/shopper/{n}")
async def shopper_visit(n: int, name: Optional[str] = Depends(shopper)) -> dict[str, int]:
    cca.track("dl_view_item", {"n": n, "step": "dependency"})
    return {"n": n}


@app.get("/ping")
async def ping() -> dict[str, float]:
    return {"at": time.monotonic()}
