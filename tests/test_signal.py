"""``Signal``: the run's one-shot events (settled, terminal, suspended), made lazily, waited for as anyio events are."""

from __future__ import annotations

import anyio
import pytest

from ckflow._runtime._signal import Signal


async def test_a_wait_before_the_set_returns_once_it_is_set() -> None:
    signal = Signal()
    woken: list[int] = []

    async def waiter(i: int) -> None:
        await signal.wait()
        woken.append(i)

    async with anyio.create_task_group() as tg:
        for i in range(3):
            tg.start_soon(waiter, i)
        await anyio.wait_all_tasks_blocked()
        assert not woken
        assert not signal.is_set()
        signal.set()
    assert sorted(woken) == [0, 1, 2]
    assert signal.is_set()


async def test_a_wait_after_the_set_returns_at_once() -> None:
    signal = Signal()
    signal.set()
    with anyio.fail_after(1):
        await signal.wait()
    assert signal.is_set()


async def test_a_wait_is_a_checkpoint_even_when_set() -> None:
    """As ``anyio.Event.wait``: a cancelled scope cancels the wait, set or not."""
    signal = Signal()
    signal.set()
    with anyio.CancelScope() as scope:
        scope.cancel()
        await signal.wait()
        pytest.fail("the wait should have been cancelled")
    assert scope.cancelled_caught
