"""Property tests of the revert walker over random DAGs: the pure region function and whole runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import anyio
from hypothesis import example, given, settings
from hypothesis import strategies as st

import ckflow
from ckflow import Checkpoint, Graph, Linear, Retry
from ckflow import testing as ckflow_testing
from ckflow._compile import TASK
from ckflow._region import failure_region, region, scope_members


@dataclass(frozen=True)
class Spec:
    """A random DAG: task i reads the outputs of ``inputs[i]`` (earlier tasks) and fails ``fails[i]`` times.

    Tasks ``lo <= i < hi`` form a sub-Graph scoped by a checkpoint with ``attempts`` (when ``scoped``).
    """

    inputs: tuple[tuple[int, ...], ...]
    fails: tuple[int, ...]
    scoped: bool
    lo: int
    hi: int
    attempts: int
    mode: str

    @property
    def size(self) -> int:
        return len(self.inputs)

    def succs(self, i: int) -> list[int]:
        return [j for j in range(self.size) if i in self.inputs[j]]


@st.composite
def specs(draw: st.DrawFn, *, with_failures: bool = True, scoped: bool | None = None, mode: str | None = None) -> Spec:
    n = draw(st.integers(min_value=1, max_value=7))
    inputs = tuple(
        tuple(sorted(draw(st.sets(st.integers(min_value=0, max_value=i - 1), max_size=3)))) if i else ()
        for i in range(n)
    )
    fail_counts = st.integers(min_value=0, max_value=2) if with_failures else st.just(0)
    fails = tuple(draw(fail_counts) for _ in range(n))
    is_scoped = draw(st.booleans()) if scoped is None else scoped
    lo = draw(st.integers(min_value=0, max_value=n - 1))
    hi = draw(st.integers(min_value=lo + 1, max_value=n))
    attempts = draw(st.integers(min_value=1, max_value=3))
    revert = draw(st.sampled_from(["branch", "scope"])) if mode is None else mode
    return Spec(inputs, fails, is_scoped, lo, hi, attempts, revert)


def name(i: int) -> str:
    return f"t{i}"


def make_revert(task_name: str, log: list[tuple[str, str]] | None) -> Any:
    async def revert(result: Any) -> None:
        if log is not None:
            log.append(("rs", task_name))
        await anyio.lowlevel.checkpoint()
        if log is not None:
            log.append(("re", task_name))

    return revert


def build(spec: Spec, log: list[tuple[str, str]] | None = None, *, outer_linear: bool = False) -> ckflow.Flow:
    """The flow of ``spec``; each execute/revert is appended to ``log`` as (kind, task)."""
    counts = [0] * spec.size
    tasks = []
    for i, ins in enumerate(spec.inputs):

        async def body(i: int = i, **kwargs: Any) -> Any:
            counts[i] += 1
            if log is not None:
                log.append(("x", name(i)))
            await anyio.lowlevel.checkpoint()
            if counts[i] <= spec.fails[i]:
                raise RuntimeError(f"{name(i)} #{counts[i]}")
            return (i, tuple(kwargs[f"v{j}"] for j in spec.inputs[i]))

        params = ", ".join(f"v{j}" for j in ins)
        call = ", ".join(f"v{j}=v{j}" for j in ins)
        namespace: dict[str, Any] = {"body": body}
        exec(f"async def {name(i)}({params}):\n    return await body({call})\n", namespace)
        t = ckflow.task(name=name(i), provides=f"v{i}")(namespace[name(i)])

        t.revert(make_revert(name(i), log))
        tasks.append(t)
    if not spec.scoped:
        return Graph("g", *tasks)
    cp = Checkpoint("cp", retry=Retry(attempts=spec.attempts), revert=spec.mode)  # type: ignore[arg-type]
    inner = Graph("inner", *tasks[spec.lo : spec.hi], checkpoint=cp)
    if outer_linear:
        before = [Graph("pre", *tasks[: spec.lo])] if spec.lo else []
        after = [Graph("post", *tasks[spec.hi :])] if spec.hi < spec.size else []
        return Linear("g", *before, inner, *after)
    return Graph("g", *tasks[: spec.lo], inner, *tasks[spec.hi :])


def reference_outputs(spec: Spec) -> dict[str, Any]:
    """Plain sequential evaluation of the DAG."""
    values: dict[int, Any] = {}
    for i, ins in enumerate(spec.inputs):
        values[i] = (i, tuple(values[j] for j in ins))
    return {f"v{i}": v for i, v in values.items()}


class TestRegionFunction:
    @settings(max_examples=50, deadline=None)
    @given(spec=specs(with_failures=False), data=st.data())
    def test_region_bounds_and_closure(self, spec: Spec, data: st.DataObject) -> None:
        """seeds ⊆ region ⊆ scope members, and the region is closed downstream within the scope."""
        graph = build(spec).compile()
        for scope in range(len(graph.scopes)):
            members = set(scope_members(graph, scope))
            if not members:
                continue
            seeds = data.draw(st.sets(st.sampled_from(sorted(members)), min_size=1, max_size=3))
            for mode in ("branch", "scope"):
                found = region(graph, seeds, scope, mode)
                assert seeds <= found
                assert found <= members
                for n in found:
                    assert {s for s in graph.nodes[n].succs if s in members} <= found

    @settings(max_examples=50, deadline=None)
    @given(spec=specs(with_failures=False))
    def test_failure_region_is_region_kept_on_the_graph(self, spec: Spec) -> None:
        """The region kept per (node, scope) is ``region`` of that node, made once and never changed by its users."""
        graph = build(spec).compile()
        for node in graph.nodes:
            for scope in graph.scope_chain(node.id):
                for mode in ("branch", "scope"):
                    graph.branch_regions.clear()
                    kept = failure_region(graph, node.id, scope, mode)
                    members, names = kept
                    assert members == region(graph, {node.id}, scope, mode)
                    tasks = [graph.nodes[m].name for m in members if graph.nodes[m].kind == TASK]
                    assert names == tuple(sorted(tasks))
                    assert failure_region(graph, node.id, scope, mode) is kept
                    assert graph.branch_regions == {(node.id, scope): kept}


def reference_region(spec: Spec, seed: int) -> set[str]:
    """Branch region on the task DAG itself: the seed's ancestors in the scope and all their descendants there."""
    members = set(range(spec.lo, spec.hi))
    found = {seed}
    stack = [seed]
    while stack:
        for p in spec.inputs[stack.pop()]:
            if p in members and p not in found:
                found.add(p)
                stack.append(p)
    stack = list(found)
    while stack:
        for s in spec.succs(stack.pop()):
            if s in members and s not in found:
                found.add(s)
                stack.append(s)
    return {name(i) for i in found}


# Regression: region() used to climb into the scope's entry join and take the whole scope (fixed in 7a2f8a4).
_ENTRY_JOIN_CASE = Spec(
    inputs=((), (), (1,), ()), fails=(0, 0, 0, 0), scoped=True, lo=1, hi=4, attempts=2, mode="branch"
)


# Regression: a root failure merging a retrying revert='scope' region re-queued a revert, which raised
# CkflowInternalError 'revert scheduled outside a region' (fixed in 7a2f8a4).
_MERGED_REGION_CASE = Spec(inputs=((), (), ()), fails=(0, 1, 1), scoped=True, lo=0, hi=2, attempts=2, mode="scope")


class TestRegionReference:
    @settings(max_examples=50, deadline=None)
    @example(spec=_ENTRY_JOIN_CASE, seed_offset=1)
    @given(spec=specs(with_failures=False, scoped=True), seed_offset=st.integers(min_value=0, max_value=6))
    def test_branch_region_matches_task_dag(self, spec: Spec, seed_offset: int) -> None:
        """A branch region holds exactly the seed's causal ancestors in the scope and their descendants.

        The scoped sub-Graph sits in a Linear after the other tasks, so the scope has an entry join.
        """
        graph = build(spec, outer_linear=True).compile()
        seed_index = spec.lo + seed_offset % (spec.hi - spec.lo)
        seed = next(n.id for n in graph.nodes if n.name == name(seed_index))
        scope = graph.nodes[seed].scope
        found = {graph.nodes[n].name for n in region(graph, {seed}, scope, "branch")}
        tasks = {f for f in found if f.startswith("t") and f[1:].isdigit()}
        assert tasks == reference_region(spec, seed_index)


def run_spec(spec: Spec) -> tuple[ckflow.RunResult, list[tuple[str, str]]]:
    log: list[tuple[str, str]] = []
    flow = build(spec, log)

    async def main() -> ckflow.RunResult:
        with anyio.fail_after(10):
            return await ckflow.run(flow)

    with ckflow_testing.testing():
        return anyio.run(main), log


def check_log(spec: Spec, log: list[tuple[str, str]]) -> None:
    executed = {n for k, n in log if k == "x"}
    assert {n for k, n in log if k == "rs"} <= executed
    for i in range(spec.size):
        own = [k for k, n in log if n == name(i)]
        # Each execution is reverted at most once: no two revert starts without an execute between.
        live = False
        for k in own:
            if k == "x":
                live = True
            elif k == "rs":
                assert live, f"{name(i)} reverted twice for one execution: {log}"
                live = False
    for p, (kind, task) in enumerate(log):
        if kind != "rs":
            continue
        i = int(task[1:])
        for s in spec.succs(i):
            sname = name(s)
            state = "idle"
            for k, n in log[:p]:
                if n == sname:
                    state = {"x": "live", "rs": "reverting", "re": "idle"}[k]
            assert state != "reverting", f"{task} revert started while {sname} was reverting: {log}"
            if state == "live":
                later = [k for k, n in log[p:] if n == sname]
                first = later[0] if later else None
                assert first != "rs", f"{task} reverted before its successor {sname}: {log}"


class TestRuns:
    @settings(max_examples=50, deadline=None)
    @given(spec=specs(with_failures=False))
    def test_no_failure_outputs_match_sequential_evaluation(self, spec: Spec) -> None:
        """Without failures a run succeeds, reverts nothing and its outputs equal a sequential evaluation."""
        result, log = run_spec(spec)
        assert result.state is ckflow.FlowState.SUCCESS
        assert result.outputs == reference_outputs(spec)
        assert [k for k, _ in log] == ["x"] * spec.size

    @settings(max_examples=50, deadline=None)
    @given(spec=specs(scoped=False))
    def test_unscoped_failure_reverts_everything(self, spec: Spec) -> None:
        """Without checkpoints any failure reverts everything that ran and the run ends REVERTED."""
        result, log = run_spec(spec)
        check_log(spec, log)
        if any(spec.fails):
            assert result.state is ckflow.FlowState.REVERTED
            executed = [n for k, n in log if k == "x"]
            assert sorted(n for k, n in log if k == "rs") == sorted(executed)
        else:
            assert result.state is ckflow.FlowState.SUCCESS

    @settings(max_examples=50, deadline=None)
    @given(spec=specs(scoped=True, mode="branch"))
    def test_scoped_branch_runs_keep_walker_invariants(self, spec: Spec) -> None:
        """With a retrying branch checkpoint, reverts stay ordered and single; budgets behave as modelled."""
        check_scoped_run(spec)

    @settings(max_examples=50, deadline=None)
    @example(spec=_MERGED_REGION_CASE)
    @given(spec=specs(scoped=True, mode="scope"))
    def test_scoped_scope_runs_keep_walker_invariants(self, spec: Spec) -> None:
        """With a retrying scope checkpoint, reverts stay ordered and single; budgets behave as modelled."""
        check_scoped_run(spec)


def check_scoped_run(spec: Spec) -> None:
    result, log = run_spec(spec)
    check_log(spec, log)
    failing = [i for i, f in enumerate(spec.fails) if f]
    if not failing:
        assert result.state is ckflow.FlowState.SUCCESS
    elif len(failing) == 1 and spec.lo <= failing[0] < spec.hi:
        expected = spec.fails[failing[0]] < spec.attempts
        assert (result.state is ckflow.FlowState.SUCCESS) == expected, (result.state, log)
    elif any(f and not spec.lo <= i < spec.hi for i, f in enumerate(spec.fails)):
        assert result.state is ckflow.FlowState.REVERTED
    if result.state is ckflow.FlowState.SUCCESS:
        assert result.outputs == reference_outputs(spec)
