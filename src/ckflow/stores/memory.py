"""``MemoryStore``: the store contract kept in this process's memory.

It behaves like the durable stores in every way a test can see (records go
through the same JSON encoding, leases expire, writes are fenced), and it
forgets everything when the process ends. ``memory://`` is a fresh store;
``memory://name`` is shared by every engine of the process that names it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, final

from ckflow._errors import LeaseLostError, RunExistsError, RunNotFoundError, RunOwnedError
from ckflow._records import Renewal, RunRecord, StoredRun, construct

if TYPE_CHECKING:
    from collections.abc import Collection
    from types import TracebackType

    from ckflow._events import Event
    from ckflow._records import Batch, CheckpointRecord, ControlRequest, RegionRecord, TaskRecord
    from ckflow._states import FlowState

__all__ = ["MemoryStore"]


@dataclass
class _Data:
    runs: dict[str, RunRecord] = field(default_factory=dict)
    tasks: dict[str, dict[str, TaskRecord]] = field(default_factory=dict)
    #: run -> (checkpoint, pass) -> record
    checkpoints: dict[str, dict[tuple[str, int], CheckpointRecord]] = field(default_factory=dict)
    regions: dict[str, dict[int, RegionRecord]] = field(default_factory=dict)
    #: run -> seq -> event (dicts keep insertion order, and events arrive in seq order)
    events: dict[str, dict[int, Event]] = field(default_factory=dict)
    requests: dict[str, dict[str, ControlRequest]] = field(default_factory=dict)


_SHARED: Final[dict[str, _Data]] = {}


@final
class MemoryStore:
    """A store in this process's memory (see the module docstring)."""

    __slots__ = ("_data", "_url")

    def __init__(self, url: str = "memory://") -> None:
        self._url = url
        name = url.split("://", 1)[1] if "://" in url else ""
        self._data = _SHARED.setdefault(name, _Data()) if name else _Data()

    @property
    def url(self) -> str:
        return self._url

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> MemoryStore:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def _run(self, run_id: str) -> RunRecord:
        run = self._data.runs.get(run_id)
        if run is None:
            raise RunNotFoundError(run_id, f"store {self._url!r}")
        return run

    # -- runs --------------------------------------------------------------------

    async def create_run(self, run: RunRecord) -> None:
        data = self._data
        if run.run_id in data.runs:
            raise RunExistsError(run.run_id, f"store {self._url!r}")
        data.runs[run.run_id] = run
        data.tasks[run.run_id] = {}
        data.checkpoints[run.run_id] = {}
        data.regions[run.run_id] = {}
        data.events[run.run_id] = {}
        data.requests[run.run_id] = {}

    async def get_run(self, run_id: str) -> RunRecord:
        return self._run(run_id)

    async def list_runs(
        self,
        *,
        states: Collection[FlowState] | None = None,
        flow: str | None = None,
        ended_before: float | None = None,
        limit: int | None = None,
    ) -> list[RunRecord]:
        wanted = None if states is None else set(states)
        found = [
            run
            for run in self._data.runs.values()
            if (wanted is None or run.state in wanted)
            and (flow is None or run.flow == flow)
            and (ended_before is None or (run.ended_at is not None and run.ended_at < ended_before))
        ]
        found.sort(key=lambda r: (r.created_at, r.run_id), reverse=True)
        return found if limit is None else found[:limit]

    async def load(self, run_id: str) -> StoredRun:
        run = self._run(run_id)
        data = self._data
        latest: dict[str, CheckpointRecord] = {}
        for (name, _), record in sorted(data.checkpoints[run_id].items()):
            latest[name] = record
        failures = [
            e.failure for e in data.events[run_id].values() if e.failure is not None and e.failure.kind != "cancelled"
        ]
        return StoredRun(
            run=run,
            tasks=list(data.tasks[run_id].values()),
            checkpoints=list(latest.values()),
            regions=list(data.regions[run_id].values()),
            failures=failures,
        )

    async def write(self, batch: Batch) -> None:
        data = self._data
        run_id = batch.run.run_id
        stored = self._run(run_id)
        if stored.owner != batch.owner:
            raise LeaseLostError(run_id, batch.owner)
        # The lease is not the writer's to change: keep the stored owner and expiry.
        data.runs[run_id] = construct(
            RunRecord, **{**batch.run.__dict__, "owner": stored.owner, "lease_expires": stored.lease_expires}
        )
        tasks = data.tasks[run_id]
        for t in batch.tasks:
            tasks[t.task] = t
        checkpoints = data.checkpoints[run_id]
        for c in batch.checkpoints:
            checkpoints[(c.checkpoint, c.pass_no)] = c
        regions = data.regions[run_id]
        for r in batch.regions:
            regions[r.region_id] = r
        for region_id in batch.drop_regions:
            regions.pop(region_id, None)
        events = data.events[run_id]
        for e in batch.events:
            assert e.seq is not None
            events[e.seq] = e
        for rule in batch.retention:
            for key in [k for k in checkpoints if k[0] == rule.checkpoint and k[1] < rule.keep_from_pass]:
                del checkpoints[key]
            names = set(rule.event_checkpoints)
            for seq in [s for s, e in events.items() if s < rule.before_seq and e.checkpoint in names]:
                del events[seq]
        requests = data.requests[run_id]
        for req in batch.requests:
            requests[req.request_id] = req

    # -- leases ------------------------------------------------------------------

    async def claim(self, run_id: str, owner: str, ttl: float) -> RunRecord:
        run = self._run(run_id)
        now = time.time()
        if run.owner is not None and run.owner != owner and (run.lease_expires or 0.0) > now:
            raise RunOwnedError(run_id, run.owner, run.lease_expires)
        run = run.model_copy(update={"owner": owner, "lease_expires": now + ttl})
        self._data.runs[run_id] = run
        return run

    async def renew(self, owner: str, run_ids: Collection[str], ttl: float) -> Renewal:
        data = self._data
        expires = time.time() + ttl
        lost: list[str] = []
        pending: list[ControlRequest] = []
        for run_id in run_ids:
            run = data.runs.get(run_id)
            if run is None or run.owner != owner:
                lost.append(run_id)
                continue
            data.runs[run_id] = run.model_copy(update={"lease_expires": expires})
            pending.extend(r for r in data.requests[run_id].values() if r.done_at is None)
        pending.sort(key=lambda r: r.requested_at)
        return Renewal(lost=lost, requests=pending)

    async def release(self, run_id: str, owner: str) -> None:
        run = self._data.runs.get(run_id)
        if run is not None and run.owner == owner:
            self._data.runs[run_id] = run.model_copy(update={"owner": None, "lease_expires": None})

    # -- control requests --------------------------------------------------------

    async def request(self, request: ControlRequest) -> None:
        self._run(request.run_id)
        self._data.requests[request.run_id][request.request_id] = request

    async def requests(self, run_id: str) -> list[ControlRequest]:
        return sorted(self._data.requests.get(run_id, {}).values(), key=lambda r: r.requested_at)

    # -- reading -----------------------------------------------------------------

    async def tasks(self, run_id: str) -> list[TaskRecord]:
        return list(self._data.tasks.get(run_id, {}).values())

    async def checkpoints(self, run_id: str, checkpoint: str | None = None) -> list[CheckpointRecord]:
        return [
            record
            for (name, _), record in sorted(self._data.checkpoints.get(run_id, {}).items())
            if checkpoint is None or name == checkpoint
        ]

    async def events(self, run_id: str, *, after: int = -1, limit: int | None = None) -> list[Event]:
        found = [e for s, e in self._data.events.get(run_id, {}).items() if s > after]
        return found if limit is None else found[:limit]

    async def row_counts(self, run_id: str) -> dict[str, int]:
        data = self._data
        return {
            "tasks": len(data.tasks.get(run_id, {})),
            "checkpoints": len(data.checkpoints.get(run_id, {})),
            "regions": len(data.regions.get(run_id, {})),
            "events": len(data.events.get(run_id, {})),
            "requests": len(data.requests.get(run_id, {})),
        }

    # -- maintenance -------------------------------------------------------------

    async def delete_runs(self, run_ids: Collection[str]) -> int:
        data = self._data
        deleted = 0
        for run_id in run_ids:
            if data.runs.pop(run_id, None) is not None:
                deleted += 1
            for table in (data.tasks, data.checkpoints, data.regions, data.events, data.requests):
                table.pop(run_id, None)
        return deleted

    def __repr__(self) -> str:
        return f"<ckflow.stores.MemoryStore {self._url!r} {len(self._data.runs)} runs>"
