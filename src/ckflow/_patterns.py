"""Flow patterns: ``Linear``, ``Parallel``, ``Graph`` and ``Periodic``. Pure structure, no engine code.

A flow is a tree whose leaves are tasks and ``Checkpoint`` markers. Problems
that can be seen in the tree alone (duplicate names, misplaced markers,
objects that are not tasks) are raised by the constructor, where the flow is
written. What needs the data flow (missing, ambiguous or misordered
providers, cycles) is found by the compiler.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeAlias, final

from ckflow._checkpoint import Checkpoint, _is_name, _is_positive_int
from ckflow._errors import AmbiguousProviderError, DuplicateTaskError, FlowDefinitionError, MisplacedCheckpointError
from ckflow._task import Task, check_task_item

if TYPE_CHECKING:
    from ckflow._compile import ExecutionGraph

__all__ = ["Flow", "Graph", "Item", "Linear", "Parallel", "Periodic"]

Item: TypeAlias = "Task | Flow | Checkpoint"


class Flow:
    """Base of ``Linear``, ``Parallel`` and ``Graph``; not instantiated directly."""

    __slots__ = ("_checkpoint_names", "_compiled", "_providers", "_task_names", "checkpoint", "inject", "items", "name")

    kind: str = "Flow"

    def __init__(
        self,
        name: str,
        *items: Item,
        inject: Mapping[str, Any] | None = None,
        checkpoint: Checkpoint | None = None,
    ) -> None:
        if type(self) is Flow:
            raise TypeError("ckflow.Flow is a base class; use Linear, Parallel or Graph.")
        if not _is_name(name):
            raise TypeError(f"A flow's first argument is its name (a non-empty string), got {name!r}.")
        if checkpoint is not None and not isinstance(checkpoint, Checkpoint):
            raise TypeError(f"{self.kind} {name!r}: checkpoint= must be a ckflow.Checkpoint, got {checkpoint!r}.")
        if inject is not None and not isinstance(inject, Mapping):
            raise TypeError(f"{self.kind} {name!r}: inject= must be a mapping of names to values.")
        self.name = name
        self.items: tuple[Item, ...] = items
        self.inject: Mapping[str, Any] = dict(inject or {})
        self.checkpoint = checkpoint
        self._compiled: ExecutionGraph | None = None
        self._task_names: frozenset[str]
        self._checkpoint_names: frozenset[str]
        task_names: set[str] = set()
        cp_names: set[str] = set()
        providers: dict[str, str] = {}
        if checkpoint is not None:
            cp_names.add(checkpoint.name)
        for item in items:
            if isinstance(item, Task):
                self._add_name(task_names, item.name)
                for value in item.provided:
                    self._add_provider(providers, value, item.name)
            elif isinstance(item, Flow):
                for n in item.task_names:
                    self._add_name(task_names, n)
                for value, provider in item.providers.items():
                    self._add_provider(providers, value, provider)
                for n in item.checkpoint_names:
                    self._add_checkpoint_name(cp_names, n)
            elif isinstance(item, Checkpoint):
                self._check_marker(item)
                self._add_checkpoint_name(cp_names, item.name)
            else:
                check_task_item(name, item)  # type: ignore[unreachable]  # untyped callers pass anything
        self._task_names = frozenset(task_names)
        self._providers: Mapping[str, str] = providers
        self._checkpoint_names = frozenset(cp_names)

    def _add_name(self, seen: set[str], name: str) -> None:
        if name in seen:
            raise DuplicateTaskError(self.name, name)
        seen.add(name)

    def _add_provider(self, providers: dict[str, str], value: str, task: str) -> None:
        other = providers.setdefault(value, task)
        if other != task:
            raise AmbiguousProviderError(self.name, value, (other, task))

    def _add_checkpoint_name(self, seen: set[str], name: str) -> None:
        if name in seen:
            raise MisplacedCheckpointError(
                self.name, name, "appears twice; checkpoint names must be unique within a flow."
            )
        seen.add(name)

    def _check_marker(self, marker: Checkpoint) -> None:
        raise MisplacedCheckpointError(
            self.name,
            marker.name,
            f"is a marker inside {self.kind} {self.name!r}, where nothing comes after it; put it in a "
            f"Linear, or pass `checkpoint=` to the flow it should scope.",
        )

    @property
    def task_names(self) -> frozenset[str]:
        """The names of every task in this flow tree."""
        return self._task_names

    @property
    def providers(self) -> Mapping[str, str]:
        """Value name -> the task of this tree that provides it."""
        return self._providers

    @property
    def checkpoint_names(self) -> frozenset[str]:
        """The names of every checkpoint in this flow tree."""
        return self._checkpoint_names

    def iter_tasks(self) -> Iterator[Task]:
        """Every task of the tree, depth first, in the order written."""
        for item in self.items:
            if isinstance(item, Task):
                yield item
            elif isinstance(item, Flow):
                yield from item.iter_tasks()

    def compile(self) -> ExecutionGraph:
        """The execution graph of this flow, compiled once and cached on the flow object.

        Raises:
            FlowDefinitionError: a provider is ambiguous or misplaced, or a Graph has a cycle.
        """
        graph = self._compiled
        if graph is None:
            from ckflow._compile import compile_flow

            graph = self._compiled = compile_flow(self)
        return graph

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)

    def __repr__(self) -> str:
        return f"<ckflow.{self.kind} {self.name!r} with {len(self.items)} items>"


@final
class Linear(Flow):
    """Items run one after the other; each may consume what earlier items provided.

    A ``Checkpoint`` marker among the items scopes every item after it.
    """

    __slots__ = ()
    kind = "Linear"

    def _check_marker(self, marker: Checkpoint) -> None:
        return None


@final
class Parallel(Flow):
    """Items run concurrently and may not depend on each other."""

    __slots__ = ()
    kind = "Parallel"


@final
class Graph(Flow):
    """Items are ordered by their data: a consumer runs after the provider it reads.

    ``link(a, b)`` adds an ordering edge that carries no data.
    """

    __slots__ = ("_item_index", "_links")
    kind = "Graph"

    def __init__(
        self,
        name: str,
        *items: Item,
        inject: Mapping[str, Any] | None = None,
        checkpoint: Checkpoint | None = None,
    ) -> None:
        super().__init__(name, *items, inject=inject, checkpoint=checkpoint)
        self._links: list[tuple[int, int]] = []
        #: id(item) and item name -> position, built on the first link()
        self._item_index: dict[int | str, int] | None = None

    @property
    def link_indexes(self) -> tuple[tuple[int, int], ...]:
        """The explicit edges added with ``link``, as ``(before, after)`` positions among the items."""
        return tuple(self._links)

    @property
    def links(self) -> tuple[tuple[Item, Item], ...]:
        """The explicit ``(before, after)`` edges added with ``link``."""
        return tuple((self.items[a], self.items[b]) for a, b in self._links)

    def _index(self, item: Item | str) -> int:
        index = self._item_index
        if index is None:
            index = self._item_index = {}
            for i, candidate in enumerate(self.items):
                index[id(candidate)] = i
                name = getattr(candidate, "name", None)
                if isinstance(name, str):
                    index.setdefault(name, i)
        found = index.get(item if isinstance(item, str) else id(item))
        if found is not None:
            return found
        label = item if isinstance(item, str) else getattr(item, "name", repr(item))
        raise TypeError(f"Graph {self.name!r}: link() names {label!r}, which is not a direct item of this graph.")

    def link(self, before: Item | str, after: Item | str) -> Graph:
        """Make ``after`` start only once ``before`` has succeeded; returns the graph.

        Both are direct items of this graph, given as objects or by name.
        """
        a, b = self._index(before), self._index(after)
        if a == b:
            raise TypeError(f"Graph {self.name!r}: link() of {self.items[a]!r} to itself.")
        self._links.append((a, b))
        self._compiled = None
        return self


@final
class Periodic(Flow):
    """Runs its items again and again, in order like a ``Linear``: one *iteration* every ``every`` seconds.

    ``every`` is the time from the start of one iteration to the start of the
    next (a ``timedelta`` or seconds; 0 runs them back to back); an iteration
    that takes longer is followed at once by the next, never overlapped.
    ``times`` bounds the number of iterations (None: until the run is
    cancelled). What follows the Periodic starts after its last iteration
    and reads the values of that iteration.

    Each iteration is a pass of the Periodic's checkpoint (``checkpoint=``,
    by default ``Checkpoint(name, keep_last=10)``): a failure in an iteration
    is reverted back to that iteration's start only, and retried under the
    checkpoint's ``Retry``; finished iterations are final and never
    reverted. In a durable run the checkpoint's retention (``keep_last``,
    ``max_age``; ``keep_last=10`` unless the checkpoint sets one of them)
    deletes the records of older iterations as new ones complete, so the
    store stays the same size however long the Periodic runs.
    ``ckflow.current().iteration`` tells a task which iteration it is in.
    """

    __slots__ = ("every", "times")
    kind = "Periodic"

    def __init__(
        self,
        name: str,
        *items: Item,
        every: float | datetime.timedelta,
        times: int | None = None,
        checkpoint: Checkpoint | None = None,
        inject: Mapping[str, Any] | None = None,
    ) -> None:
        if checkpoint is None and _is_name(name):
            checkpoint = Checkpoint(name, keep_last=10)
        super().__init__(name, *items, inject=inject, checkpoint=checkpoint)
        seconds: object = every.total_seconds() if isinstance(every, datetime.timedelta) else every
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise TypeError(f"Periodic {name!r}: every= must be seconds or a timedelta, got {every!r}.")
        if math.isnan(seconds) or math.isinf(seconds) or seconds < 0:
            raise ValueError(f"Periodic {name!r}: every={every!r} must be a finite number of seconds >= 0.")
        if times is not None and not _is_positive_int(times):
            raise ValueError(f"Periodic {name!r}: times={times!r} must be a positive int, or None for no end.")
        if not self._task_names:
            raise FlowDefinitionError(f"Periodic {name!r} repeats no task; give it at least one task.")
        #: seconds from the start of one iteration to the start of the next
        self.every = float(seconds)
        #: how many iterations; None for no end
        self.times = times

    def _check_marker(self, marker: Checkpoint) -> None:
        return None

    def __repr__(self) -> str:
        return f"<ckflow.Periodic {self.name!r} every {self.every} s, {self.times or 'no end'} times>"
