"""``Worker``: an engine that claims submitted runs from the queues of a shared store and runs them.

A worker is an ``Engine`` (leases, the heartbeat, requests from other processes, the fence) plus a claim
loop: it asks the store for at most ``concurrency`` runs at a time (``claim_queued``: runs under way that
nobody holds any more first, then QUEUED runs by priority and age, within each queue's limit), and
resumes each claimed run in its engine as ``Engine.resume`` does. It wakes up when a run is submitted
(the store's notifications), when one of its runs ends, and every ``poll_interval`` seconds, when it also
takes over the runs of workers on this host whose process has exited (``_recovery.dead_owner``); runs of
workers elsewhere are taken over once their lease lapses.

Draining (``drain()``, or leaving the block) stops claiming, lets the runs go on for up to ``grace``
seconds, then stops the runs still going where they are (their running executes are cancelled and run
again wherever the run goes on) and releases them, so that another worker claims them at once.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any, Final, cast, final

import anyio

from ckflow._checkpoint import _is_positive_int
from ckflow._engine._cores import check_queue
from ckflow._engine._lifecycle import Engine
from ckflow._engine._ownership import engine_warning
from ckflow._engine._recovery import dead_owner
from ckflow._errors import CkflowError, RunNotFoundError, RunOwnedError
from ckflow._records import StoredRun
from ckflow._registry import registered_flows
from ckflow._states import FlowState
from ckflow.stores import QueueStore, Store, open_store

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence
    from types import TracebackType

    from anyio.abc import TaskGroup, TaskStatus

    from ckflow._engine._handles import Run
    from ckflow._records import RunRecord

__all__ = ["Worker"]

#: how long a worker waits for its store's notifications connection before it polls instead
_LISTEN_TIMEOUT: Final = 10.0


class _Claims:
    """The worker's store as its engine sees it: the store itself, but for runs that a claim has just taken from
    their queue, which it answers from what the claim read.

    Such a run (PENDING, and nothing ever written of it: ``next_seq`` 0) has no tasks, passes, regions nor
    failures, so ``Engine.resume`` rebuilds it without reading the store twice over: ``get_run`` and ``load``
    answer from the claim (the engine's own ``claim`` still goes to the store, and so times the lease). Only the
    worker's own claims land here: the worker owns such a run, so nobody else writes its row meanwhile.
    """

    __slots__ = ("_fresh", "_store")

    def __init__(self, store: Store) -> None:
        self._store = store
        #: run id -> its record as the latest claim returned it
        self._fresh: dict[str, RunRecord] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def claimed(self, record: RunRecord) -> None:
        """The worker has just claimed ``record`` from its queue."""
        if record.state is FlowState.PENDING and record.next_seq == 0:
            self._fresh[record.run_id] = record

    def forget(self, run_id: str) -> None:
        self._fresh.pop(run_id, None)

    async def get_run(self, run_id: str) -> RunRecord:
        record = self._fresh.get(run_id)
        return record if record is not None else await self._store.get_run(run_id)

    async def claim(self, run_id: str, owner: str, ttl: float, *, replacing: str | None = None) -> RunRecord:
        record = await self._store.claim(run_id, owner, ttl, replacing=replacing)
        if run_id in self._fresh:
            self._fresh[run_id] = record
        return record

    async def load(self, run_id: str) -> StoredRun:
        record = self._fresh.pop(run_id, None)
        if record is None:
            return await self._store.load(run_id)
        return StoredRun(run=record, tasks=[], checkpoints=[], regions=[], failures=[])


def _seconds(name: str, value: float) -> float:
    given: object = value
    if isinstance(given, bool) or not isinstance(given, int | float) or not 0 <= given < math.inf:
        raise ValueError(f"Worker({name}={value!r}) must be a finite number of seconds >= 0.")
    return float(value)


def _limits(limits: Mapping[str, int | None] | None) -> dict[str, int | None]:
    found: dict[str, int | None] = {}
    for queue, limit in (limits or {}).items():
        if limit is not None and not _is_positive_int(limit):
            raise ValueError(f"Worker(limits={{{queue!r}: {limit!r}}}): a queue's limit is a positive int or None.")
        found[check_queue(queue)] = limit
    return found


@final
class Worker:
    """Claims submitted runs (``engine.submit``) from queues of a PostgreSQL store and runs them; an async
    context manager, e.g. in a service's lifespan. Start as many as you like, in any process or machine.

    Leaving the block drains the worker (``drain()``); leaving it by an exception or a cancellation stops its
    runs where they are at once and releases them. The library installs no signal handler: ``ckflow worker``
    drains on SIGTERM and SIGINT.

    Args:
        store: the store's URL (``postgresql://...``) or a ``PostgresStore`` (which the caller then closes).
        queues: the queues to claim from, in order of preference.
        concurrency: at most this many runs at once in this worker.
        limits: queue -> at most this many runs of that queue under way at once across all workers (None:
            no limit); written to the store when the worker opens, for every worker of the store.
        lease_ttl: seconds a lease lasts without a heartbeat (see ``Engine``).
        heartbeat: seconds between lease renewals (default: a tenth of ``lease_ttl``).
        poll_interval: seconds between looks at the store when no notification comes; each look also takes
            over the runs of workers of this host whose process has exited.
        grace: seconds a drain lets the runs go on before it stops and releases them.
        max_concurrency: the bound on executing tasks per run.
        id: the worker's engine id (default: host, process id and a random suffix, which lets workers of this
            host take over at once the runs of a worker whose process died).

    Raises:
        ValueError: an argument is out of range, or the store cannot be shared by workers (memory, SQLite).
    """

    __slots__ = (
        "_concurrency",
        "_done",
        "_draining",
        "_engine_args",
        "_grace",
        "_limits",
        "_live",
        "_poll_interval",
        "_queues",
        "_skipped",
        "_starting",
        "_stop",
        "_store_arg",
        "_tg",
        "_wake",
    )

    def __init__(
        self,
        store: str | Store,
        *,
        queues: Sequence[str] = ("default",),
        concurrency: int = 10,
        limits: Mapping[str, int | None] | None = None,
        lease_ttl: float = 10.0,
        heartbeat: float | None = None,
        poll_interval: float = 1.0,
        grace: float = 30.0,
        max_concurrency: int | None = None,
        id: str | None = None,
    ) -> None:
        if not isinstance(store, str | Store):
            raise TypeError(f"Worker(store=...) takes a URL or a ckflow.stores.Store, got {store!r}.")
        if isinstance(queues, str) or not queues:
            raise ValueError(f"Worker(queues={queues!r}) takes a non-empty sequence of queue names.")
        self._queues = tuple(dict.fromkeys(check_queue(q) for q in queues))
        if not _is_positive_int(concurrency):
            raise ValueError(f"Worker(concurrency={concurrency!r}) must be a positive int.")
        self._concurrency = concurrency
        self._limits = _limits(limits)
        self._poll_interval = _seconds("poll_interval", poll_interval) or 1.0
        self._grace = _seconds("grace", grace)
        self._store_arg = store
        # checked by the engine itself (lease_ttl, heartbeat, max_concurrency, id)
        self._engine_args: dict[str, Any] = {
            "lease_ttl": lease_ttl,
            "heartbeat": heartbeat,
            "max_concurrency": max_concurrency,
            "id": id,
        }
        Engine(**self._engine_args)
        #: the runs this worker runs now, by id
        self._live: dict[str, Run] = {}
        #: runs this worker could not rebuild (their flow does not build here): never claimed again by it
        self._skipped: set[str] = set()
        #: runs claimed and being started (rebuilt from the store)
        self._starting = 0
        self._wake = anyio.Event()
        self._draining = anyio.Event()
        self._done = anyio.Event()
        self._stop: anyio.CancelScope | None = None
        self._tg: TaskGroup | None = None

    @property
    def queues(self) -> tuple[str, ...]:
        """The queues this worker claims from, in order of preference."""
        return self._queues

    @property
    def runs(self) -> Mapping[str, Run]:
        """The runs this worker runs now, by id."""
        return dict(self._live)

    async def __aenter__(self) -> Worker:
        if self._tg is not None:
            raise RuntimeError("This Worker is already open; a worker is entered once.")
        store = self._open_store()
        tg = anyio.create_task_group()
        await tg.__aenter__()
        try:
            await tg.start(self._serve, store)
        except BaseException as exc:
            await tg.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        self._tg = tg
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        tg = self._tg
        assert tg is not None
        if exc is None:
            self._draining.set()
        elif self._stop is not None:
            self._stop.cancel()
        return await tg.__aexit__(exc_type, exc, tb)

    async def drain(self) -> None:
        """Stop claiming, let the runs go on for up to ``grace`` seconds, then stop the runs still going where
        they are and release them for other workers; returns once that is done (at once if it is)."""
        self._draining.set()
        await self._done.wait()

    async def wait(self) -> None:
        """Wait until the worker has drained (``drain()`` was called, by a signal handler say)."""
        await self._done.wait()

    # -- the worker's task -----------------------------------------------------------------

    def _open_store(self) -> Store:
        arg = self._store_arg
        store = open_store(arg) if isinstance(arg, str) else arg
        if not isinstance(store, QueueStore):
            raise ValueError(
                f"ckflow.Worker needs a store that workers share, PostgreSQL ('postgresql://...'); {store.url!r} "
                "cannot hand out queued runs (run the flows with an Engine instead)."
            )
        return store

    async def _serve(self, store: Store, *, task_status: TaskStatus[None]) -> None:
        try:
            await store.open()
            for queue, limit in self._limits.items():
                assert isinstance(store, QueueStore)
                await store.set_queue_limit(queue, limit)
            claims = _Claims(store)
            with anyio.CancelScope() as self._stop:
                async with Engine(store=cast("Store", claims), **self._engine_args) as engine:
                    await self._work(engine, store, claims, task_status)
                    # Left by a cancellation at the end of the grace: the runs still going stop and are released.
                    self._stop.cancel()
            assert isinstance(store, QueueStore)
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await store.notify(self._queues)  # released runs: other workers claim them at once
        finally:
            self._done.set()
            if isinstance(self._store_arg, str):
                with anyio.CancelScope(shield=True):
                    await store.close()

    async def _work(self, engine: Engine, store: Store, claims: _Claims, task_status: TaskStatus[None]) -> None:
        assert isinstance(store, QueueStore)
        stop_listening = await self._listen(store)
        try:
            async with anyio.create_task_group() as tg:
                claiming = anyio.CancelScope()
                tg.start_soon(self._claim_loop, engine, store, claims, tg, claiming)
                task_status.started()
                await self._draining.wait()
                claiming.cancel()
                with anyio.move_on_after(self._grace):
                    while self._live or self._starting:
                        self._wake = anyio.Event()
                        await self._wake.wait()
                tg.cancel_scope.cancel()
        finally:
            if stop_listening is not None:
                with anyio.CancelScope(shield=True):
                    await stop_listening()

    async def _listen(self, store: QueueStore) -> Callable[[], Awaitable[None]] | None:
        queues = frozenset(self._queues)

        def heard(queue: str) -> None:
            if queue in queues:
                self._wake.set()

        try:
            with anyio.fail_after(_LISTEN_TIMEOUT):
                return await store.listen(heard)
        except (CkflowError, TimeoutError) as exc:
            engine_warning(
                "ckflow.worker.listen_failed", error=str(exc), fallback=f"polling every {self._poll_interval} s"
            )
            return None

    async def _claim_loop(
        self, engine: Engine, store: QueueStore, claims: _Claims, tg: TaskGroup, claiming: anyio.CancelScope
    ) -> None:
        with claiming:
            next_look = 0.0
            while True:
                wake = self._wake = anyio.Event()
                free = self._concurrency - len(self._live) - self._starting
                if free > 0 and time.monotonic() >= next_look:
                    next_look = time.monotonic() + self._poll_interval
                    free -= await self._take_over_dead(engine, store, tg, free)
                claimed = await self._claim(engine, store, claims, tg, free) if free > 0 else 0
                if claimed and claimed == free:
                    continue  # there may be more waiting
                with anyio.move_on_after(max(0.0, next_look - time.monotonic())):
                    await wake.wait()

    async def _claim(self, engine: Engine, store: QueueStore, claims: _Claims, tg: TaskGroup, n: int) -> int:
        lease_ttl: float = self._engine_args["lease_ttl"]
        try:
            records = await store.claim_queued(
                engine.id, self._queues, n, lease_ttl, flows=registered_flows(), skip=sorted(self._skipped)
            )
        except Exception as exc:  # the store is unreachable now: the next look tries again
            engine_warning("ckflow.worker.claim_failed", worker=engine.id, error=str(exc))
            return 0
        for record in records:  # each is rebuilt in a task of its own: they start side by side
            claims.claimed(record)
            self._starting += 1
            tg.start_soon(self._start, engine, claims, tg, record.run_id)
        return len(records)

    async def _take_over_dead(self, engine: Engine, store: QueueStore, tg: TaskGroup, free: int) -> int:
        """Take over (at most ``free``) runs of this worker's queues whose owner was a process of this host
        that has exited; returns how many."""
        try:
            owned = await store.live_owners(self._queues, engine.id, registered_flows())
        except Exception as exc:
            engine_warning("ckflow.worker.claim_failed", worker=engine.id, error=str(exc))
            return 0
        taken = 0
        for run_id, owner in owned:
            if taken >= free or run_id in self._skipped or not dead_owner(owner):
                continue
            assert isinstance(store, Store)
            try:
                await store.claim(run_id, engine.id, self._engine_args["lease_ttl"], replacing=owner)
            except (RunOwnedError, RunNotFoundError):
                continue  # another worker took it first, or it was deleted
            self._starting += 1
            await self._start(engine, None, tg, run_id)
            taken += 1
        return taken

    async def _start(self, engine: Engine, claims: _Claims | None, tg: TaskGroup, run_id: str) -> None:
        """Run a run that this worker has just claimed (the engine's own claim renews the lease); counted in
        ``_starting`` by the caller until it runs."""
        try:
            handle = await engine.resume(run_id)
        except RunOwnedError:
            return  # it ran here already, or another worker took it meanwhile
        except Exception as exc:  # its flow does not build here, or a stored value no longer decodes
            self._skipped.add(run_id)
            engine_warning("ckflow.worker.run_skipped", worker=engine.id, run_id=run_id, error=str(exc))
            return
        finally:
            self._starting -= 1
            if claims is not None:
                claims.forget(run_id)
        self._live[run_id] = handle
        tg.start_soon(self._follow, handle, name=f"ckflow worker run {run_id}")

    async def _follow(self, handle: Run) -> None:
        try:
            await handle.wait()
        except CkflowError:
            pass  # stopped here (the lease was lost, the store failed): wherever it goes on, it is not here
        finally:
            self._live.pop(handle.id, None)
            self._wake.set()

    def __repr__(self) -> str:
        return f"<ckflow.Worker queues={list(self._queues)!r} {len(self._live)}/{self._concurrency} runs>"
