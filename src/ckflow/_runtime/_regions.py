"""A region: the tasks one failure (or a control request) undoes together, and what happens once they are."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from collections.abc import Set as AbstractSet

    from ckflow._failure import Failure
    from ckflow._models import RegionReport
    from ckflow._region import Action

__all__ = ["Region", "settle"]


class Region:
    """A set of nodes being undone together, and what happens once they are."""

    __slots__ = (
        "absorbed",
        "action",
        "auto_resume",
        "backoff",
        "depth",
        "done",
        "failures",
        "gen",
        "held",
        "id",
        "members",
        "outstanding",
        "parked",
        "report",
        "rev_wait",
        "scope",
        "waiter",
    )

    def __init__(
        self, id: int, scope: int, depth: int, action: Action, members: AbstractSet[int], report: RegionReport
    ) -> None:
        self.id = id
        self.scope = scope
        self.depth = depth
        self.action = action
        #: never changed once the region is made (it may be the graph's own frozenset: ``_region.failure_region``)
        self.members = members
        self.report = report
        #: member -> successors in the region whose revert is still outstanding
        self.rev_wait: dict[int, int] = {}
        #: members whose revert is owed and not yet done
        self.outstanding = 0
        self.failures: list[Failure] = []
        self.backoff: anyio.CancelScope | None = None
        self.parked = False
        #: revert_to(..., retry=True): start the scope afresh instead of parking
        self.auto_resume = False
        #: True once every member that ran has been reverted, or the run has ended (``settle``)
        self.done = False
        #: the event behind ``settled``, made only when someone waits (most regions nobody waits for)
        self.waiter: anyio.Event | None = None
        #: regions merged into this one: whoever waits for them is done when this one is
        self.absorbed: list[Region] = []
        #: durable runs: the journal generation that records the region (0 once it is committed); its
        #: reverts are held in ``held`` until then
        self.gen = 0
        self.held: list[int] = []

    @property
    def settled(self) -> anyio.Event:
        """Set once every member that ran has been reverted, or the run has ended (``settle``).

        Made on first use rather than with the region: an anyio event costs 2.6 µs, on the path from a task's
        failure to its revert's start.
        """
        waiter = self.waiter
        if waiter is None:
            waiter = self.waiter = anyio.Event()
            if self.done:
                waiter.set()
        return waiter

    def settle_one(self) -> None:
        """Mark this region settled (not the regions merged into it: ``settle``)."""
        self.done = True
        if self.waiter is not None:
            self.waiter.set()


def settle(region: Region) -> None:
    """Wake whoever waits for ``region``, or for a region merged into it."""
    pending = [region]
    while pending:
        r = pending.pop()
        r.settle_one()
        pending.extend(r.absorbed)
