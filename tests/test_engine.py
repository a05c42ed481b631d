"""The engine and the run handle: starting runs, full reverts, cancellation and suspension (DESIGN §4, §6, §11)."""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import pytest

import ckflow
from ckflow import Checkpoint, Engine, FlowState, Linear, Parallel, TaskState, task
from ckflow.testing import EventRecorder


def noop(name: str) -> ckflow.Task:
    @task(name=name)
    async def t() -> None: ...

    return t


class TestEngine:
    async def test_start_returns_a_run_handle(self) -> None:
        """engine.start returns a Run with the given id, a state and per-task summaries; wait() gives the result."""
        async with Engine() as engine:
            run = await engine.start(Linear("l", noop("a"), noop("b")), run_id="r-1")
            assert isinstance(run, ckflow.Run)
            assert run.id == "r-1"
            assert run.flow == "l"
            assert isinstance(run.state, FlowState)
            assert set(run.tasks) == {"a", "b"}
            assert engine.get_run("r-1") is run
            result = await run.wait()
        assert result.state is FlowState.SUCCESS
        assert run.state is FlowState.SUCCESS
        assert run.tasks["b"].state is TaskState.SUCCESS

    async def test_run_id_generated_when_omitted(self) -> None:
        """A run started without run_id gets a unique id."""
        async with Engine() as engine:
            r1 = await engine.start(Linear("l", noop("a")))
            r2 = await engine.start(Linear("l", noop("a")))
            assert r1.id
            assert r2.id
            assert r1.id != r2.id

    async def test_many_runs_concurrently(self) -> None:
        """Runs of one engine execute concurrently: every run's task starts before any is released."""
        gate = anyio.Event()
        started = [anyio.Event() for _ in range(10)]

        @task
        async def hold(i: int) -> None:
            started[i].set()
            await gate.wait()

        flow = Linear("l", hold)
        async with Engine() as engine:
            runs = [await engine.start(flow, inputs={"i": i}) for i in range(10)]
            with anyio.fail_after(5):
                for ev in started:
                    await ev.wait()
            gate.set()
            results = [await run.wait() for run in runs]
        assert [r.state for r in results] == [FlowState.SUCCESS] * 10

    async def test_duplicate_run_id_is_rejected(self) -> None:
        """Starting a second run with a taken run_id raises RunStateError."""
        async with Engine() as engine:
            await engine.start(Linear("l", noop("a")), run_id="x")
            with pytest.raises(ckflow.RunStateError, match="'x'"):
                await engine.start(Linear("l", noop("a")), run_id="x")

    async def test_start_on_unopened_engine(self) -> None:
        """engine.start on an engine that is not open raises RunStateError."""
        with pytest.raises(ckflow.RunStateError):
            await Engine().start(Linear("l", noop("a")))

    async def test_start_on_closed_engine(self) -> None:
        """engine.start after the async with block has ended raises RunStateError."""
        async with Engine() as engine:
            pass
        with pytest.raises(ckflow.RunStateError):
            await engine.start(Linear("l", noop("a")))

    async def test_nothing_starts_while_the_engine_closes(self) -> None:
        """Once its block is being left, the engine refuses new runs, though running ones still finish."""
        gate = anyio.Event()

        @task(name="slow")
        async def slow() -> None:
            await gate.wait()

        refused: list[BaseException] = []

        async def start_while_closing(engine: Engine) -> None:
            await anyio.sleep(0.01)  # the engine's block has been left by now: it waits for `slow`
            try:
                await engine.start(Linear("l2", noop("a")))
            except ckflow.RunStateError as exc:
                refused.append(exc)
            gate.set()

        async with anyio.create_task_group() as outer, Engine() as engine:
            run = await engine.start(Linear("l", slow))
            outer.start_soon(start_while_closing, engine)
        assert len(refused) == 1
        assert "needs an open engine" in str(refused[0])
        assert run.state is FlowState.SUCCESS

    async def test_an_open_engine_is_not_entered_again(self) -> None:
        """Entering an engine that is open raises RunStateError; once closed it may be entered again."""
        engine = Engine()
        async with engine:
            with pytest.raises(ckflow.RunStateError, match="already open"):
                await engine.__aenter__()
        async with engine:
            run = await engine.start(Linear("l", noop("a")))
        assert run.state is FlowState.SUCCESS

    def test_run_has_no_public_constructor(self) -> None:
        """ckflow.Run cannot be made by hand: handles come from an engine (start, resume, attach)."""
        with pytest.raises(TypeError, match=r"ckflow\.Run has no public constructor"):
            ckflow.Run()
        with pytest.raises(TypeError, match="no public constructor"):
            ckflow.Run(object())

    @pytest.mark.parametrize("name", ["lease_ttl", "heartbeat", "poll_interval"])
    @pytest.mark.parametrize("value", [0, -1, float("inf"), float("nan")])
    def test_times_must_be_positive_and_finite(self, name: str, value: float) -> None:
        """lease_ttl, heartbeat and poll_interval are refused, by name, unless positive and finite."""
        with pytest.raises(ValueError, match=f"Engine\\({name}=.*\\) must be a positive, finite number of seconds"):
            Engine(**{name: value})

    async def test_get_run_unknown(self) -> None:
        """get_run of an unknown id raises RunStateError."""
        async with Engine() as engine:
            with pytest.raises(ckflow.RunStateError, match="nope"):
                engine.get_run("nope")

    async def test_run_errors_are_ckflow_errors(self) -> None:
        """RunStateError derives from CkflowError."""
        assert issubclass(ckflow.RunStateError, ckflow.CkflowError)


class TestFullRevert:
    async def test_reverts_in_reverse_topological_order(self) -> None:
        """With no checkpoints a failure at the end of a->b->c reverts c, then b, then a."""
        log: list[str] = []

        def make(name: str, fail: bool = False) -> ckflow.Task:
            @task(name=name)
            async def t() -> None:
                await anyio.lowlevel.checkpoint()
                if fail:
                    raise ValueError(name)

            @t.revert
            async def _(result: Any) -> None:
                log.append(f"{name}>")
                await anyio.lowlevel.checkpoint()
                log.append(f"<{name}")

            return t

        result = await ckflow.run(Linear("l", make("a"), make("b"), make("c", fail=True)))
        assert result.state is FlowState.REVERTED
        assert log == ["c>", "<c", "b>", "<b", "a>", "<a"]
        assert {s.state for s in result.tasks.values()} == {TaskState.REVERTED}

    async def test_independent_reverts_run_concurrently(self) -> None:
        """Reverts of independent tasks run concurrently: both start before either finishes."""
        started = {"x": anyio.Event(), "y": anyio.Event()}
        release = anyio.Event()

        def make(name: str) -> ckflow.Task:
            @task(name=name)
            async def t() -> None: ...

            @t.revert
            async def _(result: Any) -> None:
                started[name].set()
                await release.wait()

            return t

        @task
        async def boom() -> None:
            raise ValueError("boom")

        flow = Linear("l", Parallel("p", make("x"), make("y")), boom)
        async with Engine() as engine:
            run = await engine.start(flow)
            try:
                with anyio.fail_after(5):
                    await started["x"].wait()
                    await started["y"].wait()
                    assert run.tasks["x"].state is TaskState.REVERTING
                    assert run.tasks["y"].state is TaskState.REVERTING
            finally:
                release.set()  # a serial walker still ends, so the test fails instead of hanging
            result = await run.wait()
        assert result.state is FlowState.REVERTED

    async def test_revert_may_use_a_cancel_scope(self) -> None:
        """A revert may open its own cancel scope (move_on_after) around an await."""

        @task
        async def a() -> None: ...

        @a.revert
        async def _(result: Any) -> None:
            with anyio.move_on_after(5):
                await anyio.lowlevel.checkpoint()

        @task
        async def boom() -> None:
            raise ValueError("boom")

        result = await ckflow.run(Linear("l", a, boom))
        assert result.state is FlowState.REVERTED
        assert result.tasks["a"].state is TaskState.REVERTED

    async def test_running_sibling_is_cancelled_then_reverted(self) -> None:
        """A failure cancels a running sibling; its revert gets a cancelled Failure, only after execute unwound."""
        sibling_started = anyio.Event()
        unwound = False
        seen: dict[str, Any] = {}

        @task
        async def sibling() -> None:
            nonlocal unwound
            sibling_started.set()
            try:
                await anyio.sleep_forever()
            finally:
                unwound = True

        @sibling.revert
        async def _(result: Any) -> None:
            seen["result"] = result
            seen["unwound"] = unwound

        @task
        async def boom() -> None:
            await sibling_started.wait()
            raise ValueError("boom")

        with anyio.fail_after(5):
            result = await ckflow.run(Parallel("p", sibling, boom))
        assert result.state is FlowState.REVERTED
        assert isinstance(seen["result"], ckflow.Failure)
        assert seen["result"].cancelled is True
        assert seen["unwound"] is True
        assert result.tasks["sibling"].state is TaskState.REVERTED
        assert [f.task for f in result.failures] == ["boom"]

    async def test_revert_that_raises_ends_in_failure(self) -> None:
        """A revert that raises makes its task REVERT_FAILURE and the flow FAILURE; no further revert starts."""
        reverted: list[str] = []

        @task
        async def a() -> None: ...

        @a.revert
        async def _(result: Any) -> None:
            reverted.append("a")

        @task
        async def b() -> None: ...

        @b.revert
        async def _(result: Any) -> None:
            reverted.append("b")
            raise RuntimeError("cannot undo b")

        @task
        async def c() -> None:
            raise ValueError("c failed")

        result = await ckflow.run(Linear("l", a, b, c))
        assert result.state is FlowState.FAILURE
        assert reverted == ["b"]
        assert result.tasks["b"].state is TaskState.REVERT_FAILURE
        assert result.tasks["a"].state is TaskState.SUCCESS
        assert [(f.task, f.kind, f.exc_type) for f in result.failures] == [
            ("c", "execute", "ValueError"),
            ("b", "revert", "RuntimeError"),
        ]
        with pytest.raises(ckflow.RunFailedError) as info:
            result.raise_for_state()
        assert [type(e) for e in info.value.exceptions] == [ValueError, RuntimeError]


class TestCancel:
    async def test_run_cancel_reverts_everything(self) -> None:
        """run.cancel() cancels what runs, reverts everything that ran, ends REVERTED, and starts nothing new."""
        blocker_started = anyio.Event()
        reverted: list[str] = []
        executed: list[str] = []

        @task
        async def a() -> None:
            executed.append("a")

        @a.revert
        async def _(result: Any) -> None:
            reverted.append("a")

        @task
        async def blocker() -> None:
            executed.append("blocker")
            blocker_started.set()
            await anyio.sleep_forever()

        @blocker.revert
        async def _(result: Any) -> None:
            assert result.cancelled
            reverted.append("blocker")

        @task
        async def c() -> None:
            executed.append("c")

        async with Engine() as engine:
            run = await engine.start(Linear("l", a, blocker, c))
            with anyio.fail_after(5):
                await blocker_started.wait()
                await run.cancel()
                await run.cancel()  # idempotent
                result = await run.wait()
        assert result.state is FlowState.REVERTED
        assert reverted == ["blocker", "a"]
        assert executed == ["a", "blocker"]
        assert result.tasks["c"].state is TaskState.PENDING
        assert result.tasks["c"].attempts == 0

    async def test_queued_tasks_never_start_after_cancel(self) -> None:
        """Tasks held back by max_concurrency never start once the run was cancelled."""
        started = anyio.Event()
        executed: list[int] = []

        def make(i: int) -> ckflow.Task:
            @task(name=f"t{i}")
            async def t() -> None:
                executed.append(i)
                started.set()
                await anyio.sleep_forever()

            return t

        async with Engine() as engine:
            run = await engine.start(Parallel("p", *(make(i) for i in range(3))), max_concurrency=1)
            with anyio.fail_after(5):
                await started.wait()
                await run.cancel()
                result = await run.wait()
        assert result.state is FlowState.REVERTED
        assert executed == [0]
        assert result.tasks["t0"].state is TaskState.REVERTED
        assert [result.tasks[n].attempts for n in ("t1", "t2")] == [0, 0]

    async def test_swallowed_cancellation_is_still_cancelled(self) -> None:
        """A cancelled task that swallows the cancellation and returns is still cancelled; its value is dropped."""
        started = anyio.Event()
        seen: list[Any] = []

        @task(provides="v")
        async def stubborn() -> int:
            started.set()
            try:
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class():
                return 42
            return 0

        @stubborn.revert
        async def _(result: Any) -> None:
            seen.append(result)

        @task
        async def boom() -> None:
            await started.wait()
            raise ValueError("boom")

        with anyio.fail_after(5):
            result = await ckflow.run(Parallel("p", stubborn, boom))
        assert result.state is FlowState.REVERTED
        [value] = seen
        assert isinstance(value, ckflow.Failure)
        assert value.cancelled
        assert result.outputs == {}

    async def test_engine_left_by_exception_reverts_its_runs(self) -> None:
        """Leaving the engine's block by an exception cancels and reverts every unfinished run; the exception
        comes out as it was raised (not in an ExceptionGroup), so `except KeyError` around the block works."""
        started = anyio.Event()
        seen: list[bool] = []

        @task
        async def blocker() -> None:
            started.set()
            await anyio.sleep_forever()

        @blocker.revert
        async def _(result: Any) -> None:
            seen.append(result.cancelled)

        runs: list[ckflow.Run] = []

        async def use_engine() -> None:
            async with Engine() as engine:
                runs.append(await engine.start(Linear("l", blocker)))
                await started.wait()
                raise KeyError("boom")

        with anyio.fail_after(5), pytest.raises(KeyError, match="boom"):
            await use_engine()
        assert runs[0].state is FlowState.REVERTED
        assert seen == [True]

    @pytest.mark.parametrize("store", [None, "memory://"])
    async def test_exception_in_an_engine_block_without_runs_comes_out_as_raised(self, store: str | None) -> None:
        """An exception raised in the block of an engine, with or without a store, propagates unchanged."""
        with pytest.raises(KeyError, match="mine") as info:
            async with Engine(store=store):
                raise KeyError("mine")
        assert type(info.value) is KeyError

    async def test_shielded_task_is_awaited_when_the_caller_is_cancelled(self) -> None:
        """A shield=True task finishes although the caller of ckflow.run() is cancelled; nothing starts after it, and
        it is reverted."""
        started, gate = anyio.Event(), anyio.Event()
        log: list[str] = []

        @task(shield=True)
        async def careful() -> None:
            started.set()
            await gate.wait()
            log.append("careful finished")

        @careful.revert
        async def _(result: Any) -> None:
            log.append(f"undo careful ({'cancelled' if isinstance(result, ckflow.Failure) else 'done'})")

        @task
        async def after() -> None:
            log.append("after")

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                scope = anyio.CancelScope()

                async def caller() -> None:
                    with scope:
                        await ckflow.run(Linear("l", careful, after))

                tg.start_soon(caller)
                await started.wait()
                scope.cancel()
                await anyio.wait_all_tasks_blocked()
                gate.set()
        assert log == ["careful finished", "undo careful (done)"]

    @pytest.mark.parametrize("shape", ["last", "only"])
    async def test_a_shielded_last_task_done_after_the_caller_is_cancelled_is_reverted(self, shape: str) -> None:
        """A caller cancelled while the flow's last task runs shielded: the task finishes, then everything that
        ran is reverted (the run does not end SUCCESS with a result nobody sees) and the cancellation goes on."""
        started, gate = anyio.Event(), anyio.Event()
        log: list[str] = []

        @task(provides="r")
        async def reserve() -> str:
            log.append("reserve")
            return "r1"

        @reserve.revert
        async def _(result: Any) -> None:
            log.append("release")

        @task(shield=True)
        async def charge() -> None:
            started.set()
            await gate.wait()
            log.append("charged")

        @charge.revert
        async def _(result: Any) -> None:
            log.append("refund")

        flow = Linear("order", reserve, charge) if shape == "last" else Linear("order", charge)
        events = EventRecorder()
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                scope = anyio.CancelScope()

                async def caller() -> None:
                    with scope:
                        await ckflow.run(flow, on_event=events)

                tg.start_soon(caller)
                await started.wait()
                scope.cancel()
                await anyio.wait_all_tasks_blocked()
                gate.set()
        assert scope.cancelled_caught
        assert events.events[-1].name == "ckflow.run.reverted"
        assert log == (["reserve", "charged", "refund", "release"] if shape == "last" else ["charged", "refund"])

    async def test_a_plain_asyncio_cancellation_does_not_cut_a_shielded_task_short(self) -> None:
        """task.cancel() on the asyncio task that awaits ckflow.run() (as asyncio.timeout does) waits for a
        shielded task to finish like an anyio cancellation does, then reverts it and propagates."""
        started, gate = anyio.Event(), anyio.Event()
        log: list[str] = []

        @task(shield=True)
        async def charge() -> None:
            started.set()
            await gate.wait()
            log.append("charged")

        @charge.revert
        async def _(result: Any) -> None:
            log.append("refund (cancelled)" if isinstance(result, ckflow.Failure) else "refund")

        caller = asyncio.ensure_future(ckflow.run(Linear("pay", charge)))
        with anyio.fail_after(5):
            await started.wait()
            caller.cancel()
            await anyio.wait_all_tasks_blocked()
            assert log == []  # still charging
            gate.set()
            with pytest.raises(asyncio.CancelledError):
                await caller
        assert log == ["charged", "refund"]

    async def test_cancelling_caller_of_run_reverts_shielded_then_propagates(self) -> None:
        """Cancelling the caller of ckflow.run() reverts what ran, shielded, then the cancellation propagates."""
        blocker_started = anyio.Event()
        reverted: list[str] = []
        returned = False
        events = EventRecorder()

        @task
        async def a() -> None: ...

        @a.revert
        async def _(result: Any) -> None:
            await anyio.lowlevel.checkpoint()  # would raise if the revert were not shielded
            reverted.append("a")

        @task
        async def blocker() -> None:
            blocker_started.set()
            await anyio.sleep_forever()

        @blocker.revert
        async def _(result: Any) -> None:
            await anyio.lowlevel.checkpoint()
            reverted.append("blocker")

        flow = Linear("l", a, blocker)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                scope = anyio.CancelScope()

                async def caller() -> None:
                    nonlocal returned
                    with scope:
                        await ckflow.run(flow, on_event=events)
                        returned = True

                tg.start_soon(caller)
                await blocker_started.wait()
                scope.cancel()
        assert scope.cancelled_caught
        assert not returned
        assert reverted == ["blocker", "a"]
        assert events.names()[-1] == "ckflow.run.reverted"

    async def test_cancelling_a_waiter_does_not_cancel_the_run(self) -> None:
        """Cancelling a task that awaits run.wait() leaves the run running to its end."""
        gate = anyio.Event()
        started = anyio.Event()

        @task
        async def hold() -> None:
            started.set()
            await gate.wait()

        async with Engine() as engine:
            run = await engine.start(Linear("l", hold, noop("after")))
            with anyio.fail_after(5):
                await started.wait()
            with anyio.CancelScope() as scope:
                scope.cancel()
                await run.wait()
            assert scope.cancelled_caught
            assert run.state is FlowState.RUNNING
            gate.set()
            result = await run.wait()
        assert result.state is FlowState.SUCCESS
        assert result.tasks["after"].state is TaskState.SUCCESS


class TestSuspend:
    async def test_engine_closing_cancels_a_suspended_run_without_a_store(self) -> None:
        """Leaving an engine's block with a SUSPENDED run that has no store (nothing could resume it once the
        engine is closed) reverts it, instead of waiting for it forever."""
        reverted: list[str] = []

        @task
        async def first() -> None: ...

        @first.revert
        async def _(result: object) -> None:
            reverted.append("first")

        @task
        async def second() -> None: ...

        with anyio.fail_after(5):
            async with Engine() as engine:
                run = await engine.start(Linear("l", first, Checkpoint("cp"), second))
                await run.goto("cp")
                assert run.state is FlowState.SUSPENDED
        assert run.state is FlowState.REVERTED
        assert reverted == ["first"]

    async def test_suspend_then_resume(self) -> None:
        """suspend() lets the running task finish and starts nothing new (SUSPENDED); resume() goes on to SUCCESS."""
        gate = anyio.Event()
        started = anyio.Event()
        executed: list[str] = []

        @task
        async def first() -> None:
            executed.append("first")
            started.set()
            await gate.wait()

        @task
        async def second() -> None:
            executed.append("second")

        async with Engine() as engine:
            run = await engine.start(Linear("l", first, second))
            with anyio.fail_after(5):
                await started.wait()
                async with anyio.create_task_group() as tg:
                    tg.start_soon(run.suspend)
                    await anyio.wait_all_tasks_blocked()
                    assert run.state is FlowState.RUNNING  # first is still running
                    gate.set()
                assert run.state is FlowState.SUSPENDED
                assert run.tasks["first"].state is TaskState.SUCCESS
                assert run.tasks["second"].state is TaskState.PENDING
                assert executed == ["first"]
                await run.resume()
                result = await run.wait()
        assert result.state is FlowState.SUCCESS
        assert executed == ["first", "second"]


class TestBoundedMemory:
    """An engine keeps the handles of its last `keep_ended` ended runs, and of those a caller holds: no more."""

    async def test_ended_runs_are_forgotten_past_keep_ended(self) -> None:
        """Past `keep_ended`, an ended run whose handle nobody holds is forgotten; a held one stays reachable."""
        import gc

        @task
        async def one() -> None: ...

        flow = ckflow.Linear("small", one)
        async with Engine(keep_ended=2) as engine:
            held = await engine.start(flow, run_id="held")
            await held.wait()
            for i in range(4):
                run = await engine.start(flow, run_id=f"r{i}")
                await run.wait()
                await anyio.wait_all_tasks_blocked()  # the run's task has handed it to the ended ones
            del run
            gc.collect()
            assert engine.get_run("held") is held
            assert {engine.get_run(f"r{i}").id for i in (2, 3)} == {"r2", "r3"}
            for gone in ("r0", "r1"):
                with pytest.raises(ckflow.RunNotFoundError):
                    engine.get_run(gone)
            assert set(engine.runs) == {"held", "r2", "r3"}

    def test_keep_ended_is_checked(self) -> None:
        """keep_ended must be an int >= 0."""
        with pytest.raises(ValueError, match="keep_ended"):
            Engine(keep_ended=-1)
