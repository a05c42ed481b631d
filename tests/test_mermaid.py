"""Rendering a flow, or a run of it, as Mermaid text (DESIGN §8)."""

from __future__ import annotations

import ckflow
from ckflow import Checkpoint, Linear, Parallel, Retry, task


@task(provides="volume")
async def create() -> str:
    return "vol"


@task(provides="net")
async def network() -> str:
    return "net"


@task
async def attach(volume: str, net: str) -> None:
    raise RuntimeError("no disk")


def flow() -> ckflow.Flow:
    return Linear(
        "boot",
        Parallel("prepare", create, network),
        Linear("disk", Checkpoint("disk", retry=Retry(attempts=1)), attach),
    )


class TestMermaid:
    def test_flow_renders_tasks_edges_and_checkpoint_subgraphs(self) -> None:
        """Every task is a node, the checkpoint's scope is a subgraph, and the Parallel joins through one node."""
        text = ckflow.to_mermaid(flow())
        assert text.startswith("flowchart TD\n")
        for name in ("create", "network", "attach"):
            assert f'["{name}"]' in text
        assert 'subgraph cp1["checkpoint disk"]' in text
        assert text.count("(( ))") == 1
        assert text.count("-->") == 3

    async def test_run_colours_tasks_by_state(self) -> None:
        """With a run result, each task gets the class of its state and the classes are defined."""
        result = await ckflow.run(flow())
        text = ckflow.to_mermaid(flow(), result)
        assert "classDef reverted" in text
        for name in ("create", "network", "attach"):
            assert result.tasks[name].state == "REVERTED"
        assert text.count("class n") == 3
