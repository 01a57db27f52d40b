"""Send Campaign Cart e-commerce analytics events to your own HTTP endpoint.

    import campaign_cart_analytics as cca

    analytics = cca.Analytics("https://api.yourapp.com/analytics",
                              headers={"Authorization": "Bearer TOKEN"})
    analytics.track("dl_add_to_cart", {"ecommerce": {...}, "user_properties": {...}})

Events are batched and delivered by a background thread, retried with
exponential backoff, and flushed at interpreter exit. See ``Analytics``.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any, Optional

from ._version import __version__
from .client import Analytics, use_analytics
from .errors import (
    AnalyticsError,
    ConfigError,
    DeliveryError,
    QueueFullError,
    ShutdownDropError,
    TransformError,
)
from .stats import Stats

__all__ = [
    "Analytics",
    "AnalyticsError",
    "ConfigError",
    "DeliveryError",
    "QueueFullError",
    "ShutdownDropError",
    "Stats",
    "TransformError",
    "__version__",
    "configure",
    "context",
    "flush",
    "flush_async",
    "get_client",
    "shutdown",
    "shutdown_async",
    "track",
    "use_analytics",
]

_default_lock = threading.Lock()
_default_client: Optional[Analytics] = None


def configure(**options: Any) -> Analytics:
    """Create the module-level client that ``cca.track``/``flush``/``shutdown`` use.

    Takes the options of ``Analytics``, in either spelling. Calling it again
    shuts the previous client down (delivering what it had) and replaces it.
    """
    global _default_client
    client = Analytics.from_settings(options)
    with _default_lock:
        previous, _default_client = _default_client, client
    if previous is not None:
        previous.shutdown(timeout=previous.config.shutdown_timeout_ms / 1000)
    return client


def get_client() -> Analytics:
    """The module-level client; ``RuntimeError`` if ``configure`` was not called yet."""
    client = _default_client
    if client is None:
        raise RuntimeError(
            "campaign_cart_analytics is not configured: call "
            "campaign_cart_analytics.configure(endpoint=...) before track(), flush() or shutdown()"
        )
    return client


def context(**values: Any) -> AbstractContextManager[None]:
    """``context`` on the module-level client (see ``Analytics.context``)."""
    return get_client().context(**values)


def track(event: str, properties: Optional[Mapping[str, Any]] = None) -> Optional[str]:
    """``track`` on the module-level client (see ``configure``)."""
    return get_client().track(event, properties)


def flush(timeout: Optional[float] = None) -> bool:
    """``flush`` on the module-level client (see ``configure``)."""
    return get_client().flush(timeout)


def shutdown(timeout: Optional[float] = None) -> bool:
    """``shutdown`` on the module-level client (see ``configure``)."""
    return get_client().shutdown(timeout)


async def flush_async(timeout: Optional[float] = None) -> bool:
    """``flush_async`` on the module-level client: the event loop runs on while it waits."""
    return await get_client().flush_async(timeout)


async def shutdown_async(timeout: Optional[float] = None) -> bool:
    """``shutdown_async`` on the module-level client: the event loop runs on while it waits."""
    return await get_client().shutdown_async(timeout)
