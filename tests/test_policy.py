"""The retry policy as pure functions (ckflow._policy), Retry/Checkpoint as values, test mode's attempts cap."""

from __future__ import annotations

import dataclasses
import datetime
import gc
import math
import random
import time
from typing import Any

import anyio
import pytest
from hypothesis import given, register_random
from hypothesis import strategies as st

import ckflow
from ckflow import Checkpoint, Linear, Retry, _policy
from ckflow import testing as ckflow_testing
from ckflow._region import Action, decide

_JITTER_RNG = random.Random(99)
register_random(_JITTER_RNG)


class Boom(RuntimeError):
    """A failure the policies here accept."""


def expected_uniform(seed: int, low: float, high: float) -> float:
    """What ``random.Random(seed).uniform(low, high)`` draws first."""
    return random.Random(seed).uniform(low, high)


class TestDelay:
    def test_backoff_formula_with_a_seeded_rng(self) -> None:
        """Retry n waits a uniform draw in [d/2, d], d = delay·backoff^(n-1), from the RNG it is given."""
        policy = Retry(delay=0.5, backoff=3.0, max_delay=1000.0)
        for n in range(1, 6):
            d = 0.5 * 3.0 ** (n - 1)
            assert _policy.delay(policy, n, random.Random(7)) == expected_uniform(7, d / 2, d)

    def test_without_jitter_the_formula_is_exact(self) -> None:
        """Without jitter retry n waits exactly delay·backoff^(n-1)."""
        policy = Retry(delay=0.25, backoff=2.0, jitter=False)
        assert [_policy.delay(policy, n, random.Random(0)) for n in range(1, 5)] == [0.25, 0.5, 1.0, 2.0]

    def test_capped_at_max_delay(self) -> None:
        """The wait never exceeds max_delay; jitter then draws in [max_delay/2, max_delay]."""
        policy = Retry(delay=10.0, backoff=10.0, max_delay=50.0, jitter=False)
        assert [_policy.delay(policy, n, random.Random(0)) for n in (1, 2, 3)] == [10.0, 50.0, 50.0]
        jittered = dataclasses.replace(policy, jitter=True)
        assert _policy.delay(jittered, 3, random.Random(3)) == expected_uniform(3, 25.0, 50.0)

    def test_overflow_counts_as_max_delay(self) -> None:
        """A power too large for a float is max_delay, not an OverflowError."""
        policy = Retry(delay=1.0, backoff=10.0, max_delay=7.0, jitter=False)
        assert _policy.delay(policy, 100_000, random.Random(0)) == 7.0
        unbounded = Retry(delay=1.0, backoff=10.0, max_delay=math.inf, jitter=False)
        assert _policy.delay(unbounded, 100_000, random.Random(0)) == math.inf

    @given(
        delay=st.floats(min_value=0.001, max_value=100.0),
        backoff=st.floats(min_value=1.0, max_value=10.0),
        max_delay=st.floats(min_value=0.001, max_value=1000.0),
        n=st.integers(min_value=1, max_value=50),
    )
    def test_jitter_bounds(self, delay: float, backoff: float, max_delay: float, n: int) -> None:
        """Every jittered wait lies in [d/2, d] of the unjittered one."""
        d = _policy.delay(Retry(delay=delay, backoff=backoff, max_delay=max_delay, jitter=False), n, _JITTER_RNG)
        jittered = _policy.delay(Retry(delay=delay, backoff=backoff, max_delay=max_delay), n, _JITTER_RNG)
        assert d / 2 <= jittered <= d

    def test_test_mode_waits_zero_and_draws_nothing(self) -> None:
        """In test mode the wait is 0 and the RNG is left untouched."""
        rng = random.Random(5)
        state = rng.getstate()
        with ckflow_testing.testing():
            assert _policy.delay(Retry(delay=3.0), 2, rng) == 0.0
        assert rng.getstate() == state

    def test_seed_jitter_makes_delay_for_reproducible(self) -> None:
        """seed_jitter(seed) seeds the process RNG that Retry.delay_for draws from, and returns it."""
        policy = Retry(delay=1.0, backoff=2.0)
        rng = ckflow_testing.seed_jitter(11)
        assert rng is _policy.rng()
        first = [policy.delay_for(n) for n in range(1, 4)]
        ckflow_testing.seed_jitter(11)
        assert [policy.delay_for(n) for n in range(1, 4)] == first
        assert first[0] == expected_uniform(11, 0.5, 1.0)


class TestShouldRetry:
    def test_retry_on_tuple(self) -> None:
        """A failure is retried only if it is an instance of a retry_on type."""
        policy = Retry(retry_on=(Boom, KeyError))
        assert _policy.should_retry(policy, Boom(), 1, None, 0.0)
        assert _policy.should_retry(policy, KeyError(), 1, None, 0.0)
        assert not _policy.should_retry(policy, ValueError(), 1, None, 0.0)

    def test_retry_on_predicate(self) -> None:
        """A retry_on predicate decides from the exception itself."""
        policy = Retry(retry_on=lambda exc: "transient" in str(exc))
        assert _policy.should_retry(policy, Boom("transient"), 1, None, 0.0)
        assert not _policy.should_retry(policy, Boom("fatal"), 1, None, 0.0)

    def test_attempts_left(self) -> None:
        """A region is retried while its highest attempt is below attempts."""
        policy = Retry(attempts=3)
        assert [_policy.should_retry(policy, Boom(), h, None, 0.0) for h in (1, 2, 3, 4)] == [True, True, False, False]

    def test_timeout_measured_from_the_first_failure(self) -> None:
        """Retry.timeout counts from first_failure_at: retried before it has passed, not once it has."""
        policy = Retry(attempts=10, timeout=2.0)
        assert _policy.should_retry(policy, Boom(), 1, None, 500.0)
        assert _policy.should_retry(policy, Boom(), 2, 100.0, 101.999)
        assert not _policy.should_retry(policy, Boom(), 2, 100.0, 102.0)
        assert not _policy.should_retry(policy, Boom(), 2, 100.0, 150.0)

    def test_no_timeout_ignores_time(self) -> None:
        """Without Retry.timeout, time since the first failure does not matter."""
        assert _policy.should_retry(Retry(attempts=3), Boom(), 1, 0.0, 1e9)

    def test_explicit_env_caps_attempts_only_in_test_mode(self) -> None:
        """attempts_bound is min(attempts, attempts_cap) in test mode, the policy's attempts otherwise."""
        policy = Retry(attempts=5)
        capped = _policy.PolicyEnv(zero_delays=True, attempts_cap=2)
        assert _policy.attempts_bound(policy, capped) == 2
        assert not _policy.should_retry(policy, Boom(), 2, None, 0.0, capped)
        assert _policy.attempts_bound(policy, _policy.PolicyEnv(attempts_cap=2)) == 5
        assert _policy.attempts_bound(Retry(attempts=1), capped) == 1

    def test_clock_is_injectable(self) -> None:
        """clock() reads the environment's clock, time.monotonic unless replaced."""
        env = _policy.PolicyEnv(clock=lambda: 42.0)
        assert _policy.clock(env) == 42.0
        assert _policy.ENV.clock is time.monotonic


class TestDecide:
    @staticmethod
    def graph_and_task(policy: Retry) -> tuple[Any, int]:
        @ckflow.task
        async def t() -> None:
            return None

        graph = Linear("f", Checkpoint("c", retry=policy), t).compile()
        return graph, next(n.id for n in graph.nodes if n.name == "t")

    def test_timeout_from_explicit_first_failure_and_now(self) -> None:
        """decide() retries before Retry.timeout has passed since first_failure_at(scope), escalates after."""
        graph, t = self.graph_and_task(Retry(attempts=10, timeout=5.0))
        scope = graph.nodes[t].scope
        attempt_of = lambda node, scope: 2  # noqa: E731
        first = {scope: 100.0}
        assert decide(graph, t, Boom(), attempt_of, first.get, 104.0).action is Action.RETRY
        assert decide(graph, t, Boom(), attempt_of, first.get, 105.0).action is Action.END
        never: dict[int, float] = {}
        assert decide(graph, t, Boom(), attempt_of, never.get, 1e9).action is Action.RETRY

    def test_records_nothing(self) -> None:
        """decide() only reads first_failure_at: the caller's record of first failures is unchanged."""
        graph, t = self.graph_and_task(Retry(attempts=3, timeout=1.0))
        first: dict[int, float] = {}
        decision = decide(graph, t, Boom(), lambda node, scope: 1, first.get, 0.0)
        assert decision.action is Action.RETRY
        assert first == {}

    def test_no_attempts_means_first_attempts(self) -> None:
        """attempt_of=None (nothing retried yet) decides as every member at its first attempt: a Retry(attempts=1)
        escalates, a Retry(attempts=2) retries; the region and its task names are the graph's."""
        for attempts, action in ((1, Action.END), (2, Action.RETRY)):
            graph, t = self.graph_and_task(Retry(attempts=attempts))
            first_attempts = decide(graph, t, Boom(), lambda node, scope: 1)
            assert decide(graph, t, Boom(), None).action is first_attempts.action is action
        graph, t = self.graph_and_task(Retry(attempts=2))
        decision = decide(graph, t, Boom(), None)
        assert decision.members is graph.branch_regions[(t, graph.nodes[t].scope)][0]
        assert decision.names == ("t",)
        assert decide(graph, t, Boom(), lambda node, scope: 2).action is Action.END


async def _run(flow: ckflow.Flow) -> ckflow.RunResult:
    with anyio.fail_after(5):
        return await ckflow.run(flow)


def _always_failing() -> tuple[ckflow.FunctionTask[..., Any], list[int]]:
    executions: list[int] = []

    @ckflow.task
    async def fails() -> None:
        executions.append(ckflow.current().attempt)
        raise Boom(f"#{len(executions)}")

    return fails, executions


class TestTestingCap:
    async def test_cap_bounds_executions_of_a_flow(self) -> None:
        """Under testing(attempts=2) a task under Retry(attempts=5) that always fails executes exactly twice."""
        task, executions = _always_failing()
        flow = Linear("f", Checkpoint("c", retry=Retry(attempts=5, delay=100.0)), task)
        with ckflow_testing.testing(attempts=2):
            result = await _run(flow)
        assert result.state is ckflow.FlowState.REVERTED
        assert executions == [1, 2]

    async def test_without_cap_the_policy_counts(self) -> None:
        """testing() without attempts keeps each Retry's own budget."""
        task, executions = _always_failing()
        flow = Linear("f", Checkpoint("c", retry=Retry(attempts=4, delay=100.0)), task)
        with ckflow_testing.testing():
            await _run(flow)
        assert executions == [1, 2, 3, 4]

    def test_context_manager_restores_previous_settings(self) -> None:
        """testing() restores both test mode and the cap that were in force before it."""
        ckflow_testing.set_testing(True, attempts=3)
        with ckflow_testing.testing(False):
            assert not ckflow_testing.is_testing()
            assert _policy.attempts_bound(Retry(attempts=5)) == 5
        assert ckflow_testing.is_testing()
        assert _policy.attempts_bound(Retry(attempts=5)) == 3
        ckflow_testing.set_testing(False)
        assert _policy.attempts_bound(Retry(attempts=5)) == 5

    @pytest.mark.parametrize(("attempts", "error"), [(0, ValueError), (True, TypeError), (1.5, TypeError)])
    def test_bad_cap_rejected(self, attempts: Any, error: type[Exception]) -> None:
        """The cap must be a positive int."""
        with pytest.raises(error):
            ckflow_testing.set_testing(True, attempts=attempts)

    def test_cap_outside_test_mode_rejected(self) -> None:
        """attempts= with test mode off is a mistake, not silently ignored."""
        with pytest.raises(ValueError, match="only in test mode"):
            ckflow_testing.set_testing(False, attempts=2)


class TestValueSemantics:
    def test_frozen(self) -> None:
        """Assigning a field of a Retry or Checkpoint raises FrozenInstanceError."""
        with pytest.raises(dataclasses.FrozenInstanceError):
            Retry().attempts = 5  # type: ignore[misc]
        with pytest.raises(dataclasses.FrozenInstanceError):
            Checkpoint("c").name = "d"  # type: ignore[misc]

    def test_equality_and_hash(self) -> None:
        """Equal fields make equal, equally hashed values; retry_on normalises to a tuple first."""
        assert Retry(retry_on=Boom) == Retry(retry_on=(Boom,))
        assert hash(Retry(retry_on=Boom)) == hash(Retry(retry_on=(Boom,)))
        assert Retry(attempts=2) != Retry(attempts=3)
        assert Checkpoint("c", retry=None) == Checkpoint("c", retry=Retry(attempts=1))
        assert Checkpoint("c", max_age=datetime.timedelta(minutes=1)) == Checkpoint("c", max_age=60)
        assert len({Checkpoint("c"), Checkpoint("c"), Checkpoint("d")}) == 2

    def test_predicate_compared_by_identity(self) -> None:
        """A retry_on predicate takes part in equality and hashing as the object it is."""

        def transient(exc: BaseException) -> bool:
            return True

        assert Retry(retry_on=transient) == Retry(retry_on=transient)
        assert Retry(retry_on=transient) != Retry(retry_on=lambda exc: True)
        assert hash(Retry(retry_on=transient)) == hash(Retry(retry_on=transient))

    def test_replace_builds_a_validated_copy(self) -> None:
        """dataclasses.replace changes a field and validates the copy like the constructor."""
        policy = Retry(attempts=3, delay=1.0)
        assert dataclasses.replace(policy, attempts=5) == Retry(attempts=5, delay=1.0)
        assert policy.attempts == 3
        with pytest.raises(ValueError, match=r"Retry\(attempts=0\) must be >= 1"):
            dataclasses.replace(policy, attempts=0)
        cp = Checkpoint("disk", retry=policy)
        assert dataclasses.replace(cp, keep_last=2).keep_last == 2
        with pytest.raises(ValueError, match="must be one of"):
            dataclasses.replace(cp, revert="everything")  # type: ignore[arg-type]

    def test_name_positional_the_rest_keyword_only(self) -> None:
        """Checkpoint takes its name positionally and everything else by keyword; Retry is keyword-only."""
        assert Checkpoint("disk").name == "disk"
        with pytest.raises(TypeError):
            Checkpoint("disk", Retry())  # type: ignore[call-arg]
        with pytest.raises(TypeError):
            Retry(3)  # type: ignore[call-arg]


class TestCompileLeavesGcAlone:
    def test_compile_does_not_disable_gc(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Compiling a flow never touches the process-wide cyclic GC."""

        def forbidden() -> None:
            raise AssertionError("compile must not call gc.disable()")

        monkeypatch.setattr(gc, "disable", forbidden)

        @ckflow.task
        async def t() -> None:
            return None

        assert gc.isenabled()
        Linear("f", Checkpoint("c", retry=Retry(attempts=2)), t).compile()
        assert gc.isenabled()
