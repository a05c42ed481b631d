"""``ckflow.fastapi.router()``: the runs of the app's engine over HTTP (JSON, OpenAPI from pydantic models).

Every handler gets the engine through ``ckflow.fastapi.engine`` and maps ckflow's errors to HTTP statuses itself
(404 unknown flow, run or checkpoint; 409 run id taken or run ended; 422 invalid inputs or run id), so the app
needs no exception handlers of its own.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from ckflow._engine import Engine  # noqa: TC001 - FastAPI reads the handlers' annotations at runtime
from ckflow._errors import (
    RUN_ID_MAX_LENGTH,
    CkflowError,
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
from ckflow._ids import RUN_ID_PATTERN
from ckflow._inputs import input_schema
from ckflow._mermaid import to_mermaid
from ckflow._registry import registered_flow, registered_flows
from ckflow._states import TERMINAL, FlowState
from ckflow._view import RunView

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator, Sequence

    from ckflow._engine import Run
    from ckflow._records import RunRecord

__all__ = ["build_router", "http_errors"]

#: "Unprocessable Content" (starlette renamed its constant; the number is what clients see)
_UNPROCESSABLE = 422


class FlowInfo(BaseModel):
    """A registered flow: its name, the inputs it needs (each with the tasks that read it), and its inputs' schema."""

    name: str
    #: run input -> the tasks that read it; empty when the flow does not compile
    required_inputs: dict[str, list[str]] = Field(default_factory=dict)
    #: the run's ``inputs`` as a JSON Schema object, from the annotations of the tasks that read them; None when the
    #: flow does not compile
    input_schema: dict[str, Any] | None = None


class StartRun(BaseModel):
    """``POST /runs``: which registered flow to run, its inputs, and optionally the run's id."""

    flow: str
    inputs: dict[str, Any] = Field(default_factory=dict)
    #: the rule of ``check_run_id``, said in the schema too (lone surrogates are left to it: JSON has none)
    run_id: Annotated[str, Field(min_length=1, max_length=RUN_ID_MAX_LENGTH, pattern=RUN_ID_PATTERN)] | None = None


class SubmitRun(StartRun):
    """``POST /runs`` of a router that submits (``router(submit=True)``): also the queue and priority by which
    workers claim the run."""

    queue: Annotated[str, Field(min_length=1, max_length=200)] = "default"
    priority: Annotated[int, Field(ge=-(2**31), le=2**31 - 1)] = 0


#: a run id in a route's path: the same rule, so a malformed id is FastAPI's 422 at ``["path", "run_id"]``
RunIdPath = Annotated[str, Path(min_length=1, max_length=RUN_ID_MAX_LENGTH, pattern=RUN_ID_PATTERN)]


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


class HTTPError(BaseModel):
    """The body of a 404 or 409: what is not there, or why the call cannot be made now."""

    detail: str


#: the error answers a route may give besides 422 (which FastAPI documents itself), for its OpenAPI document
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": HTTPError, "description": "Unknown run or flow"}}
_CONFLICT: dict[int | str, dict[str, Any]] = {409: {"model": HTTPError, "description": "The run cannot do this now"}}
#: FastAPI's answer to a body it cannot read as text (not UTF-8), before any handler runs
_UNREADABLE: dict[int | str, dict[str, Any]] = {400: {"model": HTTPError, "description": "The body cannot be read"}}


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


def _encode_cursor(keys: tuple[float | None, str]) -> str:
    """The opaque cursor of the runs after the one with these listing keys, (created_at, run_id): base64url JSON.

    (``created_at`` exactly as stored, so that the store's keyset finds the place again; None without a store.)
    """
    return base64.urlsafe_b64encode(json.dumps(list(keys)).encode()).decode()


def _decode_cursor(cursor: str) -> tuple[float | None, str]:
    """The listing keys ``_encode_cursor`` put in ``cursor``; 422 for anything else."""
    try:
        at, run_id = json.loads(base64.urlsafe_b64decode(cursor.encode("ascii")))
    except (ValueError, TypeError) as exc:
        raise _bad_cursor("it does not decode") from exc
    number = isinstance(at, float | int) and not isinstance(at, bool) and math.isfinite(at)
    if not isinstance(run_id, str) or not (at is None or number):
        raise _bad_cursor("it does not hold a run's keys")
    return (None if at is None else float(at)), run_id


def _bad_cursor(why: str) -> HTTPException:
    msg = f"Invalid cursor: {why}; pass the next_cursor of the previous page, or no cursor for the first page."
    return HTTPException(_UNPROCESSABLE, detail=[{"loc": ["query", "cursor"], "msg": msg, "type": "value_error"}])


@contextlib.contextmanager
def http_errors(inputs_at: Sequence[str] = ("body", "inputs")) -> Iterator[None]:
    """ckflow's errors as HTTP errors (``_http_error``); other errors go through as they are.

    A 422's ``detail`` is a list of errors in FastAPI's own shape (``loc``, ``msg``, ``type``); an input's ``loc``
    starts with ``inputs_at``, where the request carries the inputs. ``ckflow.fastapi.run`` uses it too.
    """
    try:
        yield
    except CkflowError as exc:
        _raise_as_http(exc, inputs_at)


def _raise_as_http(exc: CkflowError, inputs_at: Sequence[str]) -> NoReturn:
    """Raise ``exc``'s HTTP error from it, or ``exc`` itself if it has none."""
    error = _http_error(exc, inputs_at)
    if error is None:
        raise exc
    raise error from exc


def _http_error(exc: CkflowError, inputs_at: Sequence[str]) -> HTTPException | None:
    """The HTTP error of ``exc`` (most specific first: the lookups are RunStateErrors too); None if it has none."""
    if isinstance(exc, InvalidInputError):
        detail = [
            {
                "loc": [*inputs_at, exc.input, *error.get("loc", [])],
                "msg": error.get("msg", ""),
                "type": error.get("type", "value_error"),
            }
            for error in exc.errors
        ] or [{"loc": [*inputs_at, exc.input], "msg": str(exc), "type": "value_error"}]
        return HTTPException(_UNPROCESSABLE, detail=detail)
    if isinstance(exc, MissingRequirementError):
        detail = [
            {"loc": [*inputs_at, name], "msg": f"Field required (read by {', '.join(tasks)})", "type": "missing"}
            for name, tasks in exc.missing.items()
        ]
        return HTTPException(_UNPROCESSABLE, detail=detail)
    if isinstance(exc, InvalidRunIdError):
        return HTTPException(
            _UNPROCESSABLE, detail=[{"loc": ["body", "run_id"], "msg": str(exc), "type": "value_error"}]
        )
    if isinstance(exc, FlowNotRegisteredError | RunNotFoundError | UnknownCheckpointError):
        return HTTPException(404, detail=str(exc))
    if isinstance(exc, RunExistsError | RunStateError):
        return HTTPException(409, detail=str(exc))
    if isinstance(exc, FlowDefinitionError):  # a registered flow that does not compile: no run of it can start
        return HTTPException(_UNPROCESSABLE, detail=[{"loc": ["body", "flow"], "msg": str(exc), "type": "value_error"}])
    return None


async def _live(engine: Engine, run_id: str, verb: str) -> Run:
    """The handle of a run that has not ended: 409 once it has (there is nothing left to ``verb``)."""
    run = await _attach(engine, run_id)
    if run.state in TERMINAL:
        raise HTTPException(409, detail=f"Run {run_id!r} has already ended ({run.state}): it cannot {verb}.")
    return run


async def _attach(engine: Engine, run_id: str) -> Run:
    """The run's handle: this engine's, else (with a store) one through the store. 404 if neither has it."""
    with http_errors():
        if engine.store is None:
            return engine.get_run(run_id)
        return await engine.attach(run_id)


def build_router(
    engine_dependency: Callable[..., Awaitable[Engine]],
    *,
    tracebacks: bool = False,
    submit: bool = False,
    **options: Any,
) -> APIRouter:
    """An ``APIRouter`` over the engine ``engine_dependency`` gives; ``options`` are ``APIRouter``'s.

    (``ckflow.fastapi.router`` passes its ``engine`` dependency, so this module does not import ``ckflow.fastapi``.)
    """
    api = APIRouter(**options)
    app_engine: Any = Depends(engine_dependency)
    _flow_routes(api, app_engine)
    _run_routes(api, app_engine, tracebacks, submit)
    _control_routes(api, app_engine, tracebacks)
    ui_routes(api, app_engine, _attach)
    return api


def _flow_routes(api: APIRouter, app_engine: Any) -> None:
    @api.get("/flows", response_model=list[FlowInfo])
    async def list_flows() -> list[FlowInfo]:
        """The registered flows, the run inputs each needs, and the JSON Schema of its inputs."""
        found = []
        for name in registered_flows():
            try:
                graph = registered_flow(name).compile()
            except FlowDefinitionError:
                found.append(FlowInfo(name=name))
                continue
            required = {key: list(tasks) for key, tasks in graph.required_inputs.items()}
            found.append(FlowInfo(name=name, required_inputs=required, input_schema=input_schema(graph)))
        return found

    @api.get(
        "/runs/{run_id}/graph",
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}}, **_NOT_FOUND},
    )
    async def graph(run_id: RunIdPath, engine: Engine = app_engine) -> Response:
        """The run's flow as Mermaid text, tasks coloured by state (404 if its flow is not registered here)."""
        run = await _attach(engine, run_id)
        with http_errors():
            flow = registered_flow(run.flow)
        return Response(to_mermaid(flow, run), media_type="text/plain")


async def _start(engine: Engine, body: StartRun) -> Run:
    """Start the run of ``body``; ckflow's errors as HTTP errors (by ``_http_error`` in a plain ``try``: the
    context manager of ``http_errors`` is a generator and an object more a request)."""
    try:
        return await engine.start(body.flow, body.inputs, run_id=body.run_id)
    except CkflowError as exc:
        _raise_as_http(exc, ("body", "inputs"))


async def _submit(engine: Engine, body: SubmitRun) -> Run:
    """Record the run of ``body`` QUEUED for a worker; errors as HTTP errors (a queue name ckflow refuses: 422)."""
    with http_errors():
        try:
            return await engine.submit(body.flow, body.inputs, body.run_id, queue=body.queue, priority=body.priority)
        except ValueError as exc:
            if isinstance(exc, CkflowError):
                raise
            detail = [{"loc": ["body", "queue"], "msg": str(exc), "type": "value_error"}]
            raise HTTPException(_UNPROCESSABLE, detail=detail) from exc


def _run_routes(api: APIRouter, app_engine: Any, tracebacks: bool, submit: bool) -> None:
    responses: dict[int | str, dict[str, Any]] = {**_NOT_FOUND, **_CONFLICT, **_UNREADABLE}
    if submit:

        @api.post("/runs", status_code=201, response_model=RunView, responses=responses)
        async def submit_run(body: SubmitRun, engine: Engine = app_engine) -> Response:
            """Queue a run of a registered flow for the workers; answers at once with its view (QUEUED)."""
            return _json(await (await _submit(engine, body)).view(tracebacks=tracebacks), 201)

    else:

        @api.post("/runs", status_code=201, response_model=RunView, responses=responses)
        async def start(body: StartRun, engine: Engine = app_engine) -> Response:
            """Start a run of a registered flow; answers at once with its view (it does not wait for the end)."""
            return _json(await (await _start(engine, body)).view(tracebacks=tracebacks), 201)

    @api.get("/runs", response_model=RunList)
    async def list_runs(
        engine: Engine = app_engine,
        state: Annotated[list[FlowState] | None, Query()] = None,
        flow: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        cursor: str | None = None,
    ) -> RunList:
        """Runs, newest first, by state(s) and flow; ``cursor`` is the ``next_cursor`` of the previous page."""
        return await _page(engine, state or None, flow, limit, None if cursor is None else _decode_cursor(cursor))

    @api.get("/runs/{run_id}", response_model=RunView, responses=_NOT_FOUND)
    async def get(run_id: RunIdPath, engine: Engine = app_engine) -> Response:
        """The run's view (404 if no run has this id)."""
        return _json(await (await _attach(engine, run_id)).view(tracebacks=tracebacks))

    @api.get(
        "/runs/{run_id}/events",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"}, **_NOT_FOUND},
    )
    async def events(
        run_id: RunIdPath,
        engine: Engine = app_engine,
        # -1 (from the start) rather than None for "not given": a header or query value cannot be JSON null, which
        # an optional parameter's schema would offer
        last_event_id: Annotated[int, Header(ge=-1)] = -1,
        after: Annotated[int, Query(ge=-1)] = -1,
    ) -> StreamingResponse:
        """The run's events as Server-Sent Events: its stored history, then live; closed when the run has ended.

        Each message's ``id`` is the event's sequence number; send it back as ``Last-Event-ID`` (an
        ``EventSource`` does) or as ``?after=`` to get only the events after it. The last message is an ``end``
        event with the run's end state.
        """
        run = await _attach(engine, run_id)
        stream = sse_events(run, engine.store, last_event_id if last_event_id != -1 else after, tracebacks=tracebacks)
        return StreamingResponse(stream, media_type="text/event-stream", headers=HEADERS)


async def _page(
    engine: Engine, states: list[FlowState] | None, flow: str | None, limit: int, after: tuple[float | None, str] | None
) -> RunList:
    """A page of ``GET /runs``: the ``limit`` runs after the cursor's keys, and the cursor of the next page."""
    store = engine.store
    if store is None:  # the runs this engine runs or keeps, in its order; no times without a store
        found = [RunSummary(run_id=r.id, flow=r.flow, state=r.state) for r in engine.runs.values()]
        found = [r for r in found if (not states or r.state in states) and (flow is None or r.flow == flow)]
        if after is not None:
            ids = [r.run_id for r in found]
            found = found[ids.index(after[1]) + 1 :] if after[1] in ids else []
        keys: list[tuple[float | None, str]] = [(None, r.run_id) for r in found[: limit + 1]]
    else:  # one bounded query: the page and one run more, to know whether there is a next page
        before: tuple[float, str] | None = None
        if after is not None:
            at, run_id = after
            if at is None:
                raise _bad_cursor("it was not given by a list of this store's runs")
            before = (at, run_id)
        records = await store.list_runs(states=states, flow=flow, limit=limit + 1, before=before)
        found = [_summary(r) for r in records]
        keys = [(r.created_at, r.run_id) for r in records]
    more = len(keys) > limit
    return RunList(runs=found[:limit], next_cursor=_encode_cursor(keys[limit - 1]) if more else None)


def _json(view: RunView, status: int = 200) -> Response:
    """``view`` as the response, serialised once by pydantic (FastAPI would validate the model again first), to
    bytes (``model_dump_json`` decodes them to a str, which the response encodes again)."""
    return Response(view.__pydantic_serializer__.to_json(view), status_code=status, media_type="application/json")


async def _act(run: Run, call: Callable[[Run], Awaitable[None]], tracebacks: bool) -> Response:
    """Make a control call on ``run``, its errors as HTTP errors, and answer with the run's view after it."""
    with http_errors():
        await call(run)
    return _json(await run.view(tracebacks=tracebacks))


def _control_routes(api: APIRouter, app_engine: Any, tracebacks: bool) -> None:
    @api.post("/runs/{run_id}/suspend", response_model=RunView, responses={**_NOT_FOUND, **_CONFLICT})
    async def suspend(run_id: RunIdPath, engine: Engine = app_engine) -> Response:
        """Let running tasks finish and start nothing new; answers once the run is SUSPENDED (or has ended)."""
        return await _act(await _live(engine, run_id, "suspend"), lambda run: run.suspend(), tracebacks)

    @api.post("/runs/{run_id}/resume", response_model=RunView, responses={**_NOT_FOUND, **_CONFLICT})
    async def resume(run_id: RunIdPath, engine: Engine = app_engine) -> Response:
        """Go on after a suspension."""
        return await _act(await _live(engine, run_id, "resume"), lambda run: run.resume(), tracebacks)

    @api.post("/runs/{run_id}/cancel", response_model=RunView, responses={**_NOT_FOUND, **_CONFLICT})
    async def cancel(run_id: RunIdPath, engine: Engine = app_engine) -> Response:
        """Revert everything that ran; the run ends REVERTED. Answers once the revert has started."""
        return await _act(await _live(engine, run_id, "cancel"), lambda run: run.cancel(), tracebacks)

    @api.post("/runs/{run_id}/goto", response_model=RunView, responses={**_NOT_FOUND, **_CONFLICT, **_UNREADABLE})
    async def goto(run_id: RunIdPath, body: Goto, engine: Engine = app_engine) -> Response:
        """Run on to the checkpoint, or revert back to it; answers once the run is SUSPENDED there."""
        return await _act(await _attach(engine, run_id), lambda run: run.goto(body.checkpoint), tracebacks)

    @api.post("/runs/{run_id}/revert_to", response_model=RunView, responses={**_NOT_FOUND, **_CONFLICT, **_UNREADABLE})
    async def revert_to(run_id: RunIdPath, body: RevertTo, engine: Engine = app_engine) -> Response:
        """Revert the checkpoint's scope and downstream; with ``retry`` run it again, else park SUSPENDED there."""
        return await _act(
            await _attach(engine, run_id), lambda run: run.revert_to(body.checkpoint, retry=body.retry), tracebacks
        )
