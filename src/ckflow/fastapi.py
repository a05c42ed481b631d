"""ckflow in a FastAPI service: one engine for the app, opened in its lifespan, and runs inline in handlers.

Needs the ``fastapi`` extra (``pip install 'ckflow[fastapi]'``); ``import ckflow`` alone never imports FastAPI.

    app = FastAPI(lifespan=ckflow.fastapi.lifespan("sqlite:///runs.db", app_lifespan=my_lifespan))

    @app.post("/orders")
    async def order(body: Order, request: Request) -> ckflow.RunView:
        return await ckflow.fastapi.run(request, order_flow, inputs=body.model_dump())
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.lowlevel

try:
    from starlette.applications import Starlette
    from starlette.requests import Request  # noqa: TC002 - FastAPI reads `engine`'s annotation at runtime (Depends)
except ImportError as exc:  # pragma: no cover - the CI installs the test group, which has FastAPI
    raise ImportError("ckflow.fastapi needs FastAPI, which is not installed: pip install 'ckflow[fastapi]'") from exc

from ckflow._engine import Engine
from ckflow._fastapi_router import build_router, http_errors

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Mapping
    from contextlib import AbstractAsyncContextManager

    from fastapi import APIRouter

    from ckflow._engine import Run
    from ckflow._patterns import Flow
    from ckflow._view import RunView
    from ckflow.stores import Store

__all__ = ("engine", "lifespan", "router", "run")

AppT = TypeVar("AppT", bound=Starlette)


def lifespan(
    store: str | Store | None,
    *,
    app_lifespan: Callable[[AppT], AbstractAsyncContextManager[Any]] | None = None,
    **engine_options: Any,
) -> Callable[[AppT], AbstractAsyncContextManager[Any]]:
    """What ``FastAPI(lifespan=...)`` takes: one ``ckflow.Engine`` for the app while it serves.

    The engine is ``Engine(store=store, recover=True, **engine_options)`` (``recover`` is on when there is a
    store, so the runs an earlier life of the service left unfinished resume at start; ``recover=False`` turns it
    off). It is ``app.state.ckflow`` and, in handlers, ``Depends(ckflow.fastapi.engine)``. ``app_lifespan``, the
    app's own lifespan, is entered once the engine is open and left before it closes, so it can use the engine;
    the state it yields, if any, is the app's lifespan state.

    At shutdown the engine stops its runs where they are instead of waiting for them: durable runs stay in the
    store, released, for the next start to resume; runs without a store are reverted.
    """
    options: dict[str, Any] = {"recover": store is not None, **engine_options}

    @contextlib.asynccontextmanager
    async def serve(app: AppT) -> AsyncIterator[Any]:
        with anyio.CancelScope() as stop:
            async with Engine(store=store, **options) as opened:
                app.state.ckflow = opened
                try:
                    if app_lifespan is None:
                        yield None
                    else:
                        async with app_lifespan(app) as state:
                            yield state
                finally:
                    del app.state.ckflow
                # Shutting down: leave the engine's block by a cancellation, so that it stops its runs instead of
                # waiting for them. (An exception, such as the app's lifespan failing, leaves it as it is.)
                stop.cancel()
                await anyio.lowlevel.checkpoint()

    return serve


async def engine(request: Request) -> Engine:
    """The app's engine, for ``Depends(ckflow.fastapi.engine)`` (it is ``request.app.state.ckflow``).

    A coroutine function, so that FastAPI calls it on the event loop rather than in a worker thread.

    Raises:
        RuntimeError: the app does not run ``ckflow.fastapi.lifespan`` (or it has shut down).
    """
    return app_engine(request)


def app_engine(request: Request) -> Engine:
    """The app's engine (``engine`` without the await, for code of this module)."""
    found = getattr(request.app.state, "ckflow", None)
    if not isinstance(found, Engine):
        raise RuntimeError(
            "This app has no ckflow engine: create it with "
            "`FastAPI(lifespan=ckflow.fastapi.lifespan(store))` (and serve it with its lifespan on)."
        )
    return found


def router(*, tracebacks: bool = False, submit: bool = False, **options: Any) -> APIRouter:
    """The runs of the app's engine over HTTP: an ``APIRouter``; ``options`` are ``APIRouter``'s (``dependencies``).

        app.include_router(ckflow.fastapi.router(dependencies=[Depends(auth)]), prefix="/ckflow")

    ``GET /flows`` (each registered flow with its inputs' JSON Schema, ``input_schema``); ``POST /runs``
    ``{"flow", "inputs", "run_id"?}`` (201 with the run view, without waiting for the end);
    ``GET /runs?state=&flow=&limit=&cursor=`` (newest first, a page per request: pass the page's ``next_cursor``
    as ``cursor`` for the next one); ``GET /runs/{id}``; ``POST /runs/{id}/suspend``, ``/resume``, ``/cancel``,
    ``/goto`` ``{"checkpoint"}``, ``/revert_to`` ``{"checkpoint", "retry"}``; ``GET /runs/{id}/events``
    (Server-Sent Events: the stored history, then live, each ``id:`` the event's sequence number, resumable with
    ``Last-Event-ID``, closed with an ``end`` event once the run has ended); ``GET /runs/{id}/graph`` (Mermaid
    text). Errors, each in the OpenAPI document: 404 unknown flow, run or checkpoint; 409 run id taken or run
    ended; 422 invalid inputs (``detail`` names the field), run id or cursor. The app needs ``lifespan``.

    Pages for people, under the same prefix and dependencies: ``GET /ui/runs/{id}``, a run's live page (its flow
    drawn by mermaid, tasks coloured by state and checkpoints as groups; the task table; the event log; buttons
    for suspend, resume, cancel, goto and revert_to, showing the server's refusals), kept current from the
    events stream; ``GET /ui/runs``, the runs by state and flow, each linking to its page. Their scripts, mermaid
    included, ship in the package (``GET /ui/static/{name}``): no CDN, they work offline, and every URL in them
    is relative, so they work under any prefix. A browser sends only cookies or HTTP auth with its requests, so
    ``dependencies`` that read another header keep the pages out.

    A failure is given as its type and message; its traceback (the server's code) only with ``tracebacks=True``,
    in the run views and in the events alike.

    With ``submit=True``, ``POST /runs`` does not run the run in this process: it records it QUEUED for the
    workers (``ckflow.Worker``, ``ckflow worker``) with ``engine.submit``, in the body's ``queue`` (default
    ``"default"``) with its ``priority``; the rest of the router works on the run wherever a worker runs it. Without
    it, a body that names a queue or a priority is a 422.
    """
    return build_router(engine, tracebacks=tracebacks, submit=submit, **options)


async def run(
    request: Request,
    flow: Flow | str,
    inputs: Mapping[str, Any] | None = None,
    *,
    run_id: str | None = None,
) -> RunView:
    """Run ``flow`` on the app's engine until it ends and return its ``ckflow.RunView``, whatever its end state.

    The run belongs to the request: if the client hangs up before it ends, the run is cancelled, which reverts
    what ran, and this returns once the revert is done. The view is returned whatever the run's end state
    (SUCCESS, REVERTED or FAILURE): the handler decides what a REVERTED or FAILURE run means for its response.
    It listens on the request's receive channel while the run goes, so read the body first if you need it (FastAPI
    does, for a body parameter). Cancelling the handler does not cancel the run, which the engine owns.

    A run that cannot start is an ``HTTPException`` with the status and ``detail`` that the router's ``POST /runs``
    gives, so the handler needs no error handling of its own: inputs that do not fit the tasks' annotations, or
    a missing input, 422 with FastAPI's list of errors, each ``loc`` ``["body", input, ...]`` (as where the inputs
    are the request's body: ``inputs=body.model_dump()``); an invalid ``run_id`` or a flow that does not compile,
    422; a flow name that is not registered, 404; a ``run_id`` that is taken, 409. Nothing ran.

    Raises:
        fastapi.HTTPException: the run could not start (above); its ``__cause__`` is ckflow's error.
        RunStateError: the engine shut down while the run was going (a durable run stays in its store).
    """
    with http_errors(inputs_at=("body",)):
        handle = await app_engine(request).start(flow, inputs, run_id=run_id)
    async with anyio.create_task_group() as watch:
        watch.start_soon(_cancel_on_disconnect, request, handle)
        try:
            await handle.wait()
        finally:
            watch.cancel_scope.cancel()
    return await handle.view()


async def _cancel_on_disconnect(request: Request, handle: Run) -> None:
    """Cancel the run when the ASGI server says the client has gone (servers do not cancel the handler)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass  # a part of the request body the handler did not read
    await handle.cancel()
