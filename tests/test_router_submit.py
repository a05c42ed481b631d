"""``ckflow.fastapi.router(submit=True)``: POST /runs queues the run for the workers instead of running it here."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import anyio
import httpx
from fastapi import FastAPI
from tests.test_workers import Jobs, pg  # noqa: F401 - the fixture

import ckflow
import ckflow.fastapi
from ckflow import Engine, FlowState, RunView, Worker

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path


@contextlib.asynccontextmanager
async def api(store: str, **router_options: Any) -> AsyncIterator[tuple[httpx.AsyncClient, Engine]]:
    app = FastAPI(lifespan=ckflow.fastapi.lifespan(store, poll_interval=0.01))
    app.include_router(ckflow.fastapi.router(**router_options))
    with anyio.fail_after(15):
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
                yield client, app.state.ckflow


class TestSubmittingRouter:
    async def test_post_runs_queues_the_run_with_its_queue_and_priority_and_runs_nothing(self, tmp_path: Path) -> None:
        jobs = Jobs()
        async with api(f"sqlite:///{tmp_path / 'runs.db'}", submit=True) as (client, engine):
            body = {"flow": jobs.name, "inputs": {"n": "3"}, "run_id": "q1", "queue": "slow", "priority": 7}
            response = await client.post("/runs", json=body)
            assert engine.store is not None
            record = await engine.store.get_run("q1")
        assert response.status_code == 201
        view = RunView.model_validate(response.json())
        assert (view.state, view.inputs) == (FlowState.QUEUED, {"n": 3})
        assert (record.state, record.queue, record.priority) == (FlowState.QUEUED, "slow", 7)
        assert jobs.log == []

    async def test_a_bad_queue_name_is_422_naming_it(self, tmp_path: Path) -> None:
        jobs = Jobs()
        async with api(f"sqlite:///{tmp_path / 'runs.db'}", submit=True) as (client, _):
            response = await client.post("/runs", json={"flow": jobs.name, "inputs": {"n": 1}, "queue": "a\x07b"})
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["body", "queue"]

    async def test_only_a_submitting_router_documents_queue_and_priority(self, tmp_path: Path) -> None:
        async with api(f"sqlite:///{tmp_path / 'a.db'}", submit=True) as (client, _):
            submitting = (await client.get("/openapi.json")).json()
        async with api(f"sqlite:///{tmp_path / 'b.db'}") as (client, _):
            running = (await client.get("/openapi.json")).json()
        assert {"queue", "priority"} <= set(submitting["components"]["schemas"]["SubmitRun"]["properties"])
        assert "SubmitRun" not in running["components"]["schemas"]
        assert "queue" not in running["components"]["schemas"]["StartRun"]["properties"]

    async def test_a_worker_runs_what_the_router_queued_and_the_router_follows_it(self, pg: str) -> None:  # noqa: F811
        jobs = Jobs()
        async with api(pg, submit=True) as (client, engine), Worker(pg, concurrency=2, poll_interval=5):
            response = await client.post("/runs", json={"flow": jobs.name, "inputs": {"n": 4}, "run_id": "w1"})
            assert response.status_code == 201
            with anyio.fail_after(10):
                result = await (await engine.attach("w1")).wait()
            got = await client.get("/runs/w1")
        assert result.state is FlowState.SUCCESS
        view = RunView.model_validate(got.json())
        assert view.state is FlowState.SUCCESS
        assert view.outputs is not None
        assert view.outputs["a"] == 4
        assert jobs.ran("w1") == ["first", "second"]
