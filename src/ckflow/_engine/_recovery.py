"""Recovery on start: an engine adopts the durable runs that engines now gone left unfinished.

When an engine with ``recover=True`` opens, it looks through its store for
the runs that are PENDING or RUNNING (the store filters by state, so ended
runs cost nothing), and takes each one that no live engine runs:

- at once when the run has no owner (its engine shut down cleanly and
  released it), or its owner was an engine of this same id (an earlier life
  of a service started with a fixed ``id=``);
- at once when its owner was an engine on this host whose process has
  exited (an engine id is ``host:pid:suffix``): the lease is taken from
  exactly that owner with ``Store.claim(..., replacing=owner)``, however long
  it has left;
- otherwise once its lease has lapsed, which a look every ``lease_ttl / 2``
  seconds, for as long as the engine is open, finds.

The claim is the arbiter: of two engines recovering at once only one wins a
run, and the other skips it quietly. A taken run is resumed as
``Engine.resume`` resumes it. SUSPENDED runs, and runs whose suspension was
asked for (halted), stay as they are; so do runs whose flow is not registered
in this process, which are named in a warning once and not tried again by
this engine.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from typing import TYPE_CHECKING, Final, final

import anyio

from ckflow._engine._cores import flow_for
from ckflow._engine._ownership import engine_warning
from ckflow._errors import FlowNotRegisteredError, RunNotFoundError, RunOwnedError
from ckflow._states import FlowState

if TYPE_CHECKING:
    from collections.abc import Callable, Container

    from ckflow._engine._ownership import Ownership
    from ckflow._records import RunRecord
    from ckflow.stores import Store

__all__ = ["Recovery", "dead_owner"]

#: the states of a run that its engine may have left unfinished (SUSPENDED runs wait for a resume)
UNFINISHED: Final = (FlowState.PENDING, FlowState.RUNNING)


def dead_owner(owner: str) -> bool:
    """Whether the engine id ``owner`` (``host:pid:suffix``) names a process of this host that has exited.

    Anything else is taken as alive: an id of another form (``Engine(id=...)``), another host, this very
    process, a process that exists but is not ours to signal (PermissionError), and every process on
    Windows, where ``os.kill`` would end the process instead of probing it. This assumes that a host name
    stands for one process namespace: containers that share a host name but not their processes would
    see each other as dead.
    """
    parts = owner.rsplit(":", 2)
    if sys.platform == "win32" or len(parts) != 3 or parts[0] != socket.gethostname():
        return False
    if not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (OSError, OverflowError):  # PermissionError: alive, someone else's; a pid out of range: not ours
        return False
    return False


@final
class Recovery:
    """An engine's looks for runs to recover.

    ``held`` is the engine's live mapping of the runs it runs; ``can_launch`` says whether the engine is
    still open to new runs; recovered runs get the engine's ``max_concurrency``.
    """

    __slots__ = ("_can_launch", "_held", "_id", "_interval", "_max_concurrency", "_ownership", "_skipped")

    def __init__(
        self,
        ownership: Ownership,
        held: Container[str],
        can_launch: Callable[[], bool],
        max_concurrency: int | None,
    ) -> None:
        self._ownership = ownership
        self._id = ownership.id
        self._held = held
        self._can_launch = can_launch
        self._max_concurrency = max_concurrency
        self._interval = ownership.lease_ttl / 2
        #: runs this engine will not try again: their flow is not registered here, or rebuilding them failed
        self._skipped: set[str] = set()

    async def watch(self, store: Store) -> None:
        """Look again every ``lease_ttl / 2`` seconds, for runs whose engines have gone since."""
        while True:
            await anyio.sleep(self._interval)
            await self.sweep(store)

    async def sweep(self, store: Store) -> None:
        """One look through the store: take and resume every unfinished run that no live engine runs."""
        try:
            records = await store.list_runs(states=UNFINISHED)
        except Exception as exc:  # the store is unreachable now; the next look tries again
            engine_warning("ckflow.engine.recovery_failed", engine=self._id, error=str(exc))
            return
        now = time.time()
        for record in records:
            if not self._can_launch():
                return
            owner = record.owner
            if record.run_id in self._held or record.run_id in self._skipped or record.halted:
                continue
            if owner is not None and owner != self._id and dead_owner(owner):
                await self._recover(store, record, replacing=owner)
            elif owner is None or owner == self._id or (record.lease_expires or 0.0) <= now:
                await self._recover(store, record, replacing=None)

    async def _recover(self, store: Store, record: RunRecord, *, replacing: str | None) -> None:
        run_id = record.run_id
        try:
            flow_for(record, None, required=True)
        except FlowNotRegisteredError:
            self._skipped.add(run_id)
            engine_warning(
                "ckflow.engine.recovery_skipped",
                engine=self._id,
                run_id=run_id,
                flow=record.flow,
                reason="no flow is registered under this name here; register it with ckflow.register_flow",
            )
            return
        try:
            await self._ownership.take_over(
                store, record, None, "resume", self._max_concurrency, None, replacing=replacing, unfinished=True
            )
        except (RunOwnedError, RunNotFoundError):
            return  # another engine took it first, or it was deleted: nothing to do here
        except Exception as exc:  # e.g. a stored value that no longer decodes: say so once, leave the run
            self._skipped.add(run_id)
            engine_warning("ckflow.engine.recovery_failed", engine=self._id, run_id=run_id, error=str(exc))
