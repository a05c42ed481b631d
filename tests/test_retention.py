"""Retention: what a checkpoint keeps of its passes, so that a long-running run stays bounded (DESIGN §7)."""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING

import pytest

import ckflow
from ckflow import Checkpoint, Engine, FlowState, Linear, Periodic, Retry, task
from ckflow.stores import MemoryStore, Store, open_store

if TYPE_CHECKING:
    from pathlib import Path

ITERATIONS = 10_000
SAMPLES = (1_000, 5_000, ITERATIONS)


def sampling_job(store: Store, counts: dict[int, dict[str, int]], *, fail_until: int) -> ckflow.Linear:
    """A Periodic of ITERATIONS iterations; 'check' samples the run's row counts at SAMPLES."""

    @task(provides="value")
    async def work() -> int:
        ctx = ckflow.current()
        if ctx.iteration <= fail_until and ctx.attempt == 1:
            raise RuntimeError(f"transient failure in iteration {ctx.iteration}")
        return ctx.iteration

    @work.revert
    async def _(result: object) -> None: ...

    @task
    async def check(value: int) -> None:
        ctx = ckflow.current()
        if ctx.iteration in SAMPLES:
            counts[ctx.iteration] = await store.row_counts(ctx.run_id)

    return Linear(
        "long",
        Periodic(
            "tick",
            work,
            check,
            every=0,
            times=ITERATIONS,
            checkpoint=Checkpoint("tick", retry=Retry(attempts=2), keep_last=5),
        ),
    )


class TestBoundedStorage:
    """However long a Periodic runs, its rows and its memory stay the same size."""

    @pytest.mark.parametrize("kind", ["memory", "sqlite"])
    async def test_ten_thousand_iterations_keep_row_counts_constant(self, kind: str, tmp_path: Path) -> None:
        """After warm-up the run holds as many task, checkpoint and event rows at 10,000 iterations as at 1,000."""
        store: Store = MemoryStore() if kind == "memory" else open_store(f"sqlite:///{tmp_path}/long.db")
        await store.open()
        counts: dict[int, dict[str, int]] = {}
        async with Engine(store=store) as engine:
            run = await engine.start(sampling_job(store, counts, fail_until=50), run_id="long")
            result = await run.wait()
        assert result.state is FlowState.SUCCESS
        # Every table the same size at 1,000, 5,000 and 10,000 iterations; the events within the one step
        # whose write may or may not have landed when the sampling task reads the counts (on SQLite its read
        # suspends, and the run's pending write can commit meanwhile).
        for table in ("tasks", "checkpoints", "regions", "requests"):
            assert counts[1_000][table] == counts[5_000][table] == counts[ITERATIONS][table], table
        events = [counts[n]["events"] for n in SAMPLES]
        assert max(events) - min(events) <= 2, events
        assert counts[ITERATIONS]["checkpoints"] == 6  # the five kept, and the pass in progress
        assert counts[ITERATIONS]["tasks"] == 2
        # The failures of the first 50 iterations were compacted away with their passes, in memory too.
        assert result.failures == []
        assert (await store.row_counts("long"))["events"] < 100
        await store.close()

    async def test_keep_last_keeps_that_many_passes(self) -> None:
        """keep_last=N keeps the records of the last N passes, oldest first."""
        store = MemoryStore()

        @task
        async def t() -> None: ...

        flow = Linear("f", Periodic("p", t, every=0, times=7, checkpoint=Checkpoint("p", keep_last=2)))
        async with Engine(store=store) as engine:
            await (await engine.start(flow, run_id="r")).wait()
        assert [p.pass_no for p in await store.checkpoints("r", "p")] == [6, 7]

    async def test_max_age_keeps_at_least_the_latest_pass(self) -> None:
        """max_age forgets passes that completed longer ago, but always keeps the latest."""
        store = MemoryStore()

        @task
        async def t() -> None: ...

        tiny = datetime.timedelta(microseconds=1)
        flow = Linear("f", Periodic("p", t, every=0, times=4, checkpoint=Checkpoint("p", max_age=tiny)))
        async with Engine(store=store) as engine:
            await (await engine.start(flow, run_id="r")).wait()
        assert [p.pass_no for p in await store.checkpoints("r", "p")] == [4]

    async def test_nested_checkpoint_inherits_retention(self) -> None:
        """A checkpoint inside a Periodic with no retention of its own keeps what its Periodic keeps."""
        store = MemoryStore()

        @task
        async def t() -> None: ...

        body = Linear("body", Checkpoint("inner"), t)
        flow = Linear("f", Periodic("p", body, every=0, times=6, checkpoint=Checkpoint("p", keep_last=2)))
        async with Engine(store=store) as engine:
            await (await engine.start(flow, run_id="r")).wait()
        assert [p.pass_no for p in await store.checkpoints("r", "inner")] == [5, 6]

    def test_retention_arguments_are_checked(self) -> None:
        """keep_last must be a positive int and max_age a positive age, where the checkpoint is written."""
        with pytest.raises(ValueError, match="keep_last"):
            Checkpoint("c", keep_last=0)
        for age in (0, -1, datetime.timedelta(seconds=-5)):
            with pytest.raises(ValueError, match=r"max_age=.* would keep nothing; give a positive age"):
                Checkpoint("c", max_age=age)
        assert Checkpoint("c", max_age=datetime.timedelta(hours=1)).max_age == 3600.0
