"""Flushing at the end of a handler: ``Analytics.flushing(timeout)`` and awaitable flushes.

``Flushing`` is a context manager and a decorator, for plain functions and
``async def`` ones alike; on a coroutine function the flush runs after the
coroutine finished, in a thread, so the event loop is not blocked.
``in_thread`` runs a blocking call on a daemon thread of its own and awaits
it: a cancelled wait does not keep ``asyncio.run()`` from returning.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import threading
from collections.abc import Awaitable
from contextlib import ContextDecorator
from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar

from ._logging import logger

if TYPE_CHECKING:
    from .client import Analytics


_Function = TypeVar("_Function", bound=Callable[..., Any])


class Flushing(ContextDecorator):
    """``Analytics.flushing(timeout)``: flush at the end of a block or decorated function.

    On an ``async def`` function the flush runs after the coroutine finished,
    in a thread, so the event loop is not blocked; ``async with`` works too.
    """

    def __init__(self, client: Analytics, timeout: Optional[float]) -> None:
        self._client = client
        self._timeout = timeout
        self.delivered: Optional[bool] = None  # set when the block ends

    def __call__(self, func: _Function) -> _Function:
        if not inspect.iscoroutinefunction(func):
            return super().__call__(func)

        @functools.wraps(func)
        async def flushed_after(*args: Any, **kwargs: Any) -> Any:
            async with self:
                return await func(*args, **kwargs)

        return flushed_after  # type: ignore[return-value]

    def __enter__(self) -> Flushing:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._report(self._client.flush(self._timeout))

    async def __aenter__(self) -> Flushing:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._report(await self._client.flush_async(self._timeout))

    def _report(self, delivered: bool) -> None:
        self.delivered = delivered
        if not delivered:
            logger.warning(
                "flush at the end of the handler did not deliver everything: %s",
                self._client.stats(),
            )


_Result = TypeVar("_Result")


def in_thread(function: Callable[..., _Result], *args: Any) -> Awaitable[_Result]:
    """``function(*args)`` on a daemon thread of its own, awaited without blocking the loop.

    Not the loop's default executor: a cancelled wait must not keep
    ``asyncio.run()`` from returning until the flush has ended.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[_Result] = loop.create_future()

    def settle(result: Any, error: Optional[BaseException]) -> None:
        if future.cancelled():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def run() -> None:
        try:
            outcome: tuple[Any, Optional[BaseException]] = (function(*args), None)
        except BaseException as exc:
            outcome = (None, exc)
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=run, name="campaign-cart-analytics-flush", daemon=True).start()
    return future
