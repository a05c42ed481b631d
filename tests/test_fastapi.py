"""ckflow.fastapi: the engine in an app's lifespan, the ``engine`` dependency, and inline runs in handlers.

In-process tests drive the app through ``httpx.ASGITransport`` with the lifespan entered by the test
(``app.router.lifespan_context``); the disconnect and shutdown tests serve the app on a real uvicorn on loopback.
"""

from __future__ import annotations

import contextlib
import functools
import subprocess
import sys
from typing import TYPE_CHECKING, Annotated, Any

import anyio
import httpx
import pytest
import uvicorn
from fastapi import Depends, FastAPI, Request
from pydantic import BaseModel

import ckflow
import ckflow.fastapi
from ckflow import Engine, FlowState, Linear, RunView, task
from ckflow.stores.memory import MemoryStore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

#: a handler's parameter that FastAPI fills with the app's engine
AppEngine = Annotated[Engine, Depends(ckflow.fastapi.engine)]


class Order(BaseModel):
    """A request body FastAPI reads before the handler runs (the disconnect is the next message)."""

    size: int


def gated_flow(name: str, log: list[str], started: anyio.Event, gate: anyio.Event) -> Linear:
    """``first`` (revertible) then ``slow``, which waits for ``gate`` once ``started`` is set."""

    @task(provides="a")
    async def first(size: int) -> int:
        log.append("first")
        return size

    @first.revert
    async def _(result: object) -> None:
        log.append("undo first")

    @task(provides="b")
    async def slow(a: int) -> int:
        log.append("slow")
        started.set()
        await gate.wait()
        return a + 1

    return Linear(name, first, slow)


@contextlib.asynccontextmanager
async def lifespan_of(app: FastAPI) -> AsyncIterator[Any]:
    """The app's lifespan, entered as a server would (ASGITransport does not run it)."""
    async with app.router.lifespan_context(app) as state:
        yield state


def client_of(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app")


@contextlib.asynccontextmanager
async def served(app: FastAPI) -> AsyncIterator[str]:
    """The app on a real uvicorn on loopback (lifespan on); yields its base URL and shuts it down on exit."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        while not server.started:  # noqa: ASYNC110 - uvicorn sets a flag, it has no event to wait on
            await anyio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True


class TestLifespan:
    async def test_the_app_has_one_open_engine_while_it_serves_and_none_after(self) -> None:
        """app.state.ckflow is an open, recovering engine on the given store during the lifespan, gone after."""
        store = MemoryStore()
        app = FastAPI(lifespan=ckflow.fastapi.lifespan(store))
        with anyio.fail_after(5):
            async with lifespan_of(app):
                engine = app.state.ckflow
                assert isinstance(engine, Engine)
                assert engine.store is store
                run = await engine.start(Linear("one", _noop), run_id="x")
                assert (await run.wait()).state is FlowState.SUCCESS
            assert not hasattr(app.state, "ckflow")
            assert engine.store is None  # closed

    async def test_the_apps_own_lifespan_runs_inside_the_engine_and_its_state_passes_through(self) -> None:
        """app_lifespan is entered after the engine opens and left before it closes; its state is the app's."""
        log: list[str] = []

        @contextlib.asynccontextmanager
        async def mine(app: FastAPI) -> AsyncIterator[dict[str, int]]:
            log.append(f"enter, engine open: {isinstance(app.state.ckflow, Engine)}")
            yield {"answer": 42}
            # the engine is still there for the app's own shutdown
            result = await (await app.state.ckflow.start(Linear("bye", _noop))).wait()
            log.append(f"exit, last run {result.state.name}")

        app = FastAPI(lifespan=ckflow.fastapi.lifespan(MemoryStore(), app_lifespan=mine))
        with anyio.fail_after(5):
            async with lifespan_of(app) as state:
                assert state == {"answer": 42}
                assert log == ["enter, engine open: True"]
        assert log == ["enter, engine open: True", "exit, last run SUCCESS"]

    async def test_the_apps_lifespan_failing_at_start_raises_its_error_and_closes_the_engine(self) -> None:
        """An app_lifespan that fails on entry: its own exception reaches the server, and the engine is closed."""
        engines: list[Engine] = []

        @contextlib.asynccontextmanager
        async def broken(app: FastAPI) -> AsyncIterator[None]:
            engines.append(app.state.ckflow)
            raise LookupError("no config")
            yield

        app = FastAPI(lifespan=ckflow.fastapi.lifespan(MemoryStore(), app_lifespan=broken))
        with anyio.fail_after(5), pytest.raises(LookupError, match="no config"):
            async with lifespan_of(app):
                raise AssertionError("not reached")
        assert [engine.store for engine in engines] == [None]
        assert not hasattr(app.state, "ckflow")

    async def test_engine_options_reach_the_engine(self) -> None:
        """**engine_options are the Engine's (recover among them)."""
        store = MemoryStore()
        app = FastAPI(lifespan=ckflow.fastapi.lifespan(store, id="svc-1", recover=False))
        with anyio.fail_after(5):
            async with lifespan_of(app):
                assert app.state.ckflow.id == "svc-1"

    async def test_shutdown_reverts_runs_without_a_store(self) -> None:
        """A run without a store in flight at shutdown is reverted, not waited for."""
        log: list[str] = []
        started, gate = anyio.Event(), anyio.Event()
        app = FastAPI(lifespan=ckflow.fastapi.lifespan(None))
        with anyio.fail_after(5):
            async with lifespan_of(app):
                await app.state.ckflow.start(gated_flow("mem", log, started, gate), {"size": 1})
                await started.wait()
        assert log == ["first", "slow", "undo first"]

    async def test_a_durable_run_in_flight_at_shutdown_stays_released_and_the_next_start_resumes_it(self) -> None:
        """Shutdown on a real uvicorn stops a durable run where it is (owner None); the next start recovers it."""
        store, log = MemoryStore(), []
        started, gate = anyio.Event(), anyio.Event()
        flow = gated_flow("fastapi-durable", log, started, gate)
        ckflow.register_flow(flow.name, flow)
        app = FastAPI(lifespan=ckflow.fastapi.lifespan(store))

        @app.post("/start")
        async def start(engine: AppEngine) -> dict[str, str]:
            return {"id": (await engine.start(flow, {"size": 1}, run_id="d")).id}

        with anyio.fail_after(10):
            async with served(app) as url, httpx.AsyncClient(base_url=url) as client:
                assert (await client.post("/start")).json() == {"id": "d"}
                await started.wait()
            record = await store.get_run("d")
            assert (record.state, record.owner) == (FlowState.RUNNING, None)
            assert log == ["first", "slow"]
            gate.set()
            later = FastAPI(lifespan=ckflow.fastapi.lifespan(store))
            async with lifespan_of(later):
                result = await (await later.state.ckflow.attach("d")).wait()
        assert result.state is FlowState.SUCCESS
        assert log == ["first", "slow", "slow"]


@task
async def _noop() -> None:
    pass


class TestEngineDependency:
    async def test_a_handler_gets_the_apps_engine(self) -> None:
        app = FastAPI(lifespan=ckflow.fastapi.lifespan(MemoryStore()))

        @app.get("/engine")
        async def which(engine: AppEngine) -> dict[str, bool]:
            return {"same": engine is app.state.ckflow}

        async with lifespan_of(app), client_of(app) as client:
            assert (await client.get("/engine")).json() == {"same": True}

    async def test_without_the_lifespan_it_says_how_to_install_it(self) -> None:
        app = FastAPI()

        @app.get("/engine")
        async def which(engine: AppEngine) -> None:
            raise AssertionError("not reached")

        async with client_of(app) as client:
            with pytest.raises(RuntimeError, match=r"ckflow\.fastapi\.lifespan"):
                await client.get("/engine")


class TestInlineRun:
    async def test_a_post_handler_returns_the_run_view_as_json(self) -> None:
        """On a real uvicorn: the handler runs the flow inline and returns its RunView."""
        log: list[str] = []
        started, gate = anyio.Event(), anyio.Event()
        gate.set()
        flow = gated_flow("order", log, started, gate)
        app = FastAPI(lifespan=ckflow.fastapi.lifespan(MemoryStore()))

        @app.post("/orders/{size}")
        async def order(size: int, request: Request) -> RunView:
            return await ckflow.fastapi.run(request, flow, {"size": size}, run_id=f"order-{size}")

        with anyio.fail_after(10):
            async with served(app) as url, httpx.AsyncClient(base_url=url) as client:
                response = await client.post("/orders/3")
        assert response.status_code == 200
        view = RunView.model_validate(response.json())
        assert (view.run_id, view.flow, view.state) == ("order-3", "order", FlowState.SUCCESS)
        assert view.outputs == {"a": 3, "b": 4}
        assert log == ["first", "slow"]

    async def test_a_client_that_hangs_up_cancels_the_run_which_reverts_what_ran(self) -> None:
        """On a real uvicorn: closing the connection mid-run ends the run REVERTED, ``first`` reverted."""
        store, log = MemoryStore(), []
        started, gate, returned = anyio.Event(), anyio.Event(), anyio.Event()
        views: list[RunView] = []
        flow = gated_flow("hangup", log, started, gate)
        app = FastAPI(lifespan=ckflow.fastapi.lifespan(store))

        @app.post("/orders")
        async def order(body: Order, request: Request) -> RunView:
            views.append(await ckflow.fastapi.run(request, flow, body.model_dump(), run_id="h"))
            returned.set()
            return views[-1]

        with anyio.fail_after(10):
            async with served(app) as url:
                async with httpx.AsyncClient(base_url=url) as client, anyio.create_task_group() as tg:
                    tg.start_soon(functools.partial(client.post, "/orders", json={"size": 1}))
                    await started.wait()
                    tg.cancel_scope.cancel()  # the client gives up: its connection closes
                await returned.wait()
        assert [view.state for view in views] == [FlowState.REVERTED]
        assert (await store.get_run("h")).state is FlowState.REVERTED
        assert log == ["first", "slow", "undo first"]
        assert not gate.is_set()

    async def test_a_cancelled_handler_leaves_the_run_to_the_engine(self) -> None:
        """Cancelling the handler (a server's graceful-shutdown timeout) does not cancel the run: it goes on."""
        log: list[str] = []
        started, gate, never = anyio.Event(), anyio.Event(), anyio.Event()
        flow = gated_flow("left", log, started, gate)
        app = FastAPI(lifespan=ckflow.fastapi.lifespan(None))

        async def receive() -> dict[str, Any]:
            await never.wait()  # the client neither sends nor hangs up
            raise AssertionError("not reached")

        request = Request({"type": "http", "app": app, "method": "POST", "path": "/", "headers": []}, receive)
        with anyio.fail_after(5):
            async with lifespan_of(app):
                async with anyio.create_task_group() as handler:
                    handler.start_soon(functools.partial(ckflow.fastapi.run, request, flow, {"size": 1}, run_id="r"))
                    await started.wait()
                    handler.cancel_scope.cancel()
                handle = app.state.ckflow.get_run("r")
                gate.set()
                assert (await handle.wait()).state is FlowState.SUCCESS
        assert log == ["first", "slow"]

    async def test_inputs_that_do_not_fit_are_422_as_from_the_router_and_nothing_runs(self) -> None:
        """The handler writes no error handling: a bad input is the router's 422, its loc under the body."""
        log: list[str] = []
        flow = gated_flow(f"bad-{id(log)}", log, anyio.Event(), anyio.Event())
        ckflow.register_flow(flow.name, flow)
        app = FastAPI(lifespan=ckflow.fastapi.lifespan(None))
        app.include_router(ckflow.fastapi.router())

        @app.post("/bad")
        async def bad(request: Request) -> RunView:
            return await ckflow.fastapi.run(request, flow, {"size": "not a number"})

        @app.post("/missing")
        async def missing(request: Request) -> RunView:
            return await ckflow.fastapi.run(request, flow, {})

        async with lifespan_of(app), client_of(app) as client:
            response = await client.post("/bad")
            routed = await client.post("/runs", json={"flow": flow.name, "inputs": {"size": "not a number"}})
            absent = await client.post("/missing")
        assert (response.status_code, routed.status_code, absent.status_code) == (422, 422, 422)
        [error] = response.json()["detail"]
        assert error["loc"] == ["body", "size"]
        assert error["type"] == "int_parsing"
        assert response.json()["detail"] == [
            {**found, "loc": [part for part in found["loc"] if part != "inputs"]} for found in routed.json()["detail"]
        ]
        assert absent.json()["detail"] == [
            {"loc": ["body", "size"], "msg": "Field required (read by first)", "type": "missing"}
        ]
        assert log == []

    async def test_an_unknown_flow_name_is_404_and_a_taken_run_id_409(self) -> None:
        """The other refusals before a run starts: the router's statuses and messages."""
        log: list[str] = []
        gate = anyio.Event()
        gate.set()
        flow = gated_flow(f"named-{id(log)}", log, anyio.Event(), gate)
        ckflow.register_flow(flow.name, flow)
        app = FastAPI(lifespan=ckflow.fastapi.lifespan(None))

        @app.post("/named/{name}/{run_id}")
        async def named(name: str, run_id: str, request: Request) -> RunView:
            return await ckflow.fastapi.run(request, name, {"size": 1}, run_id=run_id)

        async with lifespan_of(app), client_of(app) as client:
            unknown = await client.post("/named/no-such-flow/r1")
            first = await client.post(f"/named/{flow.name}/r1")
            again = await client.post(f"/named/{flow.name}/r1")
        assert unknown.status_code == 404
        assert "no-such-flow" in unknown.json()["detail"]
        assert first.status_code == 200
        assert first.json()["state"] == "SUCCESS"
        assert again.status_code == 409
        assert "r1" in again.json()["detail"]
        assert log == ["first", "slow"]

    async def test_a_reverted_run_is_returned_not_raised(self) -> None:
        """A run that ends REVERTED (a task failed, its checkpoint gave up) comes back as a view, for the handler."""

        @task
        async def boom() -> None:
            raise ValueError("no stock")

        app = FastAPI(lifespan=ckflow.fastapi.lifespan(None))

        @app.post("/boom")
        async def go(request: Request) -> RunView:
            return await ckflow.fastapi.run(request, Linear("boom", boom))

        async with lifespan_of(app), client_of(app) as client:
            view = RunView.model_validate((await client.post("/boom")).json())
        assert view.state is FlowState.REVERTED
        assert [(f.type, f.message) for f in view.failures] == [("ValueError", "no stock")]


def test_import_ckflow_does_not_import_fastapi() -> None:
    """The core import stays free of FastAPI and Starlette; only ``import ckflow.fastapi`` brings them."""
    code = "import sys, ckflow; print(sorted(m for m in sys.modules if m.split('.')[0] in ('fastapi', 'starlette')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_without_fastapi_the_import_names_the_extra() -> None:
    """``import ckflow.fastapi`` without FastAPI installed fails with an ImportError naming ``ckflow[fastapi]``."""
    code = (
        "import sys\n"
        "sys.modules['fastapi'] = sys.modules['starlette'] = None  # as if not installed\n"
        "try:\n"
        "    import ckflow.fastapi\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "pip install 'ckflow[fastapi]'" in out
