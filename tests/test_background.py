"""Stopping the app's background loops (service/background.py) when a cancel is lost.

CI once hung 120 s in a test's shutdown, with the scheduled-sends and retention loops
still alive: a lone `task.cancel()` had not ended them. These tests lose a cancel the
ways it is lost in practice and check that the loop still stops.
"""

from __future__ import annotations

import asyncio
import logging
import sys

import pytest

from service import background

# A hang is a failure, not a wait for the suite's timeout; no test here comes near it.
HANG = 30.0


async def test_a_cancel_swallowed_by_wait_for_does_not_keep_the_loop_alive() -> None:
    """Python 3.11's wait_for returns the inner result when the cancel lands in the turn
    the inner future completes (cpython#86296): the loop goes round again."""
    inner: list[asyncio.Future[None]] = []
    rounds = 0

    async def loop() -> None:
        nonlocal rounds
        while True:
            rounds += 1
            inner.append(asyncio.get_running_loop().create_future())
            await asyncio.wait_for(inner[-1], timeout=60)

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)
    inner[-1].set_result(None)
    task.cancel()  # the same turn: 3.11's wait_for swallows it
    await asyncio.sleep(0.05)
    if sys.version_info < (3, 12):
        assert not task.done() and rounds == 2  # the lost cancel, for real
    await asyncio.wait_for(background.stop(task), HANG)
    assert task.cancelled()


async def test_a_loop_that_catches_one_cancel_is_cancelled_again() -> None:
    caught = 0

    async def loop() -> None:
        nonlocal caught
        while True:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                caught += 1
                if caught == 1:
                    continue  # as a library's cleanup path may do
                raise

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)
    await asyncio.wait_for(background.stop(task), HANG)
    assert task.cancelled() and caught == 2


async def test_a_loop_that_never_ends_is_left_behind_after_the_grace(caplog) -> None:
    """The shutdown goes on: a replica must stop even when a loop will not."""
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            with pytest.raises(asyncio.CancelledError):
                await asyncio.sleep(60)

    task = asyncio.create_task(stubborn(), name="stubborn")
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="newsletter.background"):
        await asyncio.wait_for(background.stop(task, grace=0.3), HANG)
    assert not task.done()
    assert [r.task for r in caplog.records] == ["stubborn"]  # type: ignore[attr-defined]
    release.set()
    task.cancel()
    await asyncio.wait({task})


async def test_running_starts_the_loop_and_stops_it_with_the_block(caplog) -> None:
    started = asyncio.Event()

    async def loop() -> None:
        started.set()
        await asyncio.sleep(60)

    async with background.running(loop(), name="probe") as task:
        await asyncio.wait_for(started.wait(), HANG)
        assert task.get_name() == "probe" and not task.done()
    assert task.cancelled()


async def test_an_error_the_loop_ended_with_is_logged_by_class(caplog) -> None:
    async def broken() -> None:
        raise LookupError("ada@example.com")  # a message may hold personal data

    with caplog.at_level(logging.WARNING, logger="newsletter.background"):
        async with background.running(broken(), name="broken"):
            await asyncio.sleep(0.01)
    [record] = caplog.records
    assert record.error == "LookupError"  # type: ignore[attr-defined]
    assert "ada@" not in record.getMessage()
