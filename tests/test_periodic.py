"""``Periodic``: a body run again and again, each iteration a pass of its checkpoint (DESIGN §7)."""

from __future__ import annotations

import datetime
import time

import anyio
import pytest
from tests.support import Crash, WatchedStore, expire_lease

import ckflow
from ckflow import Checkpoint, Engine, FlowState, Linear, Periodic, Retry, task
from ckflow.stores import MemoryStore


class Sync:
    """Periodic "sync": fetch -> save, then "report" after the last iteration; every step logged."""

    def __init__(self, *, times: int | None = 3, every: float = 0.0, fail: set[tuple[int, int]] | None = None) -> None:
        #: (iteration, attempt) at which save fails
        self.fail = fail or set()
        self.log: list[tuple[str, int, int]] = []
        self.starts: list[float] = []
        self.flow = self._build(times, every)

    def _build(self, times: int | None, every: float) -> ckflow.Linear:
        log = self.log

        def here(name: str) -> None:
            ctx = ckflow.current()
            log.append((name, ctx.iteration, ctx.attempt))

        @task(provides="batch")
        async def fetch() -> int:
            here("fetch")
            self.starts.append(time.monotonic())
            return ckflow.current().iteration * 10

        @fetch.revert
        async def _(result: object) -> None:
            here("undo fetch")

        @task(provides="saved")
        async def save(batch: int) -> int:
            here("save")
            ctx = ckflow.current()
            if (ctx.iteration, ctx.attempt) in self.fail:
                raise RuntimeError(f"disk full in iteration {ctx.iteration}")
            return batch + 1

        @save.revert
        async def _(batch: int, result: object) -> None:
            here("undo save")

        @task(provides="report")
        async def report(saved: int) -> str:
            log.append(("report", 0, 1))
            return f"last saved {saved}"

        return Linear(
            "job",
            Periodic(
                "sync",
                fetch,
                save,
                every=every,
                times=times,
                checkpoint=Checkpoint("sync", retry=Retry(attempts=2), keep_last=3),
            ),
            report,
        )

    def steps(self, name: str) -> list[tuple[int, int]]:
        return [(it, attempt) for n, it, attempt in self.log if n == name]


class TestIterations:
    """The body runs ``times`` times; what follows reads the last iteration."""

    async def test_runs_times_and_then_what_follows(self) -> None:
        """Each task runs once per iteration, iteration numbers count from 1, and report reads the last one."""
        app = Sync(times=3)
        result = await ckflow.run(app.flow)
        assert result.state is FlowState.SUCCESS
        assert app.steps("fetch") == [(1, 1), (2, 1), (3, 1)]
        assert app.steps("save") == [(1, 1), (2, 1), (3, 1)]
        assert result.outputs["report"] == "last saved 31"
        assert result.tasks["fetch"].attempts == 3

    async def test_every_spaces_the_starts(self) -> None:
        """An iteration starts no sooner than ``every`` after the previous one started.

        The previous iteration's start is the engine's (before its first task's first line, by however long a
        loaded machine takes to get there), so it is read from the ``ckflow.periodic.next`` event that ends each
        iteration: its ``delay`` runs from the event to the next iteration's due time."""
        app = Sync(times=3, every=0.05)
        due: list[float] = []

        def watch(event: ckflow.Event) -> None:
            if event.name == "ckflow.periodic.next":
                due.append(event.monotonic + event.detail["delay"])

        async with Engine() as engine:
            run = await engine.start(app.flow, on_event=watch)
            await run.wait()
        assert len(app.starts) == 3
        assert len(due) == 2
        for i, at in enumerate(due):
            assert app.starts[i + 1] >= at, (app.starts, due)  # not before its due time
            assert at - app.starts[i] >= 0.05 - 0.04, (app.starts, due)  # due some ``every`` after the last start

    async def test_timedelta_every(self) -> None:
        """every= takes a timedelta too."""
        periodic = Periodic("p", task(lambda: None, name="t"), every=datetime.timedelta(minutes=5))
        assert periodic.every == 300.0

    async def test_without_end_until_cancelled(self) -> None:
        """times=None goes on until the run is cancelled; finished iterations are not reverted."""
        app = Sync(times=None)
        third = anyio.Event()

        async with Engine() as engine:

            def watch(event: ckflow.Event) -> None:
                if event.name == "ckflow.periodic.next" and event.detail.get("iteration") == 3:
                    third.set()

            run = await engine.start(app.flow, on_event=watch)
            await third.wait()
            await run.cancel()
            result = await run.wait()
        assert result.state is FlowState.REVERTED
        assert len(app.steps("undo fetch")) <= 1
        assert app.steps("report") == []


class TestFailures:
    """A failure in an iteration reverts back to that iteration's start only."""

    async def test_failed_iteration_retried_alone(self) -> None:
        """save fails in iteration 2: only iteration 2's tasks are reverted and run again, then iteration 3."""
        app = Sync(times=3, fail={(2, 1)})
        result = await ckflow.run(app.flow)
        assert result.state is FlowState.SUCCESS
        assert app.steps("undo save") == [(2, 1)]
        assert app.steps("undo fetch") == [(2, 1)]
        assert app.steps("fetch") == [(1, 1), (2, 1), (2, 2), (3, 1)]
        assert [str(f) for f in result.failures] == ["save: RuntimeError: disk full in iteration 2"]

    async def test_exhausted_iteration_escalates(self) -> None:
        """When an iteration runs out of retries the failure escalates: the run is REVERTED, the current
        iteration's tasks are undone, and earlier iterations stay done."""
        app = Sync(times=3, fail={(2, 1), (2, 2)})
        result = await ckflow.run(app.flow)
        assert result.state is FlowState.REVERTED
        assert [it for it, _ in app.steps("undo fetch")] == [2, 2]
        assert app.steps("report") == []


class TestNested:
    """A Periodic inside a scope that is retried starts afresh, as nested budgets do."""

    async def test_enclosing_retry_restarts_the_iterations(self) -> None:
        """When the enclosing checkpoint retries, the Periodic runs from iteration 1 again."""
        seen: list[int] = []

        @task(provides="n")
        async def tick() -> int:
            seen.append(ckflow.current().iteration)
            return len(seen)

        @task
        async def check(n: int) -> None:
            if len(seen) == 2:
                raise RuntimeError("not yet")

        flow = Linear(
            "outer",
            Checkpoint("outer-cp", retry=Retry(attempts=2)),
            Periodic("p", tick, every=0, times=2),
            check,
        )
        result = await ckflow.run(flow)
        assert result.state is FlowState.SUCCESS
        assert seen == [1, 2, 1, 2]


class TestDefinition:
    """Mistakes in a Periodic are caught where it is written."""

    def test_bad_arguments(self) -> None:
        """every must be >= 0 and finite, times a positive int, and the body must hold a task."""
        t = task(lambda: None, name="t")
        with pytest.raises(ValueError, match="every"):
            Periodic("p", t, every=-1)
        with pytest.raises(TypeError, match="every"):
            Periodic("p", t, every="soon")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="times"):
            Periodic("p", t, every=1, times=0)
        with pytest.raises(ckflow.FlowDefinitionError, match="repeats no task"):
            Periodic("p", every=1)

    def test_default_checkpoint_keeps_ten(self) -> None:
        """A Periodic's own checkpoint is named after it and keeps the last 10 iterations."""
        periodic = Periodic("p", task(lambda: None, name="t"), every=1)
        assert periodic.checkpoint is not None
        assert periodic.checkpoint.name == "p"
        assert periodic.checkpoint.keep_last == 10


class TestDurable:
    """Each iteration is a pass of the checkpoint in the store; a resumed Periodic goes on."""

    async def test_each_iteration_is_a_pass_and_old_ones_go(self) -> None:
        """A durable Periodic records one pass per iteration, keeping the last keep_last of them."""
        store = MemoryStore()
        app = Sync(times=5)
        async with Engine(store=store) as engine:
            await (await engine.start(app.flow, run_id="r")).wait()
        passes = await store.checkpoints("r", "sync")
        assert [(p.pass_no, p.state) for p in passes] == [(3, "completed"), (4, "completed"), (5, "completed")]
        assert passes[-1].snapshot == '{"batch":50,"saved":51}'
        events = await store.events("r")
        # The events of the tasks of the forgotten iterations are gone with them.
        assert {e.detail.get("iteration") for e in events if e.name == "ckflow.periodic.next"} == {3, 4, 5}
        assert len([e for e in events if e.name == "ckflow.task.success" and e.task == "fetch"]) == 3

    async def test_crash_at_every_write_resumes_to_the_same_end(self) -> None:
        """Crashing at any write of a Periodic run and resuming gives the same outputs, each iteration done once."""
        reference = WatchedStore()
        async with Engine(store=reference) as engine:
            expected = await (await engine.start(Sync(times=3).flow, run_id="r")).wait()
        for k in range(1, len(reference.batches) + 1):
            app = Sync(times=3)
            store = WatchedStore(crash_at=k)
            async with Engine(store=store) as engine:
                with pytest.raises(Crash):
                    await (await engine.start(app.flow, run_id="r")).wait()
            expire_lease(store, "r")
            async with Engine(store=store.inner) as engine:
                result = await (await engine.resume("r", flow=app.flow)).wait()
            assert result.outputs == expected.outputs, k
            saved = app.steps("save")
            assert sorted(set(saved)) == [(1, 1), (2, 1), (3, 1)], (k, saved)
