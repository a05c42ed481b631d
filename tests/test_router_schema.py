"""ckflow.fastapi.router() against its own OpenAPI document: schemathesis generates requests for every route.

No response is a server error, and every response conforms to the document (status code, content type, body
schema). The app has two registered flows (one reads a pydantic model) on a memory store and, from its start, a
run that ended and one parked at a checkpoint; hooks mix their names into the generated requests, so that some
requests start real runs and some control real runs. Bounded and deterministic: a few examples per route,
derandomized.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import hypothesis
import schemathesis
from fastapi import FastAPI
from hypothesis import strategies as st
from pydantic import BaseModel

import ckflow
import ckflow.fastapi
from ckflow import Checkpoint, Engine, FlowState, Linear, task

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


class Parcel(BaseModel):
    sku: str
    weight: float = 1.0


@task(provides="label")
async def pack(parcel: Parcel, copies: int = 1) -> str:
    return f"{parcel.sku} x{copies}"


@task
async def send(label: str) -> None:
    pass


@task(provides="total")
async def add(a: int, b: int) -> int:
    return a + b


SHIPPING = Linear("schema-shipping", pack, Linear("schema-send", Checkpoint("sent"), send))
ADDING = Linear("schema-adding", add)
ckflow.register_flow(SHIPPING.name, SHIPPING)
ckflow.register_flow(ADDING.name, ADDING)

#: inputs that fit each flow
FITTING: dict[str, dict[str, Any]] = {SHIPPING.name: {"parcel": {"sku": "x"}}, ADDING.name: {"a": 1, "b": 2}}
#: runs the app has from its start: one that ended, one parked at checkpoint "sent"
KNOWN_RUNS = ("ended", "parked")


@contextlib.asynccontextmanager
async def known_runs(app: FastAPI) -> AsyncIterator[None]:
    engine: Engine = app.state.ckflow
    ended = await engine.start(ADDING, {"a": 1, "b": 2}, run_id="ended")
    assert (await ended.wait()).state is FlowState.SUCCESS
    parked = await engine.start(SHIPPING, {"parcel": {"sku": "x"}}, run_id="parked")
    await parked.goto("sent")
    yield


app = FastAPI(lifespan=ckflow.fastapi.lifespan("memory://", app_lifespan=known_runs))
app.include_router(ckflow.fastapi.router(), prefix="/ckflow")

schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@schema.hook("flatmap_case")
def with_known_names(context: schemathesis.HookContext, case: schemathesis.Case[Any]) -> st.SearchStrategy[Any]:
    """A schema-valid request as generated, or with a known run's id, a registered flow (with inputs that fit, or
    not) or the parked run's checkpoint in it. Requests generated to violate the schema are left as they are."""
    if case.meta is None or not case.meta.generation.mode.is_positive:
        return st.just(case)
    variants: list[dict[str, Any]] = [{}]
    if case.path_parameters and "run_id" in case.path_parameters:
        variants += [{"path_parameters": {**case.path_parameters, "run_id": r}} for r in KNOWN_RUNS]
    body = case.body
    if isinstance(body, dict) and "flow" in body:
        variants += [{"body": {**body, "flow": name}} for name in FITTING]
        variants += [{"body": {**body, "flow": name, "inputs": inputs}} for name, inputs in FITTING.items()]
    if isinstance(body, dict) and "checkpoint" in body:
        variants.append({"body": {**body, "checkpoint": "sent"}})

    def changed(variant: dict[str, Any]) -> schemathesis.Case[Any]:
        for name, value in variant.items():
            setattr(case, name, value)
        return case

    return st.sampled_from(variants).map(changed)


@schema.parametrize()
@hypothesis.settings(
    max_examples=30,
    derandomize=True,
    deadline=None,
    suppress_health_check=list(hypothesis.HealthCheck),
    database=None,
)
def test_every_route_answers_as_its_schema_says(case: schemathesis.Case[Any]) -> None:
    """No 500, and status, content type and body as the OpenAPI document says (every check, bar those below)."""
    excluded = [
        # Starlette answers a method that no route of a path takes with the Allow header of the path's first
        # route only (one route per method: GET and POST /runs are two), a framework limit ckflow cannot change.
        schemathesis.checks.allow_header_conformance,
    ]
    if case.query and "cursor" in case.query:
        # A cursor is opaque, so no schema can say which strings are cursors: one the router did not give is a 422.
        excluded.append(schemathesis.checks.positive_data_acceptance)
    body = case.body if isinstance(case.body, dict) else {}
    flow = body.get("flow")
    if isinstance(flow, str) and flow in FITTING and body.get("inputs") != FITTING[flow]:
        # A flow's inputs have their schema in GET /flows (each flow its own), not in POST /runs's body schema.
        excluded.append(schemathesis.checks.positive_data_acceptance)
    # A live run's event stream does not end: read what it sends in a moment, then cut it (schemathesis keeps the
    # whole events read by then and checks them).
    streaming = case.operation.path.endswith("/events")
    case.call_and_validate(excluded_checks=excluded, **({"timeout": 0.5} if streaming else {}))
