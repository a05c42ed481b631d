"""``ckflow.fastapi.router()``: the runs of the app's engine over HTTP (JSON, OpenAPI from pydantic models).

Every handler gets the engine through ``ckflow.fastapi.engine`` and maps ckflow's errors to HTTP statuses itself
(404 unknown flow, run or checkpoint; 409 run id taken or run ended; 422 invalid inputs or run id), so the app
needs no exception handlers of its own.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from ckflow._engine import Engine  # noqa: TC001 - FastAPI reads the handlers' annotations at runtime
from ckflow._errors import (
    FlowDefinitionError,
    FlowNotRegisteredError,
    InvalidInputError,
    InvalidRunIdError,
    MissingRequirementError,
    RunExistsError,
    RunNotFoundError,
    RunStateError,
    UnknownCheckpointError,
)
from ckflow._fastapi_events import HEADERS, sse_events
from ckflow._fastapi_ui import ui_routes
from ckflow._mermaid import to_mermaid
from ckflow._registry import registered_flow, registered_flows
from ckflow._states import TERMINAL, FlowState
from ckflow._view import RunView

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

    from ckflow._engine import Run
    from ckflow._records import RunRecord

__all__ = ["build_router"]

#: "Unprocessable Content" (starlette renamed its constant; the number is what clients see)
_UNPROCESSABLE = 422


class FlowInfo(BaseModel):
    """A registered flow: its name and the run inputs it needs (each with the tasks that read it)."""

    name: str
    #: run input -> the tasks that read it; empty when the flow does not compile
    required_inputs: dict[str, list[str]] = Field(default_factory=dict)


class StartRun(BaseModel):
    """``POST /runs``: which registered flow to run, its inputs, and optionally the run's id."""

    flow: str
    inputs: dict[str, Any] = Field(default_factory=dict)
    run_id: str | None = None


class RunSummary(BaseModel):
    """A run as ``GET /runs`` lists it (``GET /runs/{id}`` gives the full view)."""

    run_id: str
    flow: str
    state: FlowState
    created_at: datetime | None = None
    updated_at: datetime | None = None
    ended_at: datetime | None = None


class RunList(BaseModel):
    """A page of runs, newest first; pass ``next_cursor`` as ``cursor`` for the next page (None: the last page)."""

    runs: list[RunSummary]
    next_cursor: str | None = None


class Goto(BaseModel):
    checkpoint: str


class RevertTo(BaseModel):
    checkpoint: str
    retry: bool = True


def _at(wall: float | None) -> datetime | None:
    return None if wall is None else datetime.fromtimestamp(wall, UTC)


def _summary(record: RunRecord) -> RunSummary:
    return RunSummary(
        run_id=record.run_id,
        flow=record.flow,
        state=record.state,
        created_at=_at(record.created_at),
        updated_at=_at(record.updated_at),
        ended_at=_at(record.ended_at),
    )


@contextlib.contextmanager
def _http_errors() -> Iterator[None]:
    """ckflow's errors as HTTP errors (most specific first: the lookups are RunStateErrors too)."""
    try:
        yield
    except InvalidInputError as exc:
        detail = [
            {
                "loc": ["body", "inputs", exc.input, *error.get("loc", [])],
                "msg": error.get("msg", ""),
                "type": error.get("type", "value_error"),
            }
            for error in exc.errors
        ] or [{"loc": ["body", "inputs", exc.input], "msg": str(exc), "type": "value_error"}]
        raise HTTPException(_UNPROCESSABLE, detail=detail) from exc
    except MissingRequirementError as exc:
        detail = [
            {"loc": ["body", "inputs", name], "msg": f"Field required (read by {', '.join(tasks)})", "type": "missing"}
            for name, tasks in exc.missing.items()
        ]
        raise HTTPException(_UNPROCESSABLE, detail=detail) from exc
    except InvalidRunIdError as exc:
        detail = [{"loc": ["body", "run_id"], "msg": str(exc), "type": "value_error"}]
        raise HTTPException(_UNPROCESSABLE, detail=detail) from exc
    except (FlowNotRegisteredError, RunNotFoundError, UnknownCheckpointError) as exc:
        raise HTTPException(404, detail=str(exc)) from exc
    except (RunExistsError, RunStateError) as exc:
        raise HTTPException(409, detail=str(exc)) from exc
    except FlowDefinitionError as exc:
        raise HTTPException(_UNPROCESSABLE, detail=str(exc)) from exc


async def _live(engine: Engine, run_id: str, verb: str) -> Run:
    """The handle of a run that has not ended: 409 once it has (there is nothing left to ``verb``)."""
    run = await _attach(engine, run_id)
    if run.state in TERMINAL:
        raise HTTPException(409, detail=f"Run {run_id!r} has already ended ({run.state}): it cannot {verb}.")
    return run


async def _attach(engine: Engine, run_id: str) -> Run:
    """The run's handle: this engine's, else (with a store) one through the store. 404 if neither has it."""
    with _http_errors():
        if engine.store is None:
            return engine.get_run(run_id)
        return await engine.attach(run_id)


def build_router(engine_dependency: Callable[..., Engine], *, tracebacks: bool = False, **options: Any) -> APIRouter:
    """An ``APIRouter`` over the engine ``engine_dependency`` gives; ``options`` are ``APIRouter``'s.

    (``ckflow.fastapi.router`` passes its ``engine`` dependency, so this module does not import ``ckflow.fastapi``.)
    """
    api = APIRouter(**options)
    app_engine: Any = Depends(engine_dependency)
    _flow_routes(api, app_engine)
    _run_routes(api, app_engine, tracebacks)
    _control_routes(api, app_engine, tracebacks)
    ui_routes(api, app_engine, _attach)
    return api


def _flow_routes(api: APIRouter, app_engine: Any) -> None:
    @api.get("/flows", response_model=list[FlowInfo])
    async def list_flows() -> list[FlowInfo]:
        """The registered flows and the run inputs each needs."""
        found = []
        for name in registered_flows():
            required: dict[str, list[str]] = {}
            with contextlib.suppress(FlowDefinitionError):
                graph = registered_flow(name).compile()
                required = {key: list(tasks) for key, tasks in graph.required_inputs.items()}
            found.append(FlowInfo(name=name, required_inputs=required))
        return found

    @api.get("/runs/{run_id}/graph", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    async def graph(run_id: str, engine: Engine = app_engine) -> Response:
        """The run's flow as Mermaid text, tasks coloured by state (404 if its flow is not registered here)."""
        run = await _attach(engine, run_id)
        with _http_errors():
            flow = registered_flow(run.flow)
        return Response(to_mermaid(flow, run), media_type="text/plain")


def _run_routes(api: APIRouter, app_engine: Any, tracebacks: bool) -> None:
    @api.post("/runs", status_code=201, response_model=RunView)
    async def start(body: StartRun, engine: Engine = app_engine) -> RunView:
        """Start a run of a registered flow; answers at once with its view (it does not wait for the end)."""
        with _http_errors():
            run = await engine.start(body.flow, body.inputs, run_id=body.run_id)
        return await run.view(tracebacks=tracebacks)

    @api.get("/runs", response_model=RunList)
    async def list_runs(
        engine: Engine = app_engine,
        state: Annotated[list[FlowState] | None, Query()] = None,
        flow: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        cursor: str | None = None,
    ) -> RunList:
        """Runs, newest first, by state(s) and flow; ``cursor`` is the ``next_cursor`` of the previous page."""
        store = engine.store
        if store is None:  # the runs this engine runs or keeps; no times without a store
            found = [RunSummary(run_id=r.id, flow=r.flow, state=r.state) for r in engine.runs.values()]
            found = [r for r in found if (not state or r.state in state) and (flow is None or r.flow == flow)]
        else:
            found = [_summary(r) for r in await store.list_runs(states=state or None, flow=flow)]
        if cursor is not None:  # keyset on the run id of the last page's last run (the store has no cursor)
            ids = [r.run_id for r in found]
            found = found[ids.index(cursor) + 1 :] if cursor in ids else []
        page = found[:limit]
        return RunList(runs=page, next_cursor=page[-1].run_id if len(found) > limit else None)

    @api.get("/runs/{run_id}", response_model=RunView)
    async def get(run_id: str, engine: Engine = app_engine) -> RunView:
        """The run's view (404 if no run has this id)."""
        return await (await _attach(engine, run_id)).view(tracebacks=tracebacks)

    @api.get(
        "/runs/{run_id}/events",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"}},
    )
    async def events(
        run_id: str,
        engine: Engine = app_engine,
        last_event_id: Annotated[int | None, Header(ge=-1)] = None,
        after: Annotated[int | None, Query(ge=-1)] = None,
    ) -> StreamingResponse:
        """The run's events as Server-Sent Events: its stored history, then live; closed when the run has ended.

        Each message's ``id`` is the event's sequence number; send it back as ``Last-Event-ID`` (an
        ``EventSource`` does) or as ``?after=`` to get only the events after it. The last message is an ``end``
        event with the run's end state.
        """
        run = await _attach(engine, run_id)
        start = last_event_id if last_event_id is not None else after
        stream = sse_events(run, engine.store, -1 if start is None else start, tracebacks=tracebacks)
        return StreamingResponse(stream, media_type="text/event-stream", headers=HEADERS)


async def _act(run: Run, call: Callable[[Run], Awaitable[None]], tracebacks: bool) -> RunView:
    """Make a control call on ``run``, its errors as HTTP errors, and answer with the run's view after it."""
    with _http_errors():
        await call(run)
    return await run.view(tracebacks=tracebacks)


def _control_routes(api: APIRouter, app_engine: Any, tracebacks: bool) -> None:
    @api.post("/runs/{run_id}/suspend", response_model=RunView)
    async def suspend(run_id: str, engine: Engine = app_engine) -> RunView:
        """Let running tasks finish and start nothing new; answers once the run is SUSPENDED (or has ended)."""
        return await _act(await _live(engine, run_id, "suspend"), lambda run: run.suspend(), tracebacks)

    @api.post("/runs/{run_id}/resume", response_model=RunView)
    async def resume(run_id: str, engine: Engine = app_engine) -> RunView:
        """Go on after a suspension."""
        return await _act(await _live(engine, run_id, "resume"), lambda run: run.resume(), tracebacks)

    @api.post("/runs/{run_id}/cancel", response_model=RunView)
    async def cancel(run_id: str, engine: Engine = app_engine) -> RunView:
        """Revert everything that ran; the run ends REVERTED. Answers once the revert has started."""
        return await _act(await _live(engine, run_id, "cancel"), lambda run: run.cancel(), tracebacks)

    @api.post("/runs/{run_id}/goto", response_model=RunView)
    async def goto(run_id: str, body: Goto, engine: Engine = app_engine) -> RunView:
        """Run on to the checkpoint, or revert back to it; answers once the run is SUSPENDED there."""
        return await _act(await _attach(engine, run_id), lambda run: run.goto(body.checkpoint), tracebacks)

    @api.post("/runs/{run_id}/revert_to", response_model=RunView)
    async def revert_to(run_id: str, body: RevertTo, engine: Engine = app_engine) -> RunView:
        """Revert the checkpoint's scope and downstream; with ``retry`` run it again, else park SUSPENDED there."""
        return await _act(
            await _attach(engine, run_id), lambda run: run.revert_to(body.checkpoint, retry=body.retry), tracebacks
        )
