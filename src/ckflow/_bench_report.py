"""What ``ckflow.testing.bench`` reports: the figures of its runs, as a table, as JSON, or drawn (``_bench_plot``).

The figures are read from each run's ``RunResult`` only: ``RegionReport.revert_latency`` and
``retry_latency`` (the same clock points as the OpenTelemetry histograms), ``len(members)`` for a region's
size, ``duration`` for a run's makespan. Percentiles are by nearest rank: the p-th percentile is a value that
was measured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, final

from ckflow._bench_plot import Histogram, plot_histograms

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from pathlib import Path

    from ckflow._models import RegionReport, RunResult

__all__ = ["BenchPhase", "BenchReport", "TouchedTask", "percentiles", "touched_outside_region"]

#: the percentiles a report gives, by name
_POINTS = (("p50", 0.50), ("p95", 0.95), ("p99", 0.99), ("max", 1.0))


class TouchedTask(NamedTuple):
    """A task that a failure reverted or ran again although it was in none of its run's regions."""

    run_id: str
    task: str
    #: "reverted" or "executed again"
    how: str


def touched_outside_region(results: Iterable[RunResult]) -> list[TouchedTask]:
    """The tasks of ``results`` that were reverted or executed more than once outside every region of their run.

    Only a region's members may be reverted or run again: a revert never leaks out of a scope, and a task that
    shares no path with the failed one keeps its result. So the list is empty unless that rule was broken.
    (Tasks of a ``Periodic`` execute once per iteration, which this counts as executing again.)
    """
    touched: list[TouchedTask] = []
    for result in results:
        members = {task for region in result.regions for task in region.members}
        for name, summary in result.tasks.items():
            if name in members:
                continue
            if summary.revert_started is not None:
                touched.append(TouchedTask(result.run_id, name, "reverted"))
            elif summary.attempts > 1:
                touched.append(TouchedTask(result.run_id, name, "executed again"))
    return touched


def percentiles(values: Sequence[float], scale: float = 1.0) -> dict[str, float | int | None]:
    """p50, p95, p99 and max of ``values`` (nearest rank) times ``scale``, and their count; None for none."""
    out: dict[str, float | int | None] = {}
    ordered = sorted(values)
    for name, q in _POINTS:
        value = ordered[max(math.ceil(q * len(ordered)) - 1, 0)] if ordered else None
        out[name] = value * scale if value is not None and scale != 1.0 else value
    out["count"] = len(ordered)
    return out


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class BenchPhase:
    """The runs of one phase of a bench: with injected failures, or without."""

    #: the results of the runs that ended (a run that was parked SUSPENDED is counted in ``states`` only)
    results: list[RunResult]
    #: how many runs ended (or were parked) in each state
    states: dict[str, int]
    #: seconds from the first start to the last end
    wall: float
    touched: list[TouchedTask] = field(default_factory=list)

    @property
    def regions(self) -> list[RegionReport]:
        """Every region of every run, in run order."""
        return [region for result in self.results for region in result.regions]

    @property
    def makespans(self) -> list[float]:
        """Each run's duration, start to end, in seconds."""
        return [result.duration for result in self.results]


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class BenchReport:
    """What ``ckflow.testing.bench`` measured. Latencies and makespans are in seconds; the JSON gives ms."""

    flow: str
    #: runs in each phase
    runs: int
    concurrency: int
    seed: int
    #: the store's URL, or "memory (no store)"
    store: str
    #: the rules given, task -> rule as text ("0.2", "first")
    fail: dict[str, str]
    #: task -> how many of its executions were failed by injection
    injected: dict[str, int]
    #: the phase without injected failures
    without: BenchPhase
    #: the phase with them (None when no failure was asked for)
    with_failures: BenchPhase | None

    @property
    def measured(self) -> BenchPhase:
        """The phase whose failures are measured: the one with injected failures, if there is one."""
        return self.without if self.with_failures is None else self.with_failures

    @property
    def regions(self) -> list[RegionReport]:
        """The regions the latencies are read from (``measured``'s)."""
        return self.measured.regions

    @property
    def revert_latencies(self) -> list[float]:
        """Seconds from each failure to its region's first revert start (``RegionReport.revert_latency``)."""
        return [r.revert_latency for r in self.regions if r.cause is not None and r.revert_latency is not None]

    @property
    def retry_latencies(self) -> list[float]:
        """Seconds from each failure to its region's first re-execution (``RegionReport.retry_latency``)."""
        return [r.retry_latency for r in self.regions if r.cause is not None and r.retry_latency is not None]

    @property
    def region_sizes(self) -> list[int]:
        """The number of tasks of each region a failure opened."""
        return [len(r.members) for r in self.regions if r.cause is not None]

    @property
    def touched_outside_region(self) -> list[TouchedTask]:
        """Tasks reverted or run again outside their run's regions, in both phases (it should be empty)."""
        return [*self.without.touched, *(self.with_failures.touched if self.with_failures else [])]

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-ready data, with the keys of DESIGN §14 (times in milliseconds)."""
        with_failures = self.with_failures
        return {
            "flow": self.flow,
            "runs": self.runs,
            "concurrency": self.concurrency,
            "seed": self.seed,
            "store": self.store,
            "fail": self.fail,
            "injected": self.injected,
            "revert_latency_ms": percentiles(self.revert_latencies, 1e3),
            "retry_latency_ms": percentiles(self.retry_latencies, 1e3),
            "region_size": percentiles(self.region_sizes),
            "makespan_ms": {
                "with_failures": None if with_failures is None else percentiles(with_failures.makespans, 1e3),
                "without": percentiles(self.without.makespans, 1e3),
            },
            "states": {
                "with_failures": None if with_failures is None else with_failures.states,
                "without": self.without.states,
            },
            "touched_outside_region": [t._asdict() for t in self.touched_outside_region],
        }

    def table(self) -> str:
        """The report as a plain-text table."""
        return "\n".join(_table_lines(self))

    def plot_svg(self, path: str | Path) -> None:
        """Draw histograms of the revert and retry latencies into the SVG file ``path``.

        Raises:
            ImportError: matplotlib is missing; the message gives the pip command (``ckflow[plot]``).
        """
        panels = [
            _histogram("revert latency", self.revert_latencies, "tab:red"),
            _histogram("retry latency", self.retry_latencies, "tab:blue"),
        ]
        injected = ", ".join(f"{task}={rule}" for task, rule in self.fail.items()) or "no injected failures"
        title = f"ckflow bench {self.flow!r}: {self.runs} runs, {self.concurrency} at once; {injected}"
        plot_histograms(title, panels, path)


def _histogram(label: str, seconds: Sequence[float], colour: str) -> Histogram:
    stats = percentiles(seconds, 1e3)
    marks = [(name, value) for name in ("p50", "p99") if isinstance(value := stats[name], float)]
    return Histogram(f"{label} ({len(seconds)} regions)", [s * 1e3 for s in seconds], colour, marks)


def _fmt(value: float | int | None, digits: int) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _row(label: str, values: Sequence[float], scale: float, digits: int) -> str:
    stats = percentiles(values, scale)
    cells = "".join(f"{_fmt(stats[name], digits):>10}" for name, _ in _POINTS)
    return f"{label:<34}{cells}{stats['count']:>8}"


def _states(phase: BenchPhase) -> str:
    return ", ".join(f"{count} {state}" for state, count in sorted(phase.states.items())) or "none"


def _table_lines(report: BenchReport) -> list[str]:
    wf = report.with_failures
    rules = ", ".join(f"{task}={rule}" for task, rule in report.fail.items())
    injected = ", ".join(f"{task} {n}" for task, n in sorted(report.injected.items())) or "none"
    lines = [
        f"ckflow bench {report.flow!r}: {report.runs} runs per phase, {report.concurrency} at once, "
        f"store {report.store}",
        f"injected: {rules or 'nothing'} (seed {report.seed}); failures injected: {injected}"
        if wf
        else "injected: nothing (pass fail= / --fail TASK to inject failures); the flow's own failures are measured",
        "",
        f"{'':<34}{'p50':>10}{'p95':>10}{'p99':>10}{'max':>10}{'n':>8}",
        _row("revert latency (ms)", report.revert_latencies, 1e3, 3),
        _row("retry latency (ms)", report.retry_latencies, 1e3, 3),
        _row("region size (tasks)", report.region_sizes, 1.0, 0),
        _row("makespan without failures (ms)", report.without.makespans, 1e3, 2),
    ]
    if wf is not None:
        lines.append(_row("makespan with failures (ms)", wf.makespans, 1e3, 2))
    lines += [
        "",
        f"runs without failures: {_states(report.without)} in {report.without.wall:.2f} s",
    ]
    if wf is not None:
        lines.append(f"runs with failures:    {_states(wf)} in {wf.wall:.2f} s")
    touched = report.touched_outside_region
    lines.append(f"tasks touched outside their region: {len(touched)}")
    lines += [f"  run {t.run_id}: {t.task} ({t.how})" for t in touched]
    return lines
