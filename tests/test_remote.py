"""Controlling a durable run from another engine, through the store (DESIGN §6, "also from another process")."""

from __future__ import annotations

import anyio
import pytest
from tests.support import WatchedStore, expire_lease

import ckflow
from ckflow import Checkpoint, Engine, FlowState, Linear, Parallel, TaskState, task
from ckflow.stores import ControlRequest, MemoryStore

#: the owner's heartbeat: how soon it picks up a request from another engine
BEAT = 0.01


def on_event(run: ckflow.Run, name: str) -> anyio.Event:
    """An event set when the (local) run emits an event called ``name``."""
    seen = anyio.Event()
    run.subscribe(lambda event: seen.set() if event.name == name else None)
    return seen


class Gated:
    """create -> Parallel(Linear([disk] attach (waits for `gate`), boot), net), every step logged."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.gate = anyio.Event()
        self.attaching = anyio.Event()
        self.flow = self._build()

    def _build(self) -> ckflow.Linear:
        log = self.log

        @task(provides="volume")
        async def create() -> str:
            log.append("create")
            return "vol"

        @create.revert
        async def _(result: object) -> None:
            log.append("undo create")

        @task(provides="attachment")
        async def attach(volume: str) -> str:
            log.append("attach")
            self.attaching.set()
            await self.gate.wait()
            return f"{volume}@vdb"

        @attach.revert
        async def _(volume: str, result: object) -> None:
            log.append("undo attach")

        @task(provides="booted")
        async def boot(attachment: str) -> str:
            log.append("boot")
            return "up"

        @task(provides="net")
        async def net() -> str:
            log.append("net")
            return "10.0.0.1"

        return Linear(
            "gated",
            create,
            Parallel("prepare", Linear("disk-branch", Checkpoint("disk"), attach, boot), net),
        )


class Asking(WatchedStore):
    """The controlling engine's store: ``asked`` is set once it has recorded a control request."""

    def __init__(self, inner: MemoryStore) -> None:
        super().__init__(inner)
        self.asked = anyio.Event()

    async def request(self, request: ControlRequest) -> None:
        await self.inner.request(request)
        if request.done_at is None:
            self.asked.set()


class TestThroughTheOwner:
    """A request through the store is carried out by the engine that runs the run."""

    async def test_suspend_and_resume_from_another_engine(self) -> None:
        """suspend() from another engine returns once the run is SUSPENDED; resume() lets it go on."""
        store, app = MemoryStore(), Gated()
        async with Engine(store=store, id="owner", heartbeat=BEAT) as owner, Engine(store=store, id="ctl") as ctl:
            run = await owner.start(app.flow, run_id="r")
            asked = on_event(run, "ckflow.control.suspend")
            await app.attaching.wait()
            remote = await ctl.attach("r")
            assert not remote.local
            async with anyio.create_task_group() as tg:
                tg.start_soon(remote.suspend)
                await asked.wait()
                app.gate.set()
            assert remote.state is FlowState.SUSPENDED
            assert (await store.get_run("r")).state is FlowState.SUSPENDED
            assert "boot" not in app.log
            await remote.resume()
            result = await run.wait()
        assert result.state is FlowState.SUCCESS
        names = [e.name for e in await store.events("r")]
        assert "ckflow.control.suspend" in names
        assert "ckflow.control.resume" in names

    async def test_cancel_from_another_engine(self) -> None:
        """cancel() from another engine reverts the run where it runs; wait() on the remote handle gives REVERTED."""
        store, app = MemoryStore(), Gated()
        async with Engine(store=store, heartbeat=BEAT) as owner, Engine(store=store) as ctl:
            run = await owner.start(app.flow, run_id="r")
            await app.attaching.wait()
            remote = await ctl.attach("r")
            await remote.cancel()
            result = await remote.wait()
            assert (await run.wait()).state is FlowState.REVERTED
        assert result.state is FlowState.REVERTED
        assert set(app.log) >= {"undo attach", "undo create"}

    async def test_an_engine_leaving_its_block_still_carries_out_requests(self) -> None:
        """While an engine waits for its runs at the end of its block, its heartbeat carries out what other
        engines ask: a remote cancel of a run it is finishing returns, and the run is REVERTED."""
        store, app = MemoryStore(), Gated()
        leaving = anyio.Event()

        async def owner() -> None:
            async with Engine(store=store, heartbeat=BEAT) as engine:
                await engine.start(app.flow, run_id="r")
                leaving.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(owner)
            await app.attaching.wait()
            await leaving.wait()
            async with Engine(store=store) as ctl:
                remote = await ctl.attach("r")
                with anyio.fail_after(5):
                    await remote.cancel()
                    result = await remote.wait()
        assert result.state is FlowState.REVERTED
        assert "undo create" in app.log

    @pytest.mark.parametrize("op", ["suspend", "cancel"])
    async def test_a_request_to_an_owner_that_died_is_carried_out_once_its_lease_lapses(self, op: str) -> None:
        """A control call made while the owner's lease is live, after the owner died, does not wait forever:
        once the lease lapses, the caller takes the run over and carries it out itself."""
        store, app = MemoryStore(), Gated()
        dying = WatchedStore(store)
        async with Engine(store=dying, heartbeat=BEAT, lease_ttl=60) as owner:
            await owner.start(app.flow, run_id="r")
            await app.attaching.wait()
            dying.dead = True  # the owner's process is gone: it writes, renews and carries out nothing more
            asking = Asking(store)
            async with Engine(store=asking, poll_interval=0.01) as ctl:
                remote = await ctl.attach("r", flow=app.flow)

                async def lapse() -> None:
                    await asking.asked.wait()
                    expire_lease(store, "r")

                with anyio.fail_after(5):
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(lapse)
                        await (remote.suspend() if op == "suspend" else remote.cancel())
                    assert asking.asked.is_set()
                    assert remote.local
                    app.gate.set()
                    if op == "suspend":
                        assert remote.state is FlowState.SUSPENDED
                        await remote.cancel()
                    assert (await remote.wait()).state is FlowState.REVERTED
                assert all(r.done_at is not None for r in await store.requests("r"))
            app.gate.set()

    async def test_goto_and_revert_to_from_another_engine(self) -> None:
        """goto() reverts back to a checkpoint the run is past; revert_to(retry=True) runs the scope again."""
        store, app = MemoryStore(), Gated()
        async with Engine(store=store, heartbeat=BEAT) as owner, Engine(store=store) as ctl:
            run = await owner.start(app.flow, run_id="r")
            await app.attaching.wait()
            remote = await ctl.attach("r")
            await remote.goto("disk")
            assert (await store.get_run("r")).state is FlowState.SUSPENDED
            assert "undo attach" in app.log
            app.gate.set()
            await remote.revert_to("disk", retry=True)
            assert (await run.wait()).state is FlowState.SUCCESS
        assert app.log.count("attach") == 2

    async def test_requests_twice_and_concurrently(self) -> None:
        """Two concurrent suspends and a second one after are all fine; so are two resumes."""
        store, app = MemoryStore(), Gated()
        async with Engine(store=store, heartbeat=BEAT) as owner, Engine(store=store) as ctl:
            run = await owner.start(app.flow, run_id="r")
            asked = on_event(run, "ckflow.control.suspend")
            await app.attaching.wait()
            first, second = await ctl.attach("r"), await ctl.attach("r")
            async with anyio.create_task_group() as tg:
                tg.start_soon(first.suspend)
                tg.start_soon(second.suspend)
                await asked.wait()
                app.gate.set()
            await first.suspend()
            assert run.state is FlowState.SUSPENDED
            async with anyio.create_task_group() as tg:
                tg.start_soon(first.resume)
                tg.start_soon(second.resume)
            assert (await run.wait()).state is FlowState.SUCCESS

    async def test_unknown_checkpoint_is_refused_before_anything_is_sent(self) -> None:
        """goto to a checkpoint the run's flow lacks raises UnknownCheckpointError naming the known ones."""
        store, app = MemoryStore(), Gated()
        async with Engine(store=store, heartbeat=BEAT) as owner, Engine(store=store) as ctl:
            run = await owner.start(app.flow, run_id="r")
            await app.attaching.wait()
            remote = await ctl.attach("r", flow=app.flow)
            with pytest.raises(ckflow.UnknownCheckpointError, match=r"'nope'.*\['disk'\]"):
                await remote.goto("nope")
            assert await store.requests("r") == []
            app.gate.set()
            await run.wait()

    async def test_unknown_checkpoint_found_by_the_owner(self) -> None:
        """Without the flow at hand, the owner refuses an unknown checkpoint and the caller gets its message."""
        store, app = MemoryStore(), Gated()
        async with Engine(store=store, heartbeat=BEAT) as owner, Engine(store=store) as ctl:
            run = await owner.start(app.flow, run_id="r")
            await app.attaching.wait()
            remote = await ctl.attach("r")
            with pytest.raises(ckflow.RunStateError, match="'nope'"):
                await remote.goto("nope")
            app.gate.set()
            await run.wait()

    async def test_events_of_a_run_elsewhere(self) -> None:
        """events() on a remote handle yields the run's events as they are stored, and ends with the run."""
        store, app = MemoryStore(), Gated()
        async with Engine(store=store, heartbeat=BEAT) as owner, Engine(store=store, poll_interval=BEAT) as ctl:
            await owner.start(app.flow, run_id="r")
            await app.attaching.wait()
            remote = await ctl.attach("r")
            names: list[str] = []
            async with anyio.create_task_group() as tg:

                async def read() -> None:
                    async for event in remote.events():
                        names.append(event.name)

                tg.start_soon(read)
                app.gate.set()
        assert names[-1] == "ckflow.run.success"
        assert "ckflow.task.success" in names

    async def test_callbacks_need_a_local_run(self) -> None:
        """subscribe() on a remote handle says to iterate events() instead."""
        store, app = MemoryStore(), Gated()
        app.gate.set()
        async with Engine(store=store, heartbeat=BEAT) as owner, Engine(store=store) as ctl:
            run = await owner.start(app.flow, run_id="r")
            remote = await ctl.attach("r")
            if remote.local:
                pytest.skip("the run ended before the remote handle was made")
            with pytest.raises(ckflow.RunStateError, match="events"):
                remote.subscribe(print)
            await run.wait()


class TestTakingOver:
    """A request for a run that no live engine owns is carried out by the engine that makes it."""

    async def _orphan(self, store: MemoryStore, app: Gated) -> None:
        """Leave a run SUSPENDED in the store with nobody owning it (its engine closed)."""
        app.gate.set()
        async with Engine(store=store) as engine:
            run = await engine.start(app.flow, run_id="r")
            await run.goto("disk")
        assert (await store.get_run("r")).owner is None

    async def test_resume_takes_the_run_over(self) -> None:
        """resume() on a handle of a run nobody runs takes it over here; the handle becomes local."""
        store, app = MemoryStore(), Gated()
        await self._orphan(store, app)
        async with Engine(store=store) as engine:
            handle = await engine.attach("r", flow=app.flow)
            assert not handle.local
            await handle.resume()
            assert handle.local
            assert (await handle.wait()).state is FlowState.SUCCESS
        assert app.log.count("create") == 1

    async def test_cancel_takes_the_run_over_and_reverts(self) -> None:
        """cancel() of a run nobody runs reverts it here."""
        store, app = MemoryStore(), Gated()
        await self._orphan(store, app)
        async with Engine(store=store) as engine:
            handle = await engine.attach("r", flow=app.flow)
            await handle.cancel()
            assert (await handle.wait()).state is FlowState.REVERTED
        assert "undo create" in app.log

    async def test_suspend_needs_no_flow(self) -> None:
        """suspend() of a crashed RUNNING run nobody owns marks it SUSPENDED in the store, without its flow."""
        store = MemoryStore()
        await store.create_run(
            ckflow.stores.RunRecord(
                run_id="r", flow="unknown-flow", state=FlowState.RUNNING, created_at=0.0, updated_at=0.0
            )
        )
        async with Engine(store=store) as engine:
            handle = await engine.attach("r")
            await handle.suspend()
            assert handle.state is FlowState.SUSPENDED
        record = await store.get_run("r")
        assert record.state is FlowState.SUSPENDED
        assert record.owner is None
        assert [e.name for e in await store.events("r")] == ["ckflow.control.suspend", "ckflow.run.suspended"]

    async def test_suspend_that_takes_the_run_over_makes_the_handle_local(self) -> None:
        """A suspend that took a registered run over leaves a local handle, which later calls use."""
        store, app = MemoryStore(), Gated()
        ckflow.register_flow("gated", app.flow)
        with anyio.CancelScope() as scope:
            async with Engine(store=store) as engine:
                await engine.start(app.flow, run_id="r")
                await app.attaching.wait()
                scope.cancel()
        with anyio.fail_after(10):
            async with Engine(store=store) as engine:
                handle = await engine.attach("r")
                await handle.suspend()
                assert handle.local
                assert handle.state is FlowState.SUSPENDED
                await handle.cancel()
                assert (await handle.wait()).state is FlowState.REVERTED

    async def test_other_operations_need_the_flow(self) -> None:
        """cancel() of a run nobody owns, without its flow here, is a clear error and leaves the run as it was."""
        store = MemoryStore()
        await store.create_run(
            ckflow.stores.RunRecord(
                run_id="r", flow="unknown-flow", state=FlowState.RUNNING, created_at=0.0, updated_at=0.0
            )
        )
        async with Engine(store=store) as engine:
            handle = await engine.attach("r")
            with pytest.raises(ckflow.FlowNotRegisteredError, match="unknown-flow"):
                await handle.cancel()
        record = await store.get_run("r")
        assert record.state is FlowState.RUNNING
        assert record.owner is None

    async def test_control_of_an_ended_run(self) -> None:
        """suspend/resume/cancel of an ended run do nothing; goto and revert_to are refused."""
        store, app = MemoryStore(), Gated()
        app.gate.set()
        async with Engine(store=store) as engine:
            await (await engine.start(app.flow, run_id="r")).wait()
        async with Engine(store=store) as engine:
            handle = await engine.attach("r")
            await handle.suspend()
            await handle.resume()
            await handle.cancel()
            with pytest.raises(ckflow.RunStateError, match="SUCCESS"):
                await handle.goto("disk")
            assert (await handle.wait()).state is FlowState.SUCCESS
        assert all(t.state is TaskState.SUCCESS for t in await store.tasks("r"))

    async def test_attach_unknown_run(self) -> None:
        """attach() of an id the store does not have raises RunNotFoundError."""
        async with Engine(store=MemoryStore()) as engine:
            with pytest.raises(ckflow.RunNotFoundError, match="'ghost'"):
                await engine.attach("ghost")
