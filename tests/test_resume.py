"""Resuming durable runs: after a crash, after a shutdown, by another engine; leases (DESIGN §7, §9)."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from tests.support import Crash, WatchedStore, expire_lease

import ckflow
from ckflow import Checkpoint, Engine, FlowState, Linear, Parallel, Retry, TaskState, task
from ckflow.stores import MemoryStore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from ckflow._records import Batch


class Provisioning:
    """create -> [disk: Retry(3)] attach (fails once) -> format, with net beside it -> boot; every step logged."""

    def __init__(self) -> None:
        self.phase = "first"
        #: (phase, what) for every execute and revert
        self.log: list[tuple[str, str]] = []
        #: attach's ckflow.current().attempt, per execution
        self.attempts: list[int] = []
        self.flow = self._build()

    def _build(self) -> ckflow.Linear:
        log = self.log

        @task(provides="volume")
        async def create() -> str:
            log.append((self.phase, "create"))
            return "vol"

        @create.revert
        async def _(result: object) -> None:
            log.append((self.phase, "undo create"))

        @task(provides="attachment")
        async def attach(volume: str) -> str:
            attempt = ckflow.current().attempt
            self.attempts.append(attempt)
            log.append((self.phase, "attach"))
            if attempt == 1:
                raise RuntimeError("storage busy")
            return f"{volume}@vdb"

        @attach.revert
        async def _(volume: str, result: object) -> None:
            log.append((self.phase, "undo attach"))

        @task(provides="fs")
        async def format_disk(attachment: str) -> str:
            log.append((self.phase, "format"))
            return f"ext4:{attachment}"

        @task(provides="net")
        async def net() -> str:
            log.append((self.phase, "net"))
            return "10.0.0.1"

        @net.revert
        async def _(result: object) -> None:
            log.append((self.phase, "undo net"))

        @task(provides="up")
        async def boot(fs: str, net: str) -> str:
            log.append((self.phase, "boot"))
            return f"{fs} {net}"

        return Linear(
            "provision",
            create,
            Parallel(
                "prepare",
                Linear("disk", Checkpoint("disk", retry=Retry(attempts=3)), attach, format_disk),
                net,
            ),
            boot,
        )

    def executed(self, phase: str) -> list[str]:
        return [what for p, what in self.log if p == phase and not what.startswith("undo")]


async def reference() -> tuple[ckflow.RunResult, int]:
    """The run without a crash, and how many writes it makes."""
    store = WatchedStore()
    app = Provisioning()
    async with Engine(store=store) as engine:
        result = await (await engine.start(app.flow, run_id="r")).wait()
    return result, len(store.batches)


class TestCrashAtEveryWrite:
    """Whatever write a crash interrupts, the resumed run ends as the run without a crash would."""

    async def test_every_crash_point(self) -> None:
        """For each write k, crash there, resume: same end, no stored success run again, no retry counted twice."""
        expected, writes = await reference()
        assert expected.state is FlowState.SUCCESS
        for k in range(1, writes + 2):
            app = Provisioning()
            store = WatchedStore(crash_at=k)
            async with Engine(store=store) as engine:
                run = await engine.start(app.flow, run_id="r")
                if k <= writes:
                    with pytest.raises(Crash):
                        await run.wait()
                else:
                    await run.wait()
            stored = {t.task: t.state for t in await store.inner.tasks("r")}
            done_before = {name for name, state in stored.items() if state is TaskState.SUCCESS}
            expire_lease(store, "r")
            app.phase = "resumed"
            async with Engine(store=store.inner) as engine:
                result = await (await engine.resume("r", flow=app.flow)).wait()
            assert result.state is FlowState.SUCCESS, k
            assert result.outputs == expected.outputs, k
            again = set(app.executed("resumed")) & done_before
            assert again == set(), f"crash at write {k}: {again} ran again"
            assert max(app.attempts) == 2, f"crash at write {k}: attach attempts {app.attempts}"
            attach = next(t for t in await store.inner.tasks("r") if t.task == "attach")
            assert attach.retries == {"disk": 1}, k


class TestResume:
    """engine.resume() goes on with a run from where its store says it was."""

    async def test_running_task_runs_again_and_successes_do_not(self) -> None:
        """A task interrupted while running executes again; the tasks that succeeded before do not."""
        store = MemoryStore()
        log: list[str] = []
        gate, started = anyio.Event(), anyio.Event()

        @task(provides="a")
        async def a() -> int:
            log.append("a")
            return 1

        @task(provides="b")
        async def b(a: int) -> int:
            log.append("b")
            started.set()
            await gate.wait()
            return a + 1

        flow = Linear("l", a, b)
        with anyio.CancelScope() as scope:
            async with Engine(store=store) as engine:
                await engine.start(flow, run_id="r")
                await started.wait()
                scope.cancel()
        assert {t.task: t.state for t in await store.tasks("r")} == {"a": TaskState.SUCCESS, "b": TaskState.PENDING}
        assert (await store.get_run("r")).owner is None
        gate.set()
        async with Engine(store=store) as engine:
            result = await (await engine.resume("r", flow=flow)).wait()
        assert result.outputs == {"a": 1, "b": 2}
        assert log == ["a", "b", "b"]
        assert result.tasks["b"].attempts == 2
        assert result.tasks["a"].attempts == 1

    async def test_a_service_lifespan_that_cancels_its_engine_stops_runs_without_waiting(self) -> None:
        """The README's lifespan: an engine whose block is left by cancelling a scope around it stops its durable
        runs where they are (nothing reverted, lease released) instead of waiting for them; they resume later."""
        store, gate, started = MemoryStore(), anyio.Event(), anyio.Event()
        log: list[str] = []

        @task
        async def slow() -> None:
            log.append("slow")
            started.set()
            await gate.wait()

        @slow.revert
        async def _(result: object) -> None:
            log.append("undo slow")

        flow = Linear("l", slow)

        @contextlib.asynccontextmanager
        async def lifespan() -> AsyncIterator[Engine]:
            with anyio.CancelScope() as stop:
                async with Engine(store=store) as engine:
                    yield engine
                    stop.cancel()

        with anyio.fail_after(5):
            async with lifespan() as engine:
                await engine.start(flow, run_id="r")
                await started.wait()
            record = await store.get_run("r")
            assert (record.state, record.owner) == (FlowState.RUNNING, None)
            assert log == ["slow"]
            gate.set()
            async with Engine(store=store) as later:
                assert (await (await later.resume("r", flow=flow)).wait()).state is FlowState.SUCCESS
        assert log == ["slow", "slow"]

    async def test_shutdown_reverts_nothing(self) -> None:
        """An engine cancelled while a durable run runs stops it without reverting anything."""
        store = MemoryStore()
        log: list[str] = []
        started = anyio.Event()

        @task(provides="a")
        async def a() -> int:
            return 1

        @a.revert
        async def _(result: object) -> None:
            log.append("undo a")

        @task
        async def b(a: int) -> None:
            started.set()
            await anyio.sleep_forever()

        with anyio.CancelScope() as scope:
            async with Engine(store=store) as engine:
                run = await engine.start(Linear("l", a, b), run_id="r")
                await started.wait()
                scope.cancel()
        assert log == []
        assert (await store.get_run("r")).state is FlowState.RUNNING
        with pytest.raises(ckflow.RunStateError, match="stopped"):
            await run.wait()

    async def test_interrupted_revert_is_called_again(self) -> None:
        """A revert that the crash interrupted is called again by the resumed run."""
        store = WatchedStore()
        calls: list[str] = []

        @task(provides="a")
        async def a() -> int:
            return 1

        @a.revert
        async def _(result: object) -> None:
            calls.append("undo a")
            store.dead = True  # the process dies while this revert runs: its end is never recorded

        @task
        async def b(a: int) -> None:
            raise RuntimeError("no")

        flow = Linear("l", a, b)
        async with Engine(store=store) as engine:
            with pytest.raises(Crash):
                await (await engine.start(flow, run_id="r")).wait()
        assert calls == ["undo a"]
        expire_lease(store, "r")
        async with Engine(store=store.inner) as engine:
            result = await (await engine.resume("r", flow=flow)).wait()
        assert result.state is FlowState.REVERTED
        assert calls == ["undo a", "undo a"]

    async def test_retry_decided_before_the_crash_is_not_counted_twice(self) -> None:
        """A crash after the region's reverts but before its retry leaves the retry to do, counted once."""
        store = WatchedStore()
        attempts: list[int] = []

        @task(provides="v")
        async def flaky() -> int:
            attempts.append(ckflow.current().attempt)
            if len(attempts) == 1:
                raise RuntimeError("once")
            return 1

        @flaky.revert
        async def _(result: object) -> None: ...

        def crash_on_retry(batch: Any) -> None:
            if any(e.name == "ckflow.walker.retry" for e in batch.events):
                store.dead = True
                raise Crash("crash just before the retry is recorded")

        store.on_write = crash_on_retry
        flow = Linear("l", Checkpoint("cp", retry=Retry(attempts=3)), flaky)
        async with Engine(store=store) as engine:
            with pytest.raises(Crash):
                await (await engine.start(flow, run_id="r")).wait()
        (region,) = (await store.inner.load("r")).regions
        assert region.action == "retry"
        expire_lease(store, "r")
        async with Engine(store=store.inner) as engine:
            result = await (await engine.resume("r", flow=flow)).wait()
        assert result.state is FlowState.SUCCESS
        assert attempts[-1] == 2
        record = next(t for t in await store.inner.tasks("r") if t.task == "flaky")
        assert record.retries == {"cp": 1}

    async def test_failures_before_the_crash_are_in_the_result(self) -> None:
        """result.failures of a resumed run holds the failures recorded before the crash."""
        store = WatchedStore()
        app = Provisioning()

        def crash_after_retry(batch: Any) -> None:
            if any(e.name == "ckflow.task.success" and e.task == "attach" for e in batch.events):
                store.dead = True
                raise Crash("crash")

        store.on_write = crash_after_retry
        async with Engine(store=store) as engine:
            with pytest.raises(Crash):
                await (await engine.start(app.flow, run_id="r")).wait()
        expire_lease(store, "r")
        async with Engine(store=store.inner) as engine:
            result = await (await engine.resume("r", flow=app.flow)).wait()
        assert result.state is FlowState.SUCCESS
        assert [(f.task, f.message) for f in result.failures] == [("attach", "storage busy")]

    async def test_resume_of_an_ended_run_gives_its_result(self) -> None:
        """Resuming a run that has ended runs nothing and gives its result, outputs included."""
        store = MemoryStore()
        app = Provisioning()
        async with Engine(store=store) as engine:
            expected = await (await engine.start(app.flow, run_id="r")).wait()
        runs = len(app.log)
        async with Engine(store=store) as engine:
            run = await engine.resume("r", flow=app.flow)
            assert not run.local
            result = await run.wait()
        assert len(app.log) == runs
        assert result.state is FlowState.SUCCESS
        assert result.outputs == expected.outputs
        assert result.tasks["attach"].attempts == 2

    async def test_resume_by_registered_name(self) -> None:
        """Without flow=, resume rebuilds the flow registered under the run's flow name."""
        store = MemoryStore()
        gate, started = anyio.Event(), anyio.Event()

        def build() -> ckflow.Linear:
            @task
            async def wait_here() -> None:
                started.set()
                await gate.wait()

            return Linear("registered-flow", wait_here)

        ckflow.register_flow("registered-flow", build)
        with anyio.CancelScope() as scope:
            async with Engine(store=store) as engine:
                await engine.start("registered-flow", run_id="r")
                await started.wait()
                scope.cancel()
        gate.set()
        async with Engine(store=store) as engine:
            assert (await (await engine.resume("r")).wait()).state is FlowState.SUCCESS

    async def test_resume_errors(self) -> None:
        """An unknown run id, an unregistered flow and another flow are each a clear, typed error."""
        store = MemoryStore()

        @task
        async def t() -> None: ...

        await store.create_run(
            ckflow.stores.RunRecord(
                run_id="r", flow="unregistered", state=FlowState.PENDING, created_at=0.0, updated_at=0.0
            )
        )
        async with Engine(store=store) as engine:
            with pytest.raises(ckflow.RunNotFoundError, match="'nope'"):
                await engine.resume("nope")
        async with Engine(store=store) as engine:
            with pytest.raises(ckflow.FlowNotRegisteredError, match="'unregistered'"):
                await engine.resume("r")
            with pytest.raises(ckflow.FlowDefinitionError, match="'unregistered'"):
                await engine.resume("r", flow=Linear("other", t))

    async def test_resume_needs_a_store(self) -> None:
        """An engine without a store says how to get one when asked to resume."""
        async with Engine() as engine:
            with pytest.raises(ckflow.RunStateError, match="store="):
                await engine.resume("r")

    async def test_suspended_run_is_left_in_its_store_and_resumed_elsewhere(self) -> None:
        """Leaving an engine with a SUSPENDED durable run leaves it in the store; another engine resumes it."""
        store = MemoryStore()
        app = Provisioning()
        async with Engine(store=store) as engine:
            run = await engine.start(app.flow, run_id="r")
            await run.goto("disk")
        record = await store.get_run("r")
        assert record.state is FlowState.SUSPENDED
        assert record.owner is None
        assert record.goto == "disk"
        app.phase = "resumed"
        async with Engine(store=store) as engine:
            result = await (await engine.resume("r", flow=app.flow)).wait()
        assert result.state is FlowState.SUCCESS
        assert "create" not in app.executed("resumed")
        assert "attach" in app.executed("resumed")


class HeldRenewal(WatchedStore):
    """A store whose first lease renewal waits for ``go`` once it has started (``renewing``); ``renewed`` is set
    once it has returned, ``released`` once a lease has been released (by ``release``, or by a run's last write,
    ``Batch.release``)."""

    def __init__(self) -> None:
        super().__init__()
        self.renewing, self.go, self.renewed = anyio.Event(), anyio.Event(), anyio.Event()
        self.released = anyio.Event()

    async def release(self, run_id: str, owner: str) -> None:
        await super().release(run_id, owner)
        self.released.set()

    async def write(self, batch: Batch) -> None:
        await super().write(batch)
        if batch.release:
            self.released.set()

    async def renew(self, owner: str, run_ids: Any, ttl: float) -> Any:
        if self.renewed.is_set():
            return await self.inner.renew(owner, run_ids, ttl)
        self.renewing.set()
        await self.go.wait()
        try:
            return await self.inner.renew(owner, run_ids, ttl)
        finally:
            self.renewed.set()


class TestLeases:
    """A run is owned by one engine at a time; a stale lease is taken over."""

    async def test_a_live_lease_keeps_other_engines_out(self) -> None:
        """While its engine renews the lease, another engine cannot resume the run."""
        store = MemoryStore()
        gate, started = anyio.Event(), anyio.Event()

        @task
        async def slow() -> None:
            started.set()
            await gate.wait()

        flow = Linear("l", slow)
        async with Engine(store=store, id="A") as a, Engine(store=store, id="B") as b:
            run = await a.start(flow, run_id="r")
            await started.wait()
            with pytest.raises(ckflow.RunOwnedError) as info:
                await b.resume("r", flow=flow)
            assert info.value.owner == "A"
            gate.set()
            await run.wait()

    async def test_a_live_lease_comes_before_a_missing_flow(self) -> None:
        """Resuming a run that a live engine holds is RunOwnedError even where its flow is not registered."""
        store = MemoryStore()
        gate, started = anyio.Event(), anyio.Event()

        @task
        async def slow() -> None:
            started.set()
            await gate.wait()

        flow = Linear("not-registered-here", slow)
        async with Engine(store=store, id="A") as a, Engine(store=store, id="B") as b:
            run = await a.start(flow, run_id="r")
            await started.wait()
            with pytest.raises(ckflow.RunOwnedError):
                await b.resume("r")
            gate.set()
            await run.wait()

    async def test_two_engines_racing_for_one_run(self) -> None:
        """Of two engines resuming the same run at once, exactly one runs it."""
        store = MemoryStore()
        runs: list[str] = []

        @task
        async def once() -> None:
            runs.append(ckflow.current().run_id)

        flow = Linear("l", once)
        await store.create_run(
            ckflow.stores.RunRecord(run_id="r", flow="l", state=FlowState.PENDING, created_at=0.0, updated_at=0.0)
        )
        outcomes: list[str] = []
        async with Engine(store=store, id="A") as a, Engine(store=store, id="B") as b:

            async def race(engine: Engine) -> None:
                try:
                    await (await engine.resume("r", flow=flow)).wait()
                    outcomes.append("ran")
                except ckflow.RunOwnedError:
                    outcomes.append("refused")

            async with anyio.create_task_group() as tg:
                tg.start_soon(race, a)
                tg.start_soon(race, b)
        assert sorted(outcomes) == ["ran", "refused"]
        assert runs == ["r"]

    async def test_a_run_that_ends_during_a_renewal_is_not_said_to_lose_its_lease(self) -> None:
        """A renewal in flight while the run ends (and releases its lease) finds the run no longer owned: that is
        the run's own release, not a lost lease, and no ckflow.run.stopped follows its success."""
        store = HeldRenewal()
        gate = anyio.Event()
        names: list[str] = []

        @task
        async def slow() -> None:
            await gate.wait()

        async with Engine(store=store, heartbeat=0.01, lease_ttl=5) as engine:
            run = await engine.start(Linear("l", slow), run_id="r", on_event=lambda e: names.append(e.name))
            with anyio.fail_after(5):
                await store.renewing.wait()  # the renewal holds run r
                gate.set()
                assert (await run.wait()).state is FlowState.SUCCESS
                await store.released.wait()  # the engine releases the lease after the run's end
                store.go.set()
                await store.renewed.wait()
                await anyio.lowlevel.checkpoint()
        assert names[-1] == "ckflow.run.success"
        assert "ckflow.run.stopped" not in names

    async def test_takeover_after_the_lease_lapses(self) -> None:
        """Once a lease lapses another engine takes the run over, and the old engine stops it (LeaseLostError)."""
        store = MemoryStore()
        log: list[str] = []
        gate = anyio.Event()
        started = [anyio.Event(), anyio.Event()]

        @task
        async def slow() -> None:
            log.append("slow")
            started[len(log) - 1].set()
            await gate.wait()

        @slow.revert
        async def _(result: object) -> None:
            log.append("undo slow")

        flow = Linear("l", slow)
        async with Engine(store=store, id="A", heartbeat=0.01, lease_ttl=5) as a:
            run = await a.start(flow, run_id="r")
            await started[0].wait()
            expire_lease(store, "r")
            async with Engine(store=store, id="B") as b:
                taken = await b.resume("r", flow=flow)
                await started[1].wait()
                with pytest.raises(ckflow.LeaseLostError, match="'A'"):
                    await run.wait()
                assert (await store.get_run("r")).owner == "B"
                gate.set()
                assert (await taken.wait()).state is FlowState.SUCCESS
        assert log == ["slow", "slow"]


class TestStopWithShieldedTask:
    """A task marked shield=True is awaited, not cancelled, when its engine shuts down."""

    async def test_shielded_task_finishes_and_is_recorded(self) -> None:
        """An engine cancelled while a shielded task runs lets it finish and stores its success."""
        store = MemoryStore()
        gate, started = anyio.Event(), anyio.Event()

        @task(provides="v", shield=True)
        async def careful() -> int:
            started.set()
            await gate.wait()
            return 7

        @task
        async def after(v: int) -> None: ...

        flow = Linear("l", careful, after)
        with anyio.CancelScope() as scope:
            async with Engine(store=store) as engine:
                await engine.start(flow, run_id="r")
                await started.wait()
                scope.cancel()
                gate.set()
        records = {t.task: t for t in await store.tasks("r")}
        assert records["careful"].state is TaskState.SUCCESS
        assert records["careful"].result == "7"


class TestRetryDurability:
    """A durable run's retry starts once the region's reset is in the store (issue: a crash between them)."""

    async def test_a_retry_starts_once_its_reset_is_committed(self) -> None:
        """When the second attempt starts, the store already holds the reset: no open region, the retry counted;
        a crash at that moment resumes the retry, never the reverted region again."""
        store = MemoryStore()
        seen: list[tuple[list[int], dict[str, int], TaskState]] = []
        calls = {"n": 0}

        @task
        async def flaky() -> None:
            calls["n"] += 1
            if calls["n"] == 1:
                raise ConnectionError("first try")
            stored = await store.load("r")
            [record] = [t for t in stored.tasks if t.task == "flaky"]
            seen.append(([r.region_id for r in stored.regions], record.retries, record.state))

        flow = Linear("l", Checkpoint("cp", retry=Retry(attempts=2)), flaky)
        async with Engine(store=store) as engine:
            run = await engine.start(flow, run_id="r")
            assert (await run.wait()).state is FlowState.SUCCESS
        assert seen == [([], {"cp": 1}, TaskState.PENDING)]
