"""Mermaid text of a flow's execution graph, coloured by task state when a run is given."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ckflow._compile import JOIN, LOOP, ROOT, TASK

if TYPE_CHECKING:
    from ckflow._engine import Run
    from ckflow._models import RunResult
    from ckflow._patterns import Flow

__all__ = ["to_mermaid"]

_COLOURS = {
    "PENDING": "fill:#eeeeee,stroke:#999999",
    "RUNNING": "fill:#cce5ff,stroke:#3d7fd9",
    "SUCCESS": "fill:#d4edda,stroke:#2e8540",
    "FAILURE": "fill:#f8d7da,stroke:#c0392b",
    "REVERTING": "fill:#fff3cd,stroke:#d4a017",
    "REVERTED": "fill:#ffe5b4,stroke:#e67e22",
    "REVERT_FAILURE": "fill:#b71c1c,stroke:#7f0000,color:#ffffff",
    "SKIPPED": "fill:#ffffff,stroke:#bbbbbb,stroke-dasharray:3",
}


def _label(text: str) -> str:
    return text.replace('"', "#quot;")


def to_mermaid(flow: Flow, run: Run | RunResult | None = None) -> str:
    """Mermaid ``flowchart`` text of ``flow``: tasks, joins, edges and checkpoint scopes as subgraphs.

    With ``run`` (a live ``Run`` or a ``RunResult``), every task is coloured by its state.
    """
    graph = flow.compile()
    children: dict[int, list[int]] = {s.id: [] for s in graph.scopes}
    for node in graph.nodes:
        children[node.scope].append(node.id)
    lines = ["flowchart TD"]

    def emit(scope: int, indent: str) -> None:
        for n in children[scope]:
            node = graph.nodes[n]
            if node.kind == JOIN:
                lines.append(f"{indent}n{n}(( ))")
            elif node.kind == LOOP:
                lines.append(f'{indent}n{n}{{{{"{_label(node.name)}"}}}}')
            else:
                lines.append(f'{indent}n{n}["{_label(node.name)}"]')
        for child in graph.scopes[scope].children:
            lines.append(f'{indent}subgraph cp{child}["checkpoint {_label(graph.scopes[child].name)}"]')
            emit(child, indent + "    ")
            lines.append(f"{indent}end")

    emit(ROOT, "    ")
    lines.extend(f"    n{node.id} --> n{s}" for node in graph.nodes for s in node.succs)
    if run is not None:
        tasks = run.tasks
        used: set[str] = set()
        for node in graph.nodes:
            if node.kind == TASK and node.name in tasks:
                state = str(tasks[node.name].state)
                used.add(state)
                lines.append(f"    class n{node.id} {state.lower()}")
        lines.extend(f"    classDef {state.lower()} {_COLOURS[state]}" for state in sorted(used))
    return "\n".join(lines) + "\n"
