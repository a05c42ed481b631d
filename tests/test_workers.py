"""Submitted runs and workers: ``engine.submit`` records a QUEUED run, ``ckflow.Worker`` runs it (DESIGN §13)."""

from __future__ import annotations

import socket
import uuid
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from tests.stores import with_query
from tests.stores.conftest import drop_schema, url_of_kind
from tests.test_recovery import exited_pid

import ckflow
from ckflow import Checkpoint, Engine, FlowState, Linear, Worker, task
from ckflow._cli import main
from ckflow.stores import open_store

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path


HOST = socket.gethostname()


@pytest.fixture
async def pg(postgres_dsn: str) -> AsyncIterator[str]:
    """A PostgreSQL store URL on a schema of its own, dropped after the test."""
    url = with_query(postgres_dsn, schema=f"ckflow_test_{uuid.uuid4().hex[:12]}")
    yield url
    await drop_schema(url)


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def any_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A store of each kind (submit works on every store; only PostgreSQL has workers)."""
    async with url_of_kind(request, tmp_path, f"memory://workers-{uuid.uuid4().hex[:8]}") as url:
        yield url


class Jobs:
    """A registered flow ``first -> second(n: int)``; every execution is logged as (run id, task)."""

    def __init__(self) -> None:
        self.name = f"jobs-{uuid.uuid4().hex[:8]}"
        self.log: list[tuple[str, str]] = []
        #: ``second`` waits for this when it is set to an event
        self.gate: anyio.Event | None = None
        self.second_started = anyio.Event()
        ckflow.register_flow(self.name, self.build)

    def build(self) -> Linear:
        @task(provides="a")
        async def first(n: int) -> int:
            self.log.append((ckflow.current().run_id, "first"))
            return n

        @task
        async def second(a: int) -> int:
            self.log.append((ckflow.current().run_id, "second"))
            self.second_started.set()
            if self.gate is not None:
                await self.gate.wait()
            return a + 1

        return Linear(self.name, Checkpoint("start"), first, second)

    def ran(self, run_id: str) -> list[str]:
        return [name for rid, name in self.log if rid == run_id]


class TestSubmit:
    async def test_a_submitted_run_is_queued_and_nothing_runs(self, any_url: str) -> None:
        """submit records the run QUEUED in its queue with its validated inputs, runs nothing, and returns a
        handle through the store."""
        jobs = Jobs()
        async with Engine(store=any_url) as engine:
            run = await engine.submit(jobs.name, {"n": "7"}, run_id="r1", queue="emails", priority=5)
            assert (run.id, run.state, run.local) == ("r1", FlowState.QUEUED, False)
            assert engine.store is not None
            record = await engine.store.get_run("r1")
            assert (record.state, record.queue, record.priority, record.owner) == (FlowState.QUEUED, "emails", 5, None)
            assert record.inputs == '{"n":7}'  # coerced to the annotation, as start does
            assert [r.run_id for r in await engine.store.list_runs(states=[FlowState.QUEUED])] == ["r1"]
        assert jobs.log == []

    async def test_submit_checks_what_start_checks(self) -> None:
        jobs = Jobs()
        async with Engine(store="memory://") as engine:
            with pytest.raises(ckflow.InvalidInputError, match="n"):
                await engine.submit(jobs.name, {"n": "seven"})
            with pytest.raises(ckflow.MissingRequirementError):
                await engine.submit(jobs.name, {})
            with pytest.raises(ckflow.FlowNotRegisteredError):
                await engine.submit("no-such-flow", {"n": 1})
            with pytest.raises(ckflow.FlowNotRegisteredError):
                await engine.submit(Linear(f"unregistered-{uuid.uuid4().hex}", task(lambda: 1, name="t")))
            with pytest.raises(ValueError, match="queue"):
                await engine.submit(jobs.name, {"n": 1}, queue="")
            with pytest.raises(ValueError, match="priority"):
                await engine.submit(jobs.name, {"n": 1}, priority=True)
            with pytest.raises(ckflow.InvalidRunIdError):
                await engine.submit(jobs.name, {"n": 1}, run_id="")
            await engine.submit(jobs.name, {"n": 1}, run_id="taken")
            with pytest.raises(ckflow.RunExistsError):
                await engine.submit(jobs.name, {"n": 1}, run_id="taken")
        async with Engine() as engine:
            with pytest.raises(ckflow.RunStateError, match="store"):
                await engine.submit(jobs.name, {"n": 1})

    async def test_cancel_of_a_queued_run_ends_it_reverted_with_nothing_run(self, any_url: str) -> None:
        jobs = Jobs()
        async with Engine(store=any_url) as engine:
            run = await engine.submit(jobs.name, {"n": 1})
            await run.cancel()
            result = await run.wait()
            assert result.state is FlowState.REVERTED
            assert engine.store is not None
            record = await engine.store.get_run(run.id)
            assert (record.state, record.owner, record.ended_at is not None) == (FlowState.REVERTED, None, True)
            names = [e.name for e in await engine.store.events(run.id)]
            assert names == ["ckflow.control.cancel", "ckflow.run.reverted"]
        assert jobs.log == []

    async def test_goto_of_a_queued_run_is_refused(self) -> None:
        jobs = Jobs()
        async with Engine(store="memory://") as engine:
            run = await engine.submit(jobs.name, {"n": 1})
            with pytest.raises(ckflow.RunStateError, match="queued"):
                await run.goto("start")
            with pytest.raises(ckflow.RunStateError, match="queued"):
                await run.revert_to("start")
            assert (await run.view()).state is FlowState.QUEUED

    async def test_recovery_leaves_queued_runs_to_workers(self, any_url: str) -> None:
        jobs = Jobs()
        async with Engine(store=any_url) as engine:
            run = await engine.submit(jobs.name, {"n": 1})
        async with Engine(store=any_url, recover=True) as engine:
            assert engine.runs == {}
            assert engine.store is not None
            assert (await engine.store.get_run(run.id)).state is FlowState.QUEUED
        assert jobs.log == []


async def settled(run: ckflow.Run, within: float = 10.0) -> ckflow.RunResult:
    """The run's result once it has ended (a stored handle polls its store)."""
    with anyio.fail_after(within):
        return await run.wait()


class TestWorker:
    async def test_a_worker_runs_submitted_runs(self, pg: str) -> None:
        jobs = Jobs()
        async with Engine(store=pg, poll_interval=0.01) as engine, Worker(pg, concurrency=4, poll_interval=5):
            runs = [await engine.submit(jobs.name, {"n": i}) for i in range(6)]
            results = [await settled(run) for run in runs]
        assert [r.state for r in results] == [FlowState.SUCCESS] * 6
        assert sorted(jobs.log) == sorted((run.id, name) for run in runs for name in ("first", "second"))

    async def test_claims_by_priority_then_age(self, pg: str) -> None:
        """One run at a time: the highest priority first, then the oldest; other queues are not touched."""
        jobs = Jobs()
        async with Engine(store=pg, poll_interval=0.01) as engine:
            ids = []
            for i, priority in enumerate([0, 5, 0, 9, 5]):
                ids.append((await engine.submit(jobs.name, {"n": i}, run_id=f"r{i}", priority=priority)).id)
            other = await engine.submit(jobs.name, {"n": 0}, queue="other", priority=100)
            async with Worker(pg, concurrency=1, poll_interval=5) as worker:
                for run_id in ids:
                    await settled(await engine.attach(run_id))
                await worker.drain()
            assert engine.store is not None
            assert (await engine.store.get_run(other.id)).state is FlowState.QUEUED
        assert [rid for rid, name in jobs.log if name == "first"] == ["r3", "r1", "r4", "r0", "r2"]

    async def test_suspended_queued_run_waits_for_resume(self, pg: str) -> None:
        """A suspended queued run is left until its resume, which wakes the workers once the run is claimable
        (the worker looks by itself only every minute: the wake-up alone gets it there in time)."""
        jobs = Jobs()
        async with Engine(store=pg, poll_interval=0.01) as engine:
            held = await engine.submit(jobs.name, {"n": 1}, run_id="held")
            await held.suspend()
            later = await engine.submit(jobs.name, {"n": 2}, run_id="later")
            async with Worker(pg, concurrency=1, poll_interval=60):
                await settled(later)
                assert engine.store is not None
                record = await engine.store.get_run("held")
                assert (record.state, record.halted) == (FlowState.QUEUED, True)
                await held.resume()
                assert (await settled(held)).state is FlowState.SUCCESS
        assert jobs.ran("held") == ["first", "second"]

    async def test_a_queue_limit_holds_across_concurrent_claims(self, pg: str) -> None:
        """Twenty claimers at once, each asking for five runs of a queue limited to three: three are claimed."""
        jobs = Jobs()
        store: Any = open_store(pg)
        async with store:
            async with Engine(store=store) as engine:
                for i in range(30):
                    await engine.submit(jobs.name, {"n": i}, queue="limited")
            await store.set_queue_limit("limited", 3)
            claimed: list[str] = []

            async def claimer(k: int) -> None:
                records = await store.claim_queued(f"w{k}", ["limited"], 5, 60.0, flows=[jobs.name])
                claimed.extend(r.run_id for r in records)

            async with anyio.create_task_group() as tg:
                for k in range(20):
                    tg.start_soon(claimer, k)
            assert len(claimed) == len(set(claimed)) == 3
            # a run that ends frees its slot: one more can be claimed, and no more
            await store.set_queue_limit("limited", 4)
            assert len(await store.claim_queued("w", ["limited"], 5, 60.0, flows=[jobs.name])) == 1
            await store.set_queue_limit("limited", None)
            assert len(await store.claim_queued("w", ["limited"], 5, 60.0, flows=[jobs.name])) == 5

    async def test_a_claim_never_waits_for_a_queue_lock_another_claimer_holds(self, pg: str, postgres_dsn: str) -> None:
        """A worker cut off from the server in the middle of its claim of a limited queue keeps that queue's lock
        until the server notices: another worker's claim leaves the queue's QUEUED runs for later and goes on
        with its other queues at once, instead of waiting (and taking over nothing) meanwhile."""
        import asyncpg

        from ckflow.stores import _pg_queue

        jobs = Jobs()
        limited = f"limited-{uuid.uuid4().hex[:8]}"
        store: Any = open_store(pg)
        async with store:
            async with Engine(store=store) as engine:
                for i in range(2):
                    await engine.submit(jobs.name, {"n": i}, run_id=f"limited-{i}", queue=limited)
                await engine.submit(jobs.name, {"n": 9}, run_id="plain")
            await store.set_queue_limit(limited, 3)
            cut_off = await asyncpg.connect(postgres_dsn)
            try:
                holding = cut_off.transaction()
                await holding.start()
                await cut_off.execute(
                    "SELECT pg_advisory_xact_lock($1, $2)", _pg_queue._QUEUE_LOCK, _pg_queue._lock_key(limited)
                )
                with anyio.fail_after(5):
                    claimed = await store.claim_queued("w", [limited, "default"], 5, 60.0, flows=[jobs.name])
                assert [r.run_id for r in claimed] == ["plain"]
                await holding.rollback()
            finally:
                await cut_off.close()
            claimed = await store.claim_queued("w", [limited, "default"], 5, 60.0, flows=[jobs.name])
            assert sorted(r.run_id for r in claimed) == ["limited-0", "limited-1"]

    async def test_drain_releases_runs_for_another_worker_at_once(self, pg: str) -> None:
        """A drained worker stops the run it could not finish within its grace and releases it: another worker
        takes it at once (no lease to wait for), executes the interrupted task again and not the finished one."""
        jobs = Jobs()
        jobs.gate = anyio.Event()
        async with Engine(store=pg, poll_interval=0.01) as engine:
            run = await engine.submit(jobs.name, {"n": 1})
            async with Worker(pg, concurrency=1, grace=0, lease_ttl=60) as first:
                with anyio.fail_after(10):
                    await jobs.second_started.wait()
                await first.drain()
            assert engine.store is not None
            record = await engine.store.get_run(run.id)
            assert (record.state, record.owner) == (FlowState.RUNNING, None)
            jobs.gate.set()
            async with Worker(pg, concurrency=1, lease_ttl=60, poll_interval=30):
                assert (await settled(run, within=5)).state is FlowState.SUCCESS
        assert jobs.ran(run.id) == ["first", "second", "second"]

    async def test_drain_lets_runs_finish_within_the_grace(self, pg: str) -> None:
        jobs = Jobs()
        jobs.gate = anyio.Event()
        async with Engine(store=pg, poll_interval=0.01) as engine:
            run = await engine.submit(jobs.name, {"n": 1})
            async with Worker(pg, concurrency=1, grace=30) as worker:
                with anyio.fail_after(10):
                    await jobs.second_started.wait()
                async with anyio.create_task_group() as tg:
                    tg.start_soon(worker.drain)
                    jobs.gate.set()
            assert (await settled(run)).state is FlowState.SUCCESS
        assert jobs.ran(run.id) == ["first", "second"]

    async def test_takes_over_the_runs_of_a_dead_worker_at_once(self, pg: str) -> None:
        jobs = Jobs()
        dead = f"{HOST}:{await exited_pid()}:deadbeef"
        store: Any = open_store(pg)
        async with store, Engine(store=store, poll_interval=0.01) as engine:
            run = await engine.submit(jobs.name, {"n": 1})
            [claimed] = await store.claim_queued(dead, ["default"], 1, 600.0, flows=[jobs.name])
            assert claimed.state is FlowState.PENDING
            async with Worker(pg, concurrency=1, poll_interval=0.05):
                assert (await settled(run)).state is FlowState.SUCCESS
        assert jobs.ran(run.id) == ["first", "second"]

    async def test_a_store_workers_cannot_share_is_refused(self) -> None:
        with pytest.raises(ValueError, match="PostgreSQL"):
            async with Worker("memory://"):
                pass
        with pytest.raises(ValueError, match="concurrency"):
            Worker("memory://", concurrency=0)
        with pytest.raises(ValueError, match="queue"):
            Worker("memory://", queues="default")
        with pytest.raises(ValueError, match="limit"):
            Worker("memory://", limits={"q": 0})
        with pytest.raises(ValueError, match="lease_ttl"):
            Worker("memory://", lease_ttl=-1)


class TestCommands:
    """``ckflow submit`` here; ``ckflow worker`` runs in tests/test_worker_chaos.py, as processes."""

    def test_submit_prints_the_id_and_queues_the_run(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        url = f"sqlite:///{tmp_path / 'runs.db'}"
        argv = ["--store", url, "--import", "tests.chaos_flow", "submit", "chaos", "--inputs", '{"k": 4}']
        assert main([*argv, "--run-id", "r1", "--queue", "q", "--priority", "2"]) == 0
        out = capsys.readouterr()
        assert out.out == "r1\n"
        assert "queued in 'q' (priority 2)" in out.err

        async def stored() -> ckflow.stores.RunRecord:
            async with open_store(url) as store:
                return await store.get_run("r1")

        record = anyio.run(stored)
        assert (record.state, record.queue, record.priority, record.inputs) == (FlowState.QUEUED, "q", 2, '{"k":4}')
        assert main([*argv, "--run-id", "r1"]) == 1
        assert "r1" in capsys.readouterr().err
        assert main([*argv, "--queue", ""]) == 1
        assert "queue name" in capsys.readouterr().err

    def test_worker_needs_a_store_workers_share(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        url = f"sqlite:///{tmp_path / 'runs.db'}"
        assert main(["--store", url, "--import", "tests.chaos_flow", "worker"]) == 1
        assert "PostgreSQL" in capsys.readouterr().err
        assert main(["--store", url, "worker", "--limit", "q=0"]) == 2
