"""``Engine`` (owns runs) and ``run()`` (one run, awaited in the caller's task)."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any, final

import anyio

from ckflow._errors import MissingRequirementError, RunStateError
from ckflow._patterns import Flow
from ckflow._run import Run
from ckflow._runtime import RunCore

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from types import TracebackType

    from anyio.abc import TaskGroup

    from ckflow._events import Event
    from ckflow._models import RunResult

__all__ = ["Engine", "run"]


def _is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _core(
    flow: Flow,
    inputs: Mapping[str, Any] | None,
    run_id: str | None,
    max_concurrency: int | None,
    on_event: Callable[[Event], object] | None,
) -> RunCore:
    if not isinstance(flow, Flow):
        raise TypeError(f"ckflow runs a flow (Linear, Parallel or Graph), got {flow!r}.")
    if max_concurrency is not None and not _is_positive_int(max_concurrency):
        raise ValueError(f"max_concurrency must be a positive int or None, got {max_concurrency!r}.")
    graph = flow.compile()
    given = dict(inputs or {})
    missing = {name: tasks for name, tasks in graph.required_inputs.items() if name not in given}
    if missing:
        raise MissingRequirementError(flow.name, missing)
    return RunCore(
        graph,
        run_id or uuid.uuid4().hex,
        given,
        max_concurrency=max_concurrency,
        on_event=on_event,
    )


async def run(
    flow: Flow,
    inputs: Mapping[str, Any] | None = None,
    *,
    run_id: str | None = None,
    max_concurrency: int | None = None,
    on_event: Callable[[Event], object] | None = None,
) -> RunResult:
    """Run ``flow`` to its end in the calling task and return the result.

    Every ready task starts at once (at most ``max_concurrency`` executing).
    If the caller is cancelled (a client hung up), everything that ran is
    reverted, shielded, and then the cancellation propagates. A run parked by
    a checkpoint with ``on_exhausted="suspend"`` returns with state
    SUSPENDED; use an ``Engine`` to resume such runs.

    Raises:
        FlowDefinitionError: the flow does not compile, or ``inputs`` lack a required value.
    """
    core = _core(flow, inputs, run_id, max_concurrency, on_event)
    return await core.main(stop_on_suspend=True)


@final
class Engine:
    """Runs many flows concurrently in one event loop; use it as an async context manager.

    Leaving the ``async with`` block waits for every run to end. If the block
    is left by an exception or a cancellation, every unfinished run is
    reverted (shielded) first.
    """

    __slots__ = ("_max_concurrency", "_runs", "_tg")

    def __init__(self, *, max_concurrency: int | None = None) -> None:
        self._max_concurrency = max_concurrency
        self._runs: dict[str, Run] = {}
        self._tg: TaskGroup | None = None

    async def __aenter__(self) -> Engine:
        if self._tg is not None:
            raise RunStateError("This Engine is already open; an engine is entered once.")
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        tg, self._tg = self._tg, None
        assert tg is not None
        if exc is not None:
            for handle in self._runs.values():
                handle._core.request_cancel()
        return await tg.__aexit__(exc_type, exc, tb)

    async def start(
        self,
        flow: Flow,
        inputs: Mapping[str, Any] | None = None,
        *,
        run_id: str | None = None,
        max_concurrency: int | None = None,
        on_event: Callable[[Event], object] | None = None,
    ) -> Run:
        """Start a run of ``flow`` in the engine and return its handle at once.

        Raises:
            FlowDefinitionError: the flow does not compile, or ``inputs`` lack a required value.
            RunStateError: the engine is not open, or ``run_id`` is taken.
        """
        if self._tg is None:
            raise RunStateError("Engine.start() needs an open engine: use `async with ckflow.Engine() as engine:`.")
        if run_id is not None and run_id in self._runs:
            raise RunStateError(f"A run with id {run_id!r} already exists in this engine.")
        core = _core(flow, inputs, run_id, max_concurrency or self._max_concurrency, on_event)
        handle = Run(core)
        self._runs[core.run_id] = handle
        self._tg.start_soon(core.main, name=f"ckflow run {core.run_id}")
        return handle

    def get_run(self, run_id: str) -> Run:
        """The handle of a run of this engine.

        Raises:
            RunStateError: no run has that id.
        """
        try:
            return self._runs[run_id]
        except KeyError:
            raise RunStateError(f"This engine has no run with id {run_id!r}.") from None

    @property
    def runs(self) -> Mapping[str, Run]:
        """Every run started by this engine, by id."""
        return dict(self._runs)

    def __repr__(self) -> str:
        state = "open" if self._tg is not None else "closed"
        return f"<ckflow.Engine {state} {len(self._runs)} runs>"
