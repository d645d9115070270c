"""A blocking iterator consumed from asyncio: the generation runs in a worker thread, its items cross an
`asyncio.Queue`, and the event loop stays free between tokens.

    worker thread:  for item in make(): loop.call_soon_threadsafe(queue.put_nowait, item)
    event loop:     async for item in iterate_in_thread(make): ...

When the consumer stops early (break, cancellation), the worker closes the iterator after its current item, which
ends the generation (`CriticGenerator.stream` cancels on close).
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TypeVar

T = TypeVar("T")
_END = object()


async def iterate_in_thread(make: Callable[[], Iterator[T]]) -> AsyncIterator[T]:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    stop = threading.Event()

    def post(entry: tuple) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, entry)
        except RuntimeError:  # the loop closed under a consumer that went away
            stop.set()

    def produce() -> None:
        outcome: tuple = (_END, None)
        try:
            iterator = make()
            try:
                for item in iterator:
                    post((item, None))
                    if stop.is_set():
                        break
            finally:
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()
        except BaseException as error:  # re-raised in the consumer
            outcome = (_END, error)
        post(outcome)

    # The worker sees the caller's context variables (LangChain's tracing and callbacks live there).
    worker = loop.run_in_executor(None, contextvars.copy_context().run, produce)
    try:
        while True:
            item, error = await queue.get()
            if item is _END:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        await asyncio.shield(worker)  # the worker posts to this loop: let it finish first
