"""Recovery on start: ``Engine(recover=True)`` adopts the runs that engines now gone left unfinished (DESIGN §12)."""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from tests import recovery_worker
from tests.stores.conftest import url_of_kind
from tests.support import WatchedStore

import ckflow
from ckflow import Checkpoint, Engine, FlowState, Linear, task
from ckflow._engine._recovery import dead_owner
from ckflow.stores import RunRecord, open_store

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Collection

    from ckflow.stores import Store

ROOT = Path(__file__).resolve().parent.parent
HOST = socket.gethostname()
#: an engine on another machine: never taken as dead, whatever its pid
FOREIGN = "elsewhere.example:1:cafe"


@pytest.fixture(params=["sqlite", "postgres"])
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """An empty store that several engines open in turn (a PostgreSQL schema of its own, dropped afterwards)."""
    async with url_of_kind(request, tmp_path, "memory://") as found:
        yield found


class Steps:
    """A registered flow ``first -> cp -> second`` (``cp`` a checkpoint); ``second`` waits at ``gate``, and every
    execution is counted."""

    def __init__(self) -> None:
        self.name = f"recover-{uuid.uuid4().hex[:8]}"
        self.runs = {"first": 0, "second": 0}
        self.started = anyio.Event()
        #: set when ``second`` executes for the second time (in the engine that recovered the run)
        self.again = anyio.Event()
        self.gate = anyio.Event()
        ckflow.register_flow(self.name, self.build)

    def build(self) -> Linear:
        @task(provides="a")
        async def first() -> int:
            self.runs["first"] += 1
            return 1

        @task
        async def second(a: int) -> int:
            self.runs["second"] += 1
            self.started.set()
            if self.runs["second"] == 2:
                self.again.set()
            await self.gate.wait()
            return a + 1

        return Linear(self.name, first, Checkpoint("cp"), second)

    async def left_running(self, url: str, *, owner: str | None = None, ttl: float = 60.0) -> None:
        """Run ``r`` until ``second`` runs, then shut the engine down (releasing it); ``owner`` then holds it."""
        with anyio.CancelScope() as scope:
            async with Engine(store=url) as engine:
                await engine.start(self.name, run_id="r")
                await self.started.wait()
                scope.cancel()
        if owner is not None:
            async with open_store(url) as store:
                await store.claim("r", owner, ttl)


class Looks(WatchedStore):
    """A store that counts the engine's looks for runs to recover, and sets ``enough`` after ``wanted`` of them."""

    def __init__(self, inner: Store, wanted: int) -> None:
        super().__init__(inner)
        self.looks = 0
        self.wanted = wanted
        self.enough = anyio.Event()

    async def list_runs(self, *, states: Collection[FlowState] | None = None, **filters: Any) -> list[RunRecord]:
        found = await self.inner.list_runs(states=states, **filters)
        self.looks += 1
        if self.looks >= self.wanted:
            self.enough.set()
        return found


class Stale(WatchedStore):
    """A store that answers ``get_run`` with ``record`` (as read before the run went on) until a claim."""

    def __init__(self, inner: Store, record: RunRecord) -> None:
        super().__init__(inner)
        self.record: RunRecord | None = record

    async def get_run(self, run_id: str) -> RunRecord:
        return self.record if self.record is not None else await self.inner.get_run(run_id)

    async def claim(self, run_id: str, owner: str, ttl: float, *, replacing: str | None = None) -> RunRecord:
        self.record = None
        return await self.inner.claim(run_id, owner, ttl, replacing=replacing)


async def exited_pid() -> int:
    """The pid of a process of this host that has exited (and been reaped)."""
    async with await anyio.open_process([sys.executable, "-c", "pass"]) as process:
        await process.wait()
        return process.pid


class TestRecoveryOnStart:
    """Runs left by engines that are gone are taken when a recovering engine opens."""

    async def test_a_clean_shutdown_is_recovered_at_once(self, url: str) -> None:
        """A run released by a cancelled engine is resumed when a recovering engine opens; successes do not rerun."""
        steps = Steps()
        with anyio.fail_after(20):
            await steps.left_running(url)
            async with open_store(url) as store:
                record = await store.get_run("r")
            assert (record.state, record.owner) == (FlowState.RUNNING, None)
            steps.gate.set()
            async with Engine(store=url, recover=True) as engine:
                run = engine.get_run("r")  # taken while opening, not after a lease timeout
                assert (await run.wait()).state is FlowState.SUCCESS
        assert steps.runs == {"first": 1, "second": 2}

    async def test_a_dead_process_of_this_host_is_replaced_at_once(self, url: str) -> None:
        """A run whose owner is an exited process of this host is taken at once, though its lease has a minute left."""
        steps = Steps()
        dead = f"{HOST}:{await exited_pid()}:deadbeef"
        with anyio.fail_after(20):
            await steps.left_running(url, owner=dead, ttl=60)
            steps.gate.set()
            async with Engine(store=url, recover=True, lease_ttl=60) as engine:
                assert (await engine.get_run("r").wait()).state is FlowState.SUCCESS
        assert steps.runs == {"first": 1, "second": 2}

    async def test_a_sigkilled_engine_process_is_replaced_at_once(self, url: str, tmp_path: Path) -> None:
        """A real engine process killed with SIGKILL mid-run, its lease a minute long: the run is taken at once,
        and the task that had succeeded there is not run again."""
        ledger = tmp_path / "ledger"
        ckflow.register_flow(recovery_worker.NAME, recovery_worker.build(str(ledger), block=False))
        command = [sys.executable, "-m", "tests.recovery_worker", url, str(ledger)]
        with anyio.fail_after(60):
            async with await anyio.open_process(command, cwd=ROOT) as worker:
                assert worker.stdout is not None
                assert worker.stderr is not None
                said = b""
                async for chunk in worker.stdout:
                    said += chunk
                    if b"ready" in said:
                        break
                else:
                    pytest.fail(f"the worker ended early: {(await worker.stderr.receive()).decode()}")
                worker.kill()
                await worker.wait()
            async with open_store(url) as store:
                record = await store.get_run("r")
            assert record.owner is not None
            assert record.owner.split(":")[:2] == [HOST, str(worker.pid)]
            assert record.lease_expires is not None
            assert record.lease_expires > time.time() + 30
            async with Engine(store=url, recover=True, lease_ttl=60) as engine:
                assert (await engine.get_run("r").wait()).state is FlowState.SUCCESS
        ran = [line.split() for line in ledger.read_text().splitlines()]
        assert ran == [[str(worker.pid), "first"], [str(worker.pid), "second"], [str(os.getpid()), "second"]]

    @pytest.mark.parametrize("owner", [FOREIGN, f"{HOST}:{os.getpid()}:other", "worker-7"])
    async def test_a_live_owner_keeps_its_run(self, url: str, owner: str) -> None:
        """Another host's engine, another engine of this process, or an id without a pid keeps a live lease."""
        steps = Steps()
        with anyio.fail_after(20):
            await steps.left_running(url, owner=owner, ttl=60)
            async with Engine(store=url, recover=True) as engine:
                assert "r" not in engine.runs
            async with open_store(url) as store:
                assert (await store.get_run("r")).owner == owner
        assert steps.runs == {"first": 1, "second": 1}

    async def test_a_running_engine_of_this_process_keeps_its_run(self, url: str) -> None:
        """A run that another open engine of this process runs is not taken from it."""
        steps = Steps()
        with anyio.fail_after(20):
            async with Engine(store=url) as owner:
                run = await owner.start(steps.name, run_id="r")
                await steps.started.wait()
                async with Engine(store=url, recover=True) as engine:
                    assert "r" not in engine.runs
                steps.gate.set()
                assert (await run.wait()).state is FlowState.SUCCESS
        assert steps.runs == {"first": 1, "second": 1}

    async def test_a_lapsed_lease_is_taken_by_a_later_look(self, url: str) -> None:
        """While its owner renews, a run stays there across looks; once the lease lapses, a later look takes it.

        The owner renews a lease of ``ttl`` every 0.05 s, and the looks (every 0.15 s) go on for longer than one
        lease: only the renewals keep the run there. ``ttl`` is a second, twenty renewal periods, so that a loaded
        machine's pause between two renewals (each a few round trips to the store) does not let it lapse.
        """
        steps = Steps()
        gone = anyio.Event()
        ttl = 1.0
        with anyio.fail_after(20):
            await steps.left_running(url, owner=FOREIGN, ttl=60)
            steps.gate.set()
            async with open_store(url) as inner, anyio.create_task_group() as tg:

                async def foreign_engine() -> None:  # renews its lease until it "dies"
                    while not gone.is_set():
                        await inner.renew(FOREIGN, ["r"], ttl)
                        with anyio.move_on_after(0.05):
                            await gone.wait()

                tg.start_soon(foreign_engine)
                looks = Looks(inner, wanted=2 + int(ttl / 0.15))
                async with Engine(store=looks, recover=True, lease_ttl=0.3, heartbeat=0.05) as engine:
                    await looks.enough.wait()
                    assert "r" not in engine.runs
                    gone.set()
                    await steps.again.wait()
                    assert (await engine.get_run("r").wait()).state is FlowState.SUCCESS
        assert steps.runs == {"first": 1, "second": 2}

    async def test_two_recovering_engines_run_a_run_once(self, url: str) -> None:
        """Two engines recovering at once: the claim decides, one runs the run and the other skips it."""
        steps = Steps()
        holders: list[str] = []
        opened = [anyio.Event(), anyio.Event()]
        with anyio.fail_after(20):
            await steps.left_running(url)
            steps.gate.set()

            async def recover(index: int) -> None:
                async with Engine(store=url, recover=True) as engine:
                    opened[index].set()
                    if "r" in engine.runs:
                        holders.append(engine.id)
                        assert (await engine.get_run("r").wait()).state is FlowState.SUCCESS
                    await opened[1 - index].wait()

            async with anyio.create_task_group() as tg:
                tg.start_soon(recover, 0)
                tg.start_soon(recover, 1)
        assert len(holders) == 1
        assert steps.runs == {"first": 1, "second": 2}

    async def test_two_resumes_at_once_in_one_engine_run_the_run_once(self, url: str) -> None:
        """A claim by the engine's own id succeeds again, so the engine itself keeps a second take-over out.

        ``second`` waits at the gate until both resumes have returned: the run is under way here while the
        second one looks (were it let end first, that resume would rightly get the ended run's handle).
        """
        steps = Steps()
        outcomes: list[str] = []
        resumed: list[ckflow.Run] = []
        with anyio.fail_after(20):
            await steps.left_running(url)
            async with Engine(store=url) as engine:

                async def resume() -> None:
                    try:
                        resumed.append(await engine.resume("r"))
                    except ckflow.RunOwnedError as exc:
                        outcomes.append(f"owned by {exc.owner}")
                    else:
                        outcomes.append("resumed")

                async with anyio.create_task_group() as tg:
                    tg.start_soon(resume)
                    tg.start_soon(resume)
                steps.gate.set()
                assert [(await run.wait()).state for run in resumed] == [FlowState.SUCCESS]
        assert sorted(outcomes) == ["owned by " + engine.id, "resumed"]
        assert steps.runs == {"first": 1, "second": 2}

    async def test_a_control_that_read_the_run_before_it_ended_leaves_it_ended(self, url: str) -> None:
        """A resume (or goto) acts on the record it read; when another engine ran the run to its end meanwhile,
        its claim finds the run ended: nothing of it runs or is written again, and the resume's handle gives
        the result (a goto is refused)."""
        steps = Steps()
        with anyio.fail_after(20):
            await steps.left_running(url)
            steps.gate.set()
            async with open_store(url) as inner:
                before = await inner.get_run("r")
                async with Engine(store=inner) as first:
                    assert (await (await first.resume("r")).wait()).state is FlowState.SUCCESS
                ended = await inner.events("r")
                async with Engine(store=Stale(inner, before)) as late:
                    assert (await (await late.resume("r")).wait()).state is FlowState.SUCCESS
                async with Engine(store=Stale(inner, before)) as late:
                    run = await late.attach("r")
                    with pytest.raises(ckflow.RunStateError, match="it is SUCCESS"):
                        await run.goto("cp")
                assert await inner.events("r") == ended
                assert (await inner.get_run("r")).owner is None
        assert steps.runs == {"first": 1, "second": 2}


class TestWhatIsLeft:
    """Runs that recovery must not take, and the default."""

    async def test_an_unregistered_flow_is_named_once_and_left(
        self, url: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A run whose flow is not registered here gets one warning naming run and flow, and stays unowned."""
        now = time.time()
        async with open_store(url) as inner:
            orphan = RunRecord(
                run_id="u", flow="nowhere-registered", state=FlowState.RUNNING, created_at=now, updated_at=now
            )
            await inner.create_run(orphan)
            looks = Looks(inner, wanted=3)
            with caplog.at_level(logging.WARNING, logger="ckflow"), anyio.fail_after(20):
                async with Engine(store=looks, recover=True, lease_ttl=0.2, heartbeat=0.05) as engine:
                    await looks.enough.wait()
                    assert "u" not in engine.runs
            assert (await inner.get_run("u")).owner is None
        warnings = [r for r in caplog.records if getattr(r, "event", "") == "ckflow.engine.recovery_skipped"]
        assert len(warnings) == 1
        assert (getattr(warnings[0], "run_id", None), getattr(warnings[0], "flow", None)) == ("u", "nowhere-registered")

    async def test_suspended_and_halted_runs_stay(self, url: str) -> None:
        """A SUSPENDED run, and a RUNNING one whose suspension was asked for, are left as they are."""
        now = time.time()
        async with open_store(url) as store:
            for run_id, state, halted in (("s", FlowState.SUSPENDED, True), ("h", FlowState.RUNNING, True)):
                record = RunRecord(
                    run_id=run_id, flow="anything", state=state, halted=halted, created_at=now, updated_at=now
                )
                await store.create_run(record)
            async with Engine(store=store, recover=True) as engine:
                assert dict(engine.runs) == {}
            left = sorted((r.run_id, r.owner, r.state) for r in await store.list_runs(flow="anything"))
            assert left == [("h", None, FlowState.RUNNING), ("s", None, FlowState.SUSPENDED)]

    async def test_off_by_default(self, url: str) -> None:
        """A plain Engine takes nothing: a script's engine does not adopt a service's runs."""
        steps = Steps()
        with anyio.fail_after(20):
            await steps.left_running(url)
            async with Engine(store=url) as engine:
                assert "r" not in engine.runs
            async with open_store(url) as store:
                assert (await store.get_run("r")).owner is None
        assert steps.runs == {"first": 1, "second": 1}


class TestDeadOwner:
    """Which owner ids name a process of this host that has exited."""

    async def test_an_exited_process_of_this_host(self) -> None:
        """host:pid:suffix of a reaped process on this host is dead."""
        assert dead_owner(f"{HOST}:{await exited_pid()}:abcd")

    def test_what_is_taken_as_alive(self) -> None:
        """This process, a living one, another host, and ids of other forms are never taken as dead."""
        assert not dead_owner(f"{HOST}:{os.getpid()}:abcd")
        assert not dead_owner(f"{HOST}:1:abcd")  # init: alive (PermissionError unless root)
        assert not dead_owner("elsewhere.example:999999999:abcd")
        assert not dead_owner(f"{HOST}:99999999999999999999999:abcd")
        assert not dead_owner(f"{HOST}:pid:abcd")
        assert not dead_owner("worker-7")


def test_recover_without_a_store_is_refused() -> None:
    """recover=True has nothing to recover from without a store: refused when the engine is made."""
    with pytest.raises(ValueError, match="recover=True"):
        ckflow.Engine(recover=True)
