"""Shared helpers: quiet logging, repeated timing, median and min-max, markdown tables."""

# The tables print typographic symbols (micro sign, en dash, times sign) on purpose.
# ruff: noqa: RUF001

from __future__ import annotations

import gc
import logging
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog

import ckflow

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Collection, Mapping

__all__ = [
    "Stat",
    "Table",
    "configure_logging",
    "measure",
    "measure_async",
    "measure_rounds",
    "percentile",
    "time_ckflow_run",
]

REPEAT = 5


def configure_logging() -> None:
    """Configure structlog as a production application would: WARNING and up, JSON lines to stderr.

    (structlog's default development renderer formats and colours each line for a terminal; that
    would time the renderer, not the engine.) The peers' stdlib loggers (sagaz logs every step at
    INFO) are raised to CRITICAL.
    """
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    for name in ("sagaz", "taskflow"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


@dataclass
class Stat:
    """Median and range of repeated samples (in the unit they were given)."""

    samples: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def lo(self) -> float:
        return min(self.samples)

    @property
    def hi(self) -> float:
        return max(self.samples)

    def scaled(self, factor: float) -> Stat:
        return Stat([s * factor for s in self.samples])

    def fmt(self, digits: int = 1) -> str:
        return f"{self.median:,.{digits}f} ({self.lo:,.{digits}f}–{self.hi:,.{digits}f})"


def measure(fn: Callable[[], float | None], repeat: int = REPEAT, warmup: int = 1) -> Stat:
    """Call ``fn`` ``warmup + repeat`` times; each call returns seconds or None (timed here)."""
    samples: list[float] = []
    for i in range(warmup + repeat):
        gc.collect()
        t0 = time.perf_counter()
        got = fn()
        elapsed = time.perf_counter() - t0 if got is None else got
        if i >= warmup:
            samples.append(elapsed)
    return Stat(samples)


async def measure_async(fn: Callable[[], Awaitable[float | None]], repeat: int = REPEAT, warmup: int = 1) -> Stat:
    """The async twin of ``measure``."""
    samples: list[float] = []
    for i in range(warmup + repeat):
        gc.collect()
        t0 = time.perf_counter()
        got = await fn()
        elapsed = time.perf_counter() - t0 if got is None else got
        if i >= warmup:
            samples.append(elapsed)
    return Stat(samples)


async def measure_rounds(
    fns: Mapping[str, Callable[[], Awaitable[float | None]]],
    repeat: int = REPEAT,
    warmup: int = 1,
    *,
    fallible: Collection[str] = (),
    errors: dict[str, str] | None = None,
) -> dict[str, Stat]:
    """Time several contenders in rounds: each round calls every fn once, so drift hits all alike.

    The order rotates from one round to the next, so that none always runs first (or right after
    the same neighbour). Each call returns seconds or None (timed here); the first ``warmup``
    rounds are not kept. A fn named in ``fallible`` (one that depends on something outside this
    process, such as a database server) that raises is recorded in ``errors`` as
    ``"ExceptionType: message"`` and dropped from the later rounds and from the result; any other
    exception propagates.
    """
    if fallible and errors is None:
        raise ValueError("measure_rounds(fallible=...) needs an errors dict to record the failures in")
    names = list(fns)
    samples: dict[str, list[float]] = {name: [] for name in names}
    failed: set[str] = set()
    for i in range(warmup + repeat):
        shift = i % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            if name in failed:
                continue
            gc.collect()
            t0 = time.perf_counter()
            try:
                got = await fns[name]()
            except Exception as exc:
                if name not in fallible or errors is None:
                    raise
                errors[name] = f"{type(exc).__name__}: {exc}"
                failed.add(name)
                continue
            elapsed = time.perf_counter() - t0 if got is None else got
            if i >= warmup:
                samples[name].append(elapsed)
    return {name: Stat(got) for name, got in samples.items() if name not in failed}


def percentile(values: list[float], p: float) -> float:
    """The ``p``-th percentile (0-100) of ``values``, interpolated between the closest ranks."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile() of no values")
    rank = (len(ordered) - 1) * p / 100
    lo = int(rank)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


@dataclass
class Table:
    """One scenario's markdown table plus a list of target verdicts."""

    title: str
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    targets: list[tuple[str, bool | None, str]] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        self.rows.append([str(c) for c in cells])

    def target(self, name: str, met: bool | None, detail: str) -> None:
        self.targets.append((name, met, detail))

    def markdown(self) -> str:
        lines = [f"### {self.title}", ""]
        lines.append("| " + " | ".join(self.header) + " |")
        lines.append("| " + " | ".join("---" for _ in self.header) + " |")
        lines.extend("| " + " | ".join(r) + " |" for r in self.rows)
        if self.targets:
            lines.append("")
            for name, met, detail in self.targets:
                mark = "n/a" if met is None else ("**met**" if met else "**not met**")
                lines.append(f"- target {name}: {mark} — {detail}")
        if self.notes:
            lines.append("")
            lines.extend(f"- {n}" for n in self.notes)
        lines.append("")
        return "\n".join(lines)


async def time_ckflow_run(flow: ckflow.Flow) -> float:
    """Seconds ``ckflow.run(flow)`` takes; the run must succeed."""
    t0 = time.perf_counter()
    result = await ckflow.run(flow)
    elapsed = time.perf_counter() - t0
    assert result.state == ckflow.FlowState.SUCCESS, result.state
    return elapsed
