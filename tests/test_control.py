"""External control of a live run: suspend, resume, cancel, goto, revert_to (DESIGN §6)."""

from __future__ import annotations

import anyio
import pytest

import ckflow
from ckflow import Checkpoint, FlowState, Linear, Parallel, TaskState, task


def provisioning(log: list[object], gate: anyio.Event, started: anyio.Event) -> ckflow.Flow:
    """create -> [checkpoint disk] attach (blocks on gate) -> boot, with net in parallel to the disk branch."""

    @task(provides="volume")
    async def create() -> str:
        log.append("create")
        return "vol"

    @create.revert
    async def _(result: object) -> None:
        log.append("undo create")

    @task(provides="attachment")
    async def attach(volume: str) -> str:
        log.append(("attach", ckflow.current().attempt))
        started.set()
        await gate.wait()
        return f"{volume}-attached"

    @attach.revert
    async def _(result: object) -> None:
        cancelled = isinstance(result, ckflow.Failure) and result.cancelled
        log.append(("undo attach", "cancelled" if cancelled else "done"))

    @task(provides="booted")
    async def boot(attachment: str) -> str:
        log.append("boot")
        return "up"

    @task(provides="net")
    async def net() -> str:
        log.append("net")
        return "net"

    @net.revert
    async def _(result: object) -> None:
        log.append("undo net")

    return Linear(
        "provision",
        create,
        Parallel("prepare", Linear("disk-branch", Checkpoint("disk"), attach, boot), net),
    )


class TestGoto:
    async def test_goto_before_the_checkpoint_stops_there(self) -> None:
        """goto(cp) runs forward to the checkpoint, starts nothing of its scope, and suspends."""
        log: list[object] = []
        gate, started = anyio.Event(), anyio.Event()
        async with ckflow.Engine() as engine:
            run = await engine.start(provisioning(log, gate, started))
            await run.goto("disk")
            assert run.state is FlowState.SUSPENDED
            assert run.tasks["create"].state is TaskState.SUCCESS
            assert run.tasks["attach"].state is TaskState.PENDING
            assert ("attach", 1) not in log
            gate.set()
            await run.resume()
            result = await run.wait()
        assert result.state is FlowState.SUCCESS
        assert result.outputs["booted"] == "up"

    async def test_goto_past_the_checkpoint_reverts_back_to_it(self) -> None:
        """goto(cp) on a run already inside the checkpoint's scope reverts that scope, then suspends."""
        log: list[object] = []
        gate, started = anyio.Event(), anyio.Event()
        async with ckflow.Engine() as engine:
            run = await engine.start(provisioning(log, gate, started))
            await started.wait()
            await run.goto("disk")
            assert run.state is FlowState.SUSPENDED
            assert run.tasks["attach"].state is TaskState.REVERTED
            assert run.tasks["create"].state is TaskState.SUCCESS
            assert "undo create" not in log
            gate.set()
            await run.resume()
            result = await run.wait()
        assert result.state is FlowState.SUCCESS
        assert result.tasks["attach"].attempts == 2

    async def test_goto_twice_is_idempotent(self) -> None:
        """A second goto to the checkpoint the run is parked at changes nothing."""
        log: list[object] = []
        gate, started = anyio.Event(), anyio.Event()
        async with ckflow.Engine() as engine:
            run = await engine.start(provisioning(log, gate, started))
            await run.goto("disk")
            before = list(log)
            await run.goto("disk")
            assert run.state is FlowState.SUSPENDED
            assert log == before
            gate.set()
            await run.resume()
            assert (await run.wait()).state is FlowState.SUCCESS

    async def test_unknown_checkpoint_is_a_clear_error(self) -> None:
        """goto to a checkpoint the flow does not have raises RunStateError naming the known ones."""
        log: list[object] = []
        gate, started = anyio.Event(), anyio.Event()
        gate.set()
        async with ckflow.Engine() as engine:
            run = await engine.start(provisioning(log, gate, started))
            with pytest.raises(ckflow.RunStateError, match=r"no checkpoint 'nope'.*\['disk'\]"):
                await run.goto("nope")
            await run.wait()


class TestRevertTo:
    async def test_revert_to_without_retry_parks_at_the_checkpoint(self) -> None:
        """revert_to(cp, retry=False) cancels and reverts the scope only, then the run is SUSPENDED."""
        log: list[object] = []
        gate, started = anyio.Event(), anyio.Event()
        async with ckflow.Engine() as engine:
            run = await engine.start(provisioning(log, gate, started))
            await started.wait()
            await run.revert_to("disk", retry=False)
            assert run.state is FlowState.SUSPENDED
            assert ("undo attach", "cancelled") in log
            assert "undo create" not in log
            assert "undo net" not in log
            gate.set()
            await run.resume()
            result = await run.wait()
        assert result.state is FlowState.SUCCESS

    async def test_revert_to_with_retry_runs_the_scope_again_with_a_fresh_budget(self) -> None:
        """revert_to(cp, retry=True) reverts the scope and runs it again at attempt 1; siblings untouched."""
        log: list[object] = []
        gate, started = anyio.Event(), anyio.Event()
        async with ckflow.Engine() as engine:
            run = await engine.start(provisioning(log, gate, started))
            await started.wait()
            await run.revert_to("disk", retry=True)
            assert run.state is FlowState.RUNNING
            gate.set()
            result = await run.wait()
        assert result.state is FlowState.SUCCESS
        assert result.tasks["attach"].attempts == 2
        assert result.tasks["net"].attempts == 1
        assert log.count(("attach", 1)) == 2
        assert "undo net" not in log

    @pytest.mark.parametrize("other", ["revert_to", "revert_to_no_retry", "cancel"])
    async def test_revert_to_returns_when_another_control_call_overlaps_it(self, other: str) -> None:
        """revert_to(cp) returns even when another call's region absorbs its own (a second revert_to, a
        revert_to without retry, a cancel): each call returns, and the run ends as the last one says."""
        log: list[object] = []
        gate, started = anyio.Event(), anyio.Event()
        returned: list[str] = []

        async with ckflow.Engine() as engine:
            run = await engine.start(provisioning(log, gate, started))
            await started.wait()

            async def first() -> None:
                await run.revert_to("disk")
                returned.append("revert_to")

            async def second() -> None:
                if other == "cancel":
                    await run.cancel()
                else:
                    await run.revert_to("disk", retry=other == "revert_to")
                returned.append(other)

            with anyio.fail_after(5):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(first)
                    tg.start_soon(second)
                gate.set()
                if run.state is FlowState.SUSPENDED:
                    await run.resume()
                result = await run.wait()
        assert sorted(returned) == sorted(["revert_to", other])
        assert result.state is (FlowState.REVERTED if other == "cancel" else FlowState.SUCCESS)

    async def test_revert_to_with_retry_from_a_run_parked_there_goes_on(self) -> None:
        """revert_to(cp, retry=True) on a run parked at cp (nothing left to undo) runs the scope again."""
        log: list[object] = []
        gate, started = anyio.Event(), anyio.Event()
        async with ckflow.Engine() as engine:
            run = await engine.start(provisioning(log, gate, started))
            await started.wait()
            await run.goto("disk")
            assert run.state is FlowState.SUSPENDED
            gate.set()
            await run.revert_to("disk", retry=True)
            assert run.state is FlowState.RUNNING
            assert (await run.wait()).state is FlowState.SUCCESS
        assert [e for e in log if isinstance(e, tuple) and e[0] == "attach"] == [("attach", 1), ("attach", 1)]

    async def test_control_of_an_ended_run_is_refused(self) -> None:
        """revert_to on a run that has ended raises RunStateError."""
        log: list[object] = []
        gate, started = anyio.Event(), anyio.Event()
        gate.set()
        async with ckflow.Engine() as engine:
            run = await engine.start(provisioning(log, gate, started))
            await run.wait()
            with pytest.raises(ckflow.RunStateError, match="SUCCESS"):
                await run.revert_to("disk")


class TestGoingBack:
    """goto() past a checkpoint and revert_to() undo the scope and what consumed its values, not other branches."""

    @staticmethod
    def flow(log: list[str], gate: anyio.Event, started: anyio.Event) -> ckflow.Flow:
        count = {"c": 0}

        @task(provides="c")
        async def c() -> int:
            count["c"] += 1
            log.append(f"c{count['c']}")
            return count["c"] * 10

        @c.revert
        async def _(result: object) -> None:
            log.append("undo c")

        @task(provides="e")
        async def e(c: int) -> int:
            log.append(f"e({c})")
            return c + 1

        @e.revert
        async def _(result: object) -> None:
            log.append("undo e")

        @task(provides="z")
        async def z(e: int) -> int:
            started.set()
            await gate.wait()
            return e

        @task(provides="side")
        async def side() -> str:
            log.append("side")
            return "s"

        @side.revert
        async def _(result: object) -> None:
            log.append("undo side")

        return Parallel("p", Linear("main", Linear("inner", Checkpoint("cp"), c), e, z), side)

    @pytest.mark.parametrize("op", ["goto", "revert_to_parked", "revert_to_retry"])
    async def test_what_consumed_the_scope_is_undone_and_runs_again(self, op: str) -> None:
        """With c (in cp's scope), e (consumes c) done and z (consumes e) running, going back to cp reverts z,
        then e, then c; run again, every value is the new c's, and the independent branch ran once."""
        log: list[str] = []
        gate, started = anyio.Event(), anyio.Event()
        async with ckflow.Engine() as engine:
            run = await engine.start(self.flow(log, gate, started))
            await started.wait()
            if op == "goto":
                await run.goto("cp")
            else:
                await run.revert_to("cp", retry=op == "revert_to_retry")
            if op != "revert_to_retry":
                assert run.state is FlowState.SUSPENDED
                assert {n: run.tasks[n].state for n in ("c", "e", "z")} == dict.fromkeys("cez", TaskState.REVERTED)
            gate.set()
            if op != "revert_to_retry":
                await run.resume()
            result = await run.wait()
        assert result.state is FlowState.SUCCESS
        assert result.outputs["c"] == 20
        assert result.outputs["e"] == result.outputs["z"] == 21
        assert log.index("undo e") < log.index("undo c")
        assert log.count("side") == 1
        assert "undo side" not in log
        assert result.tasks["z"].attempts == 2

    @pytest.mark.parametrize("back", ["goto", "revert_to"])
    async def test_going_back_from_a_later_checkpoint_runs_the_scope_before_what_follows(self, back: str) -> None:
        """Parked at a later checkpoint (its first task already queued), going back to an earlier one and
        resuming runs the earlier scope again before that task, which consumes its value."""
        log: list[str] = []
        count = {"a": 0}

        @task(provides="a")
        async def a() -> int:
            count["a"] += 1
            log.append("a")
            return count["a"]

        @task(provides="post")
        async def post(a: int) -> int:
            log.append(f"post({a})")
            return a

        flow = Linear("job", Linear("body", a, checkpoint=Checkpoint("tick")), Checkpoint("after"), post)
        async with ckflow.Engine() as engine:
            run = await engine.start(flow)
            await run.goto("after")
            if back == "goto":
                await run.goto("tick")
            else:
                await run.revert_to("tick", retry=False)
            assert run.state is FlowState.SUSPENDED
            log.clear()
            await run.resume()
            result = await run.wait()
        assert log == ["a", "post(2)"]
        assert result.outputs["post"] == 2


class TestSuspendResumeCancel:
    async def test_suspend_then_cancel_reverts_everything(self) -> None:
        """cancel() of a SUSPENDED run reverts what ran and ends REVERTED."""
        log: list[object] = []
        gate, started = anyio.Event(), anyio.Event()
        async with ckflow.Engine() as engine:
            run = await engine.start(provisioning(log, gate, started))
            await run.goto("disk")
            await run.cancel()
            result = await run.wait()
        assert result.state is FlowState.REVERTED
        ran = [name for name, summary in result.tasks.items() if summary.attempts]
        assert ran == ["create"]
        assert log == ["create", "undo create"]

    async def test_concurrent_control_calls_agree(self) -> None:
        """suspend() from two tasks at once both return once the run is SUSPENDED."""
        log: list[object] = []
        gate, started = anyio.Event(), anyio.Event()
        async with ckflow.Engine() as engine:
            run = await engine.start(provisioning(log, gate, started))
            await started.wait()
            async with anyio.create_task_group() as tg:
                tg.start_soon(run.suspend)
                tg.start_soon(run.suspend)
                await anyio.lowlevel.checkpoint()
                gate.set()
            assert run.state is FlowState.SUSPENDED
            await run.resume()
            await run.resume()
            assert (await run.wait()).state is FlowState.SUCCESS
