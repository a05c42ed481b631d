"""OpenTelemetry spans and metrics of runs (imported by ``_otel`` only when the ``otel`` extra is installed).

Tracing is on for a run when ``opentelemetry-api`` is importable and the
application has set a global tracer provider (``trace.set_tracer_provider``);
metrics when it has set a global meter provider. Otherwise a run has no
``RunTelemetry`` at all and the engine's hot path pays one ``is None`` check
per transition.

Spans: one per run (``ckflow.run <flow>``), whose parent is the span that was
current where the run was started (a FastAPI request's, say) or, for a
durable run resumed or taken over elsewhere, the run span recorded in the
store, so the whole life of a run is one trace. Under it, one span per task
execution (``ckflow.task <name>``) and one per revert
(``ckflow.revert <name>``), current while the task's code runs so that its own
spans nest under them. The revert walker's decisions are events on the run
span. Metrics (instruments named ``ckflow.*``): task executions, failures,
reverts and retries by flow and task; histograms of task duration, revert
latency (a failure to its region's first revert start) and retry latency (a
failure to the region's next execution), in seconds, the same clock points as
``RunResult.regions``; runs entering each state (an up-down counter, so that
RUNNING and SUSPENDED count the runs in that state now).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Final

from opentelemetry import context as _context
from opentelemetry import metrics as _metrics
from opentelemetry import trace as _trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ckflow._states import FAILURE, PENDING, REVERT_FAILURE, REVERTED, REVERTING, RUNNING, SUCCESS, FlowState

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ckflow._failure import Failure
    from ckflow._models import RegionReport
    from ckflow._runtime._ports import RegionView
    from ckflow._runtime._state import RunState

__all__ = ["RunTelemetry", "capture_context", "telemetry_for"]

_SCOPE: Final = "ckflow"
_ENDED: Final = (FlowState.SUCCESS, FlowState.REVERTED, FlowState.FAILURE)
#: span events recorded on the run span: the revert walker's decisions and operator requests
_SPAN_EVENTS: Final = (
    "ckflow.walker.",
    "ckflow.control.",
    "ckflow.periodic.",
    "ckflow.run.resumed",
    "ckflow.run.stopped",
)


def capture_context() -> object:
    """The OpenTelemetry context current where a run is started."""
    return _context.get_current()


def _tracing_on() -> bool:
    provider = _trace.get_tracer_provider()
    return not isinstance(provider, (_trace.ProxyTracerProvider, _trace.NoOpTracerProvider))


def _metrics_on() -> bool:
    provider = _metrics.get_meter_provider()
    # the API's global before the application sets one is a proxy to a no-op provider
    return not isinstance(provider, _metrics.NoOpMeterProvider) and type(provider).__name__ != "_ProxyMeterProvider"


class _Instruments:
    """The metric instruments, made once per meter provider."""

    __slots__ = (
        "duration",
        "executions",
        "failures",
        "provider",
        "retries",
        "retry_latency",
        "revert_latency",
        "reverts",
        "runs",
    )

    def __init__(self, provider: Any) -> None:
        from ckflow._version import __version__

        meter = provider.get_meter(_SCOPE, __version__)
        self.provider = provider
        self.executions = meter.create_counter("ckflow.task.executions", "{execution}", "Task executions started")
        self.failures = meter.create_counter("ckflow.task.failures", "{failure}", "Task executions that failed")
        self.reverts = meter.create_counter("ckflow.task.reverts", "{revert}", "Task reverts started")
        self.retries = meter.create_counter("ckflow.task.retries", "{retry}", "Tasks reset to run again by a retry")
        self.duration = meter.create_histogram("ckflow.task.duration", "s", "Duration of task executions")
        self.revert_latency = meter.create_histogram(
            "ckflow.revert.latency", "s", "From a task's failure to the first revert of its region"
        )
        self.retry_latency = meter.create_histogram(
            "ckflow.retry.latency", "s", "From a task's failure to the next execution of its region"
        )
        self.runs = meter.create_up_down_counter("ckflow.runs", "{run}", "Runs by state")


_INSTRUMENTS: list[_Instruments] = []
#: the tracer and meter providers last found with neither traces nor metrics on
_OFF: list[object] = []


def _instruments() -> _Instruments | None:
    if not _metrics_on():
        return None
    provider = _metrics.get_meter_provider()
    if not _INSTRUMENTS or _INSTRUMENTS[0].provider is not provider:
        _INSTRUMENTS[:] = [_Instruments(provider)]
    return _INSTRUMENTS[0]


def telemetry_for(core: RunState, region_of: Sequence[RegionView | None]) -> RunTelemetry | None:
    """The run's telemetry, or None when neither traces nor metrics are on."""
    providers = (_trace.get_tracer_provider(), _metrics.get_meter_provider())
    if _OFF and _OFF[0] is providers[0] and _OFF[1] is providers[1]:
        return None  # the same providers as last time, which had neither on: nothing to ask again
    tracer = _trace.get_tracer(_SCOPE) if _tracing_on() else None
    instruments = _instruments()
    if tracer is None and instruments is None:
        _OFF[:] = providers
        return None
    return RunTelemetry(core, region_of, tracer, instruments)


class RunTelemetry:
    """One run's spans and measurements; the engine calls it at each transition."""

    __slots__ = (
        "core",
        "exec_spans",
        "flow_attrs",
        "instruments",
        "region_of",
        "revert_spans",
        "run_ctx",
        "run_span",
        "tracer",
    )

    def __init__(
        self, core: RunState, region_of: Sequence[RegionView | None], tracer: Any, instruments: _Instruments | None
    ) -> None:
        self.core = core
        self.region_of = region_of
        self.tracer = tracer
        self.instruments = instruments
        self.flow_attrs = {"ckflow.flow": core.flow}
        self.run_span: Any = None
        self.run_ctx: Any = None
        self.exec_spans: dict[int, Any] = {}
        self.revert_spans: dict[int, Any] = {}

    # -- the run -------------------------------------------------------------------

    def run_started(self, parent: object | None, traceparent: str | None) -> None:
        """Open the run's span under ``parent`` (the starter's context) or the stored ``traceparent``."""
        core = self.core
        if self.instruments is not None and core.flow_state is not FlowState.PENDING:
            # a run resumed here: it is counted in its state from now on
            self.instruments.runs.add(1, {"ckflow.flow": core.flow, "ckflow.state": core.flow_state.value})
        if self.tracer is None:
            return
        if traceparent is not None:
            parent = TraceContextTextMapPropagator().extract({"traceparent": traceparent})
        self.run_span = self.tracer.start_span(
            f"ckflow.run {core.flow}",
            context=parent,
            attributes={"ckflow.run_id": core.run_id, "ckflow.flow": core.flow},
        )
        self.run_ctx = _trace.set_span_in_context(self.run_span)

    def traceparent(self) -> str | None:
        """The run span's W3C ``traceparent``, kept with a durable run so that its resumption continues the trace."""
        if self.run_span is None:
            return None
        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier, context=self.run_ctx)
        return carrier.get("traceparent")

    def run_transition(self, old: FlowState, new: FlowState) -> None:
        instruments = self.instruments
        if instruments is not None:
            if old is not FlowState.PENDING:
                instruments.runs.add(-1, {"ckflow.flow": self.core.flow, "ckflow.state": old.value})
            instruments.runs.add(1, {"ckflow.flow": self.core.flow, "ckflow.state": new.value})
        span = self.run_span
        if span is not None:
            span.add_event(f"ckflow.run.{new.lower()}", {"ckflow.old": old.value, "ckflow.new": new.value})

    def run_ended(self, state: FlowState, why: BaseException | None = None) -> None:
        """Close the run's span (the run ended, or stopped running in this engine) and what is still open."""
        for spans in (self.exec_spans, self.revert_spans):
            for span in spans.values():
                span.set_attribute("ckflow.outcome", "interrupted")
                span.end()
            spans.clear()
        if why is not None and self.instruments is not None and state not in _ENDED:
            # stopped in this engine: counted here no more (the engine that resumes it counts it)
            self.instruments.runs.add(-1, {"ckflow.flow": self.core.flow, "ckflow.state": state.value})
        span = self.run_span
        if span is None:
            return
        self.run_span = None
        span.set_attribute("ckflow.state", state.value)
        if why is not None:
            span.set_attribute("ckflow.stopped", str(why))
        if state is FlowState.SUCCESS:
            span.set_status(_trace.StatusCode.OK)
        elif state in (FlowState.REVERTED, FlowState.FAILURE):
            failures = self.core.failures
            span.set_status(_trace.StatusCode.ERROR, str(failures[-1]) if failures else f"run ended {state}")
        span.end()

    def event(self, name: str, fields: dict[str, Any]) -> None:
        """A walker decision, control request or run event: an event on the run span."""
        span = self.run_span
        if span is None or not name.startswith(_SPAN_EVENTS):
            return
        attributes: dict[str, Any] = {}
        for key, value in fields.items():
            if key == "detail":
                for k, v in value.items():
                    attributes[f"ckflow.{k}"] = v if isinstance(v, str | bool | int | float) else str(v)
            elif value is not None:
                attributes[f"ckflow.{key}"] = value if isinstance(value, str | bool | int | float) else str(value)
        span.add_event(name, attributes)

    # -- tasks ---------------------------------------------------------------------

    def transition(self, n: int, old: Any, new: Any) -> None:
        """Task ``n`` went from ``old`` to ``new``: open, end or count what that means."""
        core = self.core
        node = core.nodes[n]
        instruments = self.instruments
        if new is RUNNING:
            if instruments is not None:
                instruments.executions.add(1, {**self.flow_attrs, "ckflow.task": node.name})
            if self.tracer is not None:
                self.exec_spans[n] = self.tracer.start_span(
                    f"ckflow.task {node.name}", context=self.run_ctx, attributes=self._task_attrs(n)
                )
        elif old is RUNNING:
            outcome = "success" if new is SUCCESS else "interrupted" if new is PENDING else "failure"
            result = core.results[n]
            failure: Failure | None = result if new is FAILURE else None
            if failure is not None and failure.cancelled:
                outcome = "cancelled"
            if instruments is not None:
                attrs = {**self.flow_attrs, "ckflow.task": node.name, "ckflow.outcome": outcome}
                started = core.started_at(n)
                if started is not None:
                    instruments.duration.record(max(0.0, time.monotonic() - started), attrs)
                if outcome == "failure":
                    instruments.failures.add(1, {**self.flow_attrs, "ckflow.task": node.name})
            span = self.exec_spans.pop(n, None)
            if span is not None:
                self._end(span, outcome, failure)
        elif new is REVERTING:
            if instruments is not None:
                instruments.reverts.add(1, {**self.flow_attrs, "ckflow.task": node.name})
            if self.tracer is not None:
                span_attrs = self._task_attrs(n)
                region = self.region_of[n]
                if region is not None:
                    span_attrs["ckflow.region"] = region.id
                    span_attrs["ckflow.region.checkpoint"] = region.report.checkpoint
                self.revert_spans[n] = self.tracer.start_span(
                    f"ckflow.revert {node.name}", context=self.run_ctx, attributes=span_attrs
                )
        elif new is REVERTED or new is REVERT_FAILURE:
            span = self.revert_spans.pop(n, None)
            if span is not None:
                result = core.results[n]
                self._end(span, "success" if new is REVERTED else "failure", result if new is REVERT_FAILURE else None)
        elif old is REVERTED and new is PENDING and instruments is not None:
            instruments.retries.add(1, {**self.flow_attrs, "ckflow.task": node.name})

    def _task_attrs(self, n: int) -> dict[str, Any]:
        core = self.core
        node = core.nodes[n]
        return {
            "ckflow.run_id": core.run_id,
            "ckflow.task": node.name,
            "ckflow.attempt": core.attempt(n),
            "ckflow.checkpoint": core.graph.scopes[node.scope].name,
        }

    @staticmethod
    def _end(span: Any, outcome: str, failure: Failure | None) -> None:
        span.set_attribute("ckflow.outcome", outcome)
        if failure is not None and outcome == "failure":
            exc = failure.exception
            if exc is not None:
                span.record_exception(exc)
            span.set_status(_trace.StatusCode.ERROR, f"{failure.exc_type}: {failure.message}")
        span.end()

    def attach(self, n: int, reverting: bool = False) -> object | None:
        """Make task ``n``'s span current while its code runs (returns the token for ``detach``)."""
        span = (self.revert_spans if reverting else self.exec_spans).get(n)
        if span is None:
            return None
        return _context.attach(_trace.set_span_in_context(span, self.run_ctx))

    @staticmethod
    def detach(token: object | None) -> None:
        if token is not None:
            _context.detach(token)  # type: ignore[arg-type]

    # -- latencies -----------------------------------------------------------------

    def revert_latency(self, report: RegionReport) -> None:
        latency = report.revert_latency
        if self.instruments is not None and latency is not None:
            attrs = {**self.flow_attrs, "ckflow.checkpoint": report.checkpoint}
            self.instruments.revert_latency.record(latency, attrs)

    def retry_latency(self, report: RegionReport) -> None:
        latency = report.retry_latency
        if self.instruments is not None and latency is not None:
            attrs = {**self.flow_attrs, "ckflow.checkpoint": report.checkpoint}
            self.instruments.retry_latency.record(latency, attrs)
