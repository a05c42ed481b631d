"""Compilation: the edges of Linear/Parallel/Graph, join nodes, caching, definition errors, data lookup."""

from __future__ import annotations

import gc
from typing import Any

import pytest

import ckflow
from ckflow import Checkpoint, Graph, Linear, Parallel, Retry, task
from ckflow._compile import JOIN, ExecutionGraph


def make(name: str, *, requires: tuple[str, ...] = (), provides: str | tuple[str, ...] | None = None) -> Any:
    """A task called ``name`` reading ``requires`` and returning its name (or a tuple of it)."""
    params = ", ".join(requires)
    namespace: dict[str, Any] = {}
    # A real signature (not **kwargs) is what the compiler reads, so build one per shape.
    exec(f"async def {name}({params}):\n    return None", namespace)
    return task(name=name, provides=provides)(namespace[name])


def task_preds(graph: ExecutionGraph, name: str) -> set[str]:
    """The tasks that ``name`` waits for directly, looking through join nodes."""
    found: set[str] = set()
    stack = list(graph.nodes[graph.index[name]].preds)
    while stack:
        node = graph.nodes[stack.pop()]
        if node.kind == JOIN:
            stack.extend(node.preds)
        else:
            found.add(node.name)
    return found


def edge_count(graph: ExecutionGraph) -> int:
    return sum(len(n.succs) for n in graph.nodes)


class TestEdges:
    """The execution graph has the edges each pattern promises."""

    def test_linear_chains_items(self) -> None:
        """In a Linear each task waits for the one before it, and only for it."""
        g = Linear("f", make("a"), make("b"), make("c")).compile()
        assert task_preds(g, "a") == set()
        assert task_preds(g, "b") == {"a"}
        assert task_preds(g, "c") == {"b"}

    def test_parallel_has_no_edges(self) -> None:
        """Siblings of a Parallel wait for nothing."""
        g = Parallel("f", make("a"), make("b"), make("c")).compile()
        assert edge_count(g) == 0

    def test_nested_linear_parallel(self) -> None:
        """Linear(a, Parallel(b, c), d): b and c wait for a; d waits for both b and c."""
        g = Linear("f", make("a"), Parallel("p", make("b"), make("c")), make("d")).compile()
        assert task_preds(g, "b") == {"a"}
        assert task_preds(g, "c") == {"a"}
        assert task_preds(g, "d") == {"b", "c"}

    def test_parallel_of_linears(self) -> None:
        """Parallel(Linear(a, b), Linear(c, d)): each chain is ordered, the chains are not."""
        g = Parallel("f", Linear("l1", make("a"), make("b")), Linear("l2", make("c"), make("d"))).compile()
        assert task_preds(g, "b") == {"a"}
        assert task_preds(g, "d") == {"c"}
        assert task_preds(g, "a") == task_preds(g, "c") == set()

    def test_graph_infers_edges_from_data(self) -> None:
        """In a Graph a consumer waits for its provider, whatever the order the items are written in."""
        g = Graph(
            "g",
            make("c", requires=("x", "y")),
            make("b", requires=("x",), provides="y"),
            make("a", provides="x"),
            make("lone"),
        ).compile()
        assert task_preds(g, "a") == set()
        assert task_preds(g, "b") == {"a"}
        assert task_preds(g, "c") == {"a", "b"}
        assert task_preds(g, "lone") == set()

    def test_graph_link_adds_edge(self) -> None:
        """Graph.link(a, b) orders two tasks that share no data, by object or by name."""
        a, b, c = make("a"), make("b"), make("c")
        g = Graph("g", a, b, c).link(a, b).link("b", "c").compile()
        assert task_preds(g, "b") == {"a"}
        assert task_preds(g, "c") == {"b"}

    def test_graph_with_nested_flows(self) -> None:
        """A Graph item that is a flow is connected as a unit: its entries wait for the provider."""
        inner = Linear("inner", make("b", requires=("x",)), make("c"))
        g = Graph("g", inner, make("a", provides="x")).compile()
        assert task_preds(g, "b") == {"a"}
        assert task_preds(g, "c") == {"b"}

    def test_linear_of_parallels_uses_joins(self) -> None:
        """A Linear of two Parallels of n tasks has O(n) edges, not n², and still orders every pair."""
        n = 50
        first = Parallel("p1", *(make(f"a{i}") for i in range(n)))
        second = Parallel("p2", *(make(f"b{i}") for i in range(n)))
        g = Linear("f", first, second).compile()
        assert edge_count(g) <= 3 * n
        assert any(node.kind == JOIN for node in g.nodes)
        expected = {f"a{i}" for i in range(n)}
        for i in range(n):
            assert task_preds(g, f"b{i}") == expected

    def test_preds_and_succs_mirror_each_other_in_a_fixed_order(self) -> None:
        """Every edge is in its source's succs and its target's preds; preds by node id, succs as made."""
        # e's data edge comes from the inner Parallel's exit join (made late, a high id), its link from
        # the task d (a low id): made in that order, listed in the other
        inner = Parallel("inner", make("b", provides="x"), make("c"))
        g = Linear(
            "f",
            make("a"),
            Graph("g", make("e", requires=("x",)), inner, make("d")).link("d", "e"),
            Parallel("p", make("f1"), make("f2")),
            make("z"),
        ).compile()
        out = sorted((node.id, b) for node in g.nodes for b in node.succs)
        into = sorted((a, node.id) for node in g.nodes for a in node.preds)
        assert out == into
        assert len(out) == len(set(out))
        for node in g.nodes:
            assert list(node.preds) == sorted(node.preds)
        assert task_preds(g, "e") >= {"d", "b", "c"}


class TestCompileCache:
    """A flow object is compiled once."""

    def test_compile_is_cached(self) -> None:
        """flow.compile() returns the same graph object every time."""
        flow = Linear("f", make("a"), make("b"))
        assert flow.compile() is flow.compile()

    async def test_runs_reuse_compiled_graph(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Two runs of one flow object compile it once."""
        import ckflow._compile

        calls: list[str] = []
        real = ckflow._compile.compile_flow

        def counting(flow: ckflow.Flow) -> ExecutionGraph:
            calls.append(flow.name)
            return real(flow)

        monkeypatch.setattr(ckflow._compile, "compile_flow", counting)
        flow = Linear("f", make("a"), make("b"))
        for _ in range(2):
            result = await ckflow.run(flow)
            assert result.state == ckflow.FlowState.SUCCESS
        assert calls == ["f"]


class TestDefinitionErrors:
    """Flow-definition problems raise FlowDefinitionError subclasses that name the flow and the task."""

    def test_duplicate_task(self) -> None:
        """Two tasks with one name in a flow raise DuplicateTaskError."""
        with pytest.raises(ckflow.DuplicateTaskError) as info:
            Linear("f", make("a"), make("a"))
        assert (info.value.flow, info.value.task) == ("f", "a")
        assert isinstance(info.value, ckflow.FlowDefinitionError)
        assert "with_options(name=" in str(info.value)

    def test_duplicate_task_nested(self) -> None:
        """Duplicate names are found anywhere in the tree, across nesting levels."""
        with pytest.raises(ckflow.DuplicateTaskError) as info:
            Linear("outer", make("a"), Parallel("p", make("b"), Linear("deep", make("a"))))
        assert info.value.task == "a"
        assert info.value.flow == "outer"

    async def test_missing_requirement_before_any_task_runs(self) -> None:
        """ckflow.run raises MissingRequirementError before any task has run."""
        ran: list[str] = []

        @task(name="first")
        async def first() -> None:
            ran.append("first")

        @task(name="attach")
        async def attach(volume: str) -> None:
            ran.append("attach")

        flow = Linear("boot", first, attach)
        with pytest.raises(ckflow.MissingRequirementError) as info:
            await ckflow.run(flow)
        err = info.value
        assert (err.flow, err.task, err.requirement) == ("boot", "attach", "volume")
        assert err.missing == {"volume": ("attach",)}
        assert "inputs=" in str(err)
        assert ran == []

    async def test_missing_requirement_satisfied_by_inputs(self) -> None:
        """The same flow runs once the value is given in inputs."""

        @task(provides="out")
        async def attach(volume: str) -> str:
            return volume

        result = await ckflow.run(Linear("boot", attach), inputs={"volume": "v"})
        assert result.outputs["out"] == "v"

    def test_ambiguous_provider(self) -> None:
        """Two providers of one name are ambiguous even with no consumer."""
        with pytest.raises(ckflow.AmbiguousProviderError) as info:
            Parallel("f", make("a", provides="x"), make("b", provides="x"))
        err = info.value
        assert (err.flow, err.name, err.providers) == ("f", "x", ("a", "b"))

    def test_ambiguous_provider_nested(self) -> None:
        """Ambiguity is also found between nested flows."""
        with pytest.raises(ckflow.AmbiguousProviderError) as info:
            Linear("f", Linear("l", make("a", provides="x")), Parallel("p", make("b", provides=("y", "x"))))
        assert info.value.name == "x"

    def test_provider_later_in_linear(self) -> None:
        """A consumer before its provider in a Linear raises ProviderOrderError naming both."""
        flow = Linear("f", make("consumer", requires=("x",)), make("provider", provides="x"))
        with pytest.raises(ckflow.ProviderOrderError) as info:
            flow.compile()
        err = info.value
        assert (err.flow, err.task, err.requirement, err.provider) == ("f", "consumer", "x", "provider")

    async def test_provider_order_error_raised_by_run(self) -> None:
        """ckflow.run on a misordered Linear raises ProviderOrderError and runs nothing."""
        ran: list[str] = []

        @task(name="consumer")
        async def consumer(x: int) -> None:
            ran.append("consumer")

        @task(name="provider", provides="x")
        async def provider() -> int:
            ran.append("provider")
            return 1

        with pytest.raises(ckflow.ProviderOrderError):
            await ckflow.run(Linear("f", consumer, provider), inputs={"x": 1})
        assert ran == []

    def test_sibling_dependency(self) -> None:
        """A sibling of a Parallel consuming another sibling's value raises SiblingDependencyError."""
        flow = Linear(
            "f",
            Parallel("p", make("provider", provides="x"), Linear("l", make("consumer", requires=("x",)))),
        )
        with pytest.raises(ckflow.SiblingDependencyError) as info:
            flow.compile()
        err = info.value
        assert (err.flow, err.task, err.requirement, err.provider) == ("p", "consumer", "x", "provider")

    def test_cycle_through_data(self) -> None:
        """A data cycle in a Graph raises CycleError listing the cycle."""
        flow = Graph(
            "g",
            make("a", requires=("z",), provides="x"),
            make("b", requires=("x",), provides="y"),
            make("c", requires=("y",), provides="z"),
            make("free"),
        )
        with pytest.raises(ckflow.CycleError) as info:
            flow.compile()
        err = info.value
        assert err.flow == "g"
        assert set(err.cycle) == {"a", "b", "c"}
        assert len(err.cycle) == 3
        assert " -> ".join((*err.cycle, err.cycle[0])) in str(err)
        assert "'g'" in str(err)
        assert "free" not in str(err)

    def test_cycle_that_feeds_an_earlier_item(self) -> None:
        """An item downstream of a cycle, written before it, is not part of what CycleError lists.

        The first item the topological sort left over is ``sink``, which leads to no cycle: the walk that
        finds the cycle used to start there and stopped with a bare StopIteration.
        """
        flow = Graph(
            "g",
            make("sink", requires=("x",)),
            make("a", requires=("y",), provides="x"),
            make("b", requires=("x",), provides="y"),
        )
        with pytest.raises(ckflow.CycleError) as info:
            flow.compile()
        assert set(info.value.cycle) == {"a", "b"}
        assert " -> ".join((*info.value.cycle, info.value.cycle[0])) in str(info.value)

    def test_cycle_through_links(self) -> None:
        """Explicit links can close a cycle too; the cycle lists both items in order."""
        a, b = make("a"), make("b")
        flow = Graph("g", a, b).link(a, b).link(b, a)
        with pytest.raises(ckflow.CycleError) as info:
            flow.compile()
        cycle = info.value.cycle
        assert set(cycle) == {"a", "b"}
        assert " -> ".join((*cycle, cycle[0])) in str(info.value)

    def test_task_requiring_its_own_value(self) -> None:
        """A task that requires what it provides is a cycle of one."""
        with pytest.raises(ckflow.CycleError) as info:
            Linear("f", make("a", requires=("x",), provides="x")).compile()
        assert info.value.cycle == ("a",)

    @pytest.mark.parametrize("pattern", [Parallel, Graph])
    def test_checkpoint_marker_in_parallel_or_graph(self, pattern: type[ckflow.Flow]) -> None:
        """A Checkpoint marker directly in a Parallel or Graph raises MisplacedCheckpointError."""
        with pytest.raises(ckflow.MisplacedCheckpointError) as info:
            pattern("p", Checkpoint("cp"), make("a"))
        err = info.value
        assert (err.flow, err.checkpoint) == ("p", "cp")
        assert "checkpoint=" in str(err)

    def test_checkpoint_argument_on_parallel_is_fine(self) -> None:
        """checkpoint= on a Parallel is the right way to scope it and compiles."""
        flow = Parallel("p", make("a"), checkpoint=Checkpoint("cp", retry=Retry(attempts=2)))
        assert "cp" in flow.compile().scope_index

    def test_duplicate_checkpoint_name(self) -> None:
        """Two checkpoints with one name raise MisplacedCheckpointError."""
        with pytest.raises(ckflow.MisplacedCheckpointError) as info:
            Linear("f", Checkpoint("cp"), make("a"), Linear("l", Checkpoint("cp"), make("b")))
        assert info.value.checkpoint == "cp"
        assert "twice" in str(info.value)

    def test_checkpoint_name_clashes_with_task_retry(self) -> None:
        """A task with retry= gets a checkpoint named after it, which may not clash with a marker."""
        flow = Linear("f", Checkpoint("a"), make("x").with_options(name="a", retry=Retry(attempts=2)))
        with pytest.raises(ckflow.MisplacedCheckpointError) as info:
            flow.compile()
        assert info.value.checkpoint == "a"


def reader(name: str = "reader") -> ckflow.Task:
    """A task providing ``seen`` = the ``x`` it was given; ``x`` has a default."""

    async def read(x: str = "default") -> str:
        return x

    return task(name=name, provides="seen")(read)


class TestDataLookup:
    """Input lookup order: task inject > upstream provider > flow inject > run inputs > default."""

    @staticmethod
    def provider() -> Any:
        @task(name="provider", provides="x")
        async def provide() -> str:
            return "provider"

        return provide

    async def test_task_inject_wins(self) -> None:
        """The task's own inject beats an upstream provider, a flow inject and the run inputs."""
        flow = Linear(
            "f", self.provider(), reader().with_options(inject={"x": "task-inject"}), inject={"x": "flow-inject"}
        )
        result = await ckflow.run(flow, inputs={"x": "input"})
        assert result.outputs["seen"] == "task-inject"

    async def test_upstream_provider_beats_flow_inject_and_inputs(self) -> None:
        """Without a task inject, the upstream provider's value is read."""
        flow = Linear("f", self.provider(), reader(), inject={"x": "flow-inject"})
        result = await ckflow.run(flow, inputs={"x": "input"})
        assert result.outputs["seen"] == "provider"

    async def test_flow_inject_beats_inputs(self) -> None:
        """Without a provider, the flow-level inject beats the run inputs."""
        flow = Linear("f", reader(), inject={"x": "flow-inject"})
        result = await ckflow.run(flow, inputs={"x": "input"})
        assert result.outputs["seen"] == "flow-inject"

    async def test_innermost_flow_inject_wins(self) -> None:
        """Of nested flow injects, the innermost one is read."""
        flow = Linear("outer", Linear("inner", reader(), inject={"x": "inner"}), inject={"x": "outer"})
        result = await ckflow.run(flow)
        assert result.outputs["seen"] == "inner"

    def test_each_binding_reads_its_own_source(self) -> None:
        """Bindings mixing a task inject, providers, a flow inject and a run input each read their own source.

        The compiler looks up every binding's provider before it walks the bindings; an inject between two
        provided bindings, and tasks with none, must not shift which provider a later binding gets.
        """
        a, b = make("a", provides="x"), make("b", provides="z")
        c = make("c", requires=("w", "x", "y", "z", "u", "v")).with_options(inject={"y": 1})
        g = Graph("g", a, make("e"), b, c, inject={"u": 2}).compile()
        n = g.index["c"]
        assert g.value_in[n] == (("x", "x"), ("z", "z"))
        assert g.const_in[n] == {"y": 1, "u": 2}
        assert g.input_in[n] == (("w", "w", True), ("v", "v", True))
        assert task_preds(g, "c") == {"a", "b"}

    async def test_inputs_beat_default(self) -> None:
        """Without provider or inject, the run inputs beat the parameter default."""
        result = await ckflow.run(Linear("f", reader()), inputs={"x": "input"})
        assert result.outputs["seen"] == "input"

    async def test_default_last(self) -> None:
        """With nothing else, the parameter default is used."""
        result = await ckflow.run(Linear("f", reader()))
        assert result.outputs["seen"] == "default"

    async def test_rebind_reads_other_name(self) -> None:
        """rebind makes the task read another value name from the same sources."""
        flow = Linear("f", reader().with_options(rebind={"x": "y"}))
        result = await ckflow.run(flow, inputs={"x": "wrong", "y": "right"})
        assert result.outputs["seen"] == "right"


class TestMissingMessage:
    async def test_every_missing_requirement_is_named_once(self) -> None:
        """With several missing inputs the message names the first and lists each of the others once."""

        @ckflow.task
        async def needs(zeta: int, alpha: int, mid: int) -> None: ...

        with pytest.raises(ckflow.MissingRequirementError) as info:
            await ckflow.run(ckflow.Linear("m", needs))
        err = info.value
        others = set(err.missing) - {err.requirement}
        assert str(sorted(others)) in str(err)
        assert set(err.missing) == {"zeta", "alpha", "mid"}


class TestColumns:
    """A compiled graph keeps its nodes as columns; ``graph.nodes`` gives a ``Node`` view of each on demand."""

    def test_node_views_read_the_columns(self) -> None:
        a, b = make("a", provides="x"), make("b", requires=("x",)).with_options(timeout=5.0, shield=True)
        c = make("c", requires=("x",))
        g = Linear("f", a, Parallel("p", b, c), make("d")).compile()
        assert len(g.nodes) == len(g.names) == len(g.kinds) == len(g.succs) == len(g.preds)
        for n, node in enumerate(g.nodes):
            assert (node.id, node.name, node.kind, node.scope) == (n, g.names[n], g.kinds[n], g.node_scopes[n])
            assert (node.succs, node.preds, node.chain) == (g.succs[n], g.preds[n], g.chains[n])
            assert (node.value_in, node.const_in, node.input_in) == (g.value_in[n], g.const_in[n], g.input_in[n])
            assert node.task is g.tasks[n]
        assert g.pred_counts == [len(p) for p in g.preds]
        assert all(list(p) == sorted(p) for p in g.preds)  # made from succs, in the order of their ids
        assert sorted((a, b) for a in range(len(g.succs)) for b in g.succs[a]) == sorted(
            (a, b) for b in range(len(g.preds)) for a in g.preds[b]
        )
        node_b = g.nodes[g.index["b"]]
        assert (node_b.timeout, node_b.shield, node_b.is_async) == (5.0, True, True)
        assert node_b.value_in == (("x", "x"),)
        assert g.nodes[g.index["a"]].provides == ("x",)
        assert g.nodes[-1] is g.nodes[len(g.nodes) - 1]  # made once, kept
        assert [node.id for node in g.nodes[1:3]] == [1, 2]
        with pytest.raises(IndexError):
            g.nodes[len(g.nodes)]

    def test_compile_keeps_no_tracked_object_per_task(self) -> None:
        """A large Graph's compile leaves the cyclic GC no object a task to walk (no ``Node`` until asked)."""
        items = [make("t0", provides="v0")]
        items += [
            make(f"t{i}", requires=("x",), provides=f"v{i}").with_options(rebind={"x": f"v{i - 1}"})
            for i in range(1, 2_000)
        ]
        flow = Graph("big", *items)
        gc.collect()
        before = len(gc.get_objects())
        graph = flow.compile()
        gc.collect()
        assert len(gc.get_objects()) - before < 100
        assert graph.task_count == 2_000
