"""The ``Store`` protocol, and ``open_store(url)`` which picks a backend by URL scheme."""

from __future__ import annotations

import abc
import importlib
from typing import TYPE_CHECKING, Final, Protocol, Self, runtime_checkable

from ckflow._errors import StoreUnavailableError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Collection, Sequence
    from types import TracebackType

    from ckflow._events import Event
    from ckflow._records import (
        Batch,
        CheckpointRecord,
        ControlRequest,
        Renewal,
        RunRecord,
        StoredRun,
        TaskRecord,
    )
    from ckflow._states import FlowState

__all__ = ["SCHEMA_VERSION", "QueueStore", "Store", "StoreBase", "not_open", "open_store"]

#: The version of the stores' schema that this ckflow writes. A store written by a newer ckflow is
#: refused with ``SchemaVersionError``; an older one is migrated when it is opened.
SCHEMA_VERSION: Final = 3

#: URL scheme -> (module, class, extra to install)
_BACKENDS: Final = {
    "memory": ("ckflow.stores.memory", "MemoryStore", None),
    "sqlite": ("ckflow.stores.sqlite", "SQLiteStore", None),
    "postgresql": ("ckflow.stores.postgres", "PostgresStore", "postgres"),
    "postgres": ("ckflow.stores.postgres", "PostgresStore", "postgres"),
}


@runtime_checkable
class Store(Protocol):
    """Where runs are kept: runs, task records, checkpoint passes, regions, events and control requests.

    Every method is a coroutine and safe to call concurrently from tasks of
    one event loop. Times are wall-clock seconds since the epoch; lease times
    are read from the store's own clock (the database server's, for
    PostgreSQL), so that engines on several machines agree on them.

    A store is an async context manager: ``async with open_store(url) as store``
    opens it (creating or migrating its schema) and closes it.
    """

    @property
    def url(self) -> str:
        """The URL the store was opened with (credentials left out)."""
        ...

    async def open(self) -> None:
        """Connect, and create or migrate the schema. Opening an open store does nothing.

        Raises:
            StoreNotFoundError: the store was made with ``create=False`` and is not there; nothing was created.
            StoreUnavailableError: the database cannot be reached, or the file is not a ckflow store.
            SchemaVersionError: the store was written by a newer ckflow.
        """
        ...

    async def close(self) -> None:
        """Release the connection. Closing a closed store does nothing."""
        ...

    async def __aenter__(self) -> Store: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    # -- runs --------------------------------------------------------------------

    async def create_run(self, run: RunRecord) -> None:
        """Record a new run, owned by ``run.owner`` until ``run.lease_expires``.

        Raises:
            RunExistsError: a run with this id exists.
        """
        ...

    async def get_run(self, run_id: str) -> RunRecord:
        """The run's record.

        Raises:
            RunNotFoundError: no run has this id.
        """
        ...

    async def list_runs(
        self,
        *,
        states: Collection[FlowState] | None = None,
        flow: str | None = None,
        ended_before: float | None = None,
        limit: int | None = None,
        before: tuple[float, str] | None = None,
    ) -> list[RunRecord]:
        """Runs, newest first (by ``created_at``, ties by ``run_id``, both descending), filtered by state, flow name
        and end time.

        ``limit`` keeps the first runs of that order. ``before=(created_at, run_id)``, the keys of a run listed
        last, keeps the runs after it in that order (whether or not that run is still there): with ``limit``,
        one page of a listing, each page one bounded query.
        """
        ...

    async def load(self, run_id: str) -> StoredRun:
        """Everything needed to resume the run: its record, task records, the latest pass of every
        checkpoint, its open regions and its failures (execute and revert, not cancellations).

        Raises:
            RunNotFoundError: no run has this id.
        """
        ...

    async def write(self, batch: Batch) -> None:
        """Apply ``batch`` atomically: all of it or nothing.

        The run's record takes every field of ``batch.run`` but ``owner`` and
        ``lease_expires``; task, checkpoint-pass and region records are
        inserted or replaced by key; ``drop_regions`` are deleted; events are
        appended; ``retention`` deletes older pass records of a checkpoint
        (``pass_no < keep_from_pass``) and the events of its scope
        (``seq < before_seq`` and ``checkpoint in event_checkpoints``);
        ``requests`` are updated (marked done). With ``release``, the writer's lease is given up as well
        (the run's owner and lease expiry are cleared), in the same transaction.

        Raises:
            LeaseLostError: ``batch.owner`` no longer owns the run; nothing was written.
            RunNotFoundError: the run does not exist (it was deleted).
        """
        ...

    # -- leases ------------------------------------------------------------------

    async def claim(self, run_id: str, owner: str, ttl: float, *, replacing: str | None = None) -> RunRecord:
        """Make ``owner`` the run's owner for ``ttl`` seconds, if nobody else holds a live lease.

        Claiming a run one already owns renews the lease. With ``replacing``, the run is also taken
        from that owner exactly, however long its lease has left: a compare-and-swap for an owner
        known to be dead (its process is gone), which fails if anyone else took the run meanwhile.
        Returns the run's record.

        Raises:
            RunNotFoundError: no run has this id.
            RunOwnedError: another owner's lease has not expired.
        """
        ...

    async def renew(self, owner: str, run_ids: Collection[str], ttl: float) -> Renewal:
        """Extend ``owner``'s leases on ``run_ids`` by ``ttl`` seconds from now.

        Returns the runs among ``run_ids`` that ``owner`` no longer owns, and the
        control requests not yet done of the runs it still owns, oldest first.
        """
        ...

    async def release(self, run_id: str, owner: str) -> None:
        """Give up ``owner``'s lease on the run (nothing happens if it is not the owner)."""
        ...

    # -- control requests --------------------------------------------------------

    async def request(self, request: ControlRequest) -> None:
        """Record a control request for the run's owner to carry out.

        Raises:
            RunNotFoundError: no run has ``request.run_id``.
        """
        ...

    async def requests(self, run_id: str) -> list[ControlRequest]:
        """The run's control requests, done or not, oldest first."""
        ...

    # -- reading -----------------------------------------------------------------

    async def tasks(self, run_id: str) -> list[TaskRecord]:
        """The run's task records."""
        ...

    async def checkpoints(self, run_id: str, checkpoint: str | None = None) -> list[CheckpointRecord]:
        """The run's retained checkpoint passes (of one checkpoint if named), by checkpoint and pass."""
        ...

    async def events(self, run_id: str, *, after: int = -1, limit: int | None = None) -> list[Event]:
        """The run's retained events with ``seq > after``, in order."""
        ...

    async def row_counts(self, run_id: str) -> dict[str, int]:
        """How many rows the run holds: keys ``tasks``, ``checkpoints``, ``regions``, ``events``, ``requests``."""
        ...

    # -- maintenance -------------------------------------------------------------

    async def delete_runs(self, run_ids: Collection[str]) -> int:
        """Delete these runs and everything recorded about them; returns how many runs were deleted."""
        ...


@runtime_checkable
class QueueStore(Protocol):
    """What a store needs for workers to share it (``PostgresStore`` has it): claiming queued runs, queue
    limits, the owners of runs under way, and notifications of runs to claim."""

    async def claim_queued(
        self, owner: str, queues: Sequence[str], n: int, ttl: float, *, flows: Sequence[str], skip: Sequence[str] = ()
    ) -> list[RunRecord]:
        """Claim up to ``n`` runs of ``queues`` for ``owner`` (see ``PostgresStore.claim_queued``)."""
        ...

    async def set_queue_limit(self, queue: str, concurrency: int | None) -> None:
        """At most ``concurrency`` runs of ``queue`` under way at once, across all workers."""
        ...

    async def live_owners(self, queues: Sequence[str], owner: str, flows: Sequence[str]) -> list[tuple[str, str]]:
        """(run id, owner) of runs of ``queues`` under way that another owner holds a live lease on."""
        ...

    async def notify(self, queues: Sequence[str]) -> None:
        """Wake the workers of ``queues``."""
        ...

    async def listen(self, callback: Callable[[str], object]) -> Callable[[], Awaitable[None]]:
        """Call ``callback(queue)`` when a run becomes claimable in a queue; returns the function that stops."""
        ...


class StoreBase(abc.ABC):
    """What ckflow's own stores share: ``async with store`` opens the store and closes it."""

    __slots__ = ()

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect, and create or migrate the schema (see ``Store.open``)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the connection (see ``Store.close``)."""

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


def not_open(url: str) -> StoreUnavailableError:
    """The error of a call on a store that is not open."""
    return StoreUnavailableError(
        url, "the store is not open; use `async with open_store(url) as store` or `await store.open()`."
    )


def open_store(url: str, *, create: bool = True) -> Store:
    """The store for ``url``, not yet opened: ``memory://`` (``memory://name`` is shared in the process),
    ``sqlite:///path/to/runs.db`` or ``postgresql://user@host/db``.

    The backend is imported only when asked for, so the core needs none of the drivers.

    Args:
        url: the store's URL.
        create: whether opening the store creates it (the SQLite file, the PostgreSQL schema and tables)
            when it is missing. With False, opening a missing store raises ``StoreNotFoundError`` and
            creates nothing: what a tool that only reads, or acts on existing runs, wants.

    Raises:
        ValueError: the URL's scheme is not one ckflow knows.
        ImportError: the backend's driver is missing; the message gives the pip command.
    """
    given: object = url
    if not isinstance(given, str) or "://" not in given:
        raise ValueError(f"A store URL looks like 'sqlite:///runs.db' or 'postgresql://host/db', got {url!r}.")
    scheme = url.split("://", 1)[0].lower()
    backend = _BACKENDS.get(scheme)
    if backend is None:
        known = ", ".join(f"{s}://" for s in _BACKENDS)
        raise ValueError(f"Unknown store scheme {scheme!r} in {url!r}; ckflow knows {known}.")
    module_name, class_name, extra = backend
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if extra is None:
            raise
        raise ImportError(
            f"The {scheme}:// store needs an optional dependency ({exc.name}); install it with "
            f"`pip install 'ckflow[{extra}]'`."
        ) from exc
    store: Store = getattr(module, class_name)(url, create=create)
    return store
