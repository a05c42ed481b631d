"""The journal of a durable run: what changed since the last write, and the write itself.

Durability rules (DESIGN §7), and how the journal keeps them
-------------------------------------------------------------
Changes are gathered in a *generation*; ``flush()`` turns the generation into
one ``Batch`` and the store applies it in one transaction. While a write is
in flight the next generation fills up, so concurrent completions share a
transaction (group commit). Some steps must wait until their generation is
committed, and are *held* until then:

- a task's successors start only once the task's result is committed, so no
  consumer ever runs on a value the store could lose;
- a region's reverts start only once the region's record (and the failure
  that opened it) is committed, so that after a crash the walker finds the
  decision it made instead of deciding again without the exception at hand;
- ``suspended``/``terminal`` are signalled only once the run's new state is
  committed, so a caller that saw SUSPENDED or SUCCESS finds it in the store.

Everything else (a task becoming RUNNING, events) rides along with the next
write. A write is never interrupted: it is shielded from cancellation.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Final

import anyio

from ckflow._codec import encode
from ckflow._errors import LeaseLostError, StoreError
from ckflow._events import Event
from ckflow._records import (
    Batch,
    CheckpointRecord,
    RegionRecord,
    Retention,
    RunRecord,
    TaskRecord,
    construct,
)
from ckflow._runtime import _task_view as task_view
from ckflow._runtime._coro import resume
from ckflow._runtime._state import appended
from ckflow._states import TERMINAL, TaskState

if TYPE_CHECKING:
    from collections.abc import Callable

    from ckflow._failure import Failure
    from ckflow._runtime._core import RunCore
    from ckflow.stores import Store

__all__ = ["Journal"]

_FAILED: Final = frozenset({TaskState.FAILURE, TaskState.REVERT_FAILURE})


class Journal:
    """What one run changed since its last write, and the write that stores it."""

    __slots__ = (
        "after",
        "checkpoints",
        "confirming",
        "core",
        "dead",
        "dirty",
        "drop_regions",
        "encoded",
        "events",
        "flushing",
        "gen",
        "held_nodes",
        "hold_gen",
        "lease_ttl",
        "lease_until",
        "owner",
        "record",
        "regions",
        "retention",
        "run_dirty",
        "seq",
        "store",
        "wall0",
    )

    @property
    def durable(self) -> bool:
        """A journal writes: some steps wait for its commits."""
        return True

    def __init__(
        self, core: RunCore, store: Store, owner: str, record: RunRecord, *, lease_ttl: float, lease_from: float
    ) -> None:
        self.core = core
        self.store = store
        self.owner = owner
        self.lease_ttl = lease_ttl
        #: time.monotonic() at which this engine's lease on the run lapses by its own clock: counted from the
        #: moment before the claim or renewal that set it was sent, so never later than the store's expiry
        self.lease_until = lease_from + lease_ttl
        #: set while a worker asks the store whether the lease still holds (``confirm_lease``)
        self.confirming: anyio.Event | None = None
        #: the run's record as it was loaded or created; each write derives the current one from it
        self.record = record
        self.seq = record.next_seq
        #: the generation being gathered; generation g is committed by the g-th write
        self.gen = 1
        self.flushing = False
        self.dirty: dict[int, None] = {}
        # The lists below are made by their first entry (None until then, and again after each write): a
        # live run that waits holds no empty containers for the cyclic GC to visit.
        #: task transitions as (seq, node, old, new, monotonic, attempt, failure), or built events
        self.events: list[tuple[int, int, TaskState, TaskState, float, int, Failure | None] | Event] | None = None
        self.checkpoints: dict[tuple[str, int], CheckpointRecord] = {}
        self.regions: dict[int, RegionRecord] = {}
        self.drop_regions: list[int] | None = None
        self.retention: list[Retention] | None = None
        self.run_dirty = False
        #: nodes whose successors wait for this generation's commit
        self.held_nodes: list[int] | None = None
        n = core.run.total
        #: node -> the generation whose commit releases its successors (0: none)
        self.hold_gen: list[int] = [0] * n
        #: node -> its last result as JSON text, kept until the task is reset
        self.encoded: list[str | None] = [None] * n
        #: the store failed or the lease was lost: nothing more is written
        self.dead = False
        #: called once this generation is committed
        self.after: list[Callable[[], None]] | None = None
        #: add to a time.monotonic() reading to get wall-clock time
        self.wall0 = time.time() - time.monotonic()

    # -- gathering -----------------------------------------------------------------

    def transition(self, n: int, old: TaskState, new: TaskState, attempt: int, failure: Failure | None) -> int:
        """Record a task transition; returns its event's sequence number."""
        seq = self.seq
        self.seq = seq + 1
        self.dirty[n] = None
        self.events = appended(self.events, (seq, n, old, new, time.monotonic(), attempt, failure))
        return seq

    def event(self, name: str, fields: dict[str, Any]) -> int:
        """Record a run, walker or control event; returns its sequence number."""
        seq = self.seq
        self.seq = seq + 1
        core = self.core
        mono = time.monotonic()
        built = Event(
            name=name, run_id=core.run_id, flow=core.flow, monotonic=mono, wall=mono + self.wall0, seq=seq, **fields
        )
        self.events = appended(self.events, built)
        return seq

    def touch(self, n: int) -> None:
        """Task ``n``'s record changed without a transition (its retries were counted, say)."""
        self.dirty[n] = None

    def encode_result(self, n: int, value: Any) -> None:
        """Keep task ``n``'s result as JSON.

        Raises:
            TypeError: the value cannot be stored as JSON.
        """
        self.encoded[n] = encode(value)

    def forget_result(self, n: int) -> None:
        self.encoded[n] = None

    def result_text(self, n: int) -> str | None:
        return self.encoded[n]

    def hold(self, n: int) -> bool:
        """Task ``n`` succeeded: its successors wait for this generation's commit."""
        self.hold_gen[n] = self.gen
        self.held_nodes = appended(self.held_nodes, n)
        return True

    def held(self, n: int) -> bool:
        return self.hold_gen[n] != 0

    def region(self, region_id: int, record: Callable[[], RegionRecord]) -> int:
        """Record a region (after it opens, and whenever it changes); returns the generation that writes it."""
        self.regions[region_id] = record()
        return self.gen

    def drop_region(self, region_id: int) -> None:
        self.regions.pop(region_id, None)
        self.drop_regions = appended(self.drop_regions, region_id)

    def checkpoint(self, key: tuple[str, int], record: Callable[[], CheckpointRecord]) -> None:
        self.checkpoints[key] = record()

    def retain(self, rule: Retention) -> None:
        self.retention = appended(self.retention, rule)

    def on_commit(self, callback: Callable[[], None]) -> bool:
        """Call ``callback`` once this generation is committed (at once if nothing more will be written)."""
        if self.dead:
            callback()
            return False
        self.after = appended(self.after, callback)
        return True

    @property
    def pending(self) -> bool:
        """True when something is not yet written, and a write may start now."""
        return (
            not self.flushing
            and not self.dead
            and bool(
                self.dirty
                or self.events
                or self.run_dirty
                or self.checkpoints
                or self.regions
                or self.drop_regions
                or self.after
            )
        )

    @property
    def urgent(self) -> bool:
        """True when some step waits for the next commit, and a write may start now."""
        return not self.flushing and not self.dead and bool(self.held_nodes or self.after)

    # -- the lease -------------------------------------------------------------------

    def kill(self) -> None:
        """Nothing more is written (the store failed, or the lease was lost)."""
        self.dead = True

    def lease_renewed(self, sent_at: float) -> None:
        """A renewal sent at ``sent_at`` (time.monotonic()) extended the lease."""
        self.lease_until = max(self.lease_until, sent_at + self.lease_ttl)

    async def confirm_lease(self) -> None:
        """The lease has lapsed by this engine's clock (it stalled: a long pause, a frozen process): before
        anything more starts, renew it, or learn from the store that another engine took the run over and stop.

        Workers that find the lease lapsed meanwhile wait for the one renewal in flight.
        """
        if self.confirming is not None:
            await self.confirming.wait()
            return
        confirming = self.confirming = anyio.Event()
        core = self.core
        try:
            sent_at = time.monotonic()
            lost = True  # unless the store says otherwise
            with anyio.CancelScope(shield=True):
                renewal = await self.store.renew(self.owner, [core.run_id], self.lease_ttl)
                lost = core.run_id in renewal.lost
            if lost:
                core.stop(LeaseLostError(core.run_id, self.owner))
            else:
                self.lease_renewed(sent_at)
        except Exception as exc:
            # The store cannot say the run is still ours: this engine starts nothing more of it.
            error = StoreError(
                f"Run {core.run_id!r}: engine {self.owner!r} could not renew its lapsed lease ({exc!r}); it stopped "
                "running the run, which stays as the store last recorded it."
            )
            error.__cause__ = exc
            core.stop(error)
        finally:
            self.confirming = None
            confirming.set()

    # -- writing -------------------------------------------------------------------

    def wall(self, monotonic: float | None) -> float | None:
        return None if monotonic is None else monotonic + self.wall0

    def run_record(self) -> RunRecord:
        core = self.core
        record = self.record
        return construct(
            RunRecord,
            run_id=record.run_id,
            flow=record.flow,
            state=core.run.flow_state,
            inputs=record.inputs,
            owner=self.owner,
            lease_expires=None,
            created_at=record.created_at,
            updated_at=time.time(),
            ended_at=self.wall(core.t_end) if core.t_end else None,
            halted=core.run.halted,
            goto=core.goto_name,
            next_seq=self.seq,
            trace=record.trace,
        )

    def task_record(self, n: int) -> TaskRecord:
        core = self.core
        return task_view.record(
            core.run, n, wall=self.wall, result=self.encoded[n], iteration=core.passes.iteration_of(n)
        )

    def _event(self, entry: tuple[int, int, TaskState, TaskState, float, int, Failure | None] | Event) -> Event:
        if isinstance(entry, Event):
            return entry
        seq, n, old, new, mono, attempt, failure = entry
        core = self.core.run
        node = core.nodes[n]
        return construct(
            Event,
            name=f"ckflow.task.{new.lower()}",
            run_id=core.run_id,
            flow=core.flow,
            task=node.name,
            old=old,
            new=new,
            attempt=attempt,
            checkpoint=core.graph.scopes[node.scope].name,
            monotonic=mono,
            wall=mono + self.wall0,
            failure=failure,
            detail={},
            seq=seq,
        )

    def _take(self) -> tuple[Batch, list[int] | None, list[Callable[[], None]] | None, int]:
        """Turn the gathered generation into a batch, and start gathering the next one."""
        batch = Batch(
            run=self.run_record(),
            owner=self.owner,
            tasks=[self.task_record(n) for n in self.dirty],
            checkpoints=list(self.checkpoints.values()),
            regions=list(self.regions.values()),
            drop_regions=self.drop_regions or [],
            events=[self._event(e) for e in self.events or ()],
            retention=self.retention or [],
            # the run's end is its last write: it gives the lease back too
            release=self.core.run.flow_state in TERMINAL,
        )
        taken = (batch, self.held_nodes, self.after, self.gen)
        self.dirty = {}
        self.events = None
        self.checkpoints = {}
        self.regions = {}
        self.drop_regions = None
        self.retention = None
        self.run_dirty = False
        self.held_nodes = None
        self.after = None
        self.gen += 1
        return taken

    async def flush(self) -> None:
        """Write the gathered generation in one transaction, then release what waited for it.

        Only one write of a run is in flight at a time; call this only when
        ``flushing`` is false. A failed write stops the run in this engine
        (``RunCore.stop``): what the store holds stays as it was, resumable.
        """
        self.flushing = True
        try:
            batch, held, after, gen = self._take()
            try:
                write = self.store.write(batch)
                try:
                    yielded = write.send(None)
                except StopIteration:
                    pass  # written without suspending (a memory store): nothing could interrupt it
                else:
                    # A write is never cut in half by a cancellation: the store's transaction finishes.
                    with anyio.CancelScope(shield=True):
                        await resume(write, yielded)
            except Exception as exc:
                error = (
                    exc
                    if isinstance(exc, StoreError)
                    else StoreError(
                        f"Run {self.core.run_id!r}: writing to store {self.store.url!r} failed ({exc!r}); the run "
                        "stays as the store last recorded it."
                    )
                )
                if error is not exc:
                    error.__cause__ = exc
                self.core.stop(error)
                # Whoever waited for this write (a suspend, the run's end) wakes up and finds the error.
                for callback in after or ():
                    callback()
                return
        finally:
            self.flushing = False
        if batch.release:
            self.core.lease_released = True
        self._committed(gen, held, after)

    def _committed(self, gen: int, held: list[int] | None, after: list[Callable[[], None]] | None) -> None:
        """Generation ``gen`` is in the store: release what waited for it."""
        hold_gen, sched = self.hold_gen, self.core.sched
        for n in held or ():
            # A node reverted (and maybe run again) since it was held is no longer this generation's.
            if hold_gen[n] == gen:
                hold_gen[n] = 0
                sched.released(n)
        for callback in after or ():
            callback()
        self.core.maybe_finish()
