"""The revert walker (DESIGN §4, §5, §11): regions, reverse-order reverts, retries and escalation."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
import pytest

import ckflow
from ckflow import Checkpoint, Graph, Linear, Parallel, Retry
from ckflow.testing import EventRecorder

Hook = Callable[[], Awaitable[None]]


class Boom(RuntimeError):
    """The failure the test tasks raise."""


class Log:
    """Builds test tasks that record every execute, revert and attempt into one ordered list."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str]] = []
        self.attempts: dict[str, list[int]] = {}
        self.histories: dict[str, list[list[str]]] = {}
        self.revert_results: dict[str, list[Any]] = {}
        self.counts: dict[str, int] = {}

    def task(
        self,
        name: str,
        *,
        requires: Sequence[str] = (),
        provides: str | None = None,
        fail: int = 0,
        before: Hook | None = None,
        before_fail: Hook | None = None,
        on_attempt: dict[int, Hook] | None = None,
        on_revert: Hook | None = None,
        revert_raises: bool = False,
        shield: bool = False,
        retry: Retry | None = None,
    ) -> ckflow.FunctionTask[..., Any]:
        """A task that fails on its first ``fail`` executions (``fail=-1``: always)."""

        async def body(**kwargs: Any) -> Any:
            count = self.counts[name] = self.counts.get(name, 0) + 1
            ctx = ckflow.current()
            self.attempts.setdefault(name, []).append(ctx.attempt)
            self.histories.setdefault(name, []).append([f.message for f in ctx.history])
            self.entries.append(("execute", name))
            if on_attempt and count in on_attempt:
                await on_attempt[count]()
            if before is not None:
                await before()
            if fail < 0 or count <= fail:
                if before_fail is not None:
                    await before_fail()
                self.entries.append(("failed", name))
                raise Boom(f"{name} failed #{count}")
            self.entries.append(("done", name))
            return f"{name}:{sorted(kwargs.items())}"

        params = ", ".join(requires)
        call = ", ".join(f"{p}={p}" for p in requires)
        namespace: dict[str, Any] = {"body": body}
        exec(f"async def {name}({params}):\n    return await body({call})\n", namespace)
        fn = namespace[name]
        t = ckflow.task(name=name, provides=provides, shield=shield, retry=retry)(fn)

        async def revert(result: Any) -> None:
            self.revert_results.setdefault(name, []).append(result)
            self.entries.append(("revert", name))
            if on_revert is not None:
                await on_revert()
            if revert_raises:
                raise Boom(f"revert of {name} failed")
            self.entries.append(("reverted", name))

        t.revert(revert)
        return t

    def of(self, kind: str) -> list[str]:
        """Task names of the entries of one kind, in order."""
        return [n for k, n in self.entries if k == kind]

    def index(self, kind: str, name: str, occurrence: int = 1) -> int:
        """Position of the n-th (1-based) entry ``(kind, name)``."""
        seen = 0
        for i, entry in enumerate(self.entries):
            if entry == (kind, name):
                seen += 1
                if seen == occurrence:
                    return i
        raise AssertionError(f"{(kind, name)} #{occurrence} not in {self.entries}")


def setter(event: anyio.Event) -> Hook:
    async def hook() -> None:
        event.set()

    return hook


def waiter(event: anyio.Event) -> Hook:
    async def hook() -> None:
        await event.wait()

    return hook


async def forever() -> None:
    await anyio.sleep_forever()


async def run(flow: ckflow.Flow, **kwargs: Any) -> ckflow.RunResult:
    with anyio.fail_after(5):
        return await ckflow.run(flow, **kwargs)


def seed_flow(log: Log, *, b_fails: int, c_hook: Hook) -> ckflow.Flow:
    """Linear(A, Parallel(Linear(Checkpoint("b", retry=3), B), C)), the design's seed case."""
    c_started = anyio.Event()

    async def c_body() -> None:
        c_started.set()
        await c_hook()

    return Linear(
        "seed",
        log.task("A"),
        Parallel(
            "p",
            Linear(
                "lb",
                Checkpoint("b", retry=Retry(attempts=3)),
                log.task("B", fail=b_fails, before_fail=waiter(c_started)),
            ),
            log.task("C", before=c_body),
        ),
    )


class TestSeedCase:
    async def test_branch_retried_while_sibling_runs(self) -> None:
        """A failed branch is reverted and retried while its sibling keeps running; A and C are never reverted."""
        log = Log()
        b_again = anyio.Event()
        flow = Linear(
            "seed",
            log.task("A"),
            Parallel(
                "p",
                Linear(
                    "lb",
                    Checkpoint("b", retry=Retry(attempts=3)),
                    log.task("B", fail=1, on_attempt={2: setter(b_again)}),
                ),
                log.task("C", before=waiter(b_again)),
            ),
        )
        result = await run(flow)
        assert result.state is ckflow.FlowState.SUCCESS
        assert log.counts == {"A": 1, "B": 2, "C": 1}
        assert log.of("revert") == ["B"]
        # C finishes only after B's second execute, so B's retry did not wait for C.
        assert log.index("revert", "B") < log.index("execute", "B", 2) < log.index("done", "C")
        assert result.tasks["A"].state is ckflow.TaskState.SUCCESS
        assert result.tasks["C"].state is ckflow.TaskState.SUCCESS

    async def test_branch_fails_for_good(self) -> None:
        """When B's budget runs out, C is cancelled and reverted, and A is reverted after C and B."""
        log = Log()
        result = await run(seed_flow(log, b_fails=-1, c_hook=forever))
        assert result.state is ckflow.FlowState.REVERTED
        assert log.counts["B"] == 3
        assert "done" not in [k for k, n in log.entries if n == "C"]
        c_result = log.revert_results["C"][0]
        assert isinstance(c_result, ckflow.Failure)
        assert c_result.cancelled
        assert log.of("revert").count("B") == 3
        assert log.index("reverted", "C") < log.index("revert", "A")
        assert log.index("reverted", "B", 3) < log.index("revert", "A")
        assert result.tasks["A"].state is ckflow.TaskState.REVERTED


class TestRegion:
    @pytest.mark.parametrize(("mode", "p_runs"), [("branch", 1), ("scope", 2)])
    async def test_branch_versus_scope(self, mode: str, p_runs: int) -> None:
        """revert="branch" leaves an unrelated finished sibling alone; revert="scope" reverts and reruns it."""
        log = Log()
        p_done = anyio.Event()
        flow = Linear(
            "f",
            Checkpoint("s", retry=Retry(attempts=2), revert=mode),  # type: ignore[arg-type]
            Parallel(
                "p",
                log.task("P", before=setter(p_done)),
                log.task("Q", fail=1, before_fail=waiter(p_done)),
            ),
        )
        result = await run(flow)
        assert result.state is ckflow.FlowState.SUCCESS
        assert log.counts == {"P": p_runs, "Q": 2}
        assert log.of("revert").count("P") == p_runs - 1
        assert set(result.regions[0].members) == ({"Q"} if mode == "branch" else {"P", "Q"})

    async def test_causal_ancestors_and_descendants(self) -> None:
        """The region holds the failed task, its ancestors inside the scope and their descendants, nothing else."""
        log = Log()
        d_done, x_done = anyio.Event(), anyio.Event()

        async def both() -> None:
            await d_done.wait()
            await x_done.wait()

        inner = Graph(
            "inner",
            log.task("V", provides="v"),
            log.task("W", requires=["v"], fail=1, before_fail=both),
            log.task("D", requires=["v"], provides="d", before=setter(d_done)),
            log.task("X", provides="x", before=setter(x_done)),
            checkpoint=Checkpoint("s", retry=Retry(attempts=2)),
        )
        result = await run(Linear("f", log.task("O", provides="o"), inner))
        assert result.state is ckflow.FlowState.SUCCESS
        assert set(result.regions[0].members) == {"V", "W", "D"}
        assert log.counts == {"O": 1, "V": 2, "W": 2, "D": 2, "X": 1}
        assert sorted(log.of("revert")) == ["D", "V", "W"]
        assert log.index("reverted", "W") < log.index("revert", "V")
        assert log.index("reverted", "D") < log.index("revert", "V")

    async def test_branch_with_task_before_checkpoint(self) -> None:
        """A finished sibling unrelated to the failure is kept even when a task precedes the checkpoint."""
        log = Log()
        p_done = anyio.Event()
        flow = Linear(
            "f",
            log.task("A"),
            Checkpoint("s", retry=Retry(attempts=2)),
            Parallel(
                "p",
                log.task("P", before=setter(p_done)),
                log.task("Q", fail=1, before_fail=waiter(p_done)),
            ),
        )
        result = await run(flow)
        assert result.state is ckflow.FlowState.SUCCESS
        assert log.counts == {"A": 1, "P": 1, "Q": 2}
        assert log.of("revert") == ["Q"]
        assert result.regions[0].members == ["Q"]

    async def test_failure_after_completed_scope(self) -> None:
        """A failure after a scope has completed is not retried by that scope; the root reverts everything."""
        log = Log()
        flow = Linear(
            "f",
            log.task("A"),
            Linear("inner", Checkpoint("s", retry=Retry(attempts=3)), log.task("S1"), log.task("S2")),
            log.task("T", fail=-1),
        )
        result = await run(flow)
        assert result.state is ckflow.FlowState.REVERTED
        assert log.counts == {"A": 1, "S1": 1, "S2": 1, "T": 1}
        assert log.of("revert") == ["T", "S2", "S1", "A"]

    async def test_outside_consumer_waits_for_whole_scope(self) -> None:
        """A task outside a scope that reads a value made inside starts only after the whole scope succeeded."""
        log = Log()

        async def settle() -> None:
            await anyio.wait_all_tasks_blocked()

        flow = Graph(
            "g",
            Linear(
                "inner",
                Checkpoint("s", retry=Retry(attempts=2)),
                log.task("P", provides="p"),
                log.task("Q", fail=1, before=settle),
            ),
            log.task("O", requires=["p"]),
        )
        result = await run(flow)
        assert result.state is ckflow.FlowState.SUCCESS
        assert log.counts == {"P": 2, "Q": 2, "O": 1}
        assert log.index("done", "Q") < log.index("execute", "O")


class TestRevertFailure:
    async def test_revert_failure_ends_in_failure(self) -> None:
        """A revert that raises inside a region stops the run in FAILURE, with no retry and no further revert."""
        log = Log()
        flow = Linear(
            "f",
            log.task("A"),
            Checkpoint("s", retry=Retry(attempts=3)),
            log.task("B", fail=1, revert_raises=True),
        )
        result = await run(flow)
        assert result.state is ckflow.FlowState.FAILURE
        assert log.counts == {"A": 1, "B": 1}
        assert log.of("revert") == ["B"]
        assert result.tasks["A"].state is ckflow.TaskState.SUCCESS
        assert result.tasks["B"].state is ckflow.TaskState.REVERT_FAILURE
        assert [f.message for f in result.failures] == ["B failed #1", "revert of B failed"]


class TestConcurrentFailures:
    async def test_second_failure_while_region_reverts(self) -> None:
        """A failure arriving while another region reverts is handled the same way; both branches retry."""
        log = Log()
        d_started, b_reverting, d_failed = anyio.Event(), anyio.Event(), anyio.Event()

        async def b_revert() -> None:
            b_reverting.set()
            await d_failed.wait()

        async def d_before_fail() -> None:
            await b_reverting.wait()
            d_failed.set()

        flow = Linear(
            "f",
            Checkpoint("s", retry=Retry(attempts=2)),
            Parallel(
                "p",
                log.task("B", fail=1, before_fail=waiter(d_started), on_revert=b_revert),
                log.task("D", fail=1, before=setter(d_started), before_fail=d_before_fail),
            ),
        )
        result = await run(flow)
        assert result.state is ckflow.FlowState.SUCCESS
        assert log.counts == {"B": 2, "D": 2}
        assert sorted(log.of("revert")) == ["B", "D"]
        assert log.index("failed", "D") < log.index("reverted", "B")

    async def test_failure_of_shielded_member_joins_region(self) -> None:
        """A shielded member that fails while its region reverts joins that region; the scope retries once."""
        log = Log()
        b_reverting, d_failed = anyio.Event(), anyio.Event()

        async def b_revert() -> None:
            b_reverting.set()
            await d_failed.wait()

        async def d_before_fail() -> None:
            await b_reverting.wait()
            d_failed.set()

        d_started = anyio.Event()
        flow = Linear(
            "f",
            Checkpoint("s", retry=Retry(attempts=2), revert="scope"),
            Parallel(
                "p",
                log.task("B", fail=1, before_fail=waiter(d_started), on_revert=b_revert),
                log.task("D", fail=1, shield=True, before=setter(d_started), before_fail=d_before_fail),
            ),
        )
        result = await run(flow)
        assert result.state is ckflow.FlowState.SUCCESS
        assert log.counts == {"B": 2, "D": 2}
        assert sorted(log.of("revert")) == ["B", "D"]
        assert [r.action for r in result.regions].count("retry") == 1
        assert set(result.regions[-1].members) == {"B", "D"}

    async def test_shielded_task_awaited_not_cancelled(self) -> None:
        """A shielded task in a region is awaited to its end, and reverted with its real result."""
        log = Log()
        s_started, b_reverted = anyio.Event(), anyio.Event()

        async def s_body() -> None:
            s_started.set()
            await b_reverted.wait()

        flow = Parallel(
            "f",
            log.task("B", fail=-1, before_fail=waiter(s_started), on_revert=setter(b_reverted)),
            log.task("S", before=s_body, shield=True),
        )
        result = await run(flow)
        assert result.state is ckflow.FlowState.REVERTED
        assert ("done", "S") in log.entries
        assert log.revert_results["S"] == ["S:[]"]

    async def test_unshielded_task_is_cancelled(self) -> None:
        """Without shield the same sibling is cancelled and reverted with a cancelled Failure."""
        log = Log()
        s_started = anyio.Event()

        async def s_body() -> None:
            s_started.set()
            await anyio.sleep_forever()

        flow = Parallel("f", log.task("B", fail=-1, before_fail=waiter(s_started)), log.task("S", before=s_body))
        result = await run(flow)
        assert result.state is ckflow.FlowState.REVERTED
        assert ("done", "S") not in log.entries
        (s_result,) = log.revert_results["S"]
        assert isinstance(s_result, ckflow.Failure)
        assert s_result.cancelled


class TestBudget:
    async def test_two_branches_each_get_full_budget(self) -> None:
        """Two independent branches of one scope each get the scope's full budget, whatever the timing."""
        log = Log()
        b_again = anyio.Event()
        flow = Linear(
            "f",
            Checkpoint("s", retry=Retry(attempts=2)),
            Parallel(
                "p",
                log.task("B", fail=1, on_attempt={2: setter(b_again)}),
                log.task("D", fail=1, before_fail=waiter(b_again)),
            ),
        )
        result = await run(flow)
        assert result.state is ckflow.FlowState.SUCCESS
        assert log.counts == {"B": 2, "D": 2}
        assert log.attempts == {"B": [1, 2], "D": [1, 2]}

    async def test_nested_escalation_counts(self) -> None:
        """An inner budget starts afresh on each outer retry: 2 x 2 executions of an always-failing task."""
        log = Log()
        flow = Linear(
            "f",
            Checkpoint("outer", retry=Retry(attempts=2)),
            Linear("in", Checkpoint("inner", retry=Retry(attempts=2)), log.task("T", fail=-1)),
        )
        result = await run(flow)
        assert result.state is ckflow.FlowState.REVERTED
        assert log.counts["T"] == 4
        assert log.attempts["T"] == [1, 2, 1, 2]
        assert result.tasks["T"].attempts == 4

    async def test_revert_all_skips_outer_budget(self) -> None:
        """on_exhausted="revert_all" goes straight to the root, ignoring the outer checkpoint's retries."""
        log = Log()
        flow = Linear(
            "f",
            log.task("A"),
            Checkpoint("outer", retry=Retry(attempts=3)),
            Linear(
                "in",
                Checkpoint("inner", retry=Retry(attempts=2), on_exhausted="revert_all"),
                log.task("T", fail=-1),
            ),
        )
        result = await run(flow)
        assert result.state is ckflow.FlowState.REVERTED
        assert log.counts == {"A": 1, "T": 2}
        assert log.of("revert")[-1] == "A"

    async def test_suspend_then_resume(self) -> None:
        """on_exhausted="suspend" reverts the scope and parks the run; after a fix, resume ends in SUCCESS."""
        log = Log()
        broken = {"yes": True}

        async def maybe_fail() -> None:
            if broken["yes"]:
                raise Boom("still broken")

        flow = Linear(
            "f",
            log.task("A"),
            Checkpoint("s", retry=Retry(attempts=2), on_exhausted="suspend"),
            log.task("B", before=maybe_fail),
        )
        with anyio.fail_after(5):
            async with ckflow.Engine() as engine:
                handle = await engine.start(flow)
                parked = await handle.wait_suspended()
                assert parked.state is ckflow.FlowState.SUSPENDED
                assert log.counts == {"A": 1, "B": 2}
                assert log.of("revert") == ["B", "B"]
                assert parked.tasks["A"].state is ckflow.TaskState.SUCCESS
                broken["yes"] = False
                await handle.resume()
                result = await handle.wait()
        assert result.state is ckflow.FlowState.SUCCESS
        assert log.counts == {"A": 1, "B": 3}
        assert log.of("revert") == ["B", "B"]


class TestContext:
    async def test_attempt_and_history(self) -> None:
        """current().attempt is 1-based and .history lists the earlier failures under the checkpoint."""
        log = Log()
        flow = Linear("f", Checkpoint("s", retry=Retry(attempts=3)), log.task("B", fail=2))
        result = await run(flow)
        assert result.state is ckflow.FlowState.SUCCESS
        assert log.attempts["B"] == [1, 2, 3]
        assert log.histories["B"] == [[], ["B failed #1"], ["B failed #1", "B failed #2"]]
        assert [f.message for f in result.failures] == ["B failed #1", "B failed #2"]


class TestReports:
    async def test_region_latencies_reported(self) -> None:
        """A retried region reports its revert latency, retry latency and revert duration."""
        log = Log()
        result = await run(seed_flow(log, b_fails=1, c_hook=anyio.lowlevel.checkpoint))
        assert result.state is ckflow.FlowState.SUCCESS
        (report,) = result.regions
        assert report.checkpoint == "b"
        assert report.cause == "B"
        assert report.action == "retry"
        assert report.revert_latency is not None
        assert report.retry_latency is not None
        assert report.revert_duration is not None
        assert 0 <= report.revert_latency <= report.retry_latency

    async def test_walker_events(self) -> None:
        """The walker announces its region, cancels, retries (with their delay) and exhaustion as events."""
        log = Log()
        events = EventRecorder()
        result = await run(seed_flow(log, b_fails=-1, c_hook=forever), on_event=events)
        assert result.state is ckflow.FlowState.REVERTED
        regions = events.of("ckflow.walker.region")
        assert regions[0].checkpoint == "b"
        assert regions[0].detail["members"] == ["B"]
        assert set(regions[-1].detail["members"]) == {"A", "B", "C"}
        assert events.tasks("ckflow.walker.cancel") == ["C"]
        retries = events.of("ckflow.walker.retry")
        assert [r.detail["delay"] for r in retries] == [0.0, 0.0]
        assert [r.attempt for r in retries] == [2, 3]
        (exhausted,) = events.of("ckflow.walker.exhausted")
        assert exhausted.checkpoint == "b"
        assert exhausted.task == "B"
