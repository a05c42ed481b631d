"""Fencing: an engine whose lease lapsed while it was frozen starts nothing once it wakes up, on every store."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import pytest
from tests.support import WatchedStore

import ckflow
from ckflow import Engine, FlowState, Linear, TaskState, task

if TYPE_CHECKING:
    from collections.abc import Collection

    from ckflow.stores import Batch, Renewal, Store


class Freezable(WatchedStore):
    """One engine's view of a store, through which the engine can be frozen (as by SIGSTOP) and woken again:
    its renewals wait while it is frozen, and the acknowledgement of a chosen write arrives only on waking."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.frozen = False
        self.woken = anyio.Event()
        self.held = anyio.Event()

    async def renew(self, owner: str, run_ids: Collection[str], ttl: float) -> Renewal:
        if self.frozen:
            await self.woken.wait()
        return await self.inner.renew(owner, run_ids, ttl)

    async def write(self, batch: Batch) -> None:
        await super().write(batch)
        if self.frozen and any(t.task == "first" and t.state is TaskState.SUCCESS for t in batch.tasks):
            # committed, but the engine is frozen before it hears so
            self.held.set()
            await self.woken.wait()


class TestFrozenOwner:
    async def test_a_woken_owner_whose_lease_lapsed_starts_nothing(self, store: Store) -> None:
        """SIGSTOP an owner past its lease, let another engine take the run over, SIGCONT: the commit it hears of
        late releases nothing; it asks the store, learns it lost the run (LeaseLostError) and stops, and the task
        after the commit runs once, in the engine that took over."""
        second_runs: list[str] = []

        @task(provides="v")
        async def first() -> int:
            return 1

        @task
        async def second(v: int) -> None:
            second_runs.append("second")

        flow = Linear("fenced", first, second)
        frozen = Freezable(store)
        frozen.frozen = True  # renewals hang from the start: the lease lapses ttl after the run is created
        async with Engine(store=frozen, id="A", lease_ttl=0.5, heartbeat=0.1) as a:  # type: ignore[arg-type]
            run = await a.start(flow, run_id="r")
            with anyio.fail_after(10):
                await frozen.held.wait()  # `first` is committed; A does not know yet
                async with Engine(store=store, id="B") as b:
                    while True:
                        try:
                            taken = await b.resume("r", flow=flow)
                            break
                        except ckflow.RunOwnedError:
                            await anyio.sleep(0.05)  # A's lease has not lapsed yet: look again
                    assert (await taken.wait()).state is FlowState.SUCCESS
                    frozen.woken.set()  # SIGCONT: A hears of its commit, its heartbeat goes on
                    with pytest.raises(ckflow.LeaseLostError, match="'A'"):
                        await run.wait()
        assert second_runs == ["second"]
        assert (await store.get_run("r")).state is FlowState.SUCCESS
