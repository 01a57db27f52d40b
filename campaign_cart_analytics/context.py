"""Request context: values merged into every event tracked inside a block.

    with analytics.context(user_properties={"user_id": "u1"}, attribution={"source": "google"}):
        analytics.track("dl_add_to_cart", {...})   # carries both

The context lives in a ``contextvars.ContextVar``, so it follows the code
that set it across threads' own contexts and asyncio tasks, and never leaks
into another request. Blocks nest; inner values win over outer ones, and the
event's own properties win over all of them. Where both sides hold a dict
(``user_properties``, ``attribution``) they are merged key by key.

A layer may also be a zero-argument callable returning the values: it is
called at the first ``track()`` inside the block, and not at all if nothing
is tracked, so a middleware adds no work (no session or user lookup) to a
request that tracks nothing.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Callable, Optional, Union

from ._logging import logger
from .events import copy_tree

Provider = Callable[[], Optional[Mapping[str, Any]]]


class _LazyLayer:
    """Values a provider computes once, at the first event that needs them.

    Two threads of one request may track at once (a view that fans out): the
    lock makes the second wait for the first's values instead of computing
    them again (a second session for a new visitor, say).
    """

    def __init__(self, provider: Provider) -> None:
        self._provider = provider
        self._values: Optional[Mapping[str, Any]] = None
        self._lock = threading.Lock()

    def values(self) -> Mapping[str, Any]:
        values = self._values
        if values is not None:
            return values
        with self._lock:
            if self._values is None:
                self._values = self._compute()
            return self._values

    def _compute(self) -> Mapping[str, Any]:
        try:
            produced = self._provider()
            return {} if produced is None else _checked(produced)
        except Exception:
            logger.exception("Context provider %r failed; values left out", self._provider)
            return {}


Layer = Union[Mapping[str, Any], _LazyLayer]


def _checked(values: Any) -> dict[str, Any]:
    if not isinstance(values, Mapping) or not all(isinstance(key, str) for key in values):
        raise TypeError(f"context values must be a mapping with str keys; got {values!r}")
    copied: dict[str, Any] = copy_tree(values)
    return copied


def deep_merge(below: Mapping[str, Any], above: Mapping[str, Any]) -> dict[str, Any]:
    """``below`` updated with ``above``; dicts present on both sides are merged key by key."""
    merged = dict(below)
    for key, value in above.items():
        under = merged.get(key)
        if isinstance(value, Mapping) and isinstance(under, Mapping):
            merged[key] = deep_merge(under, value)
        else:
            merged[key] = value
    return merged


class EventContext:
    """The context layers of one client."""

    def __init__(self) -> None:
        self._layers: contextvars.ContextVar[tuple[Layer, ...]] = contextvars.ContextVar(
            "campaign_cart_analytics_context", default=()
        )

    @contextmanager
    def scope(
        self, provider: Optional[Provider] = None, values: Optional[Mapping[str, Any]] = None
    ) -> Iterator[None]:
        """A block whose events carry ``values`` (and, lazily, what ``provider`` returns)."""
        token = self.enter(provider, values)
        try:
            yield
        finally:
            self.exit(token)

    def enter(
        self, provider: Optional[Provider] = None, values: Optional[Mapping[str, Any]] = None
    ) -> contextvars.Token[tuple[Layer, ...]]:
        """Push a layer; pass the token to ``exit`` (for hooks that cannot use ``with``)."""
        layers = self._layers.get()
        if values:
            layers += (_checked(values),)
        if provider is not None:
            layers += (_LazyLayer(provider),)
        return self._layers.set(layers)

    def exit(self, token: contextvars.Token[tuple[Layer, ...]]) -> None:
        try:
            self._layers.reset(token)
        except ValueError:
            # Entered in another contextvars.Context (a framework hook that copied
            # it): restore by value, so one request's values never reach the next.
            previous = token.old_value
            self._layers.set(() if previous is contextvars.Token.MISSING else previous)

    def apply(self, properties: Mapping[str, Any]) -> Mapping[str, Any]:
        """``properties`` over the current context; the same object when there is none."""
        layers = self._layers.get()
        if not layers:
            return properties
        merged: dict[str, Any] = {}
        for layer in layers:
            merged = deep_merge(merged, layer.values() if isinstance(layer, _LazyLayer) else layer)
        return deep_merge(merged, properties)
