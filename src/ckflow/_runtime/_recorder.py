"""The durability observer a run feeds: ``Recorder``, and ``NullRecorder`` for runs kept in memory only.

The run tells its recorder what changed (a transition, an event, a region, a
pass) and asks it when something must wait for a commit: a task's
successors, a region's reverts, the run's end. The durable recorder is
``ckflow._durable._journal.Journal``; a run without a store has the
``NullRecorder``, for which everything is committed at once, so the
scheduler and the walker run one code path whether a run is durable or not.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Final, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable

    from ckflow._failure import Failure
    from ckflow._records import CheckpointRecord, RegionRecord, Retention
    from ckflow._states import TaskState

__all__ = ["NULL", "NullRecorder", "Recorder"]


class Recorder(Protocol):
    """What a run's parts tell the store about, and ask it to wait for."""

    @property
    def durable(self) -> bool:
        """True for a store-backed recorder: what the run changes is written, and some steps wait for commits."""
        ...

    @property
    def gen(self) -> int:
        """The generation being gathered: what waits for "this commit" waits for it."""
        ...

    @property
    def seq(self) -> int:
        """The sequence number the next event will get."""
        ...

    @property
    def lease_until(self) -> float:
        """time.monotonic() at which the engine's lease lapses by its own clock (infinite without a store)."""
        ...

    @property
    def dead(self) -> bool:
        """True once the store failed or the lease was lost: nothing more is written."""
        ...

    def kill(self) -> None:
        """Nothing more may be written (the store failed, or the lease was lost)."""
        ...

    def lease_renewed(self, sent_at: float) -> None:
        """A renewal sent at ``sent_at`` (time.monotonic()) extended the lease."""
        ...

    def transition(self, n: int, old: TaskState, new: TaskState, attempt: int, failure: Failure | None) -> int | None:
        """Record a task transition; its event's sequence number (None without a store)."""
        ...

    def event(self, name: str, fields: dict[str, Any]) -> int | None:
        """Record a run, walker or control event; its sequence number (None without a store)."""
        ...

    def touch(self, n: int) -> None:
        """Task ``n``'s record changed without a transition (its retries were counted, say)."""
        ...

    def encode_result(self, n: int, value: Any) -> None:
        """Keep task ``n``'s result as JSON (raises TypeError if it cannot be); nothing without a store."""
        ...

    def forget_result(self, n: int) -> None:
        """Task ``n`` was reset: its stored result goes."""
        ...

    def result_text(self, n: int) -> str | None:
        """Task ``n``'s result as JSON, if kept."""
        ...

    def hold(self, n: int) -> bool:
        """Task ``n`` succeeded: True if its successors must wait for the next commit (``committed``)."""
        ...

    def held(self, n: int) -> bool:
        """True while task ``n``'s success is not yet committed."""
        ...

    def region(self, region_id: int, record: Callable[[], RegionRecord]) -> int:
        """Record a region (``record`` builds it, only for a store); returns the generation that writes it."""
        ...

    def drop_region(self, region_id: int) -> None:
        """The region's record goes (retried, or merged into another)."""
        ...

    def checkpoint(self, key: tuple[str, int], record: Callable[[], CheckpointRecord]) -> None:
        """Record a pass of a checkpoint (``record`` builds it, only for a store)."""
        ...

    def retain(self, rule: Retention) -> None:
        """Delete what a checkpoint no longer retains."""
        ...

    def on_commit(self, callback: Callable[[], None]) -> bool:
        """Call ``callback`` once what the run changed is committed; True if it waits (False: called now)."""
        ...

    def wall(self, monotonic: float | None) -> float | None:
        """A time.monotonic() reading as wall-clock time."""
        ...

    @property
    def pending(self) -> bool:
        """True when something is not yet written and a write may start now (a worker then writes it)."""
        ...

    @property
    def urgent(self) -> bool:
        """True when some step waits for the next commit and a write may start now."""
        ...

    async def flush(self) -> None:
        """Write what was gathered, in one transaction, and release what waited for it."""
        ...

    async def confirm_lease(self) -> None:
        """The lease lapsed by this engine's clock: renew it, or stop the run if another engine owns it."""
        ...


class NullRecorder:
    """The recorder of a run without a store: nothing is written, everything is committed at once."""

    __slots__ = ()

    @property
    def durable(self) -> bool:
        return False

    @property
    def gen(self) -> int:
        return 0

    @property
    def seq(self) -> int:
        return 0

    @property
    def lease_until(self) -> float:
        return math.inf

    @property
    def dead(self) -> bool:
        return False

    @property
    def pending(self) -> bool:
        return False

    @property
    def urgent(self) -> bool:
        return False

    def kill(self) -> None:
        return None

    def lease_renewed(self, sent_at: float) -> None:
        return None

    def transition(self, n: int, old: TaskState, new: TaskState, attempt: int, failure: Failure | None) -> None:
        return None

    def event(self, name: str, fields: dict[str, Any]) -> None:
        return None

    def touch(self, n: int) -> None:
        return None

    def encode_result(self, n: int, value: Any) -> None:
        return None

    def forget_result(self, n: int) -> None:
        return None

    def result_text(self, n: int) -> None:
        return None

    def hold(self, n: int) -> bool:
        return False

    def held(self, n: int) -> bool:
        return False

    def region(self, region_id: int, record: Callable[[], RegionRecord]) -> int:
        return 0

    def drop_region(self, region_id: int) -> None:
        return None

    def checkpoint(self, key: tuple[str, int], record: Callable[[], CheckpointRecord]) -> None:
        return None

    def retain(self, rule: Retention) -> None:
        return None

    def on_commit(self, callback: Callable[[], None]) -> bool:
        callback()
        return False

    def wall(self, monotonic: float | None) -> float | None:
        return None

    async def flush(self) -> None:
        return None

    async def confirm_lease(self) -> None:
        return None


#: the one NullRecorder (it has no state)
NULL: Final = NullRecorder()
