"""Retry policy (DESIGN §5, §11): validation, retry_on, backoff, jitter, test mode and cancel during backoff."""

from __future__ import annotations

import random
from typing import Any

import anyio
import pytest
from hypothesis import given, register_random, settings
from hypothesis import strategies as st

import ckflow
from ckflow import Checkpoint, Linear, Retry, _policy
from ckflow import testing as ckflow_testing
from ckflow.testing import EventRecorder

_JITTER_RNG = random.Random(1234)
register_random(_JITTER_RNG)


class Boom(RuntimeError):
    """A failure the retry policy accepts."""


class Fatal(ValueError):
    """A failure the retry policy rejects."""


def flaky(name: str, fails: int, exc: type[BaseException] = Boom) -> tuple[ckflow.FunctionTask[..., Any], list[int]]:
    """A task failing its first ``fails`` executions (``-1``: always); returns it and its attempt log."""
    attempts: list[int] = []

    async def execute() -> str:
        attempts.append(ckflow.current().attempt)
        if fails < 0 or len(attempts) <= fails:
            raise exc(f"{name} #{len(attempts)}")
        return name

    return ckflow.task(name=name)(execute), attempts


async def run(flow: ckflow.Flow, **kwargs: Any) -> ckflow.RunResult:
    with anyio.fail_after(5):
        return await ckflow.run(flow, **kwargs)


class TestValidation:
    @pytest.mark.parametrize(
        ("kwargs", "error"),
        [
            ({"attempts": 0}, ValueError),
            ({"attempts": -1}, ValueError),
            ({"attempts": 1.5}, TypeError),
            ({"attempts": True}, TypeError),
            ({"delay": -0.1}, ValueError),
            ({"delay": float("nan")}, ValueError),
            ({"backoff": 0.5}, ValueError),
            ({"max_delay": -1}, ValueError),
            ({"retry_on": 3}, TypeError),
            ({"retry_on": (Boom, "x")}, TypeError),
            ({"retry_on": (int,)}, TypeError),
            ({"timeout": 0}, ValueError),
        ],
    )
    def test_bad_arguments_rejected_at_construction(self, kwargs: dict[str, Any], error: type[Exception]) -> None:
        """Retry validates its arguments where it is written."""
        with pytest.raises(error):
            Retry(**kwargs)

    def test_frozen(self) -> None:
        """A Retry cannot be changed after construction."""
        policy = Retry()
        with pytest.raises(AttributeError):
            policy.attempts = 5

    def test_valid_arguments_kept(self) -> None:
        """Valid arguments are kept; a single exception type becomes a one-tuple."""
        policy = Retry(attempts=1, delay=0, backoff=1, max_delay=float("inf"), retry_on=Boom)
        assert policy.attempts == 1
        assert policy.retry_on == (Boom,)


class TestRetryOn:
    @pytest.mark.parametrize("retry_on", [Boom, (Boom,), lambda exc: isinstance(exc, Boom)])
    async def test_accepted_failure_retried(self, retry_on: Any) -> None:
        """A failure accepted by retry_on (type, tuple or predicate) is retried."""
        t, attempts = flaky("t", 1)
        flow = Linear("f", Checkpoint("c", retry=Retry(attempts=3, retry_on=retry_on)), t)
        result = await run(flow)
        assert result.state is ckflow.FlowState.SUCCESS
        assert attempts == [1, 2]

    @pytest.mark.parametrize("retry_on", [Boom, lambda exc: "retry me" in str(exc)])
    async def test_rejected_failure_counts_as_exhausted(self, retry_on: Any) -> None:
        """A failure that retry_on rejects is not retried: it counts as exhausted and escalates."""
        t, attempts = flaky("t", 1, exc=Fatal)
        events = EventRecorder()
        flow = Linear("f", Checkpoint("c", retry=Retry(attempts=3, retry_on=retry_on)), t)
        result = await run(flow, on_event=events)
        assert result.state is ckflow.FlowState.REVERTED
        assert attempts == [1]
        assert [e.checkpoint for e in events.of("ckflow.walker.exhausted")] == ["c"]


class TestBackoff:
    def test_growth_and_cap(self) -> None:
        """Without jitter the n-th wait is delay * backoff**(n-1), capped at max_delay."""
        policy = Retry(delay=1.0, backoff=3.0, max_delay=20.0, jitter=False)
        assert [policy.delay_for(n) for n in range(1, 6)] == [1.0, 3.0, 9.0, 20.0, 20.0]

    def test_huge_retry_number_capped(self) -> None:
        """An overflowing backoff still yields max_delay."""
        policy = Retry(delay=1.0, backoff=10.0, max_delay=7.0, jitter=False)
        assert policy.delay_for(10_000) == 7.0

    def test_zero_delay(self) -> None:
        """A zero base delay never waits."""
        assert Retry(delay=0.0, jitter=False).delay_for(5) == 0.0

    @settings(max_examples=50, deadline=None)
    @given(
        delay=st.floats(min_value=0.001, max_value=100),
        backoff=st.floats(min_value=1, max_value=5),
        max_delay=st.floats(min_value=0.001, max_value=1000),
        n=st.integers(min_value=1, max_value=30),
    )
    def test_jitter_bounds(self, delay: float, backoff: float, max_delay: float, n: int) -> None:
        """With jitter the wait is uniform in [d/2, d], d being the capped un-jittered delay."""
        d = Retry(delay=delay, backoff=backoff, max_delay=max_delay, jitter=False).delay_for(n)
        jittered = Retry(delay=delay, backoff=backoff, max_delay=max_delay).delay_for(n, _JITTER_RNG)
        assert d / 2 <= jittered <= d

    def test_jitter_uses_given_rng(self) -> None:
        """The same seed gives the same jittered delays."""
        policy = Retry(delay=4.0, backoff=2.0)
        first = [policy.delay_for(n, random.Random(7)) for n in range(1, 5)]
        second = [policy.delay_for(n, random.Random(7)) for n in range(1, 5)]
        assert first == second
        assert len(set(first)) > 1

    def test_test_mode_zeroes_delays(self) -> None:
        """In test mode every delay is 0; outside it the policy's delay comes back."""
        policy = Retry(delay=5.0, jitter=False)
        with ckflow_testing.testing():
            assert policy.delay_for(1) == 0.0
            assert policy.delay_for(3, random.Random(0)) == 0.0
        assert policy.delay_for(1) == 5.0

    async def test_test_mode_run_reports_zero_delay(self) -> None:
        """A run in test mode retries at once and its walker reports a zero delay."""
        t, attempts = flaky("t", 2)
        events = EventRecorder()
        flow = Linear("f", Checkpoint("c", retry=Retry(attempts=3, delay=1000.0)), t)
        with ckflow_testing.testing():
            result = await run(flow, on_event=events)
        assert result.state is ckflow.FlowState.SUCCESS
        assert attempts == [1, 2, 3]
        assert [e.detail["delay"] for e in events.of("ckflow.walker.retry")] == [0.0, 0.0]


class TestCancelDuringBackoff:
    async def test_cancel_takes_effect_at_once(self) -> None:
        """run.cancel() during a long backoff wait ends the run REVERTED at once, with no new attempt."""
        t, attempts = flaky("t", -1)
        policy = Retry(attempts=5, delay=1000.0, max_delay=5000.0, jitter=False)
        flow = Linear("f", Checkpoint("c", retry=policy), t)
        waiting = anyio.Event()
        delays: list[float] = []

        def on_event(event: ckflow.Event) -> None:
            if event.name == "ckflow.walker.retry":
                delays.append(event.detail["delay"])
                waiting.set()

        with anyio.fail_after(5):
            async with ckflow.Engine() as engine:
                handle = await engine.start(flow)
                handle.subscribe(on_event)
                await waiting.wait()
                await handle.cancel()
                result = await handle.wait()
        assert result.state is ckflow.FlowState.REVERTED
        assert attempts == [1]
        assert delays == [1000.0]


class TestTaskLevelRetry:
    async def test_task_retry_is_a_checkpoint_named_after_the_task(self) -> None:
        """retry= on a task retries that task alone, under a checkpoint named after it."""
        t, attempts = flaky("t", 2)
        before_runs: list[int] = []

        async def before() -> None:
            before_runs.append(1)

        names: list[str] = []

        async def probe() -> None:
            names.append(ckflow.current().checkpoint)

        flow = Linear(
            "f",
            ckflow.task(name="before")(before),
            t.with_options(retry=Retry(attempts=3)),
            ckflow.task(name="probe")(probe),
        )
        events = EventRecorder()
        result = await run(flow, on_event=events)
        assert result.state is ckflow.FlowState.SUCCESS
        assert attempts == [1, 2, 3]
        assert before_runs == [1]
        assert {e.checkpoint for e in events.of("ckflow.walker.retry")} == {"t"}
        assert names == ["f"]

    async def test_task_retry_exhausted_escalates(self) -> None:
        """When a task's own budget runs out the failure escalates to the root and everything is reverted."""
        t, attempts = flaky("t", -1)
        reverted: list[str] = []

        async def before() -> None:
            pass

        async def undo(result: object) -> None:
            reverted.append("before")

        first = ckflow.task(name="before")(before)
        first.revert(undo)
        result = await run(Linear("f", first, t.with_options(retry=Retry(attempts=2))))
        assert result.state is ckflow.FlowState.REVERTED
        assert attempts == [1, 2]
        assert reverted == ["before"]


class TestRetryTimeout:
    async def test_no_retry_once_the_timeout_has_passed_since_the_first_failure(self) -> None:
        """Retry(timeout=t) stops retrying once t seconds have passed since the checkpoint's first failure."""
        executions = 0

        @ckflow.task
        async def flaky() -> None:
            nonlocal executions
            executions += 1
            if executions > 1:
                # Real time must pass between the first and the second failure; nothing is ordered by it.
                await anyio.sleep(0.02)
            raise RuntimeError(f"attempt {executions}")

        flow = ckflow.Linear("timed", ckflow.Checkpoint("cp", retry=ckflow.Retry(attempts=10, timeout=0.001)), flaky)
        result = await ckflow.run(flow)
        assert result.state is ckflow.FlowState.REVERTED
        assert executions == 2

    async def test_the_policy_clock_is_what_the_timeout_reads(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Retry.timeout is measured on the policy's clock (``_policy.ENV.clock``): a replaced clock that moves
        10 s at each reading ends the retries at the second failure, where real time would allow all ten."""

        def flow() -> tuple[ckflow.Flow, list[int]]:
            executions: list[int] = []

            @ckflow.task
            async def fails() -> None:
                executions.append(1)
                raise RuntimeError("always")

            return Linear("timed", Checkpoint("cp", retry=Retry(attempts=10, timeout=5.0)), fails), executions

        real, real_executions = flow()
        assert (await ckflow.run(real)).state is ckflow.FlowState.REVERTED
        assert len(real_executions) == 10
        readings = iter(range(10, 1000, 10))
        monkeypatch.setattr(_policy.ENV, "clock", lambda: float(next(readings)))
        fake, fake_executions = flow()
        assert (await ckflow.run(fake)).state is ckflow.FlowState.REVERTED
        assert len(fake_executions) == 2


class TestTimesOfARetriedTask:
    async def test_a_task_running_again_has_no_end_until_it_ends(self) -> None:
        """On its second attempt a task's summary has no end (no negative duration); once done, duration ≥ 0."""
        seen: list[ckflow.TaskSummary] = []
        second = anyio.Event()
        go_on = anyio.Event()

        async def execute() -> str:
            if ckflow.current().attempt == 1:
                raise Boom("first")
            second.set()
            await go_on.wait()
            return "ok"

        flaky_task = ckflow.task(name="t")(execute)
        flow = Linear("f", Checkpoint("cp", retry=Retry(attempts=2)), flaky_task)
        async with ckflow.Engine() as engine:
            run = await engine.start(flow)
            with anyio.fail_after(5):
                await second.wait()
            seen.append(run.tasks["t"])
            go_on.set()
            result = await run.wait()
        during = seen[0]
        assert during.attempts == 2
        assert during.started is not None
        assert during.ended is None
        assert during.duration is None
        done = result.tasks["t"]
        assert done.duration is not None
        assert done.duration >= 0
