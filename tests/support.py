"""Helpers for tests of durable runs: a store that watches (or cuts off) an engine's writes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import ckflow
from ckflow.stores import MemoryStore

if TYPE_CHECKING:
    from collections.abc import Callable, Collection

    from ckflow.stores import Batch, Renewal, RunRecord, Store


class Crash(ckflow.StoreError):
    """The simulated death of a process: from this write on, nothing it does reaches the store."""


class WatchedStore:
    """A store that passes everything through to ``inner``, and can die at its ``crash_at``-th write.

    ``batches`` holds every batch that reached the store. ``on_write(batch)`` is
    called before each write reaches the store. Once dead, every write,
    renewal and release fails, as if the engine's process had been killed:
    what the store holds is what was written before. ``inner`` stays usable
    by another engine, which plays the process that resumes.
    """

    def __init__(self, inner: Store | None = None, *, crash_at: int | None = None) -> None:
        self.inner: Store = inner if inner is not None else MemoryStore()
        self.crash_at = crash_at
        self.batches: list[Batch] = []
        self.writes = 0
        self.dead = False
        self.on_write: Callable[[Batch], Any] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    @property
    def url(self) -> str:
        return self.inner.url

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        return None

    async def write(self, batch: Batch) -> None:
        self.writes += 1
        if self.dead or (self.crash_at is not None and self.writes >= self.crash_at):
            self.dead = True
            raise Crash(f"simulated crash at write {self.writes}")
        if self.on_write is not None:
            result = self.on_write(batch)
            if result is not None:
                await result
        await self.inner.write(batch)
        self.batches.append(batch)

    async def renew(self, owner: str, run_ids: Collection[str], ttl: float) -> Renewal:
        if self.dead:
            raise Crash("the process is dead")
        return await self.inner.renew(owner, run_ids, ttl)

    async def release(self, run_id: str, owner: str) -> None:
        if self.dead:
            raise Crash("the process is dead")
        await self.inner.release(run_id, owner)

    async def claim(self, run_id: str, owner: str, ttl: float, *, replacing: str | None = None) -> RunRecord:
        return await self.inner.claim(run_id, owner, ttl, replacing=replacing)


def expire_lease(store: Store, run_id: str) -> None:
    """Let the run's lease lapse at once, as if its engine had died long enough ago (memory stores)."""
    if isinstance(store, WatchedStore):
        store = store.inner
    assert isinstance(store, MemoryStore)
    store._runs[run_id].lease_expires = 0.0
