"""The live pages of ``ckflow.fastapi.router()``: ``GET /ui/runs/{id}``, ``GET /ui/runs`` and their static files.

The pages are HTML shells whose scripts do the work in the browser: they read the router's JSON endpoints, draw
the flow with mermaid (vendored in ``ckflow/_ui`` at a pinned version, with its licence: no CDN, the pages work
offline) and follow the run's Server-Sent Events. Every URL in them is relative, so the router works under any
prefix. The run page gets the little it needs from the server (run id, flow, checkpoints, the names of the
events to listen to) as a JSON data island, so nothing the server knows is ever written into HTML markup.
"""

from __future__ import annotations

import contextlib
import functools
import html
import json
from importlib import resources
from typing import TYPE_CHECKING, Annotated, Any, Final

from fastapi import HTTPException, Path, Response
from fastapi.responses import HTMLResponse

from ckflow._compile import ROOT
from ckflow._engine import Engine  # noqa: TC001 - FastAPI reads the handlers' annotations at runtime
from ckflow._errors import RUN_ID_MAX_LENGTH, FlowDefinitionError, FlowNotRegisteredError
from ckflow._ids import RUN_ID_PATTERN
from ckflow._registry import registered_flow
from ckflow._states import FlowState, TaskState

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from fastapi import APIRouter

    from ckflow._engine import Run

__all__ = ["EVENT_NAMES", "ui_routes"]

#: the files ``GET /ui/static/{name}`` serves, with their media types; any other name is 404
_STATIC: Final = {
    "ckflow.css": "text/css; charset=utf-8",
    "common.js": "text/javascript; charset=utf-8",
    "run.js": "text/javascript; charset=utf-8",
    "runs.js": "text/javascript; charset=utf-8",
    "mermaid.min.js": "text/javascript; charset=utf-8",
    "mermaid.LICENSE": "text/plain; charset=utf-8",
}

#: every event name a run's stream can carry: a browser's EventSource hears a named event only by its exact name.
#: State changes are ``ckflow.task.<state>`` and ``ckflow.run.<state>``; the rest are listed here (a test checks
#: this list against the names the engine emits).
EVENT_NAMES: Final = (
    *(f"ckflow.task.{state.lower()}" for state in TaskState),
    *(f"ckflow.run.{state.lower()}" for state in FlowState),
    "ckflow.run.resumed",
    "ckflow.run.stopped",
    "ckflow.walker.region",
    "ckflow.walker.retry",
    "ckflow.walker.cancel",
    "ckflow.walker.exhausted",
    "ckflow.walker.parked",
    "ckflow.control.suspend",
    "ckflow.control.resume",
    "ckflow.control.cancel",
    "ckflow.control.goto",
    "ckflow.control.revert_to",
    "ckflow.periodic.next",
)

#: the pages load scripts, styles and data from their own origin only; mermaid puts a <style> inside its SVG
_PAGE_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; object-src 'none'; "
        "base-uri 'none'; frame-ancestors 'self'"
    ),
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}


@functools.cache
def _file(name: str) -> bytes:
    """A file of ``ckflow/_ui``, read once per process (mermaid's bundle is 3.5 MB)."""
    return (resources.files("ckflow") / "_ui" / name).read_bytes()


def _data_island(data: dict[str, Any]) -> str:
    """``data`` as JSON that cannot end the ``<script>`` element it sits in, whatever its strings hold."""
    text = json.dumps(data, ensure_ascii=False)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def _checkpoints(flow: str) -> list[str]:
    """The names of the flow's checkpoints, outermost first; none when the flow is not registered here."""
    with contextlib.suppress(FlowNotRegisteredError, FlowDefinitionError):
        return [scope.name for scope in registered_flow(flow).compile().scopes if scope.id != ROOT]
    return []


def _error_page(status: int, message: str) -> HTMLResponse:
    """A plain page for a run the pages cannot show (the message is escaped)."""
    body = (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>ckflow: not found</title></head>\n'
        f'<body><h1>{status}</h1><p>{html.escape(message)}</p><p><a href="../runs">All runs</a></p></body></html>\n'
    )
    return HTMLResponse(body, status_code=status, headers=_PAGE_HEADERS)


#: a run id in the page's path, under the router's rule (so a malformed id is FastAPI's 422, as the router's is)
_RunId = Annotated[str, Path(min_length=1, max_length=RUN_ID_MAX_LENGTH, pattern=RUN_ID_PATTERN)]
#: the run page's answer for a run it cannot show, for the OpenAPI document
_NO_RUN_PAGE: Final[dict[int | str, dict[str, Any]]] = {
    404: {"content": {"text/html": {}}, "description": "No such run (or its flow is not registered here): a page"}
}


def ui_routes(api: APIRouter, app_engine: Any, attach: Callable[[Engine, str], Awaitable[Run]]) -> None:
    """Add the pages to ``api``; ``attach`` finds a run's handle or raises the router's 404."""

    @api.get("/ui/runs", response_class=HTMLResponse)
    async def runs_page() -> HTMLResponse:
        """The runs, newest first, filtered by state and flow; each links to its live page."""
        data = {"states": [state.value for state in FlowState]}
        page = _file("runs.html").decode().replace("__CKFLOW_RUNS__", _data_island(data))
        return HTMLResponse(page, headers=_PAGE_HEADERS)

    @api.get("/ui/runs/{run_id}", response_class=HTMLResponse, responses=_NO_RUN_PAGE)
    async def run_page(run_id: _RunId, engine: Engine = app_engine) -> HTMLResponse:
        """The live page of one run: its graph, tasks and events, and buttons for the control calls."""
        try:
            run = await attach(engine, run_id)
        except HTTPException as exc:
            return _error_page(exc.status_code, str(exc.detail))
        data = {"run_id": run.id, "flow": run.flow, "checkpoints": _checkpoints(run.flow), "events": EVENT_NAMES}
        page = _file("run.html").decode().replace("__CKFLOW_RUN__", _data_island(data))
        return HTMLResponse(page, headers=_PAGE_HEADERS)

    @api.get("/ui/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        """One of the pages' files (404 for any name not in the list)."""
        media_type = _STATIC.get(name)
        if media_type is None:
            raise HTTPException(404, detail=f"No file {name!r} here.")
        headers = {"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"}
        return Response(_file(name), media_type=media_type, headers=headers)
