"""``MemoryStore``: the store contract kept in this process's memory.

It behaves like the durable stores in every way a test can see: records are
kept as JSON and read back as fresh objects (so what a run gets back is what
it would get from SQLite or PostgreSQL: no live exception on a failure, lists
where tuples were written), leases expire, and writes are fenced. It forgets
everything when the process ends. ``memory://`` is a fresh store;
``memory://name`` is shared by every engine of the process that names it.
``?keep_ended=N`` keeps only the N runs that ended last, so that a store in a
long-lived process stays bounded (by default it keeps every run until
``delete_runs``).

Keeping bytes rather than objects also keeps a long-lived store out of the way
of Python's cyclic garbage collector, which walks every live container on each
full collection: a dict of strings and bytes is not even tracked.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, final
from urllib.parse import parse_qsl, urlsplit

from ckflow._errors import LeaseLostError, RunExistsError, RunNotFoundError, RunOwnedError, StoreNotFoundError
from ckflow._events import Event
from ckflow._records import (
    CheckpointRecord,
    ControlRequest,
    RegionRecord,
    Renewal,
    RunRecord,
    StoredRun,
    TaskRecord,
)
from ckflow._states import TERMINAL
from ckflow.stores._protocol import StoreBase

if TYPE_CHECKING:
    from collections.abc import Collection, Mapping

    from ckflow._failure import Failure
    from ckflow._records import Batch
    from ckflow._states import FlowState

__all__ = ["MemoryStore"]


def _json(record: RunRecord | TaskRecord | CheckpointRecord | RegionRecord | ControlRequest | Event) -> bytes:
    return record.__pydantic_serializer__.to_json(record)


#: the regions or requests of a run that has none (most runs never have any): one shared, read-only
#: mapping rather than two empty dicts per run (128 bytes of some 5.4 KB that a run of 3 tasks keeps)
_NONE: Final[Mapping[Any, bytes]] = MappingProxyType({})


@dataclass(slots=True)
class _Run:
    """One run: its record as JSON with the lease beside it, and its other rows as JSON by key."""

    record: bytes
    owner: str | None
    lease_expires: float | None
    tasks: dict[str, bytes] = field(default_factory=dict)
    checkpoints: dict[tuple[str, int], bytes] = field(default_factory=dict)
    regions: Mapping[int, bytes] = field(default_factory=lambda: _NONE)
    #: seq -> (checkpoint, failure kind, event as JSON); dicts keep insertion order, and seqs arrive in order
    events: dict[int, tuple[str | None, str | None, bytes]] = field(default_factory=dict)
    requests: Mapping[str, bytes] = field(default_factory=lambda: _NONE)

    def own_regions(self) -> dict[int, bytes]:
        if not isinstance(self.regions, dict):
            self.regions = {}
        return self.regions

    def own_requests(self) -> dict[str, bytes]:
        if not isinstance(self.requests, dict):
            self.requests = {}
        return self.requests

    def run(self) -> RunRecord:
        record = RunRecord.model_validate_json(self.record)
        return record.model_copy(update={"owner": self.owner, "lease_expires": self.lease_expires})


_SHARED: Final[dict[str, dict[str, _Run]]] = {}


@final
class MemoryStore(StoreBase):
    """A store in this process's memory (see the module docstring).

    With ``create=False``, ``open()`` raises ``StoreNotFoundError`` unless the URL names a memory store
    that this process already made (``memory://`` alone never does: each such store is new).
    """

    __slots__ = ("_ended", "_keep_ended", "_missing", "_runs", "_url")

    def __init__(self, url: str = "memory://", *, create: bool = True) -> None:
        self._url = url
        parts = urlsplit(url)
        name = parts.netloc + parts.path
        self._missing = not create and name not in _SHARED
        self._runs: dict[str, _Run] = _SHARED.setdefault(name, {}) if name and not self._missing else {}
        #: ``?keep_ended=N``: keep only the N runs that ended last (None: every run, until ``delete_runs``)
        self._keep_ended: int | None = None
        for key, value in parse_qsl(parts.query):
            if key != "keep_ended" or not value.isdigit() or int(value) < 1:
                raise ValueError(
                    f"Memory store URL {url!r}: the one option is `?keep_ended=N` (N >= 1), got {key}={value!r}."
                )
            self._keep_ended = int(value)
        #: ended runs, oldest first (only with ``keep_ended``)
        self._ended: dict[str, None] = {}

    @property
    def url(self) -> str:
        return self._url

    async def open(self) -> None:
        if self._missing:
            raise StoreNotFoundError(self._url, "no memory store of that name in this process")

    async def close(self) -> None:
        return None

    def _run(self, run_id: str) -> _Run:
        run = self._runs.get(run_id)
        if run is None:
            raise RunNotFoundError(run_id, f"store {self._url!r}")
        return run

    # -- runs --------------------------------------------------------------------

    async def create_run(self, run: RunRecord) -> None:
        if run.run_id in self._runs:
            raise RunExistsError(run.run_id, f"store {self._url!r}")
        self._runs[run.run_id] = _Run(_json(run), run.owner, run.lease_expires)

    async def get_run(self, run_id: str) -> RunRecord:
        return self._run(run_id).run()

    async def list_runs(
        self,
        *,
        states: Collection[FlowState] | None = None,
        flow: str | None = None,
        ended_before: float | None = None,
        limit: int | None = None,
        before: tuple[float, str] | None = None,
    ) -> list[RunRecord]:
        wanted = None if states is None else set(states)
        found = [
            run
            for run in (entry.run() for entry in self._runs.values())
            if (wanted is None or run.state in wanted)
            and (flow is None or run.flow == flow)
            and (ended_before is None or (run.ended_at is not None and run.ended_at < ended_before))
            and (before is None or (run.created_at, run.run_id) < before)
        ]
        found.sort(key=lambda r: (r.created_at, r.run_id), reverse=True)
        return found if limit is None else found[:limit]

    async def load(self, run_id: str) -> StoredRun:
        entry = self._run(run_id)
        latest: dict[str, bytes] = {}
        for (name, _), record in sorted(entry.checkpoints.items()):
            latest[name] = record
        failures: list[Failure] = []
        for _, kind, body in entry.events.values():
            if kind is not None and kind != "cancelled":
                failure = Event.model_validate_json(body).failure
                if failure is not None:
                    failures.append(failure)
        return StoredRun(
            run=entry.run(),
            tasks=[TaskRecord.model_validate_json(t) for t in entry.tasks.values()],
            checkpoints=[CheckpointRecord.model_validate_json(c) for c in latest.values()],
            regions=[RegionRecord.model_validate_json(r) for r in entry.regions.values()],
            failures=failures,
        )

    async def write(self, batch: Batch) -> None:
        run_id = batch.run.run_id
        entry = self._run(run_id)
        if entry.owner != batch.owner:
            raise LeaseLostError(run_id, batch.owner)
        # The lease is not the writer's to change: the entry keeps its owner and expiry.
        entry.record = _json(batch.run)
        tasks = entry.tasks
        for t in batch.tasks:
            tasks[t.task] = _json(t)
        checkpoints = entry.checkpoints
        for c in batch.checkpoints:
            checkpoints[(c.checkpoint, c.pass_no)] = _json(c)
        if batch.regions or batch.drop_regions:
            regions = entry.own_regions()
            for r in batch.regions:
                regions[r.region_id] = _json(r)
            for region_id in batch.drop_regions:
                regions.pop(region_id, None)
        events = entry.events
        for e in batch.events:
            assert e.seq is not None, "the engine numbers every event it writes"
            events[e.seq] = (e.checkpoint, None if e.failure is None else e.failure.kind, _json(e))
        for rule in batch.retention:
            for key in [k for k in checkpoints if k[0] == rule.checkpoint and k[1] < rule.keep_from_pass]:
                del checkpoints[key]
            names = set(rule.event_checkpoints)
            for seq in [s for s, e in events.items() if s < rule.before_seq and e[0] in names]:
                del events[seq]
        if batch.requests:
            requests = entry.own_requests()
            for req in batch.requests:
                requests[req.request_id] = _json(req)
        if batch.release:
            entry.owner, entry.lease_expires = None, None
        if self._keep_ended is not None and batch.run.state in TERMINAL:
            ended = self._ended
            ended[run_id] = None
            while len(ended) > self._keep_ended:
                oldest = next(iter(ended))
                del ended[oldest]
                self._runs.pop(oldest, None)

    # -- leases ------------------------------------------------------------------

    async def claim(self, run_id: str, owner: str, ttl: float, *, replacing: str | None = None) -> RunRecord:
        entry = self._run(run_id)
        now = time.time()
        holder = entry.owner
        if holder is not None and holder not in (owner, replacing) and (entry.lease_expires or 0.0) > now:
            raise RunOwnedError(run_id, holder, entry.lease_expires)
        entry.owner, entry.lease_expires = owner, now + ttl
        return entry.run()

    async def renew(self, owner: str, run_ids: Collection[str], ttl: float) -> Renewal:
        expires = time.time() + ttl
        lost: list[str] = []
        pending: list[ControlRequest] = []
        for run_id in run_ids:
            entry = self._runs.get(run_id)
            if entry is None or entry.owner != owner:
                lost.append(run_id)
                continue
            entry.lease_expires = expires
            requests = (ControlRequest.model_validate_json(r) for r in entry.requests.values())
            pending.extend(r for r in requests if r.done_at is None)
        pending.sort(key=lambda r: r.requested_at)
        return Renewal(lost=lost, requests=pending)

    async def release(self, run_id: str, owner: str) -> None:
        entry = self._runs.get(run_id)
        if entry is not None and entry.owner == owner:
            entry.owner, entry.lease_expires = None, None

    # -- control requests --------------------------------------------------------

    async def request(self, request: ControlRequest) -> None:
        self._run(request.run_id).own_requests()[request.request_id] = _json(request)

    async def requests(self, run_id: str) -> list[ControlRequest]:
        entry = self._runs.get(run_id)
        found = [] if entry is None else [ControlRequest.model_validate_json(r) for r in entry.requests.values()]
        return sorted(found, key=lambda r: r.requested_at)

    # -- reading -----------------------------------------------------------------

    async def tasks(self, run_id: str) -> list[TaskRecord]:
        entry = self._runs.get(run_id)
        return [] if entry is None else [TaskRecord.model_validate_json(t) for t in entry.tasks.values()]

    async def checkpoints(self, run_id: str, checkpoint: str | None = None) -> list[CheckpointRecord]:
        entry = self._runs.get(run_id)
        if entry is None:
            return []
        return [
            CheckpointRecord.model_validate_json(record)
            for (name, _), record in sorted(entry.checkpoints.items())
            if checkpoint is None or name == checkpoint
        ]

    async def events(self, run_id: str, *, after: int = -1, limit: int | None = None) -> list[Event]:
        entry = self._runs.get(run_id)
        if entry is None:
            return []
        bodies = [e[2] for s, e in entry.events.items() if s > after]
        found = [Event.model_validate_json(body) for body in (bodies if limit is None else bodies[:limit])]
        return found

    async def row_counts(self, run_id: str) -> dict[str, int]:
        entry = self._runs.get(run_id)
        if entry is None:
            return dict.fromkeys(("tasks", "checkpoints", "regions", "events", "requests"), 0)
        return {
            "tasks": len(entry.tasks),
            "checkpoints": len(entry.checkpoints),
            "regions": len(entry.regions),
            "events": len(entry.events),
            "requests": len(entry.requests),
        }

    # -- maintenance -------------------------------------------------------------

    async def delete_runs(self, run_ids: Collection[str]) -> int:
        return sum(1 for run_id in run_ids if self._runs.pop(run_id, None) is not None)

    def __repr__(self) -> str:
        return f"<ckflow.stores.MemoryStore {self._url!r} {len(self._runs)} runs>"
