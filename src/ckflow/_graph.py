"""The compiled form of a flow: ``ExecutionGraph``, its ``Node`` per task or join, its checkpoint ``Scope``s.

Built by ``ckflow._compile``; immutable once built and shared by every run of the flow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, final

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ckflow._checkpoint import Checkpoint
    from ckflow._task import Task

__all__ = ["JOIN", "LOOP", "ROOT", "TASK", "ExecutionGraph", "Node", "Scope"]


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
    """One vertex of the execution graph: a task, or a join that does no work."""

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

    def __init__(self, id: int, name: str, kind: int, scope: int, task: Task | None) -> None:
        self.id = id
        self.name = name
        self.kind = kind
        self.scope = scope
        self.task = task
        self.preds: tuple[int, ...] = ()
        self.succs: tuple[int, ...] = ()
        #: (parameter, value name) read from the run's values, made upstream
        self.value_in: tuple[tuple[str, str], ...] = ()
        #: parameter -> constant, from inject
        self.const_in: Mapping[str, Any] | None = None
        #: (parameter, input name, required) read from the run's inputs
        self.input_in: tuple[tuple[str, str, bool], ...] = ()
        self.provides: tuple[str, ...] = () if task is None else task.provided
        self.is_async = True if task is None else task.is_async
        self.shield = False if task is None else bool(task.shield)
        self.timeout: float | None = None if task is None else task.timeout
        #: the checkpoints (scope ids) holding the node, innermost first, the root left out
        self.chain: tuple[int, ...] = ()

    def __repr__(self) -> str:
        return f"<Node {self.id} {self.name!r}>"


@final
class ExecutionGraph:
    """The compiled, immutable form of a flow; shared by every run of it."""

    __slots__ = (
        "_scope_tasks",
        "branch_regions",
        "flow_name",
        "index",
        "input_checks",
        "loops",
        "nodes",
        "required_inputs",
        "scope_index",
        "scope_sizes",
        "scopes",
        "task_count",
    )

    def __init__(
        self,
        flow_name: str,
        nodes: list[Node],
        scopes: list[Scope],
        required_inputs: dict[str, tuple[str, ...]],
    ) -> None:
        self.flow_name = flow_name
        self.nodes = nodes
        self.scopes = scopes
        #: value name -> the tasks that need it from the run's inputs
        self.required_inputs = required_inputs
        #: how run inputs are checked against their readers' annotations (built by ``ckflow._inputs`` when first used)
        self.input_checks: object | None = None
        self.index = {n.name: n.id for n in nodes if n.kind == TASK}
        self.scope_index = {s.name: s.id for s in scopes}
        self.task_count = len(self.index)
        #: scope id -> how many tasks (and Periodic gates) it holds, nested scopes included
        self.scope_sizes = [0] * len(scopes)
        loop_members: dict[int, list[int]] = {s.id: [] for s in scopes if s.gate >= 0}
        for node in nodes:
            chain: list[int] = []
            s = node.scope
            while s > ROOT:
                chain.append(s)
                s = scopes[s].parent
            node.chain = tuple(chain)
            if node.kind != JOIN:
                self.scope_sizes[ROOT] += 1
                for s in chain:
                    self.scope_sizes[s] += 1
            for s in chain:
                if s in loop_members:
                    loop_members[s].append(node.id)
        for s, members in loop_members.items():
            inside = set(members)
            scopes[s].members = tuple(members)
            scopes[s].entries = tuple(m for m in members if not any(p in inside for p in nodes[m].preds))
        #: gate node -> the scope of its Periodic
        self.loops = {s.gate: s.id for s in scopes if s.gate >= 0}
        self._scope_tasks: dict[int, list[int]] = {}
        #: (failed node, checkpoint scope) -> the region its failure opens there and its tasks' sorted names
        #: (``ckflow._region.failure_region``, made on use)
        self.branch_regions: dict[tuple[int, int], tuple[frozenset[int], tuple[str, ...]]] = {}

    def scope_tasks(self, scope: int) -> list[int]:
        """The task nodes of ``scope``, nested scopes included, in id order (computed once per scope)."""
        found = self._scope_tasks.get(scope)
        if found is None:
            found = [n.id for n in self.nodes if n.kind == TASK and (scope == ROOT or scope in n.chain)]
            self._scope_tasks[scope] = found
        return found

    def in_scope(self, node: int, scope: int) -> bool:
        """True if ``node`` lies in ``scope`` (directly or in a nested scope)."""
        s = self.nodes[node].scope
        scopes = self.scopes
        while s >= 0:
            if s == scope:
                return True
            s = scopes[s].parent
        return False

    def scope_chain(self, node: int) -> list[int]:
        """The scopes holding ``node``, innermost first, root last."""
        chain = []
        s = self.nodes[node].scope
        while s >= 0:
            chain.append(s)
            s = self.scopes[s].parent
        return chain

    def __repr__(self) -> str:
        return f"<ExecutionGraph {self.flow_name!r} {self.task_count} tasks, {len(self.scopes)} scopes>"
