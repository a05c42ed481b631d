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
    from collections.abc import Awaitable, Callable

__all__ = ["Stat", "Table", "configure_logging", "measure", "measure_async", "time_ckflow_run"]

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
