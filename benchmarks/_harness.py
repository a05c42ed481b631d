"""Shared helpers: quiet logging, repeated timing, median and min-max, markdown tables."""

# The tables print typographic symbols (micro sign, en dash, times sign) on purpose.
# ruff: noqa: RUF001

from __future__ import annotations

import contextlib
import gc
import logging
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog

import ckflow

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping

__all__ = [
    "LOGGING_MODES",
    "Stat",
    "Table",
    "by_logging",
    "logging_mode",
    "measure",
    "measure_async",
    "measure_rounds",
    "percentile",
    "quiet_peers",
    "time_ckflow_run",
]

REPEAT = 5


def quiet_peers() -> None:
    """Raise the peers' stdlib loggers (sagaz logs every step at INFO) to CRITICAL; ckflow's are left alone.

    Nothing else is configured: the scenarios measure what a fresh install pays. The logging
    configurations an application may set are measured on their own, in ``logging_mode``.
    """
    for name in ("sagaz", "taskflow"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    # Importing sagaz configures the root logger (a stderr handler at INFO), which would put every scenario
    # after it under a configured logging: import it now and take that back.
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        import sagaz  # noqa: F401
    except ImportError:
        return
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
    root.setLevel(level)


#: the logging set-ups S1 and S2 are measured under, as an application would leave them
LOGGING_MODES = (
    "fresh install (nothing configured)",
    "stdlib logging, WARNING to stderr",
    "structlog JSON at INFO (ProcessorFormatter)",
    "OpenTelemetry SDK on (traces and metrics)",
)


@contextlib.contextmanager
def logging_mode(mode: str) -> Iterator[None]:
    """Set up logging as an application would for ``mode`` (one of ``LOGGING_MODES``), and undo it after."""
    root = logging.getLogger()
    level = root.level
    handler: logging.Handler | None = None
    sink = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115  (closed below, after the handler)
    try:
        if mode == LOGGING_MODES[1]:
            handler = logging.StreamHandler(sink)
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
            root.setLevel(logging.WARNING)
        elif mode == LOGGING_MODES[2]:
            handler = logging.StreamHandler(sink)
            handler.setFormatter(
                structlog.stdlib.ProcessorFormatter(
                    foreign_pre_chain=[
                        structlog.stdlib.ExtraAdder(),
                        structlog.stdlib.add_log_level,
                        structlog.processors.TimeStamper(fmt="iso"),
                    ],
                    processors=[
                        structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                        structlog.processors.format_exc_info,
                        structlog.processors.JSONRenderer(default=str),
                    ],
                )
            )
            root.setLevel(logging.INFO)
        if handler is not None:
            root.addHandler(handler)
        if mode == LOGGING_MODES[3]:
            with _otel_on():
                yield
        else:
            yield
    finally:
        if handler is not None:
            root.removeHandler(handler)
        root.setLevel(level)
        sink.close()


@contextlib.contextmanager
def _otel_on() -> Iterator[None]:
    """The OpenTelemetry SDK as an application sets it up: batched spans to an exporter (which drops them),
    metrics aggregated in a reader; the API's global providers are taken back afterwards."""
    from opentelemetry import metrics, trace
    from opentelemetry.metrics import _internal as metrics_internal
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.util._once import Once

    class Drop(SpanExporter):
        def export(self, spans: object) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    def reset() -> None:
        trace._TRACER_PROVIDER_SET_ONCE = Once()
        trace._TRACER_PROVIDER = None
        metrics_internal._METER_PROVIDER_SET_ONCE = Once()
        metrics_internal._METER_PROVIDER = None

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(Drop(), max_queue_size=1 << 16))
    reset()
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))
    try:
        yield
    finally:
        tracer_provider.shutdown()
        reset()


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
    #: further tables of the same scenario, printed after this one
    more: list[Table] = field(default_factory=list)

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
        lines.extend(table.markdown() for table in self.more)
        return "\n".join(lines)


async def time_ckflow_run(flow: ckflow.Flow) -> float:
    """Seconds ``ckflow.run(flow)`` takes; the run must succeed."""
    t0 = time.perf_counter()
    result = await ckflow.run(flow)
    elapsed = time.perf_counter() - t0
    assert result.state == ckflow.FlowState.SUCCESS, result.state
    return elapsed


def by_logging(
    label: str,
    run_ckflow: Callable[[int], Awaitable[float]],
    floor: Callable[[int], Awaitable[float]],
    quick: bool,
) -> Table:
    """``label`` (S1 or S2) at each logging set-up an application may leave, beside the floor measured then."""
    import asyncio

    sizes = (1_000,) if quick else (1_000, 10_000)
    table = Table(
        f"{label} by logging set-up (µs per task, median (min–max) of 7 rounds, each timing ckflow and the floor)",
        ["N", "set-up", "ckflow", "asyncio floor", "ckflow / floor"],
    )
    for n in sizes:
        for mode in LOGGING_MODES:
            with logging_mode(mode):
                # in rounds, each round timing both: the machine's drift hits ckflow and the floor alike
                got = asyncio.run(
                    measure_rounds({"ckflow": lambda n=n: run_ckflow(n), "floor": lambda n=n: floor(n)}, repeat=7)
                )
            ck, fl = got["ckflow"].scaled(1e6 / n), got["floor"].scaled(1e6 / n)
            ratio = ck.median / fl.median
            table.add(f"{n:,}", mode, ck.fmt(2), fl.fmt(2), f"{ratio:.2f}×")
            if n == sizes[-1] and mode == LOGGING_MODES[0]:
                table.target(
                    f"{label} ≤2× floor at N={n:,}, logging as a fresh install leaves it", ratio <= 2, f"{ratio:.2f}×"
                )
    table.notes.append(
        "Every other table of this run is measured as a fresh install leaves logging (nothing configured); "
        "here each set-up is applied, measured, then taken back. The structlog set-up renders ckflow's stdlib "
        "records as JSON (ExtraAdder) to /dev/null; OpenTelemetry exports spans in batches to an exporter "
        "that drops them."
    )
    return table
