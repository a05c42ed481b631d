"""The ``Store`` contract, run on every store: memory, SQLite and PostgreSQL.

Every rule of ``ckflow.stores.Store`` has a test here; the stores must agree
on everything a caller can observe, ``MemoryStore`` being the reference.
"""

from __future__ import annotations

import time

import anyio
import pytest
from tests.stores import (
    OTHER,
    OWNER,
    T0,
    checkpoint_record,
    control_request,
    event,
    failure,
    full_checkpoint,
    region_record,
    run_record,
    task_record,
)

from ckflow._errors import LeaseLostError, RunExistsError, RunNotFoundError, RunOwnedError
from ckflow._records import Batch, Retention
from ckflow._states import FlowState, TaskState
from ckflow.stores import Store

#: how far the store's clock (PostgreSQL's) may be from this process's in these tests
CLOCK_SLACK = 5.0
#: row_counts of a run that holds nothing
NO_ROWS = dict.fromkeys(("tasks", "checkpoints", "regions", "events", "requests"), 0)


async def filled(store: Store, run_id: str = "run-1") -> Batch:
    """Create a run and write one batch of everything into it; returns the batch."""
    run = run_record(run_id)
    await store.create_run(run)
    batch = Batch(
        run=run.model_copy(update={"next_seq": 3, "updated_at": T0 + 5}),
        owner=OWNER,
        tasks=[task_record(run_id, "attach", result='{"id": 1}'), task_record(run_id, "mount")],
        checkpoints=[checkpoint_record(run_id, "cp", 0)],
        regions=[region_record(run_id, 1)],
        events=[event(run_id, 0), event(run_id, 1), event(run_id, 2)],
    )
    await store.write(batch)
    return batch


class TestProtocol:
    """Every store is a ``Store``."""

    def test_store_implements_the_protocol(self, store: Store) -> None:
        """The opened store passes isinstance(store, Store)."""
        assert isinstance(store, Store)

    async def test_open_twice_does_nothing(self, store: Store) -> None:
        """Opening an open store keeps what it holds."""
        await store.create_run(run_record())
        await store.open()
        assert (await store.get_run("run-1")).run_id == "run-1"


class TestRuns:
    """create_run, get_run and list_runs."""

    async def test_created_run_reads_back_equal(self, store: Store) -> None:
        """get_run returns the record create_run was given, owner and lease included."""
        run = run_record(ended_at=T0 + 9.5, halted=True, goto="cp", next_seq=7)
        await store.create_run(run)
        assert await store.get_run("run-1") == run

    async def test_duplicate_id_raises_run_exists(self, store: Store) -> None:
        """A second run with a taken id raises RunExistsError and leaves the first as it was."""
        first = run_record()
        await store.create_run(first)
        with pytest.raises(RunExistsError) as info:
            await store.create_run(run_record(flow="other"))
        assert info.value.run_id == "run-1"
        assert await store.get_run("run-1") == first

    async def test_get_unknown_raises_not_found(self, store: Store) -> None:
        """get_run of an unknown id raises RunNotFoundError naming the id."""
        with pytest.raises(RunNotFoundError) as info:
            await store.get_run("nope")
        assert info.value.run_id == "nope"

    async def test_list_is_newest_first(self, store: Store) -> None:
        """list_runs orders by created_at descending, ties by run_id descending."""
        for run_id, created in [("a", T0 + 1), ("b", T0 + 3), ("c", T0 + 2), ("d", T0 + 3)]:
            await store.create_run(run_record(run_id, created_at=created))
        assert [r.run_id for r in await store.list_runs()] == ["d", "b", "c", "a"]

    async def test_list_filters_by_state(self, store: Store) -> None:
        """states= keeps the runs in one of the given states; an empty collection keeps none."""
        await store.create_run(run_record("a", state=FlowState.SUCCESS, created_at=T0 + 1))
        await store.create_run(run_record("b", state=FlowState.RUNNING, created_at=T0 + 2))
        await store.create_run(run_record("c", state=FlowState.FAILURE, created_at=T0 + 3))
        found = await store.list_runs(states=[FlowState.SUCCESS, FlowState.FAILURE])
        assert [r.run_id for r in found] == ["c", "a"]
        assert await store.list_runs(states=[]) == []

    async def test_list_filters_by_flow(self, store: Store) -> None:
        """flow= keeps the runs of that flow."""
        await store.create_run(run_record("a", flow="deploy"))
        await store.create_run(run_record("b", flow="backup"))
        assert [r.run_id for r in await store.list_runs(flow="backup")] == ["b"]

    async def test_list_filters_by_end(self, store: Store) -> None:
        """ended_before= keeps the runs that ended strictly before that time; unended runs never match."""
        await store.create_run(run_record("a", ended_at=T0 + 10))
        await store.create_run(run_record("b", ended_at=T0 + 20))
        await store.create_run(run_record("c"))
        assert [r.run_id for r in await store.list_runs(ended_before=T0 + 20)] == ["a"]

    async def test_list_limit(self, store: Store) -> None:
        """limit= keeps the newest runs; filters combine."""
        for i in range(5):
            await store.create_run(run_record(f"r{i}", created_at=T0 + i, flow="f" if i % 2 else "g"))
        assert [r.run_id for r in await store.list_runs(limit=2)] == ["r4", "r3"]
        assert [r.run_id for r in await store.list_runs(flow="f", limit=1)] == ["r3"]
        assert await store.list_runs(limit=0) == []

    async def test_list_before_pages_through_every_run_once(self, store: Store) -> None:
        """before=(created_at, run_id) of a page's last run, with limit, gives the next page: every run once, in
        order, ties on created_at broken by run_id, and filters combine."""
        created = [T0 + i // 3 + 0.1 for i in range(10)]  # three runs per created_at, and a float that is not whole
        for i, at in enumerate(created):
            await store.create_run(run_record(f"r{i}", created_at=at, flow="f" if i % 4 else "g"))
        everything = [r.run_id for r in await store.list_runs()]
        pages: list[list[str]] = []
        before: tuple[float, str] | None = None
        while True:
            page = await store.list_runs(limit=4, before=before)
            if not page:
                break
            pages.append([r.run_id for r in page])
            before = (page[-1].created_at, page[-1].run_id)
        assert [len(p) for p in pages] == [4, 4, 2]
        assert [run_id for p in pages for run_id in p] == everything
        found = await store.list_runs(flow="f", before=(T0 + 2.1, "r7"), limit=2)
        assert [r.run_id for r in found] == ["r6", "r5"]

    async def test_list_before_a_run_that_is_gone(self, store: Store) -> None:
        """before= need not name a stored run: the runs after those keys in the order are listed."""
        for i in range(3):
            await store.create_run(run_record(f"r{i}", created_at=T0 + i))
        assert [r.run_id for r in await store.list_runs(before=(T0 + 1, "r1x"))] == ["r1", "r0"]
        assert [r.run_id for r in await store.list_runs(before=(T0 + 1.5, ""))] == ["r1", "r0"]
        assert await store.list_runs(before=(T0, "r0")) == []


class TestWrite:
    """write(): one batch, applied whole or not at all, fenced by the lease."""

    async def test_write_applies_everything(self, store: Store) -> None:
        """Run, tasks, pass records, regions and events of a batch are all there after write."""
        batch = await filled(store)
        assert await store.get_run("run-1") == batch.run
        assert await store.tasks("run-1") == batch.tasks
        assert await store.checkpoints("run-1") == batch.checkpoints
        assert (await store.load("run-1")).regions == batch.regions
        assert await store.events("run-1") == batch.events

    async def test_run_takes_every_field_but_owner_and_lease(self, store: Store) -> None:
        """The stored run takes the batch's fields, but owner and lease_expires stay the store's."""
        run = run_record()
        await store.create_run(run)
        changed = run.model_copy(
            update={
                "state": FlowState.SUSPENDED,
                "flow": "deploy-v2",
                "inputs": "{}",
                "owner": "someone-else",
                "lease_expires": 1.0,
                "updated_at": T0 + 50,
                "ended_at": T0 + 51,
                "halted": True,
                "goto": "cp",
                "next_seq": 12,
            }
        )
        await store.write(Batch(run=changed, owner=OWNER))
        assert await store.get_run("run-1") == changed.model_copy(
            update={"owner": OWNER, "lease_expires": run.lease_expires}
        )

    async def test_progress_of_every_batch_reads_back_from_every_reader(self, store: Store) -> None:
        """updated_at and next_seq of each batch, progress alone or a change of state, retention included,
        come back from get_run, list_runs, load and claim (SQLite keeps progress alone on the last event)."""
        run = run_record(next_seq=0)
        await store.create_run(run)
        steps = [
            ({}, [event("run-1", 0), event("run-1", 1)], []),
            ({}, [event("run-1", 2), event("run-1", 3)], []),
            # a change without events comes after the last event, which carried progress on SQLite
            ({"halted": True}, [], []),
            ({"halted": True}, [event("run-1", 5, checkpoint="cp"), event("run-1", 6, checkpoint="cp")], []),
            # retention deletes the two events before, the last one of which carried progress on SQLite
            ({"halted": True}, [event("run-1", 7)], [Retention("cp", 1, 7, ("cp",))]),
            ({"halted": True}, [event("run-1", 8)], []),
            ({}, [event("run-1", 9)], []),
            ({}, [event("run-1", 10)], []),
        ]
        next_seq = 0
        for i, (fields, events, retention) in enumerate(steps):
            next_seq = events[-1].seq + 1 if events else next_seq + 1
            written = run.model_copy(update={**fields, "updated_at": T0 + 10 + i, "next_seq": next_seq})
            await store.write(Batch(run=written, owner=OWNER, events=events, retention=retention))
            assert await store.get_run("run-1") == written, i
            assert await store.list_runs() == [written], i
            assert (await store.load("run-1")).run == written, i
        assert [e.seq for e in await store.events("run-1")] == [0, 1, 2, 3, 7, 8, 9, 10]
        claimed = await store.claim("run-1", OWNER, 60.0)
        assert (claimed.updated_at, claimed.next_seq) == (T0 + 17, 11)

    async def test_next_seq_is_what_the_batch_says(self, store: Store) -> None:
        """A batch whose next_seq does not follow its last event reads back with its own next_seq."""
        run = run_record(next_seq=0)
        await store.create_run(run)
        written = run.model_copy(update={"updated_at": T0 + 1, "next_seq": 1})
        await store.write(Batch(run=written, owner=OWNER, events=[event("run-1", 0), event("run-1", 5)]))
        assert await store.get_run("run-1") == written

    @pytest.mark.parametrize(
        "steps",
        [
            pytest.param([([0, 5], 1), ([1], 2)], id="an-event-beyond-next-seq-then-progress"),
            pytest.param([([0, 1, 2, 3, 4], 5), ([2], 3)], id="an-older-event-again-and-next-seq-back"),
            pytest.param([([0], 1), ([3, 1], 2)], id="events-out-of-order"),
        ],
    )
    async def test_progress_is_what_each_batch_says_whatever_its_seqs(
        self, store: Store, steps: list[tuple[list[int], int]]
    ) -> None:
        """Batches of odd seqs (the engine writes none, but the protocol allows them) read back as written."""
        run = run_record(next_seq=0)
        await store.create_run(run)
        for i, (seqs, next_seq) in enumerate(steps):
            written = run.model_copy(update={"updated_at": T0 + 10 + i, "next_seq": next_seq})
            await store.write(Batch(run=written, owner=OWNER, events=[event("run-1", s) for s in seqs]))
            assert await store.get_run("run-1") == written, i

    async def test_a_lost_fence_keeps_the_progress(self, store: Store) -> None:
        """A batch of progress alone, by an engine that lost the lease, leaves the run's progress as it was."""
        run = run_record(next_seq=0)
        await store.create_run(run)
        mine = run.model_copy(update={"updated_at": T0 + 1, "next_seq": 1})
        await store.write(Batch(run=mine, owner=OWNER, events=[event("run-1", 0)]))
        stale = run.model_copy(update={"updated_at": T0 + 2, "next_seq": 2})
        with pytest.raises(LeaseLostError):
            await store.write(Batch(run=stale, owner=OTHER, events=[event("run-1", 1)]))
        assert await store.get_run("run-1") == mine
        assert [e.seq for e in await store.events("run-1")] == [0]

    async def test_upserts_replace_by_key(self, store: Store) -> None:
        """A task, pass or region written again replaces the record with the same key."""
        batch = await filled(store)
        newer_task = task_record("run-1", "mount", state=TaskState.FAILURE, attempts=2, failure=failure("mount"))
        newer_pass = checkpoint_record("run-1", "cp", 0, state="completed", attempts=2)
        newer_region = region_record("run-1", 1, parked=True)
        await store.write(
            Batch(run=batch.run, owner=OWNER, tasks=[newer_task], checkpoints=[newer_pass], regions=[newer_region])
        )
        tasks = {t.task: t for t in await store.tasks("run-1")}
        assert tasks["mount"].model_dump() == newer_task.model_dump()
        assert tasks["attach"] == batch.tasks[0]
        assert await store.checkpoints("run-1") == [newer_pass]
        assert (await store.load("run-1")).regions == [newer_region]
        assert (await store.row_counts("run-1"))["tasks"] == 2

    async def test_drop_regions_deletes_them(self, store: Store) -> None:
        """drop_regions deletes those regions and no others, even one upserted in the same batch."""
        batch = await filled(store)
        await store.write(Batch(run=batch.run, owner=OWNER, regions=[region_record("run-1", 2)]))
        await store.write(
            Batch(run=batch.run, owner=OWNER, regions=[region_record("run-1", 3)], drop_regions=[1, 3, 99])
        )
        assert [r.region_id for r in (await store.load("run-1")).regions] == [2]

    async def test_events_are_appended_in_order(self, store: Store) -> None:
        """Events of successive batches read back in seq order; after= and limit= page through them."""
        batch = await filled(store)
        await store.write(Batch(run=batch.run, owner=OWNER, events=[event("run-1", 3), event("run-1", 4)]))
        assert [e.seq for e in await store.events("run-1")] == [0, 1, 2, 3, 4]
        assert [e.seq for e in await store.events("run-1", after=1)] == [2, 3, 4]
        assert [e.seq for e in await store.events("run-1", after=1, limit=2)] == [2, 3]
        assert await store.events("run-1", after=4) == []

    async def test_lost_fence_writes_nothing(self, store: Store) -> None:
        """A batch from an engine that no longer owns the run raises LeaseLostError and changes nothing."""
        batch = await filled(store)
        before = (
            await store.get_run("run-1"),
            await store.tasks("run-1"),
            await store.checkpoints("run-1"),
            await store.events("run-1"),
            await store.load("run-1"),
            await store.requests("run-1"),
        )
        stale = Batch(
            run=batch.run.model_copy(update={"state": FlowState.FAILURE, "next_seq": 9}),
            owner=OTHER,
            tasks=[task_record("run-1", "attach", state=TaskState.FAILURE), task_record("run-1", "new")],
            checkpoints=[checkpoint_record("run-1", "cp", 1)],
            regions=[region_record("run-1", 5)],
            drop_regions=[1],
            events=[event("run-1", 3)],
            retention=[Retention("cp", 5, 100, ("cp", None))],  # type: ignore[arg-type]
            requests=[control_request("run-1", "q1", T0)],
        )
        with pytest.raises(LeaseLostError) as info:
            await store.write(stale)
        assert (info.value.run_id, info.value.owner) == ("run-1", OTHER)
        after = (
            await store.get_run("run-1"),
            await store.tasks("run-1"),
            await store.checkpoints("run-1"),
            await store.events("run-1"),
            await store.load("run-1"),
            await store.requests("run-1"),
        )
        assert after == before

    async def test_released_run_rejects_writes(self, store: Store) -> None:
        """Once its owner released the run, that owner's writes raise LeaseLostError."""
        batch = await filled(store)
        await store.release("run-1", OWNER)
        with pytest.raises(LeaseLostError):
            await store.write(Batch(run=batch.run, owner=OWNER, tasks=[task_record("run-1", "late")]))
        assert [t.task for t in await store.tasks("run-1")] == ["attach", "mount"]

    @pytest.mark.parametrize("n", [1, 2, 8, 9, 30])
    async def test_batches_of_any_size_read_back_in_order(self, store: Store, n: int) -> None:
        """Batches of a few rows and of many (PostgreSQL binds up to 8 rows of a table value by value, more as
        arrays) read back the same, tasks in the order first written and events by seq."""
        run = run_record()
        await store.create_run(run)
        names = [f"t{(i * 7) % n:02d}-{i}" for i in range(n)]
        first = Batch(
            run=run.model_copy(update={"next_seq": n}),
            owner=OWNER,
            tasks=[task_record("run-1", name, result=str(i)) for i, name in enumerate(names)],
            events=[event("run-1", seq) for seq in range(n)],
        )
        await store.write(first)
        again = Batch(
            run=run.model_copy(update={"next_seq": 2 * n}),
            owner=OWNER,
            tasks=[task_record("run-1", name, result="again") for name in reversed(names)],
            events=[event("run-1", seq) for seq in range(n, 2 * n)],
        )
        await store.write(again)
        assert [(t.task, t.result) for t in await store.tasks("run-1")] == [(name, "again") for name in names]
        assert await store.events("run-1") == [*first.events, *again.events]
        assert (await store.get_run("run-1")).next_seq == 2 * n

    async def test_releasing_write_gives_the_lease_up(self, store: Store) -> None:
        """A batch with ``release`` is written as any other, and leaves the run with no owner nor lease, as
        ``release`` would: anyone may claim it, and the writer's next write raises LeaseLostError."""
        batch = await filled(store)
        last = Batch(
            run=batch.run.model_copy(update={"state": FlowState.SUCCESS, "next_seq": 4, "ended_at": T0 + 9}),
            owner=OWNER,
            tasks=[task_record("run-1", "mount", result="2")],
            events=[event("run-1", 3)],
            release=True,
        )
        await store.write(last)
        stored = await store.get_run("run-1")
        assert stored == last.run.model_copy(update={"owner": None, "lease_expires": None})
        assert [t.result for t in await store.tasks("run-1")] == ['{"id": 1}', "2"]
        assert [e.seq for e in await store.events("run-1")] == [0, 1, 2, 3]
        with pytest.raises(LeaseLostError):
            await store.write(Batch(run=last.run, owner=OWNER, events=[event("run-1", 4)]))
        assert (await store.claim("run-1", OTHER, 30)).owner == OTHER

    async def test_releasing_write_with_deletions_gives_the_lease_up(self, store: Store) -> None:
        """``release`` holds in a batch that also drops regions and retains passes (PostgreSQL's transaction)."""
        batch = await filled(store)
        await store.write(
            Batch(
                run=batch.run.model_copy(update={"next_seq": 4}),
                owner=OWNER,
                drop_regions=[1],
                events=[event("run-1", 3)],
                retention=[Retention("cp", 1, 0, ("cp",))],
                release=True,
            )
        )
        stored = await store.get_run("run-1")
        assert (stored.owner, stored.lease_expires, stored.next_seq) == (None, None, 4)
        assert (await store.row_counts("run-1"))["regions"] == 0

    async def test_releasing_write_of_another_owner_changes_nothing(self, store: Store) -> None:
        """A stale owner's releasing batch raises LeaseLostError and leaves the owner's lease as it was."""
        batch = await filled(store)
        before = await store.get_run("run-1")
        with pytest.raises(LeaseLostError):
            await store.write(
                Batch(
                    run=batch.run.model_copy(update={"next_seq": 4}),
                    owner=OTHER,
                    events=[event("run-1", 3)],
                    release=True,
                )
            )
        assert await store.get_run("run-1") == before
        assert before.owner == OWNER

    async def test_write_of_unknown_run_raises_not_found(self, store: Store) -> None:
        """A batch for a run that does not exist (or was deleted) raises RunNotFoundError."""
        with pytest.raises(RunNotFoundError):
            await store.write(Batch(run=run_record("ghost"), owner=OWNER, tasks=[task_record("ghost", "t")]))
        batch = await filled(store)
        await store.delete_runs(["run-1"])
        with pytest.raises(RunNotFoundError):
            await store.write(Batch(run=batch.run, owner=OWNER, events=[event("run-1", 3)]))
        assert await store.row_counts("run-1") == NO_ROWS

    async def test_retention_deletes_exactly_the_older_passes_and_events(self, store: Store) -> None:
        """Retention deletes passes below keep_from_pass of its checkpoint, and events below before_seq
        of the listed checkpoints; nothing else."""
        run = run_record()
        await store.create_run(run)
        passes = [checkpoint_record("run-1", name, n) for name in ("cp", "other") for n in range(3)]
        events = [
            event("run-1", 0, checkpoint="cp"),
            event("run-1", 1, checkpoint="inner"),
            event("run-1", 2, checkpoint="other"),
            event("run-1", 3, checkpoint=None),
            event("run-1", 4, checkpoint="cp"),
            event("run-1", 5, checkpoint="inner"),
        ]
        await store.write(Batch(run=run, owner=OWNER, checkpoints=passes, events=events))
        await store.write(Batch(run=run, owner=OWNER, retention=[Retention("cp", 2, 4, ("cp", "inner"))]))
        assert [(c.checkpoint, c.pass_no) for c in await store.checkpoints("run-1")] == [
            ("cp", 2),
            ("other", 0),
            ("other", 1),
            ("other", 2),
        ]
        assert [e.seq for e in await store.events("run-1")] == [2, 3, 4, 5]

    async def test_retention_applies_after_upserts_of_the_same_batch(self, store: Store) -> None:
        """A pass written and retained away in one batch is gone, as are its events."""
        run = run_record()
        await store.create_run(run)
        await store.write(
            Batch(
                run=run,
                owner=OWNER,
                checkpoints=[checkpoint_record("run-1", "cp", 0), checkpoint_record("run-1", "cp", 1)],
                events=[event("run-1", 0, checkpoint="cp"), event("run-1", 1, checkpoint="cp")],
                retention=[Retention("cp", 1, 1, ("cp",))],
            )
        )
        assert [c.pass_no for c in await store.checkpoints("run-1")] == [1]
        assert [e.seq for e in await store.events("run-1")] == [1]

    async def test_requests_in_a_batch_are_marked_done(self, store: Store) -> None:
        """Requests in a batch replace the recorded ones by request_id."""
        batch = await filled(store)
        asked = control_request("run-1", "q1", T0 + 1, op="goto", checkpoint="cp", retry=False)
        await store.request(asked)
        done = asked.model_copy(update={"done_at": T0 + 2, "error": "no such checkpoint"})
        await store.write(Batch(run=batch.run, owner=OWNER, requests=[done]))
        assert await store.requests("run-1") == [done]

    async def test_concurrent_writes_of_many_runs_all_land(self, store: Store) -> None:
        """200 runs writing at once each find their own batch stored."""
        runs = [run_record(f"run-{i:03}") for i in range(200)]
        for run in runs:
            await store.create_run(run)

        async def write(i: int) -> None:
            run = runs[i]
            await store.write(
                Batch(
                    run=run.model_copy(update={"next_seq": 1, "updated_at": T0 + i}),
                    owner=OWNER,
                    tasks=[task_record(run.run_id, "t", result=str(i))],
                    events=[event(run.run_id, 0)],
                )
            )

        async with anyio.create_task_group() as tg:
            for i in range(len(runs)):
                tg.start_soon(write, i)
        for i, run in enumerate(runs):
            assert (await store.get_run(run.run_id)).updated_at == T0 + i
            assert [t.result for t in await store.tasks(run.run_id)] == [str(i)]
            assert [e.seq for e in await store.events(run.run_id)] == [0]

    async def test_a_failing_batch_among_concurrent_ones_fails_alone(self, store: Store) -> None:
        """When several batches are written at once and one fails its fence, only its caller gets the error."""
        runs = [run_record(f"run-{i}") for i in range(20)]
        for run in runs:
            await store.create_run(run)
        outcomes: dict[int, BaseException | None] = {}

        async def write(i: int) -> None:
            owner = OTHER if i == 7 else OWNER
            try:
                await store.write(Batch(run=runs[i], owner=owner, tasks=[task_record(runs[i].run_id, "t")]))
            except LeaseLostError as exc:
                outcomes[i] = exc
            else:
                outcomes[i] = None

        async with anyio.create_task_group() as tg:
            for i in range(len(runs)):
                tg.start_soon(write, i)
        assert {i for i, exc in outcomes.items() if exc is not None} == {7}
        assert await store.tasks("run-7") == []
        for run in runs:
            if run.run_id != "run-7":
                assert [t.task for t in await store.tasks(run.run_id)] == ["t"]


class TestLeases:
    """claim, renew and release, timed by the store's clock."""

    async def test_claim_free_run(self, store: Store) -> None:
        """Claiming a run that nobody owns makes the claimer its owner for ttl seconds."""
        await store.create_run(run_record(owner=None, lease_expires=None))
        before = time.time()
        claimed = await store.claim("run-1", OTHER, 30)
        assert claimed.owner == OTHER
        assert claimed.lease_expires is not None
        assert before + 30 - CLOCK_SLACK <= claimed.lease_expires <= time.time() + 30 + CLOCK_SLACK
        assert await store.get_run("run-1") == claimed

    async def test_claim_own_run_renews(self, store: Store) -> None:
        """Claiming a run one owns succeeds and moves the lease."""
        await store.create_run(run_record(lease_expires=time.time() + 10))
        claimed = await store.claim("run-1", OWNER, 1000)
        assert claimed.owner == OWNER
        assert claimed.lease_expires is not None
        assert claimed.lease_expires > time.time() + 500

    async def test_claim_live_lease_of_another_raises(self, store: Store) -> None:
        """A live lease of another owner makes claim raise RunOwnedError naming that owner."""
        run = run_record()
        await store.create_run(run)
        with pytest.raises(RunOwnedError) as info:
            await store.claim("run-1", OTHER, 30)
        assert info.value.owner == OWNER
        assert info.value.lease_expires == run.lease_expires
        assert await store.get_run("run-1") == run

    async def test_claim_expired_lease_takes_over(self, store: Store) -> None:
        """A lapsed lease is taken over, and the former owner's writes are fenced off."""
        await store.create_run(run_record(owner=None, lease_expires=None))
        await store.claim("run-1", OWNER, -1)  # a lease that lapsed a second ago
        claimed = await store.claim("run-1", OTHER, 30)
        assert claimed.owner == OTHER
        with pytest.raises(LeaseLostError):
            await store.write(Batch(run=claimed, owner=OWNER))

    async def test_claim_replacing_the_holder_takes_a_live_lease(self, store: Store) -> None:
        """claim(replacing=holder) takes the run from exactly that owner, live lease or not, and fences it off."""
        await store.create_run(run_record())
        before = time.time()
        claimed = await store.claim("run-1", OTHER, 30, replacing=OWNER)
        assert claimed.owner == OTHER
        assert claimed.lease_expires is not None
        assert before + 30 - CLOCK_SLACK <= claimed.lease_expires <= time.time() + 30 + CLOCK_SLACK
        assert await store.get_run("run-1") == claimed
        with pytest.raises(LeaseLostError):
            await store.write(Batch(run=claimed, owner=OWNER))

    async def test_claim_replacing_someone_else_raises(self, store: Store) -> None:
        """claim(replacing=x) of a run whose live lease is not x's raises RunOwnedError and changes nothing."""
        run = run_record()
        await store.create_run(run)
        with pytest.raises(RunOwnedError) as info:
            await store.claim("run-1", OTHER, 30, replacing="engine-gone")
        assert info.value.owner == OWNER
        assert await store.get_run("run-1") == run

    async def test_claim_replacing_after_another_replaced_raises(self, store: Store) -> None:
        """Two claims replacing the same dead owner: the first takes the run, the second finds it taken."""
        await store.create_run(run_record())
        await store.claim("run-1", OTHER, 30, replacing=OWNER)
        with pytest.raises(RunOwnedError) as info:
            await store.claim("run-1", "engine-c", 30, replacing=OWNER)
        assert info.value.owner == OTHER

    async def test_claim_replacing_a_free_run(self, store: Store) -> None:
        """replacing= does not narrow a claim: a run without an owner is taken as by a plain claim."""
        await store.create_run(run_record(owner=None, lease_expires=None))
        assert (await store.claim("run-1", OTHER, 30, replacing=OWNER)).owner == OTHER

    async def test_claim_unknown_raises_not_found(self, store: Store) -> None:
        """claim of an unknown run raises RunNotFoundError."""
        with pytest.raises(RunNotFoundError):
            await store.claim("nope", OWNER, 30)

    async def test_write_keeps_owner_and_lease(self, store: Store) -> None:
        """write never changes the owner or the lease, whatever the batch's run says."""
        await store.create_run(run_record(owner=None, lease_expires=None))
        claimed = await store.claim("run-1", OWNER, 60)
        await store.write(Batch(run=claimed.model_copy(update={"owner": None, "lease_expires": 0.0}), owner=OWNER))
        stored = await store.get_run("run-1")
        assert (stored.owner, stored.lease_expires) == (OWNER, claimed.lease_expires)

    async def test_renew_extends_owned_leases(self, store: Store) -> None:
        """renew moves the lease of every run the owner still owns to now + ttl."""
        await store.create_run(run_record("a", owner=None, lease_expires=None))
        await store.claim("a", OWNER, 1)
        renewal = await store.renew(OWNER, ["a"], 1000)
        assert renewal.lost == []
        lease = (await store.get_run("a")).lease_expires
        assert lease is not None
        assert lease > time.time() + 500

    async def test_renew_reports_lost_runs(self, store: Store) -> None:
        """renew lists, in the order asked, the runs the owner does not own: another's, released or unknown."""
        await store.create_run(run_record("mine"))
        await store.create_run(run_record("theirs", owner=OTHER))
        await store.create_run(run_record("released"))
        await store.release("released", OWNER)
        theirs = await store.get_run("theirs")
        renewal = await store.renew(OWNER, ["theirs", "mine", "unknown", "released"], 30)
        assert renewal.lost == ["theirs", "unknown", "released"]
        assert await store.get_run("theirs") == theirs

    async def test_renew_returns_pending_requests_oldest_first(self, store: Store) -> None:
        """renew returns the requests not yet done of the runs still owned, oldest first."""
        batch = await filled(store, "a")
        await store.create_run(run_record("b"))
        await store.create_run(run_record("c", owner=OTHER))
        await store.request(control_request("a", "a-late", T0 + 30))
        await store.request(control_request("b", "b-early", T0 + 10))
        await store.request(control_request("a", "a-done", T0 + 5))
        await store.request(control_request("c", "c-not-mine", T0 + 1))
        await store.request(control_request("a", "a-mid", T0 + 20, op="cancel"))
        await store.write(
            Batch(run=batch.run, owner=OWNER, requests=[control_request("a", "a-done", T0 + 5, done_at=T0 + 6)])
        )
        renewal = await store.renew(OWNER, ["a", "b", "c"], 30)
        assert [r.request_id for r in renewal.requests] == ["b-early", "a-mid", "a-late"]
        assert renewal.lost == ["c"]

    async def test_renew_of_nothing(self, store: Store) -> None:
        """renew of no runs returns nothing."""
        renewal = await store.renew(OWNER, [], 30)
        assert (renewal.lost, renewal.requests) == ([], [])

    async def test_release_frees_the_run(self, store: Store) -> None:
        """release by the owner clears owner and lease; anyone may then claim it."""
        await store.create_run(run_record())
        await store.release("run-1", OWNER)
        stored = await store.get_run("run-1")
        assert (stored.owner, stored.lease_expires) == (None, None)
        assert (await store.claim("run-1", OTHER, 30)).owner == OTHER

    async def test_release_by_another_does_nothing(self, store: Store) -> None:
        """release by an engine that does not own the run changes nothing; an unknown run is no error."""
        run = run_record()
        await store.create_run(run)
        await store.release("run-1", OTHER)
        await store.release("nope", OWNER)
        assert await store.get_run("run-1") == run


class TestRequests:
    """request and requests."""

    async def test_request_is_recorded(self, store: Store) -> None:
        """Recorded requests read back equal, oldest first."""
        await store.create_run(run_record())
        late = control_request("run-1", "q2", T0 + 2, op="revert_to", checkpoint="cp", retry=False)
        early = control_request("run-1", "q1", T0 + 1)
        await store.request(late)
        await store.request(early)
        assert await store.requests("run-1") == [early, late]

    async def test_request_of_unknown_run_raises_not_found(self, store: Store) -> None:
        """A request for an unknown run raises RunNotFoundError and is not recorded."""
        with pytest.raises(RunNotFoundError):
            await store.request(control_request("nope", "q1", T0))
        assert await store.requests("nope") == []


class TestLoad:
    """load: what resuming a run needs."""

    async def test_load_unknown_raises_not_found(self, store: Store) -> None:
        """load of an unknown run raises RunNotFoundError."""
        with pytest.raises(RunNotFoundError):
            await store.load("nope")

    async def test_load_returns_latest_passes_regions_and_failures(self, store: Store) -> None:
        """load returns the run, its tasks, the latest pass per checkpoint, its regions, and its
        execute and revert failures in seq order, without cancellations."""
        run = run_record()
        await store.create_run(run)
        execute, revert, cancelled, timeout = (
            failure("attach", "execute", "first"),
            failure("mount", "revert", "second"),
            failure("probe", "cancelled", "third"),
            failure("slow", "timeout", "fourth"),
        )
        tasks = [task_record("run-1", "attach"), task_record("run-1", "mount", failure=revert)]
        await store.write(
            Batch(
                run=run,
                owner=OWNER,
                tasks=tasks,
                checkpoints=[
                    checkpoint_record("run-1", "outer", 0),
                    checkpoint_record("run-1", "b", 2),
                    checkpoint_record("run-1", "b", 10),
                    checkpoint_record("run-1", "outer", 1),
                ],
                regions=[region_record("run-1", 4), region_record("run-1", 2, failures=[execute])],
                events=[
                    event("run-1", 0),
                    event("run-1", 1, failure=execute),
                    event("run-1", 2, failure=cancelled),
                    event("run-1", 3, failure=revert),
                    event("run-1", 4, failure=timeout),
                ],
            )
        )
        loaded = await store.load("run-1")
        assert loaded.run == run
        assert [t.model_dump() for t in loaded.tasks] == [t.model_dump() for t in tasks]
        assert [(c.checkpoint, c.pass_no) for c in loaded.checkpoints] == [("b", 10), ("outer", 1)]
        assert sorted(r.region_id for r in loaded.regions) == [2, 4]
        assert [f.message for f in loaded.failures] == ["first", "second", "fourth"]


class TestReading:
    """tasks, checkpoints, events and row_counts."""

    async def test_reads_of_unknown_run_are_empty(self, store: Store) -> None:
        """Reading the rows of an unknown run returns nothing rather than raising."""
        assert await store.tasks("nope") == []
        assert await store.checkpoints("nope") == []
        assert await store.events("nope") == []
        assert await store.requests("nope") == []
        assert await store.row_counts("nope") == NO_ROWS

    async def test_checkpoints_by_name_and_pass(self, store: Store) -> None:
        """checkpoints lists every retained pass by checkpoint name then pass number, or one checkpoint's."""
        run = run_record()
        await store.create_run(run)
        names = [("b", 10), ("a", 1), ("b", 2), ("a", 0)]
        await store.write(Batch(run=run, owner=OWNER, checkpoints=[checkpoint_record("run-1", c, n) for c, n in names]))
        assert [(c.checkpoint, c.pass_no) for c in await store.checkpoints("run-1")] == [
            ("a", 0),
            ("a", 1),
            ("b", 2),
            ("b", 10),
        ]
        assert [c.pass_no for c in await store.checkpoints("run-1", "b")] == [2, 10]

    async def test_row_counts(self, store: Store) -> None:
        """row_counts counts the run's rows in each table."""
        await filled(store)
        await store.request(control_request("run-1", "q1", T0))
        assert await store.row_counts("run-1") == {
            "tasks": 2,
            "checkpoints": 1,
            "regions": 1,
            "events": 3,
            "requests": 1,
        }


class TestDelete:
    """delete_runs."""

    async def test_delete_removes_every_row(self, store: Store) -> None:
        """delete_runs removes the runs and all their rows, leaves other runs, and counts what it deleted."""
        await filled(store, "a")
        await filled(store, "b")
        await store.request(control_request("a", "qa", T0))
        assert await store.delete_runs(["a", "unknown"]) == 1
        with pytest.raises(RunNotFoundError):
            await store.get_run("a")
        assert await store.row_counts("a") == NO_ROWS
        assert await store.requests("a") == []
        assert [r.run_id for r in await store.list_runs()] == ["b"]
        assert (await store.row_counts("b"))["events"] == 3

    async def test_delete_nothing(self, store: Store) -> None:
        """delete_runs of no ids deletes nothing."""
        await store.create_run(run_record())
        assert await store.delete_runs([]) == 0
        assert len(await store.list_runs()) == 1


class TestRoundTrip:
    """Records read back exactly as written."""

    async def test_task_record_round_trips(self, store: Store) -> None:
        """A task record with retries, result, a failure with its traceback and every time reads back equal."""
        run = run_record()
        await store.create_run(run)
        record = task_record(
            "run-1",
            "attach",
            state=TaskState.REVERT_FAILURE,
            attempts=3,
            retries={"cp": 2, "outer": 1},
            iteration=4,
            result='{"id": "vol-1", "tags": ["a", "b"]}',
            failure=failure("attach", "revert"),
            started_at=T0 + 0.125,
            ended_at=T0 + 0.25,
            revert_started_at=T0 + 1 / 3,
            revert_ended_at=T0 + 2 / 3,
        )
        assert record.failure is not None
        assert "RuntimeError: boom" in record.failure.traceback
        await store.write(Batch(run=run, owner=OWNER, tasks=[record]))
        [stored] = await store.tasks("run-1")
        assert stored.model_dump() == record.model_dump()
        assert stored.failure is not None
        assert stored.failure.traceback == record.failure.traceback

    async def test_checkpoint_record_round_trips(self, store: Store) -> None:
        """A completed pass with history, snapshot text and outlines reads back equal."""
        run = run_record()
        await store.create_run(run)
        record = full_checkpoint("run-1", "cp", 3)
        await store.write(Batch(run=run, owner=OWNER, checkpoints=[record]))
        [stored] = await store.checkpoints("run-1")
        assert stored.model_dump() == record.model_dump()
        assert stored.snapshot == record.snapshot

    async def test_region_round_trips(self, store: Store) -> None:
        """A region with members, cause, failures and flags reads back equal."""
        run = run_record()
        await store.create_run(run)
        record = region_record(
            "run-1", 7, action="suspend", cause="attach", failures=[failure()], auto_resume=True, parked=True
        )
        await store.write(Batch(run=run, owner=OWNER, regions=[record]))
        [stored] = (await store.load("run-1")).regions
        assert stored.model_dump() == record.model_dump()

    async def test_event_round_trips(self, store: Store) -> None:
        """An event with detail, failure and every field reads back equal."""
        run = run_record()
        await store.create_run(run)
        record = event(
            "run-1",
            0,
            name="ckflow.walker.region",
            attempt=2,
            checkpoint="cp",
            failure=failure(),
            detail={"members": ["a", "b"], "nested": {"n": 1, "x": 0.5, "none": None}, "text": "é ✓"},
        )
        await store.write(Batch(run=run, owner=OWNER, events=[record]))
        [stored] = await store.events("run-1")
        assert stored.model_dump() == record.model_dump()

    async def test_run_record_round_trips(self, store: Store) -> None:
        """A run with every field set, through write, reads back equal."""
        run = run_record()
        await store.create_run(run)
        changed = run.model_copy(
            update={
                "state": FlowState.REVERTED,
                "inputs": '{"n": [1, 2.5, "x"]}',
                "updated_at": T0 + 0.1,
                "ended_at": T0 + 0.2,
                "halted": True,
                "goto": "cp",
                "next_seq": 2**40,
            }
        )
        await store.write(Batch(run=changed, owner=OWNER))
        assert await store.get_run("run-1") == changed
        assert [r.model_dump() for r in await store.list_runs()] == [changed.model_dump()]
