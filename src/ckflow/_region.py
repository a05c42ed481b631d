"""The revert walker's decisions as pure functions: which tasks a failure undoes, and what next.

Nothing here touches an event loop, so the rules of DESIGN §4-§5 can be
tested (and property-tested) on a graph and a list of states alone.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Final

from ckflow import _policy
from ckflow._compile import ROOT, TASK, ExecutionGraph

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from collections.abc import Set as AbstractSet

__all__ = [
    "Action",
    "Decision",
    "decide",
    "failure_region",
    "region",
    "scope_members",
    "task_names",
]


class Action(Enum):
    """What the walker does once a region is reverted."""

    RETRY = "retry"  # reset the region to PENDING and run it again
    SUSPEND = "suspend"  # park the run SUSPENDED at the checkpoint
    END = "end"  # the failure reached the root: everything is reverted, the run ends REVERTED


def scope_members(graph: ExecutionGraph, scope: int) -> list[int]:
    """Every node in ``scope``, nested scopes included, in id order."""
    if scope == ROOT:
        return list(range(len(graph.nodes)))
    return [n.id for n in graph.nodes if graph.in_scope(n.id, scope)]


def region(graph: ExecutionGraph, seeds: Iterable[int], scope: int, mode: str = "branch") -> set[int]:
    """The nodes a failure of ``seeds`` undoes under checkpoint ``scope`` (DESIGN §4 step 2).

    ``mode="branch"``: the seeds, their causal ancestors inside the scope, and
    everything of the scope downstream of any of those. ``mode="scope"``, or
    the root: the whole scope. Tasks of the scope that share no path with the
    seeds are left out: they keep their results and keep running.
    """
    if scope == ROOT or mode == "scope":
        return set(scope_members(graph, scope))
    nodes = graph.nodes
    # (``scope in node.chain`` is ``graph.in_scope(node, scope)`` for a scope other than the root, without a call:
    # a failure's first region is worked out on its way to the revert, the first time the graph fails there)
    stack = [s for s in seeds if scope in nodes[s].chain]
    found = set(stack)
    # Causal ancestors: walk up through joins and loop gates (they carry nothing of their own), but
    # such a node met on the way up is no cause: expanding downstream from it would pull in unrelated
    # siblings.
    seen = set(stack)
    while stack:
        for p in nodes[stack.pop()].preds:
            if p not in seen and scope in nodes[p].chain:
                seen.add(p)
                stack.append(p)
                if nodes[p].kind == TASK:
                    found.add(p)
    result = set(found)
    stack = list(found)
    while stack:
        for s in nodes[stack.pop()].succs:
            if s not in result and scope in nodes[s].chain:
                result.add(s)
                stack.append(s)
    return result


def failure_region(graph: ExecutionGraph, failed: int, scope: int, mode: str) -> tuple[frozenset[int], tuple[str, ...]]:
    """``region(graph, {failed}, scope, mode)`` and its tasks' names (``task_names``), worked out once per node and
    scope and kept on the graph.

    Both depend on the graph alone, so every later failure of ``failed`` under ``scope`` finds them made: this
    is on the way from a task's failure to its revert's start. Made on first use, so compile pays nothing.
    """
    key = (failed, scope)
    found = graph.branch_regions.get(key)
    if found is None:
        members = frozenset(region(graph, (failed,), scope, mode))
        found = graph.branch_regions[key] = (members, task_names(graph, members))
    return found


def task_names(graph: ExecutionGraph, members: Iterable[int]) -> tuple[str, ...]:
    """The names of the tasks among ``members``, sorted (what a region's report lists)."""
    nodes = graph.nodes
    names: list[str] = []
    for m in members:
        node = nodes[m]
        if node.kind == TASK:
            names.append(node.name)
    names.sort()
    return tuple(names)


class Decision:
    """The walker's decision for one failure: the checkpoint that handles it, its region and action."""

    __slots__ = ("action", "exhausted", "members", "names", "scope")

    def __init__(
        self,
        scope: int,
        members: AbstractSet[int],
        action: Action,
        exhausted: tuple[int, ...],
        names: tuple[str, ...] | None = None,
    ) -> None:
        self.scope = scope
        #: the region's nodes (the graph's own frozenset when it keeps the region: never changed)
        self.members = members
        self.action = action
        #: the checkpoints whose budget ran out on the way, innermost first
        self.exhausted = exhausted
        #: ``task_names(graph, members)`` when the graph keeps them (``failure_region``); None: not worked out
        self.names = names

    def __repr__(self) -> str:
        return f"<Decision scope={self.scope} {self.action.name} {len(self.members)} nodes>"


#: no seeds (yet): ``decide``'s first checkpoint takes its region from the graph
_NO_SEEDS: Final[frozenset[int]] = frozenset()


def _no_failure_yet(scope: int) -> float | None:
    return None


def decide(
    graph: ExecutionGraph,
    failed: int,
    exc: BaseException,
    attempt_of: Callable[[int, int], int] | None,
    first_failure_at: Callable[[int], float | None] = _no_failure_yet,
    now: float = 0.0,
) -> Decision:
    """Apply DESIGN §4 step 5 at the moment a failure arrives.

    ``attempt_of(node, scope)`` is the node's attempt (1-based) under the
    checkpoint ``scope``; None when no task has been retried (every attempt is
    the first). ``first_failure_at(scope)`` is the monotonic time of
    the first failure under the checkpoint ``scope`` in its current activation,
    or None if this failure is the first; ``now`` is the same clock's current
    reading. Both feed ``Retry.timeout`` through ``ckflow._policy.should_retry``;
    nothing is recorded here: the caller keeps the first-failure times (it sets
    ``first_failure[decision.scope]`` when it retries a region it had not yet
    seen fail in this activation). Exhausted or rejected failures climb to the
    enclosing checkpoint at once, so doomed work is cancelled now.
    """
    seeds: AbstractSet[int] = _NO_SEEDS  # (the first checkpoint's region is the graph's: ``failure_region``)
    scope = graph.nodes[failed].scope
    exhausted: list[int] = []
    while scope != ROOT:
        info = graph.scopes[scope]
        checkpoint = info.checkpoint
        assert checkpoint is not None
        members: AbstractSet[int]
        names: tuple[str, ...] | None = None
        if exhausted:
            members = region(graph, seeds, scope, checkpoint.revert)
        else:
            # The first checkpoint's region depends on the failed node alone: the graph keeps it (looked up
            # here, without a call, once it is made).
            kept = graph.branch_regions.get((failed, scope)) or failure_region(graph, failed, scope, checkpoint.revert)
            members, names = kept
        highest = 1  # the highest attempt among the members (a loop: no generator on the way to the revert)
        if attempt_of is not None:
            for n in members:
                attempt = attempt_of(n, scope)
                if attempt > highest:
                    highest = attempt
        if _policy.should_retry(checkpoint.retry, exc, highest, first_failure_at(scope), now):
            return Decision(scope, members, Action.RETRY, tuple(exhausted), names)
        exhausted.append(scope)
        if checkpoint.on_exhausted == "suspend":
            return Decision(scope, set(scope_members(graph, scope)), Action.SUSPEND, tuple(exhausted))
        if checkpoint.on_exhausted == "revert_all":
            break
        seeds = set(scope_members(graph, scope))
        scope = info.parent
    return Decision(ROOT, set(scope_members(graph, ROOT)), Action.END, tuple(exhausted))
