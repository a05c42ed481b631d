"""The compiled form of a flow: ``ExecutionGraph``, its nodes (tasks and joins) as columns, its checkpoint ``Scope``s.

Built by ``ckflow._compile``; immutable once built and shared by every run of the flow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, final, overload

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from ckflow._checkpoint import Checkpoint
    from ckflow._task import Task

__all__ = ["JOIN", "LOOP", "ROOT", "TASK", "Columns", "ExecutionGraph", "Node", "NodeList", "Scope"]


TASK: Final = 0
JOIN: Final = 1
#: the gate after a ``Periodic``: it lets what follows start only after the last iteration
LOOP: Final = 2

#: Scope id of the implicit root checkpoint: the flow itself.
ROOT: Final = 0


@final
class Scope:
    """A checkpoint's scope in the execution graph. Scope 0 is the implicit root."""

    __slots__ = (
        "checkpoint",
        "children",
        "depth",
        "entries",
        "every",
        "gate",
        "id",
        "keep_last",
        "max_age",
        "members",
        "name",
        "parent",
        "times",
    )

    def __init__(self, id: int, name: str, checkpoint: Checkpoint | None, parent: int, depth: int) -> None:
        self.id = id
        self.name = name
        #: None for the root, which never retries
        self.checkpoint = checkpoint
        #: -1 for the root
        self.parent = parent
        self.depth = depth
        self.children: list[int] = []
        #: retention of the scope's pass records: its checkpoint's, else its enclosing scope's
        #: (a Periodic's scope keeps 10 unless told otherwise)
        self.keep_last: int | None = None
        self.max_age: float | None = None
        #: a Periodic's scope: its gate node (-1 for other scopes), period and number of iterations
        self.gate = -1
        self.every = 0.0
        self.times: int | None = None
        #: a Periodic's scope: every node in it, and those with no predecessor in it
        self.members: tuple[int, ...] = ()
        self.entries: tuple[int, ...] = ()

    def __repr__(self) -> str:
        return f"<Scope {self.id} {self.name!r} parent={self.parent}>"


@final
class Node:
    """One vertex of the execution graph, a task or a join that does no work: a view of the graph's columns.

    The graph keeps its vertices as columns (``ExecutionGraph.succs``, ``.tasks``, ...: one list per field,
    indexed by node id), so that a large flow's compile leaves no object a node for the cyclic GC to walk;
    a ``Node`` is made the first time ``graph.nodes[n]`` is read, and kept.
    """

    __slots__ = (
        "chain",
        "const_in",
        "id",
        "input_in",
        "is_async",
        "kind",
        "name",
        "preds",
        "provides",
        "scope",
        "shield",
        "succs",
        "task",
        "timeout",
        "value_in",
    )

    def __init__(self, graph: ExecutionGraph, n: int) -> None:
        self.id = n
        self.name = graph.names[n]
        self.kind = graph.kinds[n]
        self.scope = graph.node_scopes[n]
        self.task: Task | None = graph.tasks[n]
        self.preds: tuple[int, ...] = graph.preds[n]
        self.succs: tuple[int, ...] = graph.succs[n]
        #: (parameter, value name) read from the run's values, made upstream
        self.value_in: tuple[tuple[str, str], ...] = graph.value_in[n]
        #: parameter -> constant, from inject
        self.const_in: Mapping[str, Any] | None = graph.const_in[n]
        #: (parameter, input name, required) read from the run's inputs
        self.input_in: tuple[tuple[str, str, bool], ...] = graph.input_in[n]
        self.provides: tuple[str, ...] = graph.provides[n]
        self.is_async = graph.is_async[n]
        self.shield = graph.shield[n]
        self.timeout: float | None = graph.timeout[n]
        #: the checkpoints (scope ids) holding the node, innermost first, the root left out
        self.chain: tuple[int, ...] = graph.chains[n]

    def __repr__(self) -> str:
        return f"<Node {self.id} {self.name!r}>"


@final
class NodeList(Sequence[Node]):
    """``graph.nodes``: the graph's ``Node`` views, each made on first use (run-time code reads the columns)."""

    __slots__ = ("_graph", "_made")

    def __init__(self, graph: ExecutionGraph) -> None:
        self._graph = graph
        self._made: list[Node | None] = [None] * len(graph.names)

    def __len__(self) -> int:
        return len(self._made)

    @overload
    def __getitem__(self, n: int) -> Node: ...
    @overload
    def __getitem__(self, n: slice) -> list[Node]: ...
    def __getitem__(self, n: int | slice) -> Node | list[Node]:
        if isinstance(n, slice):
            return [self[i] for i in range(len(self._made))[n]]
        node = self._made[n]
        if node is None:
            node = self._made[n] = Node(self._graph, n % len(self._made))
        return node

    def __iter__(self) -> Iterator[Node]:
        return map(self.__getitem__, range(len(self._made)))


@dataclass(eq=False, slots=True)
class Columns:
    """What the compiler gives ``ExecutionGraph``: a node's fields, one list per field, indexed by node id."""

    names: list[str]
    kinds: bytes
    scopes: list[int]
    tasks: list[Task | None]
    succs: list[tuple[int, ...]]
    #: how many predecessors each node has (the predecessors themselves are made from ``succs`` when first read)
    pred_counts: list[int]
    value_in: list[tuple[tuple[str, str], ...]]
    const_in: list[Mapping[str, Any] | None]
    input_in: list[tuple[tuple[str, str, bool], ...]]


@final
class ExecutionGraph:
    """The compiled, immutable form of a flow; shared by every run of it.

    Its nodes are columns: node ``n``'s successors are ``succs[n]``, its task ``tasks[n]``, and so on (a list,
    or ``bytes`` for small ints, per field); ``nodes`` gives a ``Node`` object per node where one is wanted.
    """

    __slots__ = (
        "_nodes",
        "_preds",
        "_scope_tasks",
        "branch_regions",
        "chains",
        "const_in",
        "flow_name",
        "index",
        "input_checks",
        "input_in",
        "is_async",
        "kinds",
        "loops",
        "names",
        "node_scopes",
        "pred_counts",
        "provides",
        "required_inputs",
        "scope_index",
        "scope_sizes",
        "scopes",
        "shield",
        "succs",
        "task_count",
        "tasks",
        "timeout",
        "value_in",
    )

    def __init__(
        self,
        flow_name: str,
        columns: Columns,
        scopes: list[Scope],
        required_inputs: dict[str, tuple[str, ...]],
    ) -> None:
        self.flow_name = flow_name
        self.names = columns.names
        self.kinds = columns.kinds
        self.node_scopes = columns.scopes
        self.tasks = tasks = columns.tasks
        self.succs = columns.succs
        self.pred_counts = columns.pred_counts
        self._preds: list[tuple[int, ...]] | None = None
        self.value_in = columns.value_in
        self.const_in = columns.const_in
        self.input_in = columns.input_in
        self.provides: list[tuple[str, ...]] = [() if t is None else t.provided for t in tasks]
        self.is_async: list[bool] = [True if t is None else t.is_async for t in tasks]
        self.shield: list[bool] = [t is not None and bool(t.shield) for t in tasks]
        self.timeout: list[float | None] = [None if t is None else t.timeout for t in tasks]
        self.scopes = scopes
        #: value name -> the tasks that need it from the run's inputs
        self.required_inputs = required_inputs
        #: how run inputs are checked against their readers' annotations (built by ``ckflow._inputs`` when first used)
        self.input_checks: object | None = None
        self.index = {
            name: n for n, (name, kind) in enumerate(zip(self.names, self.kinds, strict=True)) if kind == TASK
        }
        self.scope_index = {s.name: s.id for s in scopes}
        self.task_count = len(self.index)
        self._chains()
        #: gate node -> the scope of its Periodic
        self.loops = {s.gate: s.id for s in scopes if s.gate >= 0}
        self._scope_tasks: dict[int, list[int]] = {}
        #: (failed node, checkpoint scope) -> the region its failure opens there and its tasks' sorted names
        #: (``ckflow._region.failure_region``, made on use)
        self.branch_regions: dict[tuple[int, int], tuple[frozenset[int], tuple[str, ...]]] = {}
        self._nodes: NodeList | None = None

    def _chains(self) -> None:
        """Each node's chain of checkpoints, the scopes' sizes, and the members and entries of Periodics."""
        scopes = self.scopes
        #: the chain of each scope (scope id -> the scopes holding it, innermost first, the root left out)
        scope_chain: list[tuple[int, ...]] = []
        for scope in scopes:
            scope_chain.append(() if scope.id == ROOT else (scope.id, *scope_chain[scope.parent]))
        self.chains = chains = list(map(scope_chain.__getitem__, self.node_scopes))
        #: scope id -> how many tasks (and Periodic gates) it holds, nested scopes included
        self.scope_sizes = [0] * len(scopes)
        self.scope_sizes[ROOT] = len(self.kinds) - self.kinds.count(JOIN)
        loop_members: dict[int, list[int]] = {s.id: [] for s in scopes if s.gate >= 0}
        for n, chain in enumerate(chains):
            if not chain:
                continue
            if self.kinds[n] != JOIN:
                for s in chain:
                    self.scope_sizes[s] += 1
            for s in chain:
                if s in loop_members:
                    loop_members[s].append(n)
        for s, members in loop_members.items():
            inside = set(members)
            scopes[s].members = tuple(members)
            scopes[s].entries = tuple(m for m in members if not any(p in inside for p in self.preds[m]))

    @property
    def preds(self) -> list[tuple[int, ...]]:
        """Each node's predecessors, ascending: made from ``succs`` when first read (a run that fails nowhere,
        and has no Periodic, needs only ``pred_counts``)."""
        preds = self._preds
        if preds is None:
            found: list[list[int]] = [[] for _ in self.pred_counts]
            for n, succs in enumerate(self.succs):
                for s in succs:
                    found[s].append(n)
            preds = self._preds = list(map(tuple, found))
        return preds

    @property
    def nodes(self) -> NodeList:
        """The nodes as ``Node`` objects, each made on first use."""
        nodes = self._nodes
        if nodes is None:
            nodes = self._nodes = NodeList(self)
        return nodes

    def scope_tasks(self, scope: int) -> list[int]:
        """The task nodes of ``scope``, nested scopes included, in id order (computed once per scope)."""
        found = self._scope_tasks.get(scope)
        if found is None:
            chains = self.chains
            found = [n for n, kind in enumerate(self.kinds) if kind == TASK and (scope == ROOT or scope in chains[n])]
            self._scope_tasks[scope] = found
        return found

    def in_scope(self, node: int, scope: int) -> bool:
        """True if ``node`` lies in ``scope`` (directly or in a nested scope)."""
        s = self.node_scopes[node]
        scopes = self.scopes
        while s >= 0:
            if s == scope:
                return True
            s = scopes[s].parent
        return False

    def scope_chain(self, node: int) -> list[int]:
        """The scopes holding ``node``, innermost first, root last."""
        chain = []
        s = self.node_scopes[node]
        while s >= 0:
            chain.append(s)
            s = self.scopes[s].parent
        return chain

    def __repr__(self) -> str:
        return f"<ExecutionGraph {self.flow_name!r} {self.task_count} tasks, {len(self.scopes)} scopes>"
