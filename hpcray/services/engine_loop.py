"""An event loop on a thread of its own, for a service whose engine is bound to one loop.

vLLM's AsyncLLM (and asyncio objects generally) belong to the loop they were made on, but a
replica is called from two: the direct server's and Ray Serve's. The service keeps its engine
on an EngineLoop and gives it to the direct server (`event_loop`), so direct requests run on
it with no hop; calls from any other loop cross over here, cancellation included."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")
_END = object()


class EngineLoop:
    def __init__(self, name: str = "hpcray-engine-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def call(self, coro: Awaitable[T], timeout: float | None = None) -> T:
        """Run a coroutine on the loop from a thread that has none running (constructors)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def on_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self.loop
        except RuntimeError:
            return False

    async def run(self, make: Callable[[], Awaitable[T]]) -> T:
        """Await `make()` on the engine loop, from whichever loop the caller is on. Cancelling
        the caller cancels the work there."""
        if self.on_loop():
            return await make()
        future = asyncio.run_coroutine_threadsafe(_awaited(make), self.loop)
        return await asyncio.wrap_future(future)

    async def iterate(self, make: Callable[[], AsyncIterator[T]]) -> AsyncIterator[T]:
        """Iterate `make()` on the engine loop and yield its items on the caller's loop.
        Closing this iterator early (the caller went away) cancels the iteration there, which
        raises CancelledError inside the engine's generator."""
        if self.on_loop():
            async for item in make():
                yield item
            return
        caller = asyncio.get_running_loop()
        items: asyncio.Queue[Any] = asyncio.Queue()

        def put(item: Any) -> None:
            caller.call_soon_threadsafe(items.put_nowait, item)

        async def pump() -> None:
            try:
                async for item in make():
                    put(item)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's side
                put(_Failed(exc))
                raise
            put(_END)

        future = asyncio.run_coroutine_threadsafe(pump(), self.loop)
        try:
            while True:
                item = await items.get()
                if item is _END:
                    return
                if isinstance(item, _Failed):
                    raise item.exc
                yield item
        finally:
            if not future.done():
                future.cancel()

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=5)
        if not self._thread.is_alive() and not self.loop.is_closed():
            self.loop.close()


class _Failed:
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


async def _awaited(make: Callable[[], Awaitable[T]]) -> T:
    return await make()
