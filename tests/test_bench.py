"""``ckflow.testing.bench`` (DESIGN §14): its figures agree with ``result.regions`` and OpenTelemetry, its JSON keys,
the zero-touch check, and the SVG histogram."""

from __future__ import annotations

import json
import os
import sys
import uuid
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import anyio
import pytest
from tests.test_otel import Telemetry, _reset_globals

import ckflow
from ckflow import Checkpoint, FlowState, Linear, Parallel, RegionReport, Retry, RunResult, TaskState, task
from ckflow.testing import BenchReport, TouchedTask, bench, touched_outside_region

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

#: the keys of the JSON report that DESIGN §14 names
DESIGN_KEYS = frozenset(
    {"runs", "injected", "revert_latency_ms", "retry_latency_ms", "makespan_ms", "touched_outside_region"}
)
STATS = {"p50", "p95", "p99", "max", "count"}


@pytest.fixture
def otel() -> Iterator[Telemetry]:
    """The application's OpenTelemetry providers, with an in-memory metric reader (as in test_otel)."""
    from opentelemetry import metrics

    telemetry = Telemetry()
    _reset_globals()
    metrics.set_meter_provider(telemetry.meter_provider)
    yield telemetry
    _reset_globals()


def seed_flow(on_exhausted: str = "escalate") -> Linear:
    """The seed case: a; then in parallel b under a checkpoint that retries it, and c."""

    @task(provides="x")
    async def a() -> int:
        return 1

    @task
    async def b(x: int) -> None:
        pass

    @b.revert
    async def _(x: int, result: object) -> None:
        pass

    @task
    async def c(x: int) -> None:
        await anyio.lowlevel.checkpoint()

    cp = Checkpoint("cp", retry=Retry(attempts=2), on_exhausted=on_exhausted)  # type: ignore[arg-type]
    return Linear("seed", a, Parallel("p", Linear("lb", cp, b), c))


def summary(name: str, *, attempts: int = 1, reverted: bool = False) -> ckflow.TaskSummary:
    state = TaskState.REVERTED if reverted else TaskState.SUCCESS
    return ckflow.TaskSummary(name=name, state=state, attempts=attempts, revert_started=1.0 if reverted else None)


def synthetic(tasks: list[ckflow.TaskSummary], members: list[str]) -> RunResult:
    region = RegionReport(checkpoint="cp", action="retry", cause=members[0], members=members, failure_at=0.0)
    return RunResult(
        run_id="r1",
        flow="f",
        state=FlowState.SUCCESS,
        outputs={},
        tasks={t.name: t for t in tasks},
        failures=[],
        regions=[region],
        duration=0.1,
    )


class TestFigures:
    """The report's figures are those of the runs' results, and of the OpenTelemetry histograms."""

    async def test_latencies_are_the_regions_and_the_histograms(self, otel: Telemetry) -> None:
        """Revert and retry latencies are result.regions' own, one per injected failure, and the OTel histograms
        recorded the same values (same count, sum and max)."""
        report = await bench(seed_flow(), runs=12, concurrency=4, fail={"b": "first"})
        assert report.with_failures is not None
        regions = [r for result in report.with_failures.results for r in result.regions]
        assert len(regions) == 12
        assert report.revert_latencies == [r.revert_latency for r in regions]
        assert report.retry_latencies == [r.retry_latency for r in regions]
        assert report.region_sizes == [1] * 12
        assert report.without.regions == []  # the phase without injection had no failure
        for name, values in (
            ("ckflow.revert.latency", report.revert_latencies),
            ("ckflow.retry.latency", report.retry_latencies),
        ):
            [point] = otel.points(name)
            assert point.count == len(values)
            assert point.sum == pytest.approx(sum(values))
            assert point.max == pytest.approx(max(values))
        doc = report.to_json()
        assert doc["revert_latency_ms"]["max"] == pytest.approx(max(report.revert_latencies) * 1e3)
        assert doc["retry_latency_ms"]["count"] == 12

    async def test_makespans_are_the_durations(self) -> None:
        """Each phase's makespans are its runs' result.duration; progress is told once per run."""
        seen: list[tuple[int, int]] = []
        report = await bench(
            seed_flow(), runs=5, concurrency=2, fail={"b": "first"}, on_progress=lambda *a: seen.append(a)
        )
        assert report.with_failures is not None
        assert report.without.makespans == [r.duration for r in report.without.results]
        assert report.with_failures.makespans == [r.duration for r in report.with_failures.results]
        assert seen == [(i, 10) for i in range(1, 11)]
        assert report.without.states == report.with_failures.states == {"SUCCESS": 5}

    async def test_same_seed_same_failures_on_sqlite(self, tmp_path: Path) -> None:
        """Two benches with one seed inject the same number of failures, on any store."""
        url = f"sqlite:///{tmp_path / 'runs.db'}"
        first = await bench(seed_flow(), runs=20, concurrency=5, fail={"b": 0.5, "c": 0.2}, seed=3, store=url)
        second = await bench(seed_flow(), runs=20, concurrency=5, fail={"b": 0.5, "c": 0.2}, seed=3)
        assert first.injected == second.injected
        assert first.injected["b"] > 0
        assert first.store == url
        assert second.store == "memory (no store)"

    async def test_postgres_without_its_password(self, postgres_dsn: str) -> None:
        """On PostgreSQL too; the report names the store without the URL's password."""
        import asyncpg

        parts = urlsplit(postgres_dsn)
        user = parts.username or "postgres"
        netloc = f"{user}:s3cret@{parts.hostname}:{parts.port or 5432}"
        schema = f"ckflow_bench_{uuid.uuid4().hex[:12]}"
        url = urlunsplit(parts._replace(netloc=netloc, query=f"schema={schema}"))
        try:
            report = await bench(seed_flow(), runs=3, concurrency=3, fail={"b": "first"}, store=url)
        finally:
            conn = await asyncpg.connect(postgres_dsn)
            try:
                await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            finally:
                await conn.close()
        assert report.with_failures is not None
        assert report.with_failures.states == {"SUCCESS": 3}
        assert len(report.revert_latencies) == 3
        assert "s3cret" not in report.store
        assert "s3cret" not in json.dumps(report.to_json())
        assert schema in report.store

    async def test_parked_runs_are_counted_and_cancelled(self) -> None:
        """A run a checkpoint parks SUSPENDED is counted so, then cancelled, and the bench ends."""
        report = await bench(seed_flow("suspend"), runs=3, concurrency=3, fail={"b": "first:2"})
        assert report.with_failures is not None
        assert report.with_failures.states == {"SUSPENDED": 3}
        assert report.with_failures.results == []

    async def test_without_failures_measures_the_flows_own(self) -> None:
        """Without fail=, one phase runs and its own regions are measured."""
        report = await bench(seed_flow(), runs=3, concurrency=1)
        assert report.with_failures is None
        assert report.measured is report.without
        assert report.to_json()["makespan_ms"]["with_failures"] is None
        assert "injected: nothing" in report.table()


class TestJson:
    """The JSON document has the keys DESIGN §14 names."""

    async def test_keys(self) -> None:
        """runs, injected, revert_latency_ms and retry_latency_ms (p50/p95/p99/max), makespan_ms (with_failures,
        without) and touched_outside_region, and it survives json.dumps."""
        report = await bench(seed_flow(), runs=4, concurrency=2, fail={"b": "first"}, seed=7)
        doc = json.loads(json.dumps(report.to_json()))
        assert set(doc) >= DESIGN_KEYS
        assert (doc["runs"], doc["injected"], doc["seed"], doc["fail"]) == (4, {"b": 4}, 7, {"b": "first"})
        assert set(doc["revert_latency_ms"]) == STATS
        assert set(doc["retry_latency_ms"]) == STATS
        assert set(doc["makespan_ms"]) == {"with_failures", "without"}
        assert set(doc["makespan_ms"]["with_failures"]) == STATS
        assert doc["touched_outside_region"] == []
        assert doc["region_size"]["max"] == 1


class TestTouched:
    """Tasks reverted or run again outside every region of their run are named."""

    def test_checker_names_tasks_outside_the_regions(self) -> None:
        """A synthetic result whose task 'x' was reverted and 'y' executed twice, outside the one region."""
        result = synthetic(
            [
                summary("b", attempts=2, reverted=True),
                summary("x", reverted=True),
                summary("y", attempts=2),
                summary("z"),
            ],
            ["b"],
        )
        assert touched_outside_region([result]) == [
            TouchedTask("r1", "x", "reverted"),
            TouchedTask("r1", "y", "executed again"),
        ]
        assert touched_outside_region([synthetic([summary("b", attempts=2, reverted=True)], ["b"])]) == []

    def test_report_lists_them_in_table_and_json(self) -> None:
        """A report over such a result says how many, and names each, in its table and its JSON."""
        from ckflow.testing import BenchPhase

        result = synthetic([summary("b", attempts=2, reverted=True), summary("x", reverted=True)], ["b"])
        phase = BenchPhase(results=[result], states={"SUCCESS": 1}, wall=0.1, touched=touched_outside_region([result]))
        report = BenchReport(
            flow="f", runs=1, concurrency=1, seed=0, store="memory", fail={"b": "first"}, injected={"b": 1},
            without=BenchPhase(results=[], states={}, wall=0.0), with_failures=phase,
        )  # fmt: skip
        assert "tasks touched outside their region: 1\n  run r1: x (reverted)" in report.table()
        assert report.to_json()["touched_outside_region"] == [{"run_id": "r1", "task": "x", "how": "reverted"}]

    async def test_engine_touches_nothing_outside(self) -> None:
        """On K branches with one failing, only the failing branch's tasks are touched."""

        @task
        async def step() -> None:
            pass

        steps = [[step.with_options(name=f"t{k}_{i}") for i in range(3)] for k in range(5)]
        branches = [Linear(f"br{k}", Checkpoint(f"cp{k}", retry=Retry(attempts=2)), *steps[k]) for k in range(5)]
        report = await bench(Parallel("k", *branches), runs=6, concurrency=3, fail={"t0_2": "first", "t3_1": "first"})
        assert report.touched_outside_region == []
        assert report.with_failures is not None
        assert all(set(r.members) <= {f"t{k}_{i}" for k in (0, 3) for i in range(3)} for r in report.regions)


class TestBadInput:
    """Mistakes are refused before any run starts, naming what is wrong."""

    async def test_unknown_task(self) -> None:
        """fail= naming a task the flow lacks is a ValueError listing the flow's tasks."""
        with pytest.raises(ValueError, match=r"no task 'charge' to fail; its tasks are a, b, c"):
            await bench(seed_flow(), runs=1, fail={"charge": 0.5})

    @pytest.mark.parametrize(("option", "value"), [("runs", 0), ("concurrency", -1), ("runs", 1.5)])
    async def test_counts(self, option: str, value: object) -> None:
        """runs and concurrency are positive ints."""
        with pytest.raises(ValueError, match=rf"bench\({option}="):
            await bench(seed_flow(), **{option: value})  # type: ignore[arg-type]

    async def test_bad_rule(self) -> None:
        """A rule inject_failures refuses is refused here too."""
        with pytest.raises(ValueError, match="task 'b'"):
            await bench(seed_flow(), runs=1, fail={"b": 2.0})


def _matplotlib_or_skip() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        if os.environ.get("CI") == "true":
            raise  # CI installs the test group, which has it
        pytest.skip("matplotlib (ckflow[plot]) is not installed")


class TestPlot:
    """``plot_svg`` draws the histograms with matplotlib, or says which extra to install."""

    async def test_svg_is_written(self, tmp_path: Path) -> None:
        """An SVG with both panels' titles, and nothing of pyplot imported."""
        _matplotlib_or_skip()
        report = await bench(seed_flow(), runs=6, concurrency=3, fail={"b": "first"})
        path = tmp_path / "latency.svg"
        report.plot_svg(path)
        text = path.read_text(encoding="utf-8")
        assert text.startswith("<?xml")
        assert "<svg" in text
        assert "revert latency (6 regions)" in text  # matplotlib writes each text as a comment beside its glyphs
        assert "retry latency (6 regions)" in text
        assert "matplotlib.pyplot" not in sys.modules

    async def test_missing_extra(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        """Without matplotlib, an ImportError gives the pip command for ckflow[plot]."""
        report = await bench(seed_flow(), runs=1, concurrency=1)
        monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
        with pytest.raises(ImportError, match=r"pip install 'ckflow\[plot\]'"):
            report.plot_svg(tmp_path / "x.svg")
        assert not (tmp_path / "x.svg").exists()
