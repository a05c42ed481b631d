"""Compile a flow tree into an immutable ``ExecutionGraph``, once per flow object.

The graph holds one ``Node`` per task plus *join* nodes, which do no work:
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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol, cast

from ckflow._checkpoint import Checkpoint
from ckflow._errors import (
    CycleError,
    MisplacedCheckpointError,
    ProviderOrderError,
    SiblingDependencyError,
)
from ckflow._graph import JOIN, LOOP, ROOT, TASK, ExecutionGraph, Node, Scope
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
        self.nodes: list[Node] = []
        self.scopes: list[Scope] = [Scope(ROOT, flow.name, None, -1, 0)]
        #: the edges, in the order they were made: edge i runs from edge_from[i] to edge_to[i]. Two flat
        #: lists of ints rather than a list per node: ints are not tracked by the cyclic GC, so a large
        #: flow's compile does not grow what the collector's gen-2 passes walk meanwhile
        self.edge_from: list[int] = []
        self.edge_to: list[int] = []
        #: task node -> its path from the root, as item indexes: its flow's path (one tuple a flow) and its index
        self.paths: list[tuple[int, ...]] = []
        self.path_index: list[int] = []
        #: task node -> the injects of its enclosing flows, innermost first
        self.flow_injects: list[tuple[Mapping[str, Any], ...]] = []
        self.provider: dict[str, int] = {}
        #: Graph -> its item-level data edges (a -> b as a * len(items) + b), as an insertion-ordered set (a
        #: dict) so that edge order, and with it the order ready tasks start in, is deterministic without sorting
        self.graph_edges: dict[int, dict[int, None]] = {}
        self.required: dict[str, list[str]] = {}

    # -- nodes and scopes ----------------------------------------------------

    def _new_node(self, name: str, kind: int, scope: int, task: Task | None) -> int:
        node = Node(len(self.nodes), name, kind, scope, task)
        self.nodes.append(node)
        return node.id

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
                self.flow_injects.append(injects)
                for value in item.provided:
                    self.provider[value] = node
            else:
                self.collect(item, scope, (*path, index), injects)

    # -- data ----------------------------------------------------------------

    def resolve_inputs(self) -> None:
        """Second pass: where every input of every task comes from, and the data edges of Graphs."""
        for node in self.nodes:
            task = node.task
            assert task is not None
            own_inject = task.inject or {}
            defaults = task.parameter_defaults
            values: list[tuple[str, str]] = []
            consts: dict[str, Any] = {}
            inputs: list[tuple[str, str, bool]] = []
            for param, name in task.bindings:
                if name in own_inject:
                    consts[param] = own_inject[name]
                    continue
                provider = self.provider.get(name)
                if provider is not None:
                    if provider == node.id:
                        raise CycleError(self.root.name, [node.name])
                    self._order(provider, node.id, name)
                    values.append((param, name))
                    continue
                flow_inject = next((inj for inj in self.flow_injects[node.id] if name in inj), None)
                if flow_inject is not None:
                    consts[param] = flow_inject[name]
                    continue
                required = param not in defaults
                inputs.append((param, name, required))
                if required:
                    self.required.setdefault(name, []).append(node.name)
            node.value_in = tuple(values)
            node.const_in = consts or None
            node.input_in = tuple(inputs)

    def _order(self, provider: int, consumer: int, name: str) -> None:
        """Check that ``provider`` runs before ``consumer``; in a Graph, make it so."""
        p_path = (*self.paths[provider], self.path_index[provider])
        c_path = (*self.paths[consumer], self.path_index[consumer])
        depth = 0
        flow = self.root
        while p_path[depth] == c_path[depth]:
            flow = flow.items[p_path[depth]]
            depth += 1
        p_index, c_index = p_path[depth], c_path[depth]
        if flow.kind in _ORDERED:
            if p_index > c_index:
                raise ProviderOrderError(flow.name, self.nodes[consumer].name, name, self.nodes[provider].name)
        elif flow.kind == "Parallel":
            raise SiblingDependencyError(flow.name, self.nodes[consumer].name, name, self.nodes[provider].name)
        else:
            assert flow.kind == "Graph"
            self.graph_edges.setdefault(id(flow), {})[p_index * len(flow.items) + c_index] = None

    # -- structure -------------------------------------------------------------

    def build(self, flow: Flow, scope: int, next_task: list[int]) -> _Fragment:
        """Third pass: structural edges. ``next_task`` walks task nodes in collect() order."""
        outer = scope
        if flow.checkpoint is not None:
            scope = self._scope_of_checkpoint(flow.checkpoint)
        pieces: list[_Piece] = []
        item_scope = scope
        for item in flow.items:
            if isinstance(item, Checkpoint):
                item_scope = self._scope_of_checkpoint(item)
                continue
            if isinstance(item, Task):
                node = next_task[0]
                next_task[0] += 1
                pieces.append(node)
            else:
                pieces.append(self.build(item, item_scope, next_task))
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
        # Items keep their positions so that data edges (by item index) and links line up.
        # Edge a -> b is the int a * m + b: unlike a tuple, nothing for the cyclic GC to track (S7).
        m = len(flow.items)
        keys = dict(self.graph_edges.get(id(flow), {}))
        keys.update(dict.fromkeys(a * m + b for a, b in cast("_Graph", flow).link_indexes))
        by_index = self._index_pieces(flow, pieces)
        src: list[int] = []
        dst: list[int] = []
        for a, b in map(divmod, keys, itertools.repeat(m)):
            if _entries(by_index[a]) and _entries(by_index[b]):
                src.append(a)
                dst.append(b)
        self._check_acyclic(flow, by_index, src, dst)
        has_in, has_out = set(dst), set(src)
        for a, b in zip(src, dst, strict=True):
            self._connect(by_index[a], by_index[b])
        entries = tuple(n for i, p in by_index.items() if i not in has_in for n in _entries(p))
        exits = tuple(n for i, p in by_index.items() if i not in has_out for n in _exits(p))
        return _Fragment(entries, exits, scope, flow.name)

    def _index_pieces(self, flow: Flow, pieces: list[_Piece]) -> dict[int, _Piece]:
        by_index: dict[int, _Piece] = {}
        it = iter(pieces)
        for index, item in enumerate(flow.items):
            if not isinstance(item, Checkpoint):
                by_index[index] = next(it)
        return by_index

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

    def _check_acyclic(self, flow: Flow, by_index: dict[int, _Piece], src: Sequence[int], dst: Sequence[int]) -> None:
        succ = _group(len(flow.items), src, dst)
        indegree = [0] * len(flow.items)
        for b in dst:
            indegree[b] += 1
        ready = [i for i in by_index if indegree[i] == 0]
        seen = 0
        while ready:
            i = ready.pop()
            seen += 1
            for j in succ[i]:
                indegree[j] -= 1
                if indegree[j] == 0:
                    ready.append(j)
        if seen == len(by_index):
            return
        # Walk forward inside what is left until an item repeats: that stretch is a cycle.
        start = next(i for i in by_index if indegree[i] > 0)
        order: list[int] = []
        position: dict[int, int] = {}
        i = start
        while i not in position:
            position[i] = len(order)
            order.append(i)
            i = next(j for j in succ[i] if indegree[j] > 0)
        cycle = order[position[i] :]
        raise CycleError(flow.name, [self._label(by_index[k]) for k in cycle])

    def _label(self, piece: _Piece) -> str:
        return self.nodes[piece].name if isinstance(piece, int) else piece.label

    def compile(self) -> ExecutionGraph:
        self.collect(self.root, ROOT, (), ())
        self._scope_ids = {id(s.checkpoint): s.id for s in self.scopes if s.checkpoint is not None}
        self._check_scope_names()
        self.resolve_inputs()
        self.build(self.root, ROOT, [0])
        nodes = self.nodes
        succs = _group(len(nodes), self.edge_from, self.edge_to)
        # Predecessors in the order of their ids, each node's successors in the order its edges were made.
        sources = [a for a, targets in enumerate(succs) for _ in targets]
        targets = [b for targets in succs for b in targets]
        preds = _group(len(nodes), targets, sources)
        for node, node_succs, node_preds in zip(nodes, succs, preds, strict=True):
            node.succs = node_succs
            node.preds = node_preds
        required = {name: tuple(tasks) for name, tasks in self.required.items()}
        return ExecutionGraph(self.root.name, nodes, self.scopes, required)

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
    """``values`` grouped by ``keys`` (each in 0..n-1), in their order within each group: a counting sort."""
    starts = [0] * (n + 1)
    for k in keys:
        starts[k + 1] += 1
    for i in range(n):
        starts[i + 1] += starts[i]
    flat = [0] * len(keys)
    fill = starts[:n]
    for k, v in zip(keys, values, strict=True):
        flat[fill[k]] = v
        fill[k] += 1
    return [tuple(flat[starts[i] : starts[i + 1]]) for i in range(n)]


def compile_flow(flow: Flow) -> ExecutionGraph:
    """Compile ``flow``; prefer ``flow.compile()``, which caches the result on the flow.

    The cyclic GC is left alone: the collector is process-wide state, and a
    library must not switch it off under the application's other threads.
    """
    return _Compiler(flow).compile()
