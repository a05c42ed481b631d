"""The retry policy as pure functions over explicit inputs: whether to retry, and how long to wait.

Nothing here reads an engine: the caller passes the policy, the failure, the
attempt count, the time of the first failure and the current time. The only
process-wide inputs are those of :class:`PolicyEnv` (test mode, the clock and
the jitter RNG), read through :data:`ENV` unless a caller passes its own, and
switched by ``ckflow.testing``.
"""

from __future__ import annotations

import dataclasses
import random
import time
from typing import TYPE_CHECKING, Final, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["ENV", "PolicyEnv", "accepts", "attempts_bound", "clock", "delay", "rng", "should_retry"]


class Retry(Protocol):
    """The policy a checkpoint retries under (``ckflow.Retry``), as these functions read it."""

    @property
    def attempts(self) -> int: ...
    @property
    def delay(self) -> float: ...
    @property
    def backoff(self) -> float: ...
    @property
    def max_delay(self) -> float: ...
    @property
    def jitter(self) -> bool: ...
    @property
    def retry_on(self) -> type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]: ...
    @property
    def timeout(self) -> float | None: ...


@dataclasses.dataclass(slots=True, kw_only=True)
class PolicyEnv:
    """The inputs of the retry policy that are not the policy itself; ``ckflow.testing`` switches them.

    ``zero_delays``: test mode, every wait is 0. ``attempts_cap``: in test
    mode, the most executions any ``Retry`` allows (None: the policy's own
    ``attempts``). ``clock``: the monotonic clock ``Retry.timeout`` is measured
    on. ``rng``: the source of jitter.
    """

    zero_delays: bool = False
    attempts_cap: int | None = None
    clock: Callable[[], float] = time.monotonic
    rng: random.Random = dataclasses.field(default_factory=random.Random)


#: The process-wide environment, the default of every function here.
ENV: Final = PolicyEnv()


def clock(env: PolicyEnv = ENV) -> float:
    """The current reading of the policy's monotonic clock (``time.monotonic()`` unless replaced)."""
    return env.clock()


def rng(env: PolicyEnv = ENV) -> random.Random:
    """The RNG jitter is drawn from (one ``random.Random`` per process unless replaced)."""
    return env.rng


def attempts_bound(policy: Retry, env: PolicyEnv = ENV) -> int:
    """How many executions ``policy`` allows: its ``attempts``, capped in test mode by ``attempts_cap``."""
    cap = env.attempts_cap
    if env.zero_delays and cap is not None:
        return min(policy.attempts, cap)
    return policy.attempts


def accepts(policy: Retry, exc: BaseException) -> bool:
    """True if the policy's ``retry_on`` (a tuple of exception types or a predicate) accepts ``exc``."""
    retry_on = policy.retry_on
    if isinstance(retry_on, tuple):
        return isinstance(exc, retry_on)
    return bool(retry_on(exc))


def should_retry(
    policy: Retry,
    exc: BaseException,
    highest_attempt: int,
    first_failure_at: float | None,
    now: float,
    env: PolicyEnv = ENV,
) -> bool:
    """True if a failure ``exc`` of a region under ``policy`` is retried.

    Three conditions, all needed: ``retry_on`` accepts ``exc``; attempts are
    left (``highest_attempt``, the highest attempt among the region's tasks,
    is below :func:`attempts_bound`); and ``policy.timeout`` has not passed
    since ``first_failure_at``, the time of the first failure under the
    checkpoint in its current activation (None: this failure is the first, so
    no time has passed). ``now`` and ``first_failure_at`` are readings of the
    same monotonic clock.
    """
    if not accepts(policy, exc):
        return False
    if highest_attempt >= attempts_bound(policy, env):
        return False
    if policy.timeout is not None and first_failure_at is not None:
        return now - first_failure_at < policy.timeout
    return True


def delay(policy: Retry, retry_number: int, rng: random.Random, env: PolicyEnv = ENV) -> float:
    """The wait before retry ``retry_number`` (1-based): ``min(delay * backoff ** (n - 1), max_delay)``.

    With ``jitter`` the wait is drawn from ``rng`` uniformly in ``[d / 2, d]``.
    A power too large for a float counts as ``max_delay``. In test mode the
    wait is 0 (and ``rng`` is not drawn from).
    """
    if policy.delay == 0 or env.zero_delays:
        return 0.0
    try:
        d = min(policy.delay * policy.backoff ** (retry_number - 1), policy.max_delay)
    except OverflowError:
        d = policy.max_delay
    if policy.jitter:
        return rng.uniform(d / 2, d)
    return d
