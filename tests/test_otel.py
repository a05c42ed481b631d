"""OpenTelemetry (``ckflow[otel]``): spans per run, task and revert; walker decisions as span events; metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once

import ckflow
from ckflow import Checkpoint, FlowState, Linear, Parallel, Retry, task

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from opentelemetry.sdk.trace import ReadableSpan


class Telemetry:
    """The application's providers, with in-memory exporters."""

    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.reader = InMemoryMetricReader()
        self.tracer_provider = tracer_provider
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def named(self, prefix: str) -> list[ReadableSpan]:
        return [s for s in self.spans.get_finished_spans() if s.name.startswith(prefix)]

    def points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        assert data is not None
        return [
            point
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == name
            for point in metric.data.data_points
        ]


def _reset_globals() -> None:
    # The API sets its global providers once per process; tests set their own and take them back.
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None
    from opentelemetry.metrics import _internal as metrics_internal

    metrics_internal._METER_PROVIDER_SET_ONCE = Once()
    metrics_internal._METER_PROVIDER = None


@pytest.fixture
def otel() -> Iterator[Telemetry]:
    telemetry = Telemetry()
    _reset_globals()
    trace.set_tracer_provider(telemetry.tracer_provider)
    metrics.set_meter_provider(telemetry.meter_provider)
    yield telemetry
    _reset_globals()


def seed_flow() -> Linear:
    """The seed case: a, then b (fails once, retried under cp) beside c."""
    calls = {"b": 0}

    @task(provides="x")
    async def a() -> int:
        return 1

    @task
    async def b(x: int) -> None:
        calls["b"] += 1
        if calls["b"] == 1:
            raise ConnectionError("first try")

    @b.revert
    async def _(x: int, result: object) -> None: ...

    @task
    async def c(x: int) -> None: ...

    return Linear("seed", a, Parallel("p", Linear("lb", Checkpoint("cp", retry=Retry(attempts=2)), b), c))


class TestSpans:
    async def test_run_span_under_the_callers_span_with_task_and_revert_spans(self, otel: Telemetry) -> None:
        """The run's span is a child of the span current where it started; each task execution and each revert
        is a child span of the run's with attempt, checkpoint and outcome; a failed execution is an error."""
        tracer = trace.get_tracer("app")
        with tracer.start_as_current_span("request") as request:
            result = await ckflow.run(seed_flow(), run_id="r1")
        assert result.state is FlowState.SUCCESS
        [run_span] = otel.named("ckflow.run")
        assert run_span.name == "ckflow.run seed"
        assert run_span.parent is not None
        assert run_span.parent.span_id == request.get_span_context().span_id
        assert run_span.attributes is not None
        assert run_span.attributes["ckflow.run_id"] == "r1"
        assert run_span.status.status_code is trace.StatusCode.OK
        b_runs = otel.named("ckflow.task b")
        assert [(s.attributes or {})["ckflow.attempt"] for s in b_runs] == [1, 2]
        assert [(s.attributes or {})["ckflow.outcome"] for s in b_runs] == ["failure", "success"]
        assert b_runs[0].status.status_code is trace.StatusCode.ERROR
        assert [e.name for e in b_runs[0].events] == ["exception"]
        assert {(s.attributes or {})["ckflow.checkpoint"] for s in b_runs} == {"cp"}
        [revert] = otel.named("ckflow.revert b")
        assert (revert.attributes or {})["ckflow.region.checkpoint"] == "cp"
        for span in [*b_runs, revert, *otel.named("ckflow.task a")]:
            assert span.parent is not None
            assert span.parent.span_id == run_span.get_span_context().span_id
            assert span.context is not None
            assert span.context.trace_id == request.get_span_context().trace_id

    async def test_walker_decisions_are_span_events(self, otel: Telemetry) -> None:
        """The walker's region, its retry (with the delay) and the run's transitions are events on the run span."""
        await ckflow.run(seed_flow())
        [run_span] = otel.named("ckflow.run")
        names = [e.name for e in run_span.events]
        assert "ckflow.walker.region" in names
        [retry] = [e for e in run_span.events if e.name == "ckflow.walker.retry"]
        assert retry.attributes is not None
        assert retry.attributes["ckflow.checkpoint"] == "cp"
        assert retry.attributes["ckflow.delay"] == 0.0
        assert names[-1] == "ckflow.run.success"

    async def test_task_span_is_current_inside_the_task(self, otel: Telemetry) -> None:
        """Spans a task's own code opens nest under that task's span."""

        @task
        async def work() -> None:
            with trace.get_tracer("app").start_as_current_span("inner"):
                await anyio.lowlevel.checkpoint()

        await ckflow.run(Linear("nested", work))
        [inner] = otel.named("inner")
        [work_span] = otel.named("ckflow.task work")
        assert inner.parent is not None
        assert inner.parent.span_id == work_span.get_span_context().span_id

    async def test_reverted_run_is_an_error(self, otel: Telemetry) -> None:
        """A run that ends REVERTED ends its span with an error status naming the failure."""

        @task
        async def boom() -> None:
            raise ValueError("boom")

        result = await ckflow.run(Linear("doomed", boom))
        assert result.state is FlowState.REVERTED
        [run_span] = otel.named("ckflow.run")
        assert run_span.status.status_code is trace.StatusCode.ERROR
        assert "boom" in (run_span.status.description or "")
        assert "ckflow.walker.exhausted" not in [e.name for e in run_span.events]  # the root has no budget

    async def test_a_resumed_run_continues_its_trace(self, otel: Telemetry, tmp_path: Path) -> None:
        """A durable run records its span; an engine that resumes it continues that trace."""
        url = f"sqlite:///{tmp_path / 'runs.db'}"
        started = anyio.Event()
        calls = {"n": 0}

        @task
        async def slow() -> None:
            calls["n"] += 1
            if calls["n"] == 1:
                started.set()
                await anyio.sleep_forever()

        flow = Linear("durable", slow)
        with anyio.CancelScope() as scope:
            async with ckflow.Engine(store=url) as engine:
                await engine.start(flow, run_id="d1")
                await started.wait()
                scope.cancel()
        async with ckflow.Engine(store=url) as engine:
            run = await engine.resume("d1", flow=flow)
            assert (await run.wait()).state is FlowState.SUCCESS
        first, second = otel.named("ckflow.run")
        assert first.context is not None
        assert second.context is not None
        assert second.context.trace_id == first.context.trace_id
        assert second.parent is not None
        assert second.parent.span_id == first.context.span_id
        assert (first.attributes or {})["ckflow.state"] == "RUNNING"  # it stopped in the first engine


class TestMetrics:
    async def test_counters_and_histograms(self, otel: Telemetry) -> None:
        """Executions, failures, reverts and retries are counted by flow and task; task duration, revert latency
        and retry latency are histograms; the latencies are the ones RunResult.regions reports."""
        result = await ckflow.run(seed_flow())
        by_task = {p.attributes["ckflow.task"]: p.value for p in otel.points("ckflow.task.executions")}
        assert by_task == {"a": 1, "b": 2, "c": 1}
        assert {p.attributes["ckflow.task"]: p.value for p in otel.points("ckflow.task.failures")} == {"b": 1}
        assert {p.attributes["ckflow.task"]: p.value for p in otel.points("ckflow.task.reverts")} == {"b": 1}
        assert {p.attributes["ckflow.task"]: p.value for p in otel.points("ckflow.task.retries")} == {"b": 1}
        assert sum(p.count for p in otel.points("ckflow.task.duration")) == 4
        [region] = result.regions
        [revert] = otel.points("ckflow.revert.latency")
        assert (revert.count, revert.attributes["ckflow.checkpoint"]) == (1, "cp")
        assert revert.sum == pytest.approx(region.revert_latency)
        [retry] = otel.points("ckflow.retry.latency")
        assert retry.sum == pytest.approx(region.retry_latency)

    async def test_runs_by_state(self, otel: Telemetry) -> None:
        """The runs counter goes up on entering a state and down on leaving it: ended runs by state, live ones now."""
        await ckflow.run(seed_flow())
        states = {p.attributes["ckflow.state"]: p.value for p in otel.points("ckflow.runs")}
        assert states == {"RUNNING": 0, "SUCCESS": 1}


class TestOff:
    async def test_no_provider_no_telemetry(self) -> None:
        """Without a provider set by the application, a run has no telemetry at all."""
        _reset_globals()
        seen: list[object] = []

        @task
        async def look() -> None:
            seen.append(trace.get_current_span())

        await ckflow.run(Linear("off", look))
        assert seen == [trace.INVALID_SPAN]

    async def test_no_extra_no_telemetry(self, otel: Telemetry, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without the otel extra installed, a run has no telemetry even if a provider exists."""
        import ckflow._runtime._otel

        monkeypatch.setattr(ckflow._runtime._otel, "AVAILABLE", False)
        await ckflow.run(seed_flow())
        assert otel.spans.get_finished_spans() == ()
