"""S9's app, served by uvicorn in a process of its own: ckflow's router and a bare handler of the same shape.

``S9_STORE`` is the engine's store (empty: none). ``POST /ckflow/runs`` starts a run of ``FLOW`` (a Linear of
``TASKS`` no-op tasks, the last one counting the runs that ended); ``POST /bare/runs`` reads the same body and
answers 201 with a trivial JSON, without ckflow. ``GET /bench/runs`` says how many runs ended and how many the
engine still runs, so the benchmark can wait for the backlog to drain.
"""

from __future__ import annotations

import os
import uuid
from typing import Annotated, Any

from fastapi import Depends, FastAPI
from pydantic import BaseModel, Field

import ckflow
import ckflow.fastapi

FLOW = "s9"
TASKS = 20

#: runs of FLOW whose last task ran in this process
ended = [0]
_ENDED = (ckflow.FlowState.SUCCESS, ckflow.FlowState.REVERTED, ckflow.FlowState.FAILURE)


@ckflow.task(provides="v0")
async def _first() -> int:
    return 0


@ckflow.task
async def _step(x: int) -> int:
    return x


@ckflow.task
async def _last(x: int) -> None:
    ended[0] += 1


def build() -> ckflow.Linear:
    tasks: list[ckflow.Task] = [_first.with_options(name="t0")]
    tasks += [
        _step.with_options(name=f"t{i}", provides=f"v{i}", rebind={"x": f"v{i - 1}"}) for i in range(1, TASKS - 1)
    ]
    tasks.append(_last.with_options(name=f"t{TASKS - 1}", rebind={"x": f"v{TASKS - 2}"}))
    return ckflow.Linear(FLOW, *tasks)


ckflow.register_flow(FLOW, build)

app = FastAPI(lifespan=ckflow.fastapi.lifespan(os.environ.get("S9_STORE") or None))
app.include_router(ckflow.fastapi.router(), prefix="/ckflow")


class StartRun(BaseModel):
    flow: str
    inputs: dict[str, Any] = Field(default_factory=dict)
    run_id: str | None = None


@app.post("/bare/runs", status_code=201)
async def bare(body: StartRun) -> dict[str, str]:
    """The same request as ``POST /ckflow/runs``, answered without ckflow."""
    return {"run_id": body.run_id or uuid.uuid4().hex, "flow": body.flow, "state": "PENDING"}


@app.get("/bench/runs")
async def runs(engine: Annotated[ckflow.Engine, Depends(ckflow.fastapi.engine)]) -> dict[str, int]:
    """Runs of ``FLOW`` ended in this process, and runs the engine has not finished."""
    unfinished = sum(1 for run in engine.runs.values() if run.state not in _ENDED)
    return {"ended": ended[0], "unfinished": unfinished}
