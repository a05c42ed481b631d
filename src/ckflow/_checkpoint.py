"""``Retry`` and ``Checkpoint``: frozen policies, validated where they are written."""

from __future__ import annotations

import dataclasses
import datetime
import math
from typing import TYPE_CHECKING, Final, Literal, TypeAlias, final

from ckflow import _policy

if TYPE_CHECKING:
    import random
    from collections.abc import Callable

__all__ = ["Checkpoint", "OnExhausted", "Retry", "RetryOn", "RevertMode"]

RetryOn: TypeAlias = "type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]"
OnExhausted: TypeAlias = Literal["escalate", "revert_all", "suspend"]
RevertMode: TypeAlias = Literal["branch", "scope"]

_ON_EXHAUSTED: Final = ("escalate", "revert_all", "suspend")
_REVERT_MODES: Final = ("branch", "scope")


def _is_name(value: object) -> bool:
    """True for a non-empty string (names reach us from untyped code too)."""
    return isinstance(value, str) and bool(value)


def _is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _is_exception_type(value: object) -> bool:
    return isinstance(value, type) and issubclass(value, BaseException)


def _check_number(owner: str, name: str, value: float, *, minimum: float, allow_inf: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{owner}({name}=...) must be a number, got {value!r}.")
    if math.isnan(value) or (math.isinf(value) and not allow_inf) or value < minimum:
        raise ValueError(f"{owner}({name}={value!r}) must be a finite number >= {minimum}.")
    return float(value)


@final
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Retry:
    """How often, and how soon, a checkpoint's failed branch is run again.

    ``attempts`` bounds how many times each task of the checkpoint's scope
    executes per activation of the checkpoint, the first execution included,
    so ``Retry(attempts=1)`` never retries.

    The wait before retry ``n`` (n = 1 for the first retry) is
    ``min(delay * backoff ** (n - 1), max_delay)``, counted from the moment the
    failed branch has been reverted; with ``jitter`` it is drawn uniformly from
    ``[d / 2, d]``. Waiting never blocks other branches.

    ``retry_on`` is an exception type, a tuple of them, or a predicate taking
    the exception; a failure it rejects counts as retries exhausted.
    ``timeout`` (seconds) stops retrying once that much time has passed since
    the first failure under the checkpoint in its current activation.

    When retries run out the checkpoint's ``on_exhausted`` policy applies: by
    default the failure escalates to the enclosing checkpoint, and at the root
    everything that ran is reverted and the run ends ``REVERTED``.

    A frozen value: equal policies compare equal, and ``dataclasses.replace``
    builds a changed copy (validated again).
    """

    attempts: int = 3
    delay: float = 0.0
    backoff: float = 2.0
    max_delay: float = 60.0
    jitter: bool = True
    retry_on: RetryOn = (Exception,)
    timeout: float | None = None

    def __post_init__(self) -> None:
        attempts = self.attempts
        if isinstance(attempts, bool) or not isinstance(attempts, int):
            raise TypeError(f"Retry(attempts=...) must be an int, got {attempts!r}.")
        if attempts < 1:
            raise ValueError(
                f"Retry(attempts={attempts}) must be >= 1: it counts the first execution too, "
                "so attempts=1 means no retry."
            )
        set_ = object.__setattr__
        set_(self, "delay", _check_number("Retry", "delay", self.delay, minimum=0.0))
        set_(self, "backoff", _check_number("Retry", "backoff", self.backoff, minimum=1.0))
        set_(self, "max_delay", _check_number("Retry", "max_delay", self.max_delay, minimum=0.0, allow_inf=True))
        set_(self, "jitter", bool(self.jitter))
        retry_on = self.retry_on
        if isinstance(retry_on, type):
            retry_on = (retry_on,)
        if isinstance(retry_on, tuple):
            for item in retry_on:
                if not _is_exception_type(item):
                    raise TypeError(f"Retry(retry_on=...) holds {item!r}, which is not an exception type.")
        elif not callable(retry_on):
            raise TypeError(
                f"Retry(retry_on=...) must be an exception type, a tuple of them or a predicate, got {retry_on!r}."
            )
        set_(self, "retry_on", retry_on)
        timeout = self.timeout
        if timeout is not None:
            timeout = _check_number("Retry", "timeout", timeout, minimum=0.0)
            if timeout == 0:
                raise ValueError("Retry(timeout=0) would never retry; use attempts=1 instead.")
        set_(self, "timeout", timeout)

    def should_retry(self, exc: BaseException) -> bool:
        """True if ``retry_on`` accepts ``exc`` (delegates to ``ckflow._policy.accepts``)."""
        return _policy.accepts(self, exc)

    def delay_for(self, retry_number: int, rng: random.Random | None = None) -> float:
        """The wait before retry ``retry_number`` (1-based), jitter applied; 0 in test mode.

        Delegates to ``ckflow._policy.delay``, with the process's jitter RNG unless ``rng`` is given.
        """
        return _policy.delay(self, retry_number, rng if rng is not None else _policy.rng())


_NO_RETRY: Final = Retry(attempts=1)


@final
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Checkpoint:
    """A named point a failure is undone back to, and the policy that retries from it.

    As an item of a ``Linear`` it scopes the items after it in that Linear; as
    ``checkpoint=`` on any flow it scopes the whole flow. Checkpoints nest. The
    defaults are one attempt (no retry), ``on_exhausted="escalate"`` and
    ``revert="branch"``.

    Args:
        name: unique within the flow tree; used by ``run.goto(name)``.
        retry: the retry policy of the scope.
        on_exhausted: ``"escalate"`` treats the checkpoint as failed in its
            parent scope; ``"revert_all"`` reverts the whole run;
            ``"suspend"`` reverts the scope and parks the run ``SUSPENDED``.
        revert: ``"branch"`` reverts only the failed task's causal region;
            ``"scope"`` reverts everything of the scope that ran.
        keep_last: retention of a durable run: keep the records of the last
            ``keep_last`` passes of the scope (each ``Periodic`` iteration is a
            pass); older passes, and the events of the scope's tasks in them,
            are deleted when the scope completes again. None keeps them all.
        max_age: retention by age, in seconds or a ``timedelta``: passes that
            completed longer ago are deleted. The latest pass is always kept.

    A frozen value like ``Retry``: ``dataclasses.replace`` builds a changed copy.
    """

    name: str = dataclasses.field(kw_only=False)
    retry: Retry = _NO_RETRY
    on_exhausted: OnExhausted = "escalate"
    revert: RevertMode = "branch"
    keep_last: int | None = None
    max_age: float | None = None

    if TYPE_CHECKING:
        # The constructor the dataclass generates, as callers see it: ``retry=None`` (the one-attempt
        # policy) and a ``timedelta`` max_age are accepted and normalised by __post_init__.
        def __init__(
            self,
            name: str,
            *,
            retry: Retry | None = None,
            on_exhausted: OnExhausted = "escalate",
            revert: RevertMode = "branch",
            keep_last: int | None = None,
            max_age: float | datetime.timedelta | None = None,
        ) -> None: ...

    def __post_init__(self) -> None:
        name = self.name
        if not _is_name(name):
            raise TypeError(f"Checkpoint(name) must be a non-empty string, got {name!r}.")
        retry: Retry | None = self.retry
        if retry is not None and not isinstance(retry, Retry):
            raise TypeError(f"Checkpoint({name!r}, retry=...) must be a ckflow.Retry, got {retry!r}.")
        if self.on_exhausted not in _ON_EXHAUSTED:
            raise ValueError(
                f"Checkpoint({name!r}, on_exhausted={self.on_exhausted!r}) must be one of {_ON_EXHAUSTED}."
            )
        if self.revert not in _REVERT_MODES:
            raise ValueError(f"Checkpoint({name!r}, revert={self.revert!r}) must be one of {_REVERT_MODES}.")
        set_ = object.__setattr__
        if retry is None:
            set_(self, "retry", _NO_RETRY)
        if self.keep_last is not None and not _is_positive_int(self.keep_last):
            raise ValueError(f"Checkpoint({name!r}, keep_last={self.keep_last!r}) must be a positive int or None.")
        max_age: float | datetime.timedelta | None = self.max_age
        if isinstance(max_age, datetime.timedelta):
            max_age = max_age.total_seconds()
        if max_age is not None:
            max_age = _check_number("Checkpoint", "max_age", max_age, minimum=-math.inf)
            if max_age <= 0:
                raise ValueError(
                    f"Checkpoint({name!r}, max_age={max_age!r}) would keep nothing; give a positive age (seconds or "
                    "a timedelta)."
                )
        set_(self, "max_age", max_age)
