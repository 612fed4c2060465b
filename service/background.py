"""The app's background loops (retention, scheduled sends): started with the lifespan,
and stopped for sure when it ends.

A cancellation can be lost. Python 3.11's `asyncio.wait_for` returns the inner result
when the cancel lands in the same turn as the inner future completes
(https://github.com/python/cpython/issues/86296, fixed in 3.12), and a library may catch
`CancelledError` on its way out. A loop whose one cancel was lost runs on, and a plain
`task.cancel(); await task` then waits for it forever: the replica never finishes its
shutdown (Kubernetes kills it after its grace period) and a test hangs until its timeout.
So the cancel is repeated until the task ends, within a bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any

log = logging.getLogger("newsletter.background")

# Seconds a stopping loop gets in all, and between two cancels.
STOP_GRACE = 10.0
CANCEL_EVERY = 0.5


async def stop(task: asyncio.Task[Any], grace: float = STOP_GRACE) -> None:
    """Cancels `task` until it has ended, for at most `grace` seconds; past that the task
    is left behind with a warning rather than holding the shutdown."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while not task.done():
        left = deadline - loop.time()
        if left <= 0:
            log.warning("background task did not stop", extra={"task": task.get_name()})
            return
        task.cancel()
        await asyncio.wait({task}, timeout=min(CANCEL_EVERY, left))
    if not task.cancelled() and task.exception() is not None:
        error = task.exception()
        log.warning(
            "background task ended with an error",
            extra={"task": task.get_name(), "error": error.__class__.__name__},
        )


@contextlib.asynccontextmanager
async def running(loop: Coroutine[Any, Any, None], name: str) -> AsyncIterator[asyncio.Task[None]]:
    """Runs `loop` as a task named `name` for the block's lifetime."""
    task = asyncio.create_task(loop, name=name)
    try:
        yield task
    finally:
        await stop(task)
