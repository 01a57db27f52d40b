"""Flushing at the end of a handler: ``Analytics.flushing(timeout)`` and awaitable flushes.

``Flushing`` is a context manager and a decorator, for plain functions,
``async def`` ones and generators of both kinds; where an event loop waits
for the flush, it runs in a thread, so the loop is not blocked.
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
from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar

from ._logging import logger

if TYPE_CHECKING:
    from .client import Analytics


_Function = TypeVar("_Function", bound=Callable[..., Any])


class Flushing:
    """``Analytics.flushing(timeout)``: flush at the end of a block or decorated function.

    What "the end" is depends on what is decorated: a function's return (or
    raise); an ``async def`` function's coroutine finishing; a generator's or
    async generator's last item (or its close), so the events tracked while it
    is iterated (a streamed response body) are in the flush. A plain callable
    that returns an awaitable (an object with ``async def __call__``, a sync
    wrapper around a coroutine function) is flushed after that is awaited.
    Wherever an event loop waits, the flush runs in a thread, so the loop is
    not blocked; ``async with`` works too.
    """

    def __init__(self, client: Analytics, timeout: Optional[float]) -> None:
        self._client = client
        self._timeout = timeout
        self.delivered: Optional[bool] = None  # set when the block ends

    def __call__(self, func: _Function) -> _Function:
        if inspect.iscoroutinefunction(func):
            wrapper: Callable[..., Any] = self._after_coroutine(func)
        elif inspect.isasyncgenfunction(func):
            wrapper = self._after_async_generator(func)
        elif inspect.isgeneratorfunction(func):
            wrapper = self._after_generator(func)
        else:
            wrapper = self._after_call(func)
        return functools.wraps(func)(wrapper)  # type: ignore[return-value]

    def _after_coroutine(self, func: Callable[..., Any]) -> Callable[..., Any]:
        async def flushed_after(*args: Any, **kwargs: Any) -> Any:
            async with self:
                return await func(*args, **kwargs)

        return flushed_after

    def _after_async_generator(self, func: Callable[..., Any]) -> Callable[..., Any]:
        async def flushed_after(*args: Any, **kwargs: Any) -> Any:
            async with self:
                items = func(*args, **kwargs)
                try:
                    async for item in items:
                        yield item
                finally:
                    await items.aclose()

        return flushed_after

    def _after_generator(self, func: Callable[..., Any]) -> Callable[..., Any]:
        def flushed_after(*args: Any, **kwargs: Any) -> Any:
            with self:
                return (yield from func(*args, **kwargs))

        return flushed_after

    def _after_call(self, func: Callable[..., Any]) -> Callable[..., Any]:
        def flushed_after(*args: Any, **kwargs: Any) -> Any:
            try:
                result = func(*args, **kwargs)
            except BaseException:
                self.__exit__()
                raise
            if inspect.isawaitable(result):
                return self._after_awaiting(result)  # the events come when it is awaited
            self.__exit__()
            return result

        return flushed_after

    async def _after_awaiting(self, awaitable: Awaitable[Any]) -> Any:
        async with self:
            return await awaitable

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
