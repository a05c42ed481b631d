"""Compile a flow tree into an immutable ``ExecutionGraph``, once per flow object.

The graph holds one node per task plus *join* nodes, which do no work:
they stand where a fragment with several exits (or entries) is connected to
another, so that a Linear of two Parallels of n tasks costs 2n edges rather
than n², and so that a checkpoint's scope is a unit to the outside (a
consumer outside waits for the scope's exit join, never for single members).

Compilation is O(V + E + V·depth): every task is visited once, every input
once (with an O(depth) walk to find where its provider sits), every edge once.
Run-time code never walks the pattern tree again.
"""

from __future__ import annotations

import itertools
import operator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol, cast

from ckflow._checkpoint import Checkpoint
from ckflow._errors import (
    CycleError,
    MisplacedCheckpointError,
    ProviderOrderError,
    SiblingDependencyError,
)
from ckflow._graph import JOIN, LOOP, ROOT, TASK, Columns, ExecutionGraph, Node, Scope
from ckflow._task import Task

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = ["JOIN", "LOOP", "ROOT", "TASK", "ExecutionGraph", "Flow", "Node", "Scope", "compile_flow"]


class Flow(Protocol):
    """A flow tree's node as the compiler reads it (``ckflow.Linear``, ``Parallel``, ``Graph``, ``Periodic``).

    The compiler reads flows by their ``kind`` rather than importing the pattern classes, so that the patterns
    (whose ``compile()`` calls the compiler) and the compiler do not import each other.
    """

    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def items(self) -> tuple[Any, ...]: ...
    @property
    def inject(self) -> Mapping[str, Any]: ...
    @property
    def checkpoint(self) -> Checkpoint | None: ...


class _Periodic(Flow, Protocol):
    @property
    def every(self) -> float: ...
    @property
    def times(self) -> int | None: ...


class _Graph(Flow, Protocol):
    @property
    def link_indexes(self) -> tuple[tuple[int, int], ...]: ...


_ORDERED: Final = ("Linear", "Periodic")


@dataclass(eq=False, slots=True)
class _GraphEdges:
    """A Graph's item-level data edges: src[i] -> dst[i] (positions among its items)."""

    src: list[int]
    dst: list[int]
    #: a -> b as a * len(items) + b, for the edges into items that are flows (an item that is a task has an edge
    #: from each item at most once through its own bindings, checked without this)
    seen: set[int]


@dataclass(eq=False, slots=True)
class _Fragment:
    """The compiled shape of one flow: where edges go in and come out (tuples of ints, untracked by the GC)."""

    entries: tuple[int, ...]
    exits: tuple[int, ...]
    scope: int
    label: str
    entry_join: int = -1
    exit_join: int = -1


#: What one item compiles to: a task is its own node (an int, which the collector does not track,
#: where an object per task would add to what its gen-2 passes walk while a large Graph compiles);
#: any other flow is a fragment.
_Piece = _Fragment | int


def _entries(piece: _Piece) -> tuple[int, ...]:
    return (piece,) if isinstance(piece, int) else piece.entries


def _exits(piece: _Piece) -> tuple[int, ...]:
    return (piece,) if isinstance(piece, int) else piece.exits


class _Compiler:
    def __init__(self, flow: Flow) -> None:
        self.root = flow
        #: the nodes as columns, indexed by node id (no object a node: see ``ExecutionGraph``)
        self.names: list[str] = []
        self.kinds = bytearray()
        self.node_scopes: list[int] = []
        self.tasks: list[Task | None] = []
        self.value_in: list[tuple[tuple[str, str], ...]] = []
        self.const_in: list[Mapping[str, Any] | None] = []
        self.input_in: list[tuple[tuple[str, str, bool], ...]] = []
        self.scopes: list[Scope] = [Scope(ROOT, flow.name, None, -1, 0)]
        #: the edges, in the order they were made: edge i runs from edge_from[i] to edge_to[i]. Two flat
        #: lists of ints rather than a list per node: ints are not tracked by the cyclic GC, so a large
        #: flow's compile does not grow what the collector's gen-2 passes walk meanwhile
        self.edge_from: list[int] = []
        self.edge_to: list[int] = []
        #: task node -> its path from the root, as item indexes: its flow's path (one tuple a flow) and its index
        self.paths: list[tuple[int, ...]] = []
        self.path_index: list[int] = []
        #: task node -> the flow it is an item of
        self.task_flow: list[Flow] = []
        #: task node -> the injects of its enclosing flows, innermost first
        self.flow_injects: list[tuple[Mapping[str, Any], ...]] = []
        self.provider: dict[str, int] = {}
        #: Graph -> its item-level data edges, in the order they were found (the order ready tasks start in
        #: follows it, deterministic without sorting)
        self.graph_edges: dict[int, _GraphEdges] = {}
        self.required: dict[str, list[str]] = {}

    # -- nodes and scopes ----------------------------------------------------

    def _new_node(self, name: str, kind: int, scope: int, task: Task | None) -> int:
        self.names.append(name)
        self.kinds.append(kind)
        self.node_scopes.append(scope)
        self.tasks.append(task)
        return len(self.names) - 1

    def _new_scope(self, checkpoint: Checkpoint, parent: int, periodic: _Periodic | None = None) -> int:
        scope = Scope(len(self.scopes), checkpoint.name, checkpoint, parent, self.scopes[parent].depth + 1)
        outer = self.scopes[parent]
        if checkpoint.keep_last is not None or checkpoint.max_age is not None:
            scope.keep_last, scope.max_age = checkpoint.keep_last, checkpoint.max_age
        elif periodic is not None:
            scope.keep_last = 10
        else:
            scope.keep_last, scope.max_age = outer.keep_last, outer.max_age
        if periodic is not None:
            scope.every, scope.times = periodic.every, periodic.times
        self.scopes.append(scope)
        outer.children.append(scope.id)
        return scope.id

    def _edge(self, a: int, b: int) -> None:
        self.edge_from.append(a)
        self.edge_to.append(b)

    def collect(
        self,
        flow: Flow,
        scope: int,
        path: tuple[int, ...],
        injects: tuple[Mapping[str, Any], ...],
    ) -> None:
        """First pass: one node per task, scopes, paths and providers."""
        if flow.checkpoint is not None:
            periodic = cast("_Periodic", flow) if flow.kind == "Periodic" else None
            scope = self._new_scope(flow.checkpoint, scope, periodic)
        if flow.inject:
            injects = (flow.inject, *injects)
        for index, item in enumerate(flow.items):
            if isinstance(item, Checkpoint):
                scope = self._new_scope(item, scope)
            elif isinstance(item, Task):
                task_scope = scope
                if item.retry is not None:
                    task_scope = self._new_scope(Checkpoint(item.name, retry=item.retry), scope)
                node = self._new_node(item.name, TASK, task_scope, item)
                self.paths.append(path)  # (a tuple a flow, not a task: S6)
                self.path_index.append(index)
                self.task_flow.append(flow)
                self.flow_injects.append(injects)
                for value in item.provided:
                    self.provider[value] = node
            else:
                self.collect(item, scope, (*path, index), injects)

    # -- data ----------------------------------------------------------------

    def resolve_inputs(self) -> None:
        """Second pass: where every input of every task comes from, and the data edges of Graphs."""
        names = self.names
        tasks = cast("list[Task]", self.tasks)  # (only task nodes so far: joins come in ``build``)
        # The provider of every binding's value name, looked up all at once in one C loop (``map``) before the
        # walk below: the lookups are independent, so a large flow's cache misses on the provider dict overlap
        # there, where one lookup a binding in the walk waits for each miss in turn.
        bindings_of = list(map(operator.attrgetter("bindings"), tasks))
        all_names = map(operator.itemgetter(1), itertools.chain.from_iterable(bindings_of))
        providers = iter(list(map(self.provider.get, all_names)))
        for node, task in enumerate(tasks):
            own_inject = task.inject or {}
            defaults = task.parameter_defaults
            values: list[tuple[str, str]] = []
            consts: dict[str, Any] = {}
            inputs: list[tuple[str, str, bool]] = []
            #: the items of its Graph this task reads from, if it is an item of one (one edge each)
            linked: list[int] = []
            bindings = bindings_of[node]
            for binding in bindings:
                param, name = binding
                provider = next(providers)
                if name in own_inject:
                    consts[param] = own_inject[name]
                    continue
                if provider is not None:
                    if provider == node:
                        raise CycleError(self.root.name, [names[node]])
                    self._order(provider, node, name, linked)
                    values.append(binding)  # the task's own (parameter, value name) pair, not a copy
                    continue
                flow_inject = next((inj for inj in self.flow_injects[node] if name in inj), None)
                if flow_inject is not None:
                    consts[param] = flow_inject[name]
                    continue
                required = param not in defaults
                inputs.append((param, name, required))
                if required:
                    self.required.setdefault(name, []).append(names[node])
            # Every input from upstream (the usual case): the task's own bindings, no tuple of the node's.
            self.value_in.append(bindings if len(values) == len(bindings) else tuple(values))
            self.const_in.append(consts or None)
            self.input_in.append(tuple(inputs))

    def _order(self, provider: int, consumer: int, name: str, linked: list[int]) -> None:
        """Check that ``provider`` runs before ``consumer``; in a Graph, make it so.

        ``linked``: the items of the consumer's own flow that it already has an edge from.
        """
        own = self.task_flow[consumer]
        if self.task_flow[provider] is own:  # items of one flow (no paths to compare)
            flow, p_index, c_index = own, self.path_index[provider], self.path_index[consumer]
        else:
            flow, p_index, c_index = self._fork(provider, consumer)
        if flow.kind == "Graph":
            edges = self.graph_edges.get(id(flow))
            if edges is None:
                edges = self.graph_edges[id(flow)] = _GraphEdges([], [], set())
            if flow is own:
                # The consumer is an item of the Graph, so c_index is its own: its own edges are all there is
                # to check for a repeat, without a set of every edge of the Graph.
                if p_index in linked:
                    return
                linked.append(p_index)
            else:
                key = p_index * len(flow.items) + c_index
                if key in edges.seen:
                    return
                edges.seen.add(key)
            edges.src.append(p_index)
            edges.dst.append(c_index)
        elif flow.kind in _ORDERED:
            if p_index > c_index:
                raise ProviderOrderError(flow.name, self.names[consumer], name, self.names[provider])
        else:
            assert flow.kind == "Parallel"
            raise SiblingDependencyError(flow.name, self.names[consumer], name, self.names[provider])

    def _fork(self, provider: int, consumer: int) -> tuple[Flow, int, int]:
        """The innermost flow holding both tasks, and the positions of the items holding each in it."""
        p_path = (*self.paths[provider], self.path_index[provider])
        c_path = (*self.paths[consumer], self.path_index[consumer])
        depth = 0
        flow = self.root
        while p_path[depth] == c_path[depth]:
            flow = flow.items[p_path[depth]]
            depth += 1
        return flow, p_path[depth], c_path[depth]

    # -- structure -------------------------------------------------------------

    def build(self, flow: Flow, scope: int, next_task: list[int]) -> _Fragment:
        """Third pass: structural edges. ``next_task`` walks task nodes in collect() order."""
        outer = scope
        if flow.checkpoint is not None:
            scope = self._scope_of_checkpoint(flow.checkpoint)
        pieces: list[_Piece] = []
        item_scope = scope
        #: an item that is a flow (a fragment), and whether one of them compiled to nothing
        nested = empty = False
        for item in flow.items:
            if isinstance(item, Checkpoint):
                item_scope = self._scope_of_checkpoint(item)
                continue
            if isinstance(item, Task):
                node = next_task[0]
                next_task[0] += 1
                pieces.append(node)
            else:
                fragment = self.build(item, item_scope, next_task)
                nested = True
                empty = empty or not fragment.entries
                pieces.append(fragment)
        if flow.kind in _ORDERED:
            real = [p for p in pieces if _entries(p)]
            for before, after in itertools.pairwise(real):
                self._connect(before, after)
            if not real:
                return _Fragment((), (), scope, flow.name)
            if flow.kind == "Periodic":
                # The gate stands outside the Periodic's scope, after every exit of its body: what
                # follows waits for the gate, which opens only after the last iteration.
                gate = self._new_node(f"{flow.name}.loop", LOOP, outer, None)
                for n in _exits(real[-1]):
                    self._edge(n, gate)
                self.scopes[scope].gate = gate
                return _Fragment(_entries(real[0]), (gate,), outer, flow.name)
            return _Fragment(_entries(real[0]), _exits(real[-1]), scope, flow.name)
        if flow.kind == "Parallel":
            return _Fragment(
                tuple(n for p in pieces for n in _entries(p)),
                tuple(n for p in pieces for n in _exits(p)),
                scope,
                flow.name,
            )
        assert flow.kind == "Graph"
        return self._build_graph(cast("_Graph", flow), scope, pieces, nested=nested, empty=empty)

    def _build_graph(self, flow: _Graph, scope: int, pieces: list[_Piece], *, nested: bool, empty: bool) -> _Fragment:
        """A Graph's edges: its data edges, then its links. A Graph holds no marker, so item i is pieces[i]."""
        found = self.graph_edges.get(id(flow))
        src, dst = (found.src, found.dst) if found is not None else ([], [])
        m = len(pieces)
        if flow.link_indexes:
            present = {a * m + b for a, b in zip(src, dst, strict=True)}
            for a, b in flow.link_indexes:
                if a * m + b not in present:
                    present.add(a * m + b)
                    src.append(a)
                    dst.append(b)
        if empty:  # an item that compiled to nothing (an empty flow) neither waits nor is waited for
            kept = [(a, b) for a, b in zip(src, dst, strict=True) if _entries(pieces[a]) and _entries(pieces[b])]
            src, dst = [a for a, _ in kept], [b for _, b in kept]
        if not all(map(operator.lt, src, dst)):  # every edge forward in the items' order: no cycle
            self._check_acyclic(flow, pieces, src, dst)
        if nested:
            for a, b in zip(src, dst, strict=True):
                self._connect(pieces[a], pieces[b])
        elif pieces:
            # Every item is a task: item i is node pieces[0] + i (task nodes are numbered in items' order).
            first = cast("int", pieces[0])
            self.edge_from.extend([a + first for a in src])
            self.edge_to.extend([b + first for b in dst])
        has_in, has_out = set(dst), set(src)
        entries = tuple(n for i, p in enumerate(pieces) if i not in has_in for n in _entries(p))
        exits = tuple(n for i, p in enumerate(pieces) if i not in has_out for n in _exits(p))
        return _Fragment(entries, exits, scope, flow.name)

    def _scope_of_checkpoint(self, checkpoint: Checkpoint) -> int:
        return self._scope_ids[id(checkpoint)]

    def _connect(self, a: _Piece, b: _Piece) -> None:
        """Make every entry of ``b`` wait for every exit of ``a`` through at most one join each."""
        if isinstance(a, int):
            out = a
        elif len(a.exits) == 1:
            out = a.exits[0]
        else:
            if a.exit_join < 0:
                a.exit_join = self._new_node(f"{a.label}.exit", JOIN, a.scope, None)
                for n in a.exits:
                    self._edge(n, a.exit_join)
            out = a.exit_join
        if isinstance(b, int) or len(b.entries) == 1:
            self._edge(out, _entries(b)[0])
            return
        if b.entry_join < 0:
            b.entry_join = self._new_node(f"{b.label}.entry", JOIN, b.scope, None)
            for n in b.entries:
                self._edge(b.entry_join, n)
        self._edge(out, b.entry_join)

    def _check_acyclic(self, flow: Flow, pieces: list[_Piece], src: Sequence[int], dst: Sequence[int]) -> None:
        succ = _group(len(pieces), src, dst)
        indegree = [0] * len(pieces)
        for b in dst:
            indegree[b] += 1
        ready = [i for i in range(len(pieces)) if indegree[i] == 0]
        seen = 0
        while ready:
            i = ready.pop()
            seen += 1
            for j in succ[i]:
                indegree[j] -= 1
                if indegree[j] == 0:
                    ready.append(j)
        if seen == len(pieces):
            return
        cycle = _a_cycle(succ, _group(len(pieces), dst, src), [d > 0 for d in indegree])
        raise CycleError(flow.name, [self._label(pieces[k]) for k in cycle])

    def _label(self, piece: _Piece) -> str:
        return self.names[piece] if isinstance(piece, int) else piece.label

    def compile(self) -> ExecutionGraph:
        self.collect(self.root, ROOT, (), ())
        self._scope_ids = {id(s.checkpoint): s.id for s in self.scopes if s.checkpoint is not None}
        self._check_scope_names()
        self.resolve_inputs()
        self.build(self.root, ROOT, [0])
        n = len(self.names)
        # Each node's successors in the order its edges were made; of its predecessors only their number (the
        # graph makes the predecessors themselves from ``succs`` if they are read).
        succs = _group(n, self.edge_from, self.edge_to)
        pred_counts = [0] * n
        for b in self.edge_to:
            pred_counts[b] += 1
        joins = n - len(self.value_in)  # (joins and gates read nothing)
        self.value_in.extend(itertools.repeat((), joins))
        self.const_in.extend(itertools.repeat(None, joins))
        self.input_in.extend(itertools.repeat((), joins))
        columns = Columns(
            self.names,
            bytes(self.kinds),
            self.node_scopes,
            self.tasks,
            succs,
            pred_counts,
            self.value_in,
            self.const_in,
            self.input_in,
        )
        required = {name: tuple(tasks) for name, tasks in self.required.items()}
        return ExecutionGraph(self.root.name, columns, self.scopes, required)

    def _check_scope_names(self) -> None:
        seen: set[str] = set()
        for scope in self.scopes[1:]:
            if scope.name in seen:
                raise MisplacedCheckpointError(
                    self.root.name,
                    scope.name,
                    "is used twice (a task with retry= gets a checkpoint named after it); rename one.",
                )
            seen.add(scope.name)


def _group(n: int, keys: Sequence[int], values: Sequence[int]) -> list[tuple[int, ...]]:
    """``values`` grouped by ``keys`` (each in 0..n-1), in their order within each group: a counting sort, its
    counting and slicing done by the C loops of ``accumulate`` and ``map``."""
    counts = [0] * n
    for k in keys:
        counts[k] += 1
    ends = list(itertools.accumulate(counts))
    starts = list(map(operator.sub, ends, counts))
    fill = starts[:]
    flat = [0] * len(keys)
    for k, v in zip(keys, values, strict=True):
        i = fill[k]
        flat[i] = v
        fill[k] = i + 1
    return list(map(tuple, map(flat.__getitem__, map(slice, starts, ends))))


def _a_cycle(succ: list[tuple[int, ...]], pred: list[tuple[int, ...]], left: list[bool]) -> list[int]:
    """A cycle among the items ``left`` by a topological sort, which all wait for one of them.

    The items that lead to no cycle (downstream of one only) are dropped first, from the last backwards, so
    that every item still left has a successor left; then a walk forward from the first item left, taking the
    first successor left each time, repeats an item, and the stretch from its first visit on is a cycle.
    """
    out = [sum(left[j] for j in succ[i]) if left[i] else 0 for i in range(len(succ))]
    sinks = [i for i in range(len(succ)) if left[i] and out[i] == 0]
    while sinks:
        i = sinks.pop()
        left[i] = False
        for p in pred[i]:
            if left[p]:
                out[p] -= 1
                if out[p] == 0:
                    sinks.append(p)
    order: list[int] = []
    position: dict[int, int] = {}
    i = left.index(True)
    while i not in position:
        position[i] = len(order)
        order.append(i)
        i = next(j for j in succ[i] if left[j])
    return order[position[i] :]


def compile_flow(flow: Flow) -> ExecutionGraph:
    """Compile ``flow``; prefer ``flow.compile()``, which caches the result on the flow.

    The cyclic GC is left alone: the collector is process-wide state, and a
    library must not switch it off under the application's other threads.
    """
    return _Compiler(flow).compile()
